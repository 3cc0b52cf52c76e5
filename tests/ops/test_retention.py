"""Bounded growth: change-log compaction, index checkpoints, log retention (SQLite and PostgreSQL).

The property that matters: after compaction, every reader at or after the floor sees
exactly what it saw before (snapshots, catch-ups, rebuilt indexes), and a deleted
record never comes back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, update

from lockstep.core.errors import ConfigurationError
from lockstep.index.catch_up import catch_up
from lockstep.index.manifest import read_manifest
from lockstep.index.storage import index_location, load_index, save_index
from lockstep.index.vector_index import VectorIndex
from lockstep.model.embedding import TextEmbedder
from lockstep.ops import retention
from lockstep.store import routing
from lockstep.store.records import RecordStore
from lockstep.store.schema import changes, feedback_log, request_log, shadow_log, stream_messages

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau"]
LATER = datetime.now(UTC) + timedelta(days=30)  # "now" for compaction runs: every change is past retention


def _text(i: int, version: int = 0) -> str:
    return " ".join(WORDS[(i * 3 + k + version) % len(WORDS)] for k in range(6)) + f" doc{i} rev{version}"


@pytest.fixture
def store(database_url, lockstep_home) -> RecordStore:
    return RecordStore(database_url)


@pytest.fixture
def embedder() -> TextEmbedder:
    return TextEmbedder(dim=8, min_df=1, random_state=0).fit([_text(i, v) for i in range(40) for v in range(3)])


def _history(store: RecordStore) -> None:
    """Creates, rewrites, deletes and re-creations: plenty of superseded rows and tombstones."""
    store.upsert_many([{"id": f"r{i}", "text": _text(i)} for i in range(30)])
    for i in range(0, 30, 2):
        store.upsert(f"r{i}", _text(i, 1))
    for i in range(0, 30, 3):
        store.delete(f"r{i}")
    store.upsert("r3", _text(3, 2))  # deleted above, back as a new version
    store.upsert_many([{"id": f"r{i}", "text": _text(i, 2)} for i in range(1, 30, 5)])


def _change_rows(store: RecordStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(changes)).scalar())


def _state(store: RecordStore, at: int) -> dict[str, str]:
    return {r.id: r.text for r in store.snapshot(at).records}


def _served_slot(store: RecordStore, embedder: TextEmbedder, version: str = "1") -> str:
    """An index of the store as it is now, saved and registered as a ready slot; returns its location."""
    snap = store.snapshot()
    index = VectorIndex.build(snap.ids, embedder.transform([r.text for r in snap.records]))
    location = index_location("test-model", version)
    save_index(index, location, model_name="test-model", model_version=version,
               fingerprint=embedder.fingerprint, applied_seq=snap.seq)
    model_file = embedder.save(location.parent / f"model-v{version}.joblib")
    routing.register_slot(version, str(model_file), str(location), embedder.fingerprint, state="ready", engine=store.engine)
    return str(location)


def _rebuilt(store: RecordStore, embedder: TextEmbedder) -> set[str]:
    """What a fresh re-embed holds: a snapshot now, embedded, then caught up."""
    snap = store.snapshot()
    index = VectorIndex.build(snap.ids, embedder.transform([r.text for r in snap.records]))
    catch_up(index, embedder, store, snap.seq)
    return set(index.ids)


# --- compaction ----------------------------------------------------------------------------


def test_compaction_keeps_every_snapshot_from_the_floor_on(store):
    _history(store)
    head = store.head()
    floor_seq = head - 10
    before = {at: _state(store, at) for at in range(floor_seq, head + 1)}
    rows_before = _change_rows(store)

    floor = retention.compaction_floor(store, retention_days=1, snapshot_seqs={"model v1": floor_seq}, now=LATER)
    assert floor.seq == floor_seq and floor.tombstone_seq == floor_seq
    assert floor.bounds == {"retention": head, "model v1 snapshot": floor_seq}
    result = retention.compact_changes(store, floor)

    assert result["superseded_deleted"] > 0 and result["tombstones_deleted"] > 0
    assert _change_rows(store) == rows_before - result["superseded_deleted"] - result["tombstones_deleted"]
    assert {at: _state(store, at) for at in range(floor_seq, head + 1)} == before
    assert retention.compacted_through(store.engine) == floor_seq
    # One row per record at most before the floor, none of them a lone tombstone.
    with store.engine.connect() as conn:
        old = conn.execute(select(changes.c.record_id, changes.c.op).where(changes.c.seq <= floor_seq)).all()
    assert len({r.record_id for r in old}) == len(old)
    assert all(r.op == "upsert" for r in old)
    # Idempotent: a second run finds nothing more to delete.
    again = retention.compact_changes(store, floor)
    assert again["superseded_deleted"] == again["tombstones_deleted"] == 0


def test_a_deleted_record_never_comes_back_after_compaction(store, embedder):
    store.upsert_many([{"id": f"r{i}", "text": _text(i)} for i in range(20)])
    location = _served_slot(store, embedder)  # index built before the delete
    store.upsert("r5", _text(5, 1))
    store.delete("r5")
    store.upsert("r6", _text(6, 1))
    delete_seq = store.head() - 1

    # The served index has not applied the delete: the tombstone must stay.
    first = retention.compact(store, retention_days=0, snapshot_seqs={}, now=LATER)
    assert first["floor"] == read_manifest(location).applied_seq < delete_seq
    caught_up = load_index(location)
    catch_up(caught_up.index, embedder, store, caught_up.applied_seq)
    assert "r5" not in caught_up.index.ids and "r6" in caught_up.index.ids

    # Once every index has applied it (a checkpoint), the tombstone and r5's upserts go.
    saved = retention.checkpoint_indexes(store)
    assert saved == [{"model_version": "1", "applied_seq_before": delete_seq - 2, "applied_seq": store.head(), "saved": True}]
    second = retention.compact(store, retention_days=0, snapshot_seqs={}, now=LATER)
    assert second["tombstone_floor"] == store.head()
    with store.engine.connect() as conn:
        assert conn.execute(select(changes).where(changes.c.record_id == "r5")).all() == []

    assert store.get("r5") is None and "r5" not in _state(store, store.head())
    assert "r5" not in _rebuilt(store, embedder)  # rebuild from a fresh snapshot + catch-up
    reloaded = load_index(location)  # a replica restarting from the checkpoint
    catch_up(reloaded.index, embedder, store, reloaded.applied_seq)
    assert "r5" not in reloaded.index.ids and set(reloaded.index.ids) == set(store.snapshot().ids)


def test_a_reembed_in_flight_holds_compaction_and_an_abandoned_one_keeps_tombstones(store, embedder):
    _history(store)
    with store.engine.begin() as conn:  # the history is ten days old; the re-embed started just now
        conn.execute(update(changes).values(at=changes.c.at - timedelta(days=10)))
    rows = _change_rows(store)
    routing.register_slot("2", "models:/m/2", str(index_location("test-model", "2")), "fp", state="loading",
                          engine=store.engine)
    in_flight = retention.compact(store, retention_days=7, snapshot_seqs={}, now=datetime.now(UTC))
    assert in_flight["floor"] == 0 and _change_rows(store) == rows
    assert any("v2 is loading" in b for b in in_flight["blockers"])
    no_retention = retention.compact(store, retention_days=0, snapshot_seqs={}, now=datetime.now(UTC))
    assert no_retention["floor"] == 0 and _change_rows(store) == rows  # a day's grace however short the retention

    much_later = datetime.now(UTC) + timedelta(days=30)  # the loading slot is now older than the retention
    abandoned = retention.compact(store, retention_days=7, snapshot_seqs={}, now=much_later)
    assert abandoned["floor"] == store.head() and abandoned["superseded_deleted"] > 0
    assert abandoned["tombstone_floor"] == 0 and abandoned["tombstones_deleted"] == 0


def test_retention_and_needed_snapshots_bound_the_floor(store):
    _history(store)
    rows = _change_rows(store)
    recent = retention.compact(store, retention_days=7, snapshot_seqs={}, now=datetime.now(UTC))
    assert recent["floor"] == 0 and recent["superseded_deleted"] == 0 and _change_rows(store) == rows

    floor = retention.compaction_floor(store, retention_days=7, snapshot_seqs={"model v1": 5, "model v2": 40}, now=LATER)
    assert floor.seq == 5


def test_reading_below_the_compacted_floor_is_refused(store):
    _history(store)
    retention.compact(store, retention_days=0, snapshot_seqs={"model v1": 20}, now=LATER)
    retention.check_replayable(store, 20)
    with pytest.raises(retention.CompactionError, match="compacted through sequence 20"):
        retention.check_replayable(store, 19)


# --- restarts --------------------------------------------------------------------------------


class _RecordingStore(RecordStore):
    """The real store, noting where each change-log read starts."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.reads_from: list[int] = []

    def changes_since(self, seq, **kw):
        self.reads_from.append(seq)
        return super().changes_since(seq, **kw)


def test_a_restarting_replica_replays_only_the_tail_after_its_index(store, embedder):
    from lockstep.serving.slots import load_slot

    store.upsert_many([{"id": f"r{i}", "text": _text(i)} for i in range(20)])
    location = _served_slot(store, embedder)
    for i in range(5):
        store.upsert(f"r{i}", _text(i, 1))
    retention.checkpoint_indexes(store)
    checkpointed = read_manifest(location).applied_seq
    assert checkpointed == store.head()
    store.delete("r7")
    store.upsert("r30", _text(30))

    recording = _RecordingStore(store.engine)
    slot = load_slot(routing.read_table(store.engine).slot("1"), recording)
    assert recording.reads_from[0] == checkpointed  # not from 0, not from the build
    assert slot.applied_seq == store.head()
    assert set(slot.index.ids) == set(store.snapshot().ids)


# --- logs --------------------------------------------------------------------------------------


def test_purge_logs_keeps_the_configured_days(store, monkeypatch):
    now = datetime.now(UTC)
    old, new = now - timedelta(days=31), now - timedelta(days=29)
    with store.engine.begin() as conn:
        for n, at in enumerate([old] * 3 + [new] * 2):
            conn.execute(insert(request_log).values(
                request_id=f"q{n}", at=at, model_version="1", k=10, latency_ms=1.0, status=200, top_ids=[]))
            conn.execute(insert(shadow_log).values(
                request_id=f"q{n}", at=at, live_version="1", shadow_version="2", live_top_ids=[]))
            conn.execute(insert(feedback_log).values(request_id=f"q{n}", record_id="r1", event="click", at=at))
            for source in ("redis://a:6379/s", "redis://b:6379/s"):  # the same message id from two streams
                conn.execute(insert(stream_messages).values(
                    source=source, message_id=f"1-{n}", seq=n, record_id="r1", op="upsert", applied_at=at))

    monkeypatch.setattr(retention, "PURGE_BATCH", 2)  # several batches per table
    deleted = retention.purge_logs(store.engine, days=30, now=now)
    assert deleted == {"lockstep_request_log": 3, "lockstep_shadow_log": 3, "lockstep_feedback_log": 3,
                       "lockstep_stream_messages": 6}
    with store.engine.connect() as conn:
        for table in (request_log, shadow_log, feedback_log):
            assert {r.request_id for r in conn.execute(select(table.c.request_id))} == {"q3", "q4"}
        kept = {(r.source, r.message_id) for r in conn.execute(select(stream_messages.c.source, stream_messages.c.message_id))}
    assert kept == {(s, f"1-{n}") for s in ("redis://a:6379/s", "redis://b:6379/s") for n in (3, 4)}


def test_retention_settings_name_what_is_wrong():
    assert retention.RetentionSettings.from_env({}) == retention.RetentionSettings(7.0, 30.0)
    assert retention.RetentionSettings.from_env({"LOCKSTEP_LOG_RETENTION_DAYS": "0.5"}).log_days == 0.5
    with pytest.raises(ConfigurationError, match="LOCKSTEP_CHANGE_LOG_RETENTION_DAYS='a week'"):
        retention.RetentionSettings.from_env({"LOCKSTEP_CHANGE_LOG_RETENTION_DAYS": "a week"})
    with pytest.raises(ConfigurationError, match="LOCKSTEP_LOG_RETENTION_DAYS='-1'"):
        retention.RetentionSettings.from_env({"LOCKSTEP_LOG_RETENTION_DAYS": "-1"})
