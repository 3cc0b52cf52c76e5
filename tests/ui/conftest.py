"""A real Airflow api-server with the Lockstep plugin, on loopback, for the page's tests.

The server runs from a throwaway AIRFLOW_HOME with the SimpleAuthManager and one known
user, loads the plugins folder of this repository, and reads a Lockstep database seeded
with one promoted and one rolled-back rollout. The migrated Airflow database is cached
per Airflow version (``airflow db migrate`` takes ~20 s on two cores), so only the first
run pays for it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
AIRFLOW = Path(sys.executable).with_name("airflow")
USER, PASSWORD = "admin", "lockstep-admin-pw"
MLFLOW_UI = "http://mlflow.example.test:5000"
STARTUP_TIMEOUT = 90
# Shared with the demo-corpus cache of tests/conftest.py.
CACHE = Path(os.environ.get("LOCKSTEP_TEST_CACHE", Path.home() / ".cache" / "lockstep-tests"))


@dataclass(frozen=True)
class AirflowServer:
    url: str
    username: str
    password: str
    home: Path
    lockstep_home: Path
    log: Path
    seeded: dict

    def token(self) -> str:
        """A JWT from the auth manager's token endpoint, as an API client gets one."""
        reply = httpx.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password}, timeout=30)
        assert reply.status_code == 201, reply.text
        return reply.json()["access_token"]


@pytest.fixture(scope="module")
def airflow_server(tmp_path_factory) -> Iterator[AirflowServer]:
    root = tmp_path_factory.mktemp("airflow-ui")
    lockstep_home = root / "lockstep-home"
    seeded = _seed_lockstep(lockstep_home)
    env = _airflow_env(root, lockstep_home)
    _migrate(env, root)

    port = _free_port()
    log = root / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(AIRFLOW), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--apps", "core"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its workers too
        )
    server = AirflowServer(f"http://127.0.0.1:{port}", USER, PASSWORD, root / "airflow-home", lockstep_home, log, seeded)
    try:
        _wait_healthy(server, proc)
        yield server
    finally:
        _stop(proc)


def _seed_lockstep(home: Path) -> dict:
    """Write the scenario into a fresh Lockstep database through the real routing code."""
    from lockstep.store.db import dispose_engines
    from tests.ui.scenario import seed

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKSTEP_HOME", str(home))
        mp.delenv("LOCKSTEP_DATABASE_URL", raising=False)
        dispose_engines()
        try:
            return seed()
        finally:
            dispose_engines()


def _airflow_env(root: Path, lockstep_home: Path) -> dict[str, str]:
    home = root / "airflow-home"
    (root / "dags").mkdir()
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LOCKSTEP_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(root / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(PLUGINS),
        AIRFLOW__CORE__LAZY_LOAD_PLUGINS="False",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(64),
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(root / "logs"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        LOCKSTEP_HOME=str(lockstep_home),
        LOCKSTEP_MLFLOW_UI_URL=MLFLOW_UI,
    )
    return env


def _migrate(env: dict[str, str], root: Path) -> None:
    """``airflow db migrate``, or a copy of the database it made for this Airflow version."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"airflow-{version('apache-airflow')}-migrated.db"
    if cached.exists():
        shutil.copyfile(cached, db)
        return
    result = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    shutil.copyfile(db, tmp)
    tmp.replace(cached)  # atomic: a parallel run sees a whole file or none


def _wait_healthy(server: AirflowServer, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{_tail(server.log)}")
        try:
            if httpx.get(f"{server.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"airflow api-server did not answer within {STARTUP_TIMEOUT} s:\n{_tail(server.log)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"
