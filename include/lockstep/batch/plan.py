"""What one batch run computes: which versions, full or incremental, which keys.

A run reads the input head T once (change-log sequence for search, interaction sequence
for the recommender); every version is computed at exactly T. Per version:

- **full** when it has no complete rows yet, when its fingerprint or k differ from those
  the rows were computed with, when the change log was compacted past its last run (a
  delete could be gone from the log), when most keys changed anyway, or when asked. A full
  run first removes the version's rows and marks it incomplete: it takes no batch
  traffic until the run finishes.
- **incremental** otherwise: only the affected keys (``related.affected`` and
  ``recommendations.affected`` give the exact rules); the version keeps serving its rows
  meanwhile, each row carrying the sequence it was computed at.
- **unchanged** when nothing was written since its last run.

The keys go to a JSON file under ``$LOCKSTEP_HOME/batch`` so that each mapped shard reads
only its slice (an XCom would carry a million ids).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lockstep.batch import recommendations, related
from lockstep.batch.world import recommender_world, search_world
from lockstep.core.atomic import atomic_write
from lockstep.core.config import settings
from lockstep.core.errors import LockstepError
from lockstep.store.batch_results import RECOMMENDATIONS, RELATED, BatchResultStore, BatchState
from lockstep.store.routing import RoutingTable, SlotRow, version_key
from lockstep.store.schema import sequences

FULL, INCREMENTAL, UNCHANGED = "full", "incremental", "unchanged"
FULL_SHARE = 0.5  # above this share of keys to recompute, a full run is cheaper (no scan of old rows)
COMPACTED = "changes_compacted"  # lockstep.ops.retention's floor, read here without importing ops


class BatchPlanError(LockstepError):
    """A batch run that cannot be planned (the message says what to change)."""


@dataclass(frozen=True)
class VersionPlan:
    """One version's part of a run (JSON for XCom)."""

    kind: str
    model_version: str
    fingerprint: str
    k: int
    mode: str
    since_seq: int | None  # the last complete run's sequence (incremental only)
    through_seq: int
    live_keys: int  # keys the version has at through_seq: the rows a complete version holds
    keys: int  # keys to compute in this run
    removed: int  # keys whose rows go
    keys_file: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kind_of(system: str) -> str:
    return RELATED if system == "search" else RECOMMENDATIONS


def serving_slots(table: RoutingTable, versions: list[str] | None = None) -> list[SlotRow]:
    """The versions batch serves: live slots with weight, plus a holdback version if the table
    names one; ``versions`` narrows them (each must be one of them)."""
    chosen = {s.model_version: s for s in table.live}
    for version in holdback_versions(table):
        slot = table.slot(version)
        if slot is not None:
            chosen[slot.model_version] = slot
    if versions:
        unknown = [v for v in versions if str(v) not in chosen]
        if unknown:
            serving = ", ".join(sorted(chosen, key=version_key)) or "none"
            raise BatchPlanError(f"model version(s) {', '.join(map(str, unknown))} are not serving (serving: {serving})")
        chosen = {v: s for v, s in chosen.items() if v in {str(x) for x in versions}}
    return [chosen[v] for v in sorted(chosen, key=version_key)]


def holdback_versions(table: RoutingTable) -> list[str]:
    """The holdback version(s) the routing table holds, if it has any (``table.holdback``)."""
    held = getattr(table, "holdback", None)
    if held is None:
        return []
    items = held if isinstance(held, (list, tuple, set, frozenset)) else [held]
    return [str(getattr(h, "model_version", h)) for h in items if h is not None]


def plan_version(kind: str, row: SlotRow, inputs: Any, results: BatchResultStore, *,
                 through_seq: int, k: int, full: bool = False) -> VersionPlan:
    """Decide full, incremental or unchanged for one version, and write its key file."""
    state = results.state(kind, row.model_version)
    world = (search_world if kind == RELATED else recommender_world)(row, inputs, through_seq)
    live = world.all_keys()
    reason = _full_reason(state, row, k, full, compacted_through(inputs) if kind == RELATED else 0)
    if reason is None and state.through_seq == through_seq:
        return _written(kind, row, k, UNCHANGED, state.through_seq, through_seq, live, [], [], "no input changed since the last run")
    if reason is None:
        keys, removed = _incremental_keys(kind, world, inputs, results, state, k)
        if len(keys) > FULL_SHARE * max(len(live), 1):
            reason = f"{len(keys)} of {len(live)} keys changed"
        else:
            return _written(kind, row, k, INCREMENTAL, state.through_seq, through_seq, live, sorted(keys), removed,
                            f"{len(keys)} keys affected by the inputs after sequence {state.through_seq}")
    results.start_full(kind, row.model_version, fingerprint=row.fingerprint, k=k, through_seq=through_seq)
    return _written(kind, row, k, FULL, None, through_seq, live, live, [], reason)


def _full_reason(state: BatchState | None, row: SlotRow, k: int, full: bool, compacted: int) -> str | None:
    if full:
        return "a full run was asked for"
    if state is None or not state.complete:
        return "no complete rows yet"
    if state.fingerprint != row.fingerprint:
        return "the version was registered again with another vector space"
    if state.k != k:
        return f"k changed from {state.k} to {k}"
    if compacted > state.through_seq:
        return f"the change log was compacted through {compacted}, past the last run's {state.through_seq}"
    return None


def _incremental_keys(kind: str, world: Any, inputs: Any, results: BatchResultStore,
                      state: BatchState, k: int) -> tuple[set[str], list[str]]:
    rows = results.iter_rows(kind, state.model_version)
    if kind == RELATED:
        changed = changed_records(inputs, state.through_seq, world.through_seq)
        return related.affected(world.index, rows, changed, k)
    changed = inputs.changes_since(state.through_seq, until=world.through_seq)
    users = set(changed["user_id"])
    moved = {i for i in set(changed["item_id"]) if not world.live.fitted_item(i)}
    return recommendations.affected(world, rows, users, moved, k), []


def changed_records(store: Any, since: int, until: int, page: int = 20_000) -> set[str]:
    """Ids of every record with a change in (since, until]."""
    out: set[str] = set()
    after = since
    while True:
        batch = store.changes_since(after, until=until, limit=page)
        out.update(c.record_id for c in batch)
        if len(batch) < page:
            return out
        after = batch[-1].seq


def compacted_through(store: Any) -> int:
    """The sequence the change log is compacted through (0 if never)."""
    with store.engine.connect() as conn:
        value = conn.execute(select(sequences.c.value).where(sequences.c.name == COMPACTED)).scalar()
    return int(value or 0)


def shard_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of ``total`` keys."""
    return [(s * shard_size, min(total, (s + 1) * shard_size)) for s in range(math.ceil(total / shard_size))]


def read_keys(keys_file: str, start: int = 0, stop: int | None = None) -> list[str]:
    return json.loads(Path(keys_file).read_text(encoding="utf-8"))["keys"][start:stop]


def read_removed(keys_file: str) -> list[str]:
    return json.loads(Path(keys_file).read_text(encoding="utf-8"))["removed"]


def _written(kind: str, row: SlotRow, k: int, mode: str, since: int | None, through: int, live: list[str],
             keys: list[str], removed: list[str], reason: str) -> VersionPlan:
    folder = settings().home / "batch" / kind / f"v{row.model_version}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"keys-{through}-{mode}.json"
    atomic_write(path, json.dumps({"keys": keys, "removed": removed}, separators=(",", ":")))
    return VersionPlan(kind=kind, model_version=row.model_version, fingerprint=row.fingerprint, k=k, mode=mode,
                       since_seq=since, through_seq=through, live_keys=len(live), keys=len(keys),
                       removed=len(removed), keys_file=str(path), reason=reason)
