"""``lockstep stream consume`` as a process: SIGKILL mid-stream and a restart lose nothing and
apply nothing twice; SIGTERM stops it cleanly; a bad --source is a usage error.

The test waits on conditions it reads from the database (the loader's progress row), never
on the clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from lockstep.store.records import RecordStore
from lockstep.store.schema import changes, stream_messages
from lockstep.streaming.sources import parse_source_url
from lockstep.streaming.status import stream_status
from tests.redis_harness import free_port
from tests.streaming.conftest import send
from tests.streaming.scenario import scenario

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

MESSAGES = 4000


def _command(url: str, *extra: str, consumer: str = "c1") -> list[str]:
    exe = shutil.which("lockstep", path=str(Path(sys.executable).parent)) or "lockstep"
    return [exe, "stream", "consume", "--source", url, "--group", "g", "--consumer", consumer, *extra]


def _env(home: Path, database_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "MLFLOW_"))}
    return {**env, "LOCKSTEP_HOME": str(home), **({"LOCKSTEP_DATABASE_URL": database_url} if database_url else {})}


def _wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while (value := condition()) is None or value is False:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the consumer exited ({process.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def _applied(store: RecordStore) -> int | None:
    rows = stream_status(store.engine)
    return rows[0]["applied"] if rows else None


def test_sigkill_mid_stream_then_restart_loses_nothing_and_applies_nothing_twice(database_url, lockstep_home,
                                                                                 redis_client, stream_url):
    story = scenario(MESSAGES)
    stream = parse_source_url(stream_url).stream
    message_ids = send(redis_client, stream, *story.messages)
    store = RecordStore(database_url)  # migrates the database before the consumer starts
    command = _command(stream_url, "--batch", "20", "--block-ms", "100", "--until-idle")
    env = _env(lockstep_home, database_url)

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (_applied(store) or 0) >= 200, "200 messages were applied", first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    at_kill = _applied(store)
    assert first.returncode == -signal.SIGKILL and at_kill < MESSAGES, "the kill must land mid-stream"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{MESSAGES - at_kill:,} applied" in second.stdout, second.stdout  # exactly what the kill left undone

    with store.engine.connect() as conn:
        applied = conn.execute(
            select(stream_messages.c.message_id, changes.c.record_id, changes.c.op, changes.c.text)
            .join(changes, changes.c.seq == stream_messages.c.seq)
        ).all()
        change_count = len(conn.execute(select(changes.c.seq)).all())
    per_message = {}
    for row in applied:
        per_message.setdefault(row.message_id, []).append(row)
    assert set(per_message) == set(message_ids), "0 lost: every message made its change"
    assert all(len(rows) == 1 for rows in per_message.values()) and change_count == MESSAGES, "0 applied twice"
    for message_id, message in zip(message_ids, story.messages, strict=True):
        [row] = per_message[message_id]
        assert (row.record_id, row.op, row.text) == (message["id"], message["op"], message.get("text"))
    assert {r.id: (r.text, r.metadata) for r in store.snapshot().records} == story.expected
    assert store.head() == MESSAGES
    status = stream_status(store.engine)[0]
    assert status["applied"] == MESSAGES and status["pending"] == 0 and status["lag"] == 0
    assert redis_client.xpending(stream, "g")["pending"] == 0


def test_two_consumers_of_one_group_share_the_stream_and_apply_each_message_once(lockstep_home, redis_client,
                                                                                 stream_url):
    story = scenario(2000, deletes=False)  # two consumers keep no order between them: a delete could come first
    stream = parse_source_url(stream_url).stream
    message_ids = send(redis_client, stream, *story.messages)
    store = RecordStore()
    processes = [
        subprocess.Popen(_command(stream_url, "--batch", "25", "--block-ms", "200", "--until-idle", consumer=name),
                         env=_env(lockstep_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("left", "right")
    ]
    outputs = [p.communicate(timeout=540) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]

    with store.engine.connect() as conn:
        applied = conn.execute(select(stream_messages.c.message_id)).scalars().all()
    assert sorted(applied) == sorted(message_ids) and store.head() == len(message_ids)  # each once, none lost
    assert redis_client.xpending(stream, "g")["pending"] == 0
    shares = [int(out.split(" applied")[0].split(": ")[-1].replace(",", "")) for out, _ in outputs]
    assert sum(shares) == len(message_ids), shares


def test_sigterm_finishes_the_batch_and_stops_cleanly(lockstep_home, redis_client, stream_url):
    stream = parse_source_url(stream_url).stream
    send(redis_client, stream, *scenario(30).messages)
    store = RecordStore()
    process = subprocess.Popen(_command(stream_url, "--block-ms", "100"), env=_env(lockstep_home),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _applied(store) == 30, "the 30 messages were applied", process)

    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)

    assert process.returncode == 0, err[-3000:]
    assert "30 applied" in out and "stopped on request" in out
    assert "SIGTERM: finishing the current batch, then stopping" in err
    exe = _command(stream_url)[0]
    shown = subprocess.run([exe, "stream", "status", "--json"], env=_env(lockstep_home), capture_output=True,
                           text=True, timeout=120)
    [row] = json.loads(shown.stdout)
    assert (row["source"], row["group"], row["consumer"]) == (parse_source_url(stream_url).key, "g", "c1")
    assert (row["applied"], row["last_seq"], row["pending"], row["lag"]) == (30, 30, 0, 0)


@pytest.mark.parametrize(("url", "problem"), [
    ("http://127.0.0.1/records", "the scheme must be redis:// or kafka://, got 'http'"),
    ("redis://127.0.0.1:6379/", "no stream name"),
    ("redis:///records", "no host"),
    ("redis://127.0.0.1:99999/records", "the port is not a number"),
    ("kafka://127.0.0.1/bad:topic", "is not a Kafka topic name"),
])
def test_a_bad_source_url_is_a_usage_error_naming_the_problem(lockstep_home, url, problem):
    done = subprocess.run(_command(url), env=_env(lockstep_home), capture_output=True, text=True, timeout=120)

    assert done.returncode == 2, done.stderr
    assert "--source" in done.stderr and problem in done.stderr


def test_an_unreachable_redis_is_a_runtime_error_naming_it(lockstep_home):
    url = f"redis://127.0.0.1:{free_port()}/records"

    done = subprocess.run(_command(url, "--until-idle"), env=_env(lockstep_home), capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 1
    assert f"error: cannot reach Redis for {parse_source_url(url).key}" in done.stderr


def test_losing_redis_mid_run_stops_with_an_error_naming_it(lockstep_home, tmp_path):
    import redis

    from tests.redis_harness import running_redis

    store = RecordStore()
    with running_redis(tmp_path) as port:
        url = f"redis://127.0.0.1:{port}/records"
        client = redis.Redis(host="127.0.0.1", port=port)
        send(client, "records", *scenario(20).messages)
        process = subprocess.Popen(_command(url, "--block-ms", "100"), env=_env(lockstep_home),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _applied(store) == 20, "the 20 messages were applied", process)
        client.close()
    out, err = process.communicate(timeout=120)  # the server is gone

    assert process.returncode == 1, err[-3000:]
    assert f"error: could not read from {parse_source_url(url).key}" in err
    assert "delivered again after a restart" in err
