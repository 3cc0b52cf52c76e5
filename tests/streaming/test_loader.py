"""The streaming loader in process, against a real redis-server and the real record store.

Happy path (SQLite and PostgreSQL), a redelivery after a crash between the commit and the
acknowledgement, entries taken over from a consumer that died (XAUTOCLAIM), dead letters
with their reasons, and the lag figures the serving app exports.
"""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import func, select

from lockstep.core.faults import InjectedFault
from lockstep.serving.metrics import StreamLagCollector
from lockstep.store import routing
from lockstep.store.records import RecordStore
from lockstep.store.schema import changes, records, stream_messages
from lockstep.streaming.consumer import ConsumeOptions, StreamLoader
from lockstep.streaming.sources import open_source, parse_source_url
from lockstep.streaming.status import stream_status
from tests.serving.conftest import deployment  # noqa: F401  (the fixture: a store with two served versions)
from tests.serving.harness import serve, wait_for
from tests.streaming.conftest import send
from tests.streaming.scenario import scenario

IDLE = ConsumeOptions(batch=50, until_idle=True, block_ms=50)


def _loader(url: str, store: RecordStore, consumer: str = "c1", **kw) -> StreamLoader:
    source = open_source(url, group="g", consumer=consumer, **kw)
    return StreamLoader(source, store, group="g", consumer=consumer)


def _live(store: RecordStore) -> dict[str, tuple[str, dict | None]]:
    return {r.id: (r.text, r.metadata) for r in store.snapshot().records}


def _change_count(store: RecordStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(changes)).scalar())


@pytest.fixture
def store(lockstep_home):
    return RecordStore()


def test_upserts_and_deletes_reach_the_store_once_each(database_url, lockstep_home, redis_client, stream_url):
    store = RecordStore(database_url)
    story = scenario(600)
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream, *story.messages)

    report = _loader(stream_url, store).run(IDLE)

    assert (report.applied, report.duplicates, report.dead_lettered) == (600, 0, 0)
    assert _live(store) == story.expected
    assert _change_count(store) == 600 == store.head()  # one change per message, nothing else
    with store.engine.connect() as conn:
        rows = conn.execute(select(stream_messages.c.seq, stream_messages.c.op)).all()
    assert sorted(r.seq for r in rows) == list(range(1, 601))
    assert sum(1 for r in rows if r.op == "delete") == story.deletes > 0
    [row] = stream_status(store.engine)
    assert (row["applied"], row["last_seq"], row["pending"], row["lag"]) == (600, 600, 0, 0)
    assert redis_client.xpending(stream, "g")["pending"] == 0


def test_a_redelivery_after_a_crash_between_commit_and_ack_changes_nothing(store, redis_client, stream_url, monkeypatch):
    story = scenario(120)
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream, *story.messages)
    monkeypatch.setenv("LOCKSTEP_FAULTS", "stream.after_commit")

    with pytest.raises(InjectedFault):  # the first batch commits, then the process "dies" before XACK
        _loader(stream_url, store).run(IDLE)
    assert store.head() == 50 and redis_client.xpending(stream, "g")["pending"] == 50

    report = _loader(stream_url, store).run(IDLE)  # the same consumer, restarted: its pending entries first

    assert (report.duplicates, report.applied) == (50, 70)
    assert store.head() == 120 == _change_count(store)
    assert _live(store) == story.expected
    assert stream_status(store.engine)[0]["duplicates"] == 50
    assert redis_client.xpending(stream, "g")["pending"] == 0


def test_entries_left_by_a_dead_consumer_are_claimed_and_applied_once(store, redis_client, stream_url):
    story = scenario(30)
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream, *story.messages)
    _loader(stream_url, store, consumer="ghost")  # makes the group
    redis_client.xreadgroup("g", "ghost", {stream: ">"}, count=20)  # delivered to "ghost", which then dies
    assert redis_client.xpending(stream, "g")["pending"] == 20

    report = _loader(stream_url, store, consumer="heir", claim_idle_ms=0).run(IDLE)

    assert report.applied == 30 and _live(store) == story.expected
    assert redis_client.xpending(stream, "g")["pending"] == 0


def test_bad_messages_go_to_the_dead_letter_stream_with_the_reason(store, redis_client, stream_url):
    stream = parse_source_url(stream_url).stream
    bad = [
        (b"{not json", "not JSON"),
        ({"op": "merge", "id": "a", "text": "x"}, "op must be 'upsert' or 'delete', got 'merge'"),
        ({"op": "upsert", "id": "a"}, "text must be a non-empty string"),
        ({"op": "upsert", "id": "", "text": "x"}, "id must be a non-empty string"),
        ({"op": "upsert", "id": "a\x00b", "text": "x"}, "id contains control character U+0000"),
        ({"op": "upsert", "id": "a", "text": "x", "metadata": [1]}, "metadata must be a JSON object"),
        ({"op": "upsert", "id": "a", "text": "x", "metdata": {}}, "unknown key(s) 'metdata'"),
        ({"op": "delete", "id": "never-there"}, "no live record with id 'never-there'"),
        (b"\xff\xfe", "not UTF-8"),
        ([1, 2], "must be a JSON object"),
        (None, "the message has no 'data' field"),
    ]
    good = [{"op": "upsert", "id": "ok1", "text": "first"}, {"op": "upsert", "id": "ok2", "text": "second"},
            {"op": "delete", "id": "ok1"}]
    payloads = [b if isinstance(b, bytes | type(None)) else json.dumps(b) for b, _ in bad]
    ids = send(redis_client, stream, good[0], *payloads, good[1], good[2])

    report = _loader(stream_url, store).run(IDLE)

    assert (report.applied, report.dead_lettered) == (3, len(bad))
    assert _live(store) == {"ok2": ("second", None)} and store.head() == 3
    dead = redis_client.xrange(f"{stream}:dead")
    assert len(dead) == len(bad)
    by_id = {fields[b"message_id"].decode(): fields for _, fields in dead}
    for message_id, payload, (_, reason) in zip(ids[1:-2], payloads, bad, strict=True):
        fields = by_id[message_id]
        assert reason in fields[b"reason"].decode(), fields
        assert fields.get(b"data") == (None if payload is None else payload if isinstance(payload, bytes)
                                       else payload.encode())
        assert fields[b"source"].decode() == parse_source_url(stream_url).key
    assert redis_client.xpending(stream, "g")["pending"] == 0  # dead letters are acknowledged too
    assert stream_status(store.engine)[0]["dead_lettered"] == len(bad)


def test_max_messages_stops_after_that_many_and_the_rest_waits(store, redis_client, stream_url):
    story = scenario(40)
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream, *story.messages)

    first = _loader(stream_url, store).run(ConsumeOptions(batch=15, max_messages=25, block_ms=50))
    assert (first.applied, store.head()) == (25, 25)
    assert stream_status(store.engine)[0]["lag"] == 15  # what the group has not been given yet

    rest = _loader(stream_url, store).run(IDLE)
    assert rest.applied == 15 and _live(store) == story.expected


def test_the_serving_metrics_export_the_lag_per_source_and_group(store, redis_client, stream_url):
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream, *scenario(10).messages)
    _loader(stream_url, store).run(ConsumeOptions(batch=4, max_messages=4, block_ms=50))
    registry = CollectorRegistry()
    registry.register(StreamLagCollector(store.engine))

    text = generate_latest(registry).decode()

    labels = f'group="g",source="{parse_source_url(stream_url).key}"'
    assert f"lockstep_stream_lag{{{labels}}} 6.0" in text
    assert f"lockstep_stream_pending{{{labels}}} 0.0" in text


def test_a_serving_replica_searches_what_the_stream_wrote(deployment, redis_client, stream_url):  # noqa: F811
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    kept, gone = d.records["r0001"], d.records["r0002"]
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream, {"op": "upsert", "id": "from-stream", "text": kept}, {"op": "delete", "id": "r0002"})

    with serve(d.app()) as server, httpx.Client(base_url=server.url) as client:
        StreamLoader(open_source(stream_url, group="g", consumer="c1"), d.store, group="g", consumer="c1").run(IDLE)

        def found(query: str) -> list[str]:
            return [r["id"] for r in client.post("/search", json={"query": query, "k": 10}).json()["results"]]

        wait_for(lambda: "from-stream" in found(kept) and "r0002" not in found(gone), timeout=30,
                 what="the replica to serve the streamed upsert and drop the streamed delete")
        metrics = client.get("/metrics").text
    key = parse_source_url(stream_url).key
    assert f'lockstep_stream_lag{{group="g",source="{key}"}} 0.0' in metrics


def test_changes_to_one_record_within_a_batch_apply_in_stream_order(database_url, lockstep_home, redis_client,
                                                                    stream_url):
    store = RecordStore(database_url)
    store.upsert("b", "before the stream")
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream,
         {"op": "upsert", "id": "a", "text": "one"}, {"op": "delete", "id": "a"},
         {"op": "upsert", "id": "a", "text": "two", "metadata": {"v": 2}}, {"op": "delete", "id": "b"},
         {"op": "delete", "id": "b"}, {"op": "upsert", "id": "c", "text": "three"}, {"op": "delete", "id": "c"})

    report = _loader(stream_url, store).run(IDLE)  # one batch

    assert (report.batches, report.applied, report.dead_lettered) == (1, 6, 1)  # the second delete of b
    assert _live(store) == {"a": ("two", {"v": 2})}
    assert [(c.seq, c.record_id, c.op, c.text) for c in store.changes_since(1)] == [
        (2, "a", "upsert", "one"), (3, "a", "delete", None), (4, "a", "upsert", "two"), (5, "b", "delete", None),
        (6, "c", "upsert", "three"), (7, "c", "delete", None)]
    with store.engine.connect() as conn:  # deleted records keep a tombstone, as DELETE /records leaves one
        tombstones = conn.execute(select(records.c.id, records.c.seq).where(records.c.deleted)).all()
    assert sorted(tombstones) == [("b", 5), ("c", 7)]
