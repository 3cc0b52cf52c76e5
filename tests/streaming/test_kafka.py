"""The Kafka source (confluent-kafka): what can be checked without a broker here, and the loader
against a real broker where one runs (``LOCKSTEP_TEST_KAFKA=HOST:PORT``).

No Kafka broker is installed by the test set-up (Debian has no package for it and nothing
may be downloaded beside the package registries), so the broker tests skip with that
reason unless a broker is named.
"""

from __future__ import annotations

import os
import uuid

import pytest

from lockstep.core.faults import InjectedFault
from lockstep.store.records import RecordStore
from lockstep.streaming.consumer import ConsumeOptions, StreamLoader
from lockstep.streaming.sources import (
    KafkaSource,
    kafka_consumer_config,
    open_source,
    parse_source_url,
)
from tests.streaming.scenario import scenario

BROKER = os.environ.get("LOCKSTEP_TEST_KAFKA")
needs_broker = pytest.mark.skipif(
    not BROKER, reason="no Kafka broker here: set LOCKSTEP_TEST_KAFKA=HOST:PORT to run the Kafka loader tests")


def test_kafka_urls_name_the_topic_and_default_port():
    where = parse_source_url("kafka://broker.example/records.v1")
    assert (where.host, where.port, where.stream, where.key) == (
        "broker.example", 9092, "records.v1", "kafka://broker.example:9092/records.v1")


def test_offsets_are_committed_only_by_the_loader():
    config = kafka_consumer_config("b:9092", "g", "c1")
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest" and config["group.id"] == "g"


def _produce(topic: str, messages: list[dict]) -> None:
    import json

    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": BROKER})
    for message in messages:
        producer.produce(topic, value=json.dumps(message).encode())
    assert producer.flush(60) == 0


@needs_broker
def test_the_loader_applies_a_kafka_topic_once_across_a_crash(lockstep_home, monkeypatch):
    topic = f"lockstep-test-{uuid.uuid4().hex[:8]}"
    story = scenario(300)
    _produce(topic, story.messages + [{"op": "merge", "id": "x"}])
    url = f"kafka://{BROKER}/{topic}"
    store = RecordStore()
    options = ConsumeOptions(batch=100, until_idle=True, block_ms=2000)

    def loader() -> StreamLoader:
        source = open_source(url, group="g", consumer="c1")
        assert isinstance(source, KafkaSource)
        return StreamLoader(source, store, group="g", consumer="c1")

    monkeypatch.setenv("LOCKSTEP_FAULTS", "stream.after_commit")
    first = loader()
    with pytest.raises(InjectedFault):  # committed to the store, offsets not committed
        first.run(options)
    first.source.close()
    applied_before = store.head()
    assert applied_before > 0

    second = loader()
    report = second.run(options)
    second.source.close()

    assert report.duplicates == applied_before and report.dead_lettered == 1
    assert store.head() == 300
    assert {r.id: (r.text, r.metadata) for r in store.snapshot().records} == story.expected


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
