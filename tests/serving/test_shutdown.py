"""Graceful shutdown of a real replica process: SIGTERM under load loses no answered request.

The replica (``lockstep.serving.runner.run``, as ``lockstep serve`` runs it) gets a burst
of searches from several threads and SIGTERM in the middle of it. It must stop taking
connections, answer what is in flight, write its buffered request log and exit with
status 0; every search that got a 200 must then be in the request log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
from sqlalchemy import select

from lockstep.store import routing
from lockstep.store.schema import request_log
from tests.serving.harness import wait_for

THREADS = 4
PER_THREAD = 60  # a bounded burst
SIGTERM_AFTER = 40  # answered searches before the signal
GRACE = 20  # LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S; compose waits 30
GUARD = 90.0  # failure guard only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Burst:
    """Searches from several threads, each on its own keep-alive connection, until refused."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: list[str] = []  # request ids of the 200 answers
        self.others: list[str] = []  # what the other attempts got
        self.enough = threading.Event()
        self._lock = threading.Lock()

    def run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=GUARD) as client:
            for i in range(PER_THREAD):
                try:
                    response = client.post("/search", json={"query": f"rocket planet {index} {i}", "k": 3})
                except httpx.TransportError as exc:  # the replica has stopped taking connections
                    self._note_other(type(exc).__name__)
                    return
                if response.status_code == 200:
                    self._note_answer(response.json()["request_id"])
                else:
                    self._note_other(str(response.status_code))

    def _note_answer(self, request_id: str) -> None:
        with self._lock:
            self.answered.append(request_id)
            if len(self.answered) >= SIGTERM_AFTER:
                self.enough.set()

    def _note_other(self, what: str) -> None:
        with self._lock:
            self.others.append(what)


def test_sigterm_under_load_answers_in_flight_requests_writes_their_logs_and_exits_0(deployment, tmp_path):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    port = free_port()
    env = {**os.environ, "LOCKSTEP_DATABASE_URL": d.url, "LOCKSTEP_HOME": str(tmp_path / "replica-home"),
           "LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S": str(GRACE), "LOCKSTEP_SERVING_WORKERS": "1"}
    code = f"from lockstep.serving.runner import run; run('127.0.0.1', {port}, log_level='warning', app='lockstep.systems:create_app')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=GUARD, what="the replica to be ready")
        burst = Burst(url)
        threads = [threading.Thread(target=burst.run, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        assert burst.enough.wait(GUARD), "the burst did not get going"
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(GUARD)  # a guard: the graceful timeout ends it well before
        for t in threads:
            t.join(GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(GUARD)
    assert returncode == 0
    assert len(burst.answered) >= SIGTERM_AFTER
    assert len(burst.answered) + len(burst.others) <= THREADS * PER_THREAD
    with d.engine.connect() as conn:
        logged = set(conn.execute(select(request_log.c.request_id)).scalars())
    missing = [rid for rid in burst.answered if rid not in logged]
    assert not missing, f"{len(missing)} of {len(burst.answered)} answered searches are not in the request log"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
