"""A database outage under a running replica: the background loops back off and log one
line when they start failing and one when they recover (not a traceback every 0.2 s),
searches on loaded slots keep being answered, and their log rows are kept, not dropped;
a write that needs the database gets 503 with Retry-After.

The test owns its PostgreSQL server (the session's is shared) and stops and restarts it.
"""

from __future__ import annotations

import logging
import subprocess

import httpx
import pytest

from lockstep.store import routing
from lockstep.store.schema import request_log
from tests import postgres_harness
from tests.serving.conftest import deploy
from tests.serving.harness import auth, serve, wait_for
from tests.serving.test_integrity import rows


def pg_ctl(server: postgres_harness.PostgresServer, *args: str) -> None:
    binary = postgres_harness.find_binary("pg_ctl")
    cmd = [binary, "-D", str(server.root / "data"), *args]
    subprocess.run(postgres_harness._as_server_user(cmd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_server(server: postgres_harness.PostgresServer) -> None:
    pg_ctl(server, "-m", "fast", "-w", "stop")


def start_server(server: postgres_harness.PostgresServer) -> None:
    opts = f"-p {server.port} -k {server.root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    pg_ctl(server, "-o", opts, "-l", str(server.root / "server.log"), "-w", "start")


@pytest.fixture
def own_postgres():
    if not postgres_harness.find_binary("pg_ctl"):
        pytest.skip("PostgreSQL server binaries are not installed (./dev test installs them)")
    server = postgres_harness.start()
    yield server
    postgres_harness.stop(server)


def test_background_loops_back_off_and_log_once_per_state_change(own_postgres, lockstep_home, tmp_path, caplog):
    d = deploy(own_postgres.create_database(), tmp_path)
    routing.set_weights({"1": 100}, engine=d.engine)
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client, caplog.at_level(logging.INFO, "lockstep.serving"):
        rt = s.runtime
        wait_for(lambda: rt.manager.listening, timeout=30, what="the LISTEN connection")
        loops = {**rt.manager.health, "log writer": rt.logs.health}
        watched = [loops[name] for name in ("follower", "tail", "listener", "log writer")]

        stop_server(own_postgres)
        answer = client.post("/search", json={"query": "rocket planet", "k": 3})
        assert answer.status_code == 200  # the loaded slot keeps serving
        write = client.put("/records/during-outage", json={"text": "rocket"}, headers=auth())
        assert write.status_code == 503 and write.headers["Retry-After"] == "5"
        assert "database cannot be reached" in write.json()["detail"] and write.json()["request_id"] in write.json()["detail"]
        wait_for(lambda: all(h.failures >= 3 for h in watched), timeout=120, what="three failed attempts of every loop")
        assert "1" in rt.manager.view.slots  # the replica keeps the generation it had
        start_server(own_postgres)
        wait_for(lambda: not any(h.down for h in watched), timeout=120, what="every loop to recover")
        rt.logs.flush()

        messages = [r.getMessage() for r in caplog.records if r.name == "lockstep.serving"]
        for health in watched:
            failing = [m for m in messages if m.startswith(f"{health.what} failing")]
            recovered = [m for m in messages if m.startswith(f"{health.what} works again")]
            assert len(failing) == 1 and len(recovered) == 1, (health.what, failing, recovered)
            assert health.outages == 1
        assert not [r for r in caplog.records if r.exc_info]  # no tracebacks at all
    # the search answered during the outage was logged after it, not dropped
    assert [r.request_id for r in rows(d.engine, request_log)] == [answer.json()["request_id"]]
