"""``LOCKSTEP_SERVING_WORKERS``: several processes share the port, each a replica of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest

from lockstep.core.errors import ConfigurationError
from lockstep.serving.runner import _workers_from_env
from lockstep.store import routing
from tests.serving.harness import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_processes_serve_one_port_as_two_replicas(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    port = free_port()
    env = {**os.environ, "LOCKSTEP_DATABASE_URL": d.url, "LOCKSTEP_SERVING_WORKERS": "2"}
    code = f"from lockstep.serving.runner import run; run('127.0.0.1', {port}, log_level='warning', app='lockstep.systems:create_app')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        url = f"http://127.0.0.1:{port}"

        def answer(path: str) -> httpx.Response | None:
            try:
                return httpx.get(url + path, timeout=5)  # a new connection each time
            except httpx.TransportError:
                return None

        wait_for(lambda: (r := answer("/readyz")) is not None and r.status_code == 200, timeout=60, what="a ready worker")
        replicas: set[str] = set()
        wait_for(lambda: replicas.add(answer("/routing").json()["replica"]) or len(replicas) == 2,
                 timeout=60, what="both workers to answer")
        assert len({name.rsplit(":", 1)[1] for name in replicas}) == 2  # two processes
        searched = httpx.post(url + "/search", json={"query": "rocket planet"}, timeout=5)
        assert searched.status_code == 200 and searched.json()["model_version"] == "1"
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_bad_worker_count_is_refused_with_the_variable_named(monkeypatch):
    monkeypatch.setenv("LOCKSTEP_SERVING_WORKERS", "two")
    with pytest.raises(ConfigurationError, match="LOCKSTEP_SERVING_WORKERS='two'"):
        _workers_from_env()
    monkeypatch.setenv("LOCKSTEP_SERVING_WORKERS", "3")
    assert _workers_from_env() == 3
