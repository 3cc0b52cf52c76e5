"""Bounded growth: change-log compaction, index checkpoints and log retention.

The change log is the feed of every index version, so what may go is decided by who
still reads it:

* **Superseded changes.** Catch-up applies only each record's *last* change after the
  index's sequence (``index_store.apply_changes``), and a past snapshot takes each
  record's last change at or before its sequence. A change followed by a later change
  of the same record at or before a floor F is therefore never read by anyone whose
  sequence is at least F: compaction deletes exactly those. F is the smallest of
  the retention bound (only changes older than ``change_log_days`` go), the applied
  sequence of every slot a replica may load (``ready``, ``live``, ``draining``: read
  from its index manifest, which is where a restarting replica starts), and the
  snapshot sequence of every model version still in use (champion, challenger, and
  every version with a slot: the drift check rebuilds the champion's training
  snapshot from the log). A re-embed in flight (a slot ``loading`` changed within the
  retention window, or the last day if that is longer) stops compaction altogether.
* **Tombstones.** A delete that is a record's only remaining change before F can go
  too, but only when *every* slot has applied it: all non-retired slots have a
  readable manifest at or after it, and no slot is ``loading`` at all (an abandoned
  re-embed could be resumed from its old snapshot). Its earlier upserts are always
  deleted first (the tombstone goes only when nothing older of that record is left),
  so a delete can never come back.

The floor is recorded in ``lockstep_sequences`` as ``changes_compacted``: a snapshot
or catch-up from below it would be wrong, and :func:`check_replayable` says so.

Checkpoints keep the tail a restarting replica replays short, and let the floor
advance: each served index is loaded, caught up and saved again (new content-named
files, manifest replaced atomically, so a replica loading at the same time sees the
old version or the new one).

Request, shadow and feedback logs, and the streaming loader's applied-message ids, keep
``log_days`` days. The ``lockstep_maintenance``
DAG runs all three every day.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, exists, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from lockstep.core import clock
from lockstep.core.config import environment
from lockstep.core.errors import ConfigurationError, LockstepError
from lockstep.store.records import DELETE, RecordStore
from lockstep.store.schema import (
    changes,
    feedback_log,
    request_log,
    sequences,
    shadow_log,
    stream_messages,
)

log = logging.getLogger(__name__)

COMPACTED = "changes_compacted"
DEFAULT_CHANGE_LOG_DAYS = 7.0
DEFAULT_LOG_DAYS = 30.0
CHANGE_LOG_DAYS_VAR = "LOCKSTEP_CHANGE_LOG_RETENTION_DAYS"
LOG_DAYS_VAR = "LOCKSTEP_LOG_RETENTION_DAYS"
WINDOW = 20_000  # change-log sequences per compaction transaction (short statements on PostgreSQL)
PURGE_BATCH = 10_000  # log rows per delete

# A loading slot changed this recently (or within the retention, if longer) may be a re-embed in flight.
IN_FLIGHT_DAYS = 1.0
# States whose index a replica may load now or after a rollback; their applied sequence bounds the floor.
REPLAYING_STATES = ("ready", "live", "draining")


class CompactionError(LockstepError):
    """A read of the change log from below the compacted floor: its result would be wrong."""


@dataclass(frozen=True)
class RetentionSettings:
    """How long the change log's superseded rows and the request logs are kept, in days."""

    change_log_days: float = DEFAULT_CHANGE_LOG_DAYS
    log_days: float = DEFAULT_LOG_DAYS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionSettings:
        env = environment() if env is None else env
        return cls(
            change_log_days=days_setting(env.get(CHANGE_LOG_DAYS_VAR), CHANGE_LOG_DAYS_VAR, DEFAULT_CHANGE_LOG_DAYS),
            log_days=days_setting(env.get(LOG_DAYS_VAR), LOG_DAYS_VAR, DEFAULT_LOG_DAYS),
        )


def days_setting(raw: Any, name: str, default: float) -> float:
    """A retention in days (>= 0); a clear error names the setting when it is not one."""
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={raw!r} is not a number of days (e.g. 7 or 0.5)") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigurationError(f"{name}={raw!r}: a retention is a finite number of days, 0 or more")
    return value


# --- the floor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionFloor:
    """Up to which sequence changes may be compacted, and what holds it there."""

    seq: int  # superseded changes at or before it may be deleted (0: nothing)
    tombstone_seq: int  # tombstones at or before it may be deleted too (0: none)
    bounds: dict[str, int] = field(default_factory=dict)  # what bounds the floor, and at which sequence
    blockers: list[str] = field(default_factory=list)  # why compaction or tombstone removal is held back


def compaction_floor(
    store: RecordStore,
    *,
    retention_days: float,
    snapshot_seqs: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> CompactionFloor:
    """The safe floor now: the smallest of retention, slot applied sequences and needed snapshots.

    ``snapshot_seqs`` names the past snapshots still needed ({"model v3": 1200});
    ``None`` reads them from the MLflow registry (see :func:`needed_snapshots`).
    """
    from lockstep.index.manifest import read_manifest
    from lockstep.store import routing

    now = now or clock.now()
    bounds: dict[str, int] = {"retention": _retention_bound(store.engine, now - timedelta(days=retention_days))}
    blockers: list[str] = []
    table = routing.read_table(store.engine)
    tombstones_ok, in_flight = True, False
    for slot in table.slots:
        if slot.state == "retired":
            continue
        if slot.state == "loading":
            tombstones_ok = False
            if _within(slot.updated_at, now, max(retention_days, IN_FLIGHT_DAYS)):
                in_flight = True
                blockers.append(f"slot v{slot.model_version} is loading (a re-embed may be in flight): nothing is compacted")
            else:
                blockers.append(f"slot v{slot.model_version} is loading since {slot.updated_at}: tombstones are kept")
            continue
        try:
            bounds[f"slot v{slot.model_version} applied"] = read_manifest(slot.index_location).applied_seq
        except LockstepError as exc:
            tombstones_ok = False
            blockers.append(f"slot v{slot.model_version}: {exc}; tombstones are kept")
    needed = needed_snapshots(table) if snapshot_seqs is None else snapshot_seqs
    bounds.update({f"{name} snapshot": int(seq) for name, seq in needed.items()})
    seq = 0 if in_flight else max(0, min(bounds.values()))
    return CompactionFloor(seq=seq, tombstone_seq=seq if tombstones_ok else 0, bounds=bounds, blockers=blockers)


def needed_snapshots(table=None, registry=None) -> dict[str, int]:
    """Snapshot sequences of the model versions in use: champion, challenger, every non-retired slot.

    The drift check rebuilds the champion's training snapshot from the change log, and
    a rollback or retrain may compare against any of these versions.
    """
    from lockstep.core.errors import RegistryError
    from lockstep.model.registry import Registry
    from lockstep.store import routing

    registry = registry or Registry()
    table = table or routing.read_table()
    versions = {s.model_version for s in table.slots if s.state != "retired"}
    for alias in ("champion", "challenger"):
        info = registry.version_for_alias(alias)
        if info is not None:
            versions.add(str(info.version))
    found: dict[str, int] = {}
    for version in sorted(versions, key=routing.version_key):
        try:
            seq = registry.get_version(version).snapshot_seq
        except RegistryError:
            continue  # a slot registered by hand, without a registry version: nothing to keep
        if seq is not None:
            found[f"model v{version}"] = int(seq)
    return found


# --- compaction --------------------------------------------------------------------------


def compact_changes(store: RecordStore, floor: CompactionFloor) -> dict[str, Any]:
    """Delete superseded changes (then tombstones) at or before the floor; returns counts.

    Runs in windows of sequences, one short transaction each, so writers are never held
    up. Rerunning it (or resuming after a crash) is safe: each deletion only depends on
    rows that stay.
    """
    engine = store.engine
    previous = compacted_through(engine)
    superseded = _delete_windows(engine, _superseded_in, floor.seq) if floor.seq > 0 else 0
    tombstones = _delete_windows(engine, _lone_tombstones_in, floor.tombstone_seq) if floor.tombstone_seq > 0 else 0
    if floor.seq > previous:
        _set_compacted(engine, floor.seq)
    result = {
        "floor": floor.seq,
        "tombstone_floor": floor.tombstone_seq,
        "superseded_deleted": superseded,
        "tombstones_deleted": tombstones,
        "compacted_through": max(previous, floor.seq),
        "bounds": floor.bounds,
        "blockers": floor.blockers,
    }
    log.info("change log compacted: %s", result)
    return result


def compact(
    store: RecordStore | None = None,
    *,
    retention_days: float | None = None,
    snapshot_seqs: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Work out the floor and compact to it (what the maintenance DAG runs)."""
    store = store or RecordStore()
    days = RetentionSettings.from_env().change_log_days if retention_days is None else retention_days
    days = days_setting(days, "retention_days", DEFAULT_CHANGE_LOG_DAYS)
    floor = compaction_floor(store, retention_days=days, snapshot_seqs=snapshot_seqs, now=now)
    return compact_changes(store, floor)


def compacted_through(engine: Engine) -> int:
    """The sequence the change log is compacted through (0 if never)."""
    with engine.connect() as conn:
        value = conn.execute(select(sequences.c.value).where(sequences.c.name == COMPACTED)).scalar()
    return int(value or 0)


def check_replayable(store: RecordStore, seq: int) -> None:
    """Refuse a snapshot or catch-up from ``seq`` when compaction has removed what it needs."""
    floor = compacted_through(store.engine)
    if seq < floor:
        raise CompactionError(
            f"the change log is compacted through sequence {floor}; reading from {seq} would miss "
            "superseded changes and dropped tombstones. Rebuild the index from a fresh snapshot "
            "(lockstep index build --model-version N)"
        )


def _superseded_in(lo: int, hi: int, floor: int):
    """Changes in (lo, hi] followed by a later change of the same record at or before the floor."""
    later = changes.alias("later")
    return delete(changes).where(
        changes.c.seq > lo,
        changes.c.seq <= hi,
        exists().where(later.c.record_id == changes.c.record_id, later.c.seq > changes.c.seq, later.c.seq <= floor),
    )


def _lone_tombstones_in(lo: int, hi: int, floor: int):
    """Deletes in (lo, hi] with nothing older of their record left (its upserts are gone already)."""
    earlier = changes.alias("earlier")
    return delete(changes).where(
        changes.c.seq > lo,
        changes.c.seq <= min(hi, floor),
        changes.c.op == DELETE,
        ~exists().where(earlier.c.record_id == changes.c.record_id, earlier.c.seq < changes.c.seq),
    )


def _delete_windows(engine: Engine, statement, floor: int) -> int:
    with engine.connect() as conn:
        first = conn.execute(select(func.min(changes.c.seq)).where(changes.c.seq <= floor)).scalar()
    if first is None:
        return 0
    deleted = 0
    lo = int(first) - 1
    while lo < floor:
        hi = min(lo + WINDOW, floor)
        with engine.begin() as conn:
            deleted += conn.execute(statement(lo, hi, floor)).rowcount or 0
        lo = hi
    return deleted


def _retention_bound(engine: Engine, cutoff: datetime) -> int:
    """The last sequence before the first change at or after the cutoff (the head if none is that new).

    Taking the first recent change (not the last old one) keeps the bound safe even
    when writers' clocks disagree a little.
    """
    with engine.connect() as conn:
        first_recent = conn.execute(select(func.min(changes.c.seq)).where(changes.c.at >= cutoff)).scalar()
        if first_recent is not None:
            return int(first_recent) - 1
        head = conn.execute(select(func.max(changes.c.seq))).scalar()
    return int(head or 0)


def _set_compacted(engine: Engine, seq: int) -> None:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    with engine.begin() as conn:
        conn.execute(dialect.insert(sequences).values(name=COMPACTED, value=0).on_conflict_do_nothing())
        conn.execute(
            update(sequences)
            .where(sequences.c.name == COMPACTED, sequences.c.value < seq)
            .values(value=seq)
        )


def _within(at: datetime | None, now: datetime, days: float) -> bool:
    if at is None:
        return True  # unknown: assume in flight
    return now - clock.utc(at) < timedelta(days=days)


# --- checkpoints -------------------------------------------------------------------------


def checkpoint_indexes(store: RecordStore | None = None, *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Catch every served index up to the head and save it, so restarts replay a short tail.

    Only ``ready``/``live``/``draining`` slots; an index whose manifest changed while it
    was being caught up (a rebuild finished meanwhile) is left as the rebuild wrote it.
    (The search system's checkpoint; ``lockstep.systems`` gives the recommender's, which has
    no index to checkpoint.)
    """
    from lockstep.index.catch_up import catch_up
    from lockstep.index.manifest import read_manifest
    from lockstep.index.slot_files import load_model
    from lockstep.index.storage import load_index, save_index
    from lockstep.store import routing

    store = store or RecordStore()
    results = []
    for slot in routing.read_table(store.engine).slots:
        if slot.state not in REPLAYING_STATES:
            continue
        loaded = load_index(slot.index_location, expected_fingerprint=slot.fingerprint, model_label=f"v{slot.model_version}")
        before = loaded.applied_seq
        check_replayable(store, before)
        embedder = load_model(slot.model_uri, tracking_uri)
        applied = catch_up(loaded.index, embedder, store, before)
        entry = {"model_version": slot.model_version, "applied_seq_before": before, "applied_seq": applied, "saved": False}
        if applied > before and read_manifest(slot.index_location).index_sha256 == loaded.manifest.index_sha256:
            m = loaded.manifest
            save_index(loaded.index, slot.index_location, model_name=m.model_name, model_version=m.model_version,
                       fingerprint=m.fingerprint, applied_seq=applied)
            entry["saved"] = True
        results.append(entry)
    return results


# --- request, shadow and feedback logs -------------------------------------------------------


# (table, its key columns, its time column): what ``purge_logs`` deletes by age.
_LOGS = (
    (request_log, (request_log.c.request_id,), request_log.c.at),
    (shadow_log, (shadow_log.c.id,), shadow_log.c.at),
    (feedback_log, (feedback_log.c.id,), feedback_log.c.at),
    # the streaming loader's duplicate check needs a row only while its message may be
    # delivered again (while it is pending: minutes at most)
    (stream_messages, (stream_messages.c.source, stream_messages.c.message_id), stream_messages.c.applied_at),
)


def purge_logs(
    engine: Engine | None = None, *, days: float | None = None, now: datetime | None = None
) -> dict[str, int]:
    """Delete request, shadow and feedback log rows and applied-message ids older than ``days``;
    returns rows deleted per table."""
    from lockstep.store.db import get_engine

    engine = engine or get_engine()
    days = RetentionSettings.from_env().log_days if days is None else days_setting(days, "days", DEFAULT_LOG_DAYS)
    cutoff = (now or clock.now()) - timedelta(days=days)
    _ensure_at_indexes(engine)
    deleted = {}
    for table, keys, at in _LOGS:
        deleted[table.name] = _purge_table(engine, table, keys, at, cutoff)
    log.info("logs older than %s deleted: %s", cutoff.isoformat(), deleted)
    return deleted


def _purge_table(engine: Engine, table, keys: tuple, at, cutoff: datetime) -> int:
    """Rows with ``at`` before the cutoff, ``PURGE_BATCH`` per transaction (short statements)."""
    key = keys[0] if len(keys) == 1 else tuple_(*keys)
    total = 0
    while True:
        batch = select(*keys).where(at < cutoff).limit(PURGE_BATCH)
        with engine.begin() as conn:
            n = conn.execute(delete(table).where(key.in_(batch))).rowcount or 0
        total += n
        if n < PURGE_BATCH:
            return total


def _ensure_at_indexes(engine: Engine) -> None:
    """The feedback log's time index on a database created before it existed (no-op otherwise)."""
    for index in feedback_log.indexes:
        if index.name == "ix_lockstep_feedback_log_at":
            index.create(engine, checkfirst=True)


# --- batch serving's operational table (issue 13) ----------------------------------------------


def drop_retired_batch_results() -> dict[str, int]:
    """Remove the precomputed rows of versions whose slot is retired or gone (rows removed per
    ``kind/version``); the holdback version's rows stay. ``lockstep_batch`` runs it last."""
    from lockstep.batch.steps import drop_retired

    return drop_retired()
