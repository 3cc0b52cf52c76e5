"""The Kafka source (confluent-kafka) against a broker that speaks the protocol: librdkafka's
mock cluster (tests/streaming/kafka_mock.py), or the real broker ``LOCKSTEP_TEST_KAFKA=HOST:PORT``
names.

The same at-least-once guarantees as the Redis loader: a crash between the store's commit and
the offset commit, and a SIGKILL of the loader process at a batch the test picks, then a
restart: 0 messages lost, 0 applied twice (the change log and the stored message ids say so),
the group's committed offset never ahead of what the store holds, bad messages on the
dead-letter topic with their reason; and ``lockstep stream consume`` once, end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from lockstep.core.faults import InjectedFault
from lockstep.store.records import RecordStore
from lockstep.store.schema import changes, stream_messages
from lockstep.streaming.consumer import ConsumeOptions, StreamLoader
from lockstep.streaming.sources import (
    KafkaSource,
    kafka_consumer_config,
    open_source,
    parse_source_url,
)
from lockstep.streaming.status import stream_status
from tests.streaming.scenario import scenario

pytestmark = pytest.mark.timeout(300)

IDLE = ConsumeOptions(batch=100, until_idle=True, block_ms=500)
# The killed loader's session: the group re-assigns its partition only once the session of a member
# that died without leaving has expired (45 s by default; 6 s is the least a real broker accepts).
# The mock cluster takes a shorter one than that (and waits for it even after a clean LeaveGroup).
SHORT_SESSION = ({"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000} if os.environ.get("LOCKSTEP_TEST_KAFKA")
                 else {"session.timeout.ms": 1500, "heartbeat.interval.ms": 300})


def test_kafka_urls_name_the_topic_and_default_port():
    where = parse_source_url("kafka://broker.example/records.v1")
    assert (where.host, where.port, where.stream, where.key) == (
        "broker.example", 9092, "records.v1", "kafka://broker.example:9092/records.v1")


def test_offsets_are_committed_only_by_the_loader():
    config = kafka_consumer_config("b:9092", "g", "c1")
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest" and config["group.id"] == "g"


@pytest.fixture
def group() -> str:
    """A consumer group of its own for each test (a group outlives its topic's test)."""
    return f"g-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic(kafka_broker) -> str:
    """A topic of its own for each test, with one partition (a delete must not overtake its upsert)."""
    name = f"lockstep-test-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(name, partitions=1)
    return name


def _produce(broker, topic: str, messages: list[dict | bytes | None]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": str(broker)})
    for message in messages:
        producer.produce(topic, value=message if message is None or isinstance(message, bytes)
                         else json.dumps(message).encode())
    assert producer.flush(60) == 0


def _committed(broker, topic: str, group: str) -> int:
    """The group's committed offset of partition 0 (-1001: none committed yet)."""
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": str(broker), "group.id": group})
    try:
        [where] = reader.committed([TopicPartition(topic, 0)], timeout=30)
    finally:
        reader.close()
    return where.offset


def _loader(url: str, store: RecordStore, group: str, consumer: str = "c1") -> StreamLoader:
    """A loader with a short session: the next member of its group waits for it to expire."""
    source = KafkaSource(parse_source_url(url), group=group, consumer=consumer, dead_letter=None,
                         settings=SHORT_SESSION)
    return StreamLoader(source, store, group=group, consumer=consumer)


def _live(store: RecordStore) -> dict[str, tuple[str, dict | None]]:
    return {r.id: (r.text, r.metadata) for r in store.snapshot().records}


def test_the_loader_applies_a_kafka_topic_once_across_a_crash(kafka_broker, topic, group, lockstep_home,
                                                               monkeypatch):
    story = scenario(300)
    _produce(kafka_broker, topic, story.messages + [{"op": "merge", "id": "x"}])
    url = f"kafka://{kafka_broker}/{topic}"
    store = RecordStore()

    monkeypatch.setenv("LOCKSTEP_FAULTS", "stream.after_commit")
    first = _loader(url, store, group)
    with pytest.raises(InjectedFault):  # committed to the store, offsets not committed
        first.run(IDLE)
    first.source.close()
    applied_before = store.head()
    assert applied_before > 0
    assert _committed(kafka_broker, topic, group) < 0, "no offset may be committed before the batch is acknowledged"

    second = _loader(url, store, group)
    report = second.run(IDLE)
    second.source.close()

    assert report.duplicates == applied_before and report.dead_lettered == 1
    assert store.head() == 300
    assert _live(store) == story.expected
    assert _committed(kafka_broker, topic, group) == 301  # past the last message, the dead one too
    [row] = stream_status(store.engine)
    assert (row["applied"], row["duplicates"], row["dead_lettered"], row["lag"]) == (300, applied_before, 1, 0)


def _dead_letters(broker, topic: str, count: int) -> list:
    from confluent_kafka import Consumer

    reader = Consumer({"bootstrap.servers": str(broker), "group.id": f"read-{uuid.uuid4().hex[:6]}",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([topic])
    found: list = []
    try:
        for _ in range(120):  # a bound against a hang, not a timing assumption
            found += [m for m in reader.consume(count, 0.5) if m.error() is None]
            if len(found) >= count:
                break
    finally:
        reader.close()
    return found


def test_bad_messages_go_to_the_dead_letter_topic_with_the_reason(kafka_broker, topic, group, lockstep_home):
    bad = [
        (b"{not json", "not JSON"),
        (b'{"op": "merge", "id": "a", "text": "x"}', "op must be 'upsert' or 'delete', got 'merge'"),
        (b'{"op": "upsert", "id": "a"}', "text must be a non-empty string"),
        (b'{"op": "delete", "id": "never-there"}', "no live record with id 'never-there'"),
        (b"\xff\xfe", "not UTF-8"),
        (None, "has no"),  # a message without a value (a Kafka tombstone)
    ]
    good = [{"op": "upsert", "id": "ok1", "text": "first"}, {"op": "upsert", "id": "ok2", "text": "second"},
            {"op": "delete", "id": "ok1"}]
    _produce(kafka_broker, topic, [good[0], *(payload for payload, _ in bad), good[1], good[2]])
    url = f"kafka://{kafka_broker}/{topic}"
    store = RecordStore()

    loader = _loader(url, store, group)
    report = loader.run(IDLE)
    loader.source.close()

    assert (report.applied, report.dead_lettered) == (3, len(bad))
    assert _live(store) == {"ok2": ("second", None)} and store.head() == 3
    dead = _dead_letters(kafka_broker, f"{topic}.dead", len(bad))
    assert len(dead) == len(bad)
    by_id = {dict(m.headers())["message_id"].decode(): m for m in dead}
    for offset, (payload, reason) in enumerate(bad, start=1):
        letter = by_id[f"0-{offset}"]
        headers = {k: v.decode() for k, v in letter.headers()}
        assert reason in headers["reason"], headers
        assert (headers["source"], headers["group"], headers["consumer"]) == (parse_source_url(url).key, group, "c1")
        assert letter.value() == payload
    assert _committed(kafka_broker, topic, group) == 3 + len(bad)  # dead letters are acknowledged too


# --- SIGKILL of a loader process, then `lockstep stream consume` --------------------------------

MESSAGES = 1000
BATCH = 50
KILL_AFTER_BATCH = 4

# A loader process that SIGKILLs itself right after its Nth batch committed to the store, before
# that batch's offsets are committed: the worst moment, chosen by batch number, not by the clock.
_KILLED_LOADER = textwrap.dedent("""
    import json, os, signal, sys
    from lockstep.store.records import RecordStore
    from lockstep.streaming import consumer
    from lockstep.streaming.sources import KafkaSource, parse_source_url

    url, group, kill_after, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    batches = 0

    def die_after_the_commit(point, qualifier=None):
        global batches
        if point == "stream.after_commit":
            batches += 1
            if batches == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    consumer.maybe_fail = die_after_the_commit
    source = KafkaSource(parse_source_url(url), group=group, consumer="c1", dead_letter=None, settings=settings)
    consumer.StreamLoader(source, RecordStore(), group=group, consumer="c1").run(
        consumer.ConsumeOptions(batch=int(sys.argv[5]), until_idle=True, block_ms=500))
    sys.exit("the loader was not killed: it ran out of messages first")
""")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "MLFLOW_"))}
    return {**env, "LOCKSTEP_HOME": str(home)}


def test_sigkill_mid_stream_then_a_restart_loses_nothing_and_applies_nothing_twice(kafka_broker, topic, group,
                                                                                 lockstep_home):
    story = scenario(MESSAGES)
    _produce(kafka_broker, topic, story.messages)
    url = f"kafka://{kafka_broker}/{topic}"
    store = RecordStore()  # migrates the database before the loader starts

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_LOADER, url, group, str(KILL_AFTER_BATCH), json.dumps(SHORT_SESSION), str(BATCH)],
        env=_env(lockstep_home), capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    in_store, committed = store.head(), _committed(kafka_broker, topic, group)
    assert 0 < in_store < MESSAGES, "the kill must land mid-stream"
    assert 0 <= committed < in_store, "the killed batch was in the store and not committed on the broker"

    restarted = _loader(url, store, group)  # the same consumer, restarted: from the committed offset
    report = restarted.run(IDLE)
    restarted.source.close()

    assert (report.applied, report.duplicates, report.dead_lettered) == (MESSAGES - in_store, in_store - committed, 0)
    with store.engine.connect() as conn:
        applied = conn.execute(
            select(stream_messages.c.message_id, changes.c.record_id, changes.c.op, changes.c.text)
            .join(changes, changes.c.seq == stream_messages.c.seq)).all()
        change_count = len(conn.execute(select(changes.c.seq)).all())
    per_message: dict[str, list] = {}
    for row in applied:
        per_message.setdefault(row.message_id, []).append(row)
    assert set(per_message) == {f"0-{offset}" for offset in range(MESSAGES)}, "0 lost: every message made its change"
    assert all(len(rows) == 1 for rows in per_message.values()) and change_count == MESSAGES, "0 applied twice"
    for offset, message in enumerate(story.messages):
        [row] = per_message[f"0-{offset}"]
        assert (row.record_id, row.op, row.text) == (message["id"], message["op"], message.get("text"))
    assert _live(store) == story.expected and store.head() == MESSAGES
    assert _committed(kafka_broker, topic, group) == MESSAGES
    [row] = stream_status(store.engine)
    assert (row["applied"], row["duplicates"], row["pending"], row["lag"]) == (MESSAGES, in_store - committed, 0, 0)


def test_lockstep_stream_consume_applies_a_kafka_topic(kafka_broker, topic, group, lockstep_home):
    story = scenario(200)
    _produce(kafka_broker, topic, [*story.messages, b"{not json"])
    url = f"kafka://{kafka_broker}/{topic}"
    store = RecordStore()
    exe = shutil.which("lockstep", path=str(Path(sys.executable).parent)) or "lockstep"

    done = subprocess.run(
        [exe, "stream", "consume", "--source", url, "--group", group, "--consumer", "c1", "--batch", str(BATCH),
         "--block-ms", "200", "--until-idle"], env=_env(lockstep_home), capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "201 messages read: 200 applied, 0 already applied, 1 dead-lettered" in done.stdout, done.stdout
    assert f"dead letters to {topic + '.dead'!r}" in done.stderr
    assert _live(store) == story.expected and store.head() == 200
    assert _committed(kafka_broker, topic, group) == 201
    [row] = stream_status(store.engine)
    assert (row["source"], row["group"], row["applied"], row["lag"]) == (parse_source_url(url).key, group, 200, 0)


def test_an_unreachable_broker_is_an_error_naming_the_stream(monkeypatch):
    from lockstep.core.errors import LockstepError
    from lockstep.streaming import sources
    from tests.redis_harness import free_port

    monkeypatch.setattr(sources, "JOIN_TIMEOUT_S", 3)
    url = f"kafka://127.0.0.1:{free_port()}/records"
    source = open_source(url, group="g", consumer="c1")  # the real client: connecting is lazy
    try:
        with pytest.raises(LockstepError) as failed:
            source.read(10, 200)
    finally:
        source.close()
    assert parse_source_url(url).key in str(failed.value)
