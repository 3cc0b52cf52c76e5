"""The record store on both back ends: SQLite (default) and a real PostgreSQL server."""

from __future__ import annotations

import threading

import pytest

from lockstep.core.errors import ConfigurationError, InvalidRecordError, RecordNotFoundError
from lockstep.store.records import DELETE, UPSERT, Record, RecordStore


@pytest.fixture
def store(database_url):
    return RecordStore(database_url)


def test_upsert_and_delete_write_record_and_change_log_in_sequence(store):
    s1 = store.upsert("a", "alpha", {"lang": "en"})
    s2 = store.upsert("b", "beta")
    s3 = store.upsert("a", "alpha two")
    s4 = store.delete("b")
    assert [s1, s2, s3, s4] == [1, 2, 3, 4]
    assert store.head() == 4
    assert store.get("a") == Record("a", "alpha two", None, 3, store.get("a").updated_at)
    assert store.get("b") is None  # tombstone is not a live record
    log = store.changes_since(0)
    assert [(c.seq, c.record_id, c.op) for c in log] == [
        (1, "a", UPSERT), (2, "b", UPSERT), (3, "a", UPSERT), (4, "b", DELETE)
    ]
    assert log[0].metadata == {"lang": "en"}
    assert [c.seq for c in store.changes_since(2)] == [3, 4]
    assert [c.seq for c in store.changes_since(1, until=3)] == [2, 3]


def test_snapshot_now_and_as_of_a_past_sequence(store):
    store.upsert_many([{"id": f"r{i}", "text": f"text {i}"} for i in range(5)])  # seq 1..5
    store.upsert("r0", "changed")  # 6
    store.delete("r1")  # 7
    store.upsert("r9", "late")  # 8
    now = store.snapshot()
    assert now.seq == 8
    assert now.ids == ["r0", "r2", "r3", "r4", "r9"]
    assert next(r for r in now.records if r.id == "r0").text == "changed"
    past = store.snapshot(at_seq=5)
    assert past.ids == ["r0", "r1", "r2", "r3", "r4"]
    assert next(r for r in past.records if r.id == "r0").text == "text 0"
    assert store.snapshot(at_seq=7).ids == ["r0", "r2", "r3", "r4"]
    with pytest.raises(ValueError, match="outside the change log"):
        store.snapshot(at_seq=99)


def test_deleted_record_can_come_back_only_by_a_new_upsert(store):
    store.upsert("x", "one")
    store.delete("x")
    with pytest.raises(RecordNotFoundError, match="no live record with id 'x'"):
        store.delete("x")
    store.upsert("x", "two")
    assert store.get("x").text == "two"
    assert store.count() == 1


def test_bad_records_are_refused_and_nothing_of_the_batch_is_written(store):
    good = [{"id": f"g{i}", "text": "fine"} for i in range(10)]
    with pytest.raises(InvalidRecordError, match="text must be a non-empty string"):
        store.upsert_many([*good, {"id": "bad", "text": "  "}])
    assert store.count() == 0 and store.head() == 0
    with pytest.raises(InvalidRecordError, match="record id must be a non-empty string"):
        store.upsert("", "text")
    with pytest.raises(InvalidRecordError, match="metadata must be a JSON object"):
        store.upsert("m", "text", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="the limit is 256"):
        store.upsert("x" * 300, "text")
    with pytest.raises(RecordNotFoundError):
        store.delete("never-existed")
    assert store.head() == 0


def test_batch_upsert_keeps_the_last_occurrence_of_a_repeated_id(store):
    last = store.upsert_many([Record("d", "first"), Record("e", "e"), Record("d", "second")])
    assert store.get("d").text == "second"
    assert last == store.head() == 2


def test_concurrent_writers_commit_in_sequence_order(store):
    """Sequences seen by a tailing reader never have gaps, whatever the interleaving."""
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(25):
                store.upsert(f"w{w}-{i}", f"text {i}")
                if i % 5 == 0:
                    store.delete(f"w{w}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = [c.seq for c in store.changes_since(0)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == 4 * (25 + 5)
    assert store.count() == 4 * 20


def test_get_many_and_iter_changes_page_through_everything(store):
    store.upsert_many([{"id": f"p{i}", "text": f"t{i}"} for i in range(120)], batch_size=50)
    store.delete("p3")
    assert set(store.get_many(["p1", "p3", "nope"])) == {"p1"}
    assert len(list(store.iter_changes_since(0, page=7))) == 121


def test_wrong_database_url_gives_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="not a usable SQLAlchemy URL"):
        RecordStore("nonsense-url")
    with pytest.raises(ConfigurationError, match="cannot reach the Lockstep database"):
        RecordStore("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_default_store_lives_under_lockstep_home(lockstep_home):
    store = RecordStore()
    store.upsert("a", "text")
    assert (lockstep_home / "lockstep.db").exists()


def test_stream_snapshot_reads_one_consistent_state_in_chunks(store):
    store.upsert_many([{"id": f"r{i:03d}", "text": f"text {i}", "metadata": {"n": i}} for i in range(25)])
    store.delete("r003")
    head = store.head()
    with store.stream_snapshot(chunk_size=7) as stream:
        assert stream.seq == head
        first = next(stream.chunks)
        # writes from another connection while the stream is open are not part of it
        store.delete("r020")
        store.upsert("r021", "changed meanwhile")
        store.upsert("r999", "added meanwhile")
        chunks = [first, *stream.chunks]
    assert [len(c) for c in chunks] == [7, 7, 7, 3]
    ids = [i for c in chunks for i in c.ids]
    texts = dict(zip(ids, [t for c in chunks for t in c.texts], strict=True))
    assert ids == sorted(f"r{i:03d}" for i in range(25) if i != 3)
    assert texts["r021"] == "text 21" and "r020" in texts and "r999" not in texts
    assert store.head() == head + 3
    with store.stream_snapshot(5, texts=False) as ids_only:
        assert next(ids_only.chunks).ids == ["r000", "r001", "r002", "r004", "r005"]
        store.upsert("r000", "changed after the stream began")
        # texts read later in the same stream are those of its state, deleted records have none
        assert ids_only.texts_of(["r000", "r003", "r020", "nope"]) == {"r000": "text 0"}
        assert [c.texts for c in ids_only.chunks] == [[], [], [], []]  # 24 live records, 5 a chunk
    with pytest.raises(ValueError, match="chunk size must be at least 1"), store.stream_snapshot(0):
        pass


def test_stream_snapshot_of_an_empty_store_has_no_chunks(store):
    with store.stream_snapshot() as stream:
        assert stream.seq == 0 and list(stream.chunks) == []
