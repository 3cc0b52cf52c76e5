"""A real redis-server per test module (tests/redis_harness.py) and a fresh stream per test."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.redis_harness import running_redis
from tests.streaming.kafka_mock import KafkaBroker, running_mock_cluster


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    with running_redis(tmp_path_factory.mktemp("redis")) as port:
        yield port


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """librdkafka's mock cluster for the session (tests/streaming/kafka_mock.py), or the real broker
    that ``LOCKSTEP_TEST_KAFKA=HOST:PORT`` names."""
    import os

    real = os.environ.get("LOCKSTEP_TEST_KAFKA")
    if real:
        yield KafkaBroker(real)
        return
    with running_mock_cluster() as broker:
        yield broker


@pytest.fixture
def redis_client(redis_port):
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_port)
    yield client
    client.close()


@pytest.fixture
def stream_url(redis_port, request) -> str:
    """A stream of its own for each test (the server is shared by the module)."""
    name = re.sub(r"[^a-zA-Z0-9_]+", "_", request.node.name)[:80]
    return f"redis://127.0.0.1:{redis_port}/{name}"


def send(client, stream: str, *messages: dict | str | bytes | None) -> list[str]:
    """XADD each message as the ``data`` field (a dict as JSON; None: an entry without ``data``)."""
    ids = []
    pipe = client.pipeline(transaction=False)
    for message in messages:
        if message is None:
            fields = {"other": "x"}
        else:
            fields = {"data": json.dumps(message) if isinstance(message, dict) else message}
        pipe.xadd(stream, fields)
    for entry_id in pipe.execute():
        ids.append(entry_id.decode())
    return ids
