"""Stream passwords never travel in process arguments: ``lockstep stream consume`` takes the
Redis password from ``LOCKSTEP_STREAM_PASSWORD`` or ``--password-file`` and refuses one inside
``--source`` (visible to every user in ``ps``); errors never echo it.

A real redis-server with ``requirepass`` (this module's own server, tests/streaming/conftest.py)
and the real command as a process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lockstep.core.errors import ConfigurationError
from lockstep.store.records import RecordStore
from lockstep.streaming.sources import (
    SourceURLError,
    command_line_source_url,
    open_source,
    parse_source_url,
)
from lockstep.streaming.status import stream_status
from tests.streaming.conftest import send
from tests.streaming.scenario import scenario

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PASSWORD = "str3am-s3cret-Pw"


@pytest.fixture(scope="module")
def secured_port(redis_port) -> int:
    """The module's redis-server, now requiring ``PASSWORD``."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_port)
    client.config_set("requirepass", PASSWORD)
    client.close()
    return redis_port


@pytest.fixture
def secured_client(secured_port):
    import redis

    client = redis.Redis(host="127.0.0.1", port=secured_port, password=PASSWORD)
    yield client
    client.close()


@pytest.fixture
def stream(secured_port, request) -> tuple[str, str]:
    """(a --source URL without a password, its stream name): a stream of its own per test."""
    name = "cred_" + request.node.name.split("[")[0][-60:]
    return f"redis://127.0.0.1:{secured_port}/{name}", name


def _consume(home: Path, url: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lockstep", path=str(Path(sys.executable).parent)) or "lockstep"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "MLFLOW_"))}
    return subprocess.run(
        [exe, "stream", "consume", "--source", url, "--group", "g", "--consumer", "c1", "--block-ms", "100",
         "--until-idle", *extra],
        env={**base, "LOCKSTEP_HOME": str(home), **env}, capture_output=True, text=True, timeout=300,
    )


def _applied() -> int | None:
    rows = stream_status(RecordStore().engine)
    return rows[0]["applied"] if rows else None


def test_the_password_from_the_environment_logs_in_and_appears_in_no_output(lockstep_home, secured_client, stream):
    url, name = stream
    send(secured_client, name, *scenario(12).messages)

    done = _consume(lockstep_home, url, LOCKSTEP_STREAM_PASSWORD=PASSWORD)

    assert done.returncode == 0, done.stderr[-3000:]
    assert _applied() == 12
    assert PASSWORD not in done.stdout + done.stderr


def test_the_password_from_a_file_logs_in(lockstep_home, secured_client, stream, tmp_path):
    url, name = stream
    send(secured_client, name, *scenario(7).messages)
    secret = tmp_path / "stream-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)

    done = _consume(lockstep_home, url, "--password-file", str(secret), LOCKSTEP_STREAM_PASSWORD="wrong-one")

    assert done.returncode == 0, done.stderr[-3000:]  # the file wins over the environment
    assert _applied() == 7
    assert PASSWORD not in done.stdout + done.stderr


def test_a_password_inside_source_is_refused_as_a_usage_error_without_echoing_it(lockstep_home, stream):
    url, name = stream
    inline = url.replace("redis://", f"redis://loader:{PASSWORD}@")

    done = _consume(lockstep_home, inline)

    assert done.returncode == 2, done.stderr
    assert "the password is in the URL" in done.stderr and "LOCKSTEP_STREAM_PASSWORD" in done.stderr
    assert "--password-file" in done.stderr and "loader:***@" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_without_the_password_redis_refuses_and_the_error_says_where_to_give_it(lockstep_home, stream):
    url, _ = stream

    done = _consume(lockstep_home, url)

    assert done.returncode == 1, done.stderr
    assert "refused the login" in done.stderr and "LOCKSTEP_STREAM_PASSWORD" in done.stderr


def test_an_unreadable_or_empty_password_file_is_named(lockstep_home, stream, tmp_path):
    url, _ = stream
    missing = _consume(lockstep_home, url, "--password-file", str(tmp_path / "nope"))
    (tmp_path / "empty").write_text("\n")
    empty = _consume(lockstep_home, url, "--password-file", str(tmp_path / "empty"))

    assert missing.returncode == 1 and "--password-file" in missing.stderr and "cannot be read" in missing.stderr
    assert empty.returncode == 1 and "the first line is empty" in empty.stderr


# --- the library: what the command builds on --------------------------------------------------


def test_open_source_takes_the_password_as_an_argument(secured_client, stream):
    url, name = stream
    send(secured_client, name, {"op": "upsert", "id": "r1", "text": "one"})
    source = open_source(url, group="g", consumer="lib", password=PASSWORD)
    try:
        assert [m.id for m in source.read(10, 100)] == [secured_client.xrange(name)[0][0].decode()]
    finally:
        source.close()


def test_a_password_for_kafka_is_refused_rather_than_ignored():
    with pytest.raises(ConfigurationError, match="Kafka sources take no password"):
        open_source("kafka://127.0.0.1:1/records", group="g", consumer="c", password=PASSWORD)


def test_url_errors_mask_the_password():
    with pytest.raises(SourceURLError) as refused:
        parse_source_url(f"redis://u:{PASSWORD}@h/records?database=1")
    assert PASSWORD not in str(refused.value) and "u:***@h" in str(refused.value)
    with pytest.raises(SourceURLError) as inline:
        command_line_source_url(f"redis://:{PASSWORD}@h/records")
    assert PASSWORD not in str(inline.value)
    assert command_line_source_url("redis://loader@h/records").username == "loader"  # a user alone is fine
