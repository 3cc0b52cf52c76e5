"""The embedded stack: Airflow, the MLflow UI and the serving app as child processes.

``lockstep up`` and the real-scheduler integration test start the same processes the
production compose file runs (api-server, scheduler, dag-processor, triggerer with
LocalExecutor; ``mlflow ui``; ``lockstep serve``), all configured from one
``LOCKSTEP_HOME``. A supervisor owns them: it waits until each answers, restarts
nothing behind your back, and stops every child (process group) on exit or Ctrl-C.
``AirflowClient`` drives DAGs through Airflow's public REST API, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.core.errors import LockstepError

REPO = Path(__file__).resolve().parents[2]
ADMIN_USER = "admin"
# Rollout tasks run in this pool (their DAG says so); the stack creates it before any run.
ROLLOUT_POOL = ("lockstep_rollout", 8, "Lockstep rollouts: each step's analysis and traffic change")


class StackError(LockstepError):
    """A component of the embedded stack did not start or a DAG run did not finish."""


@dataclass(frozen=True)
class StackConfig:
    home: Path
    airflow_port: int = 8080
    mlflow_port: int = 5000
    serving_port: int = 8000
    metadata_url: str | None = None  # Airflow metadata DB; SQLite under home when None
    dags_folder: Path = REPO / "dags"
    plugins_folder: Path = REPO / "plugins"
    with_mlflow_ui: bool = True
    with_serving: bool = True
    api_token: str | None = None
    time_schedules: bool = True  # False: no weekly retrain / hourly drift run (LOCKSTEP_SCHEDULES=off)

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.serving_port}"


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class Stack:
    """The running children; ``stop()`` ends them all."""

    config: StackConfig
    children: list[Child] = field(default_factory=list)
    password: str = ""

    def stop(self, timeout: float = 20.0) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                _signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process.pid, signal.SIGKILL)
        self.children.clear()

    def check_alive(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise StackError(f"{child.name} exited with code {code}; see its log: {child.log}\n{_tail(child.log)}")

    def client(self) -> AirflowClient:
        return AirflowClient(self.config.airflow_url, ADMIN_USER, self.password)


def airflow_env(config: StackConfig, password: str) -> dict[str, str]:
    """The environment every Airflow component (and every task) runs with."""
    home = config.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    jwt_file = home / "jwt_secret"
    if not jwt_file.exists():
        jwt_file.write_text(secrets.token_urlsafe(32))
        jwt_file.chmod(0o600)
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({ADMIN_USER: password}))
    passwords.chmod(0o600)
    env = dict(os.environ)
    env.update(
        LOCKSTEP_HOME=str(config.home),
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(config.dags_folder),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(config.plugins_folder),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        # Created paused: ``lockstep up`` / ``demo`` unpause them once the corpus is loaded.
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{ADMIN_USER}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__API_AUTH__JWT_SECRET=jwt_file.read_text(),
        AIRFLOW__API__BASE_URL=config.airflow_url,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{config.airflow_url}/execution/",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="5",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        PYTHONUNBUFFERED="1",
        LOCKSTEP_SCHEDULES="on" if config.time_schedules else "off",
    )
    if config.metadata_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = config.metadata_url
        if config.metadata_url.startswith("postgresql"):
            # Airflow 3.3 also opens an async engine; without this it asks for asyncpg.
            rest = config.metadata_url.split("://", 1)[1]
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = f"postgresql+psycopg_async://{rest}"
    if config.api_token:
        env["LOCKSTEP_API_TOKEN"] = config.api_token
    # Where this stack's UIs and replica answer, for links in alerts and for verify (yours win).
    env.setdefault("LOCKSTEP_AIRFLOW_UI_URL", config.airflow_url)
    env.setdefault("LOCKSTEP_MLFLOW_UI_URL", f"http://127.0.0.1:{config.mlflow_port}")
    env.setdefault("LOCKSTEP_SERVING_URLS", config.serving_url)
    return env


def start(config: StackConfig, say: Callable[[str], None] = print, *, password: str | None = None) -> Stack:
    """Migrate the metadata DB and start every component; returns once all answer."""
    for port, what in ((config.airflow_port, "Airflow"), (config.mlflow_port, "MLflow UI"), (config.serving_port, "serving")):
        if _port_busy(port):
            raise StackError(f"port {port} for the {what} is already in use; stop what uses it or pick another port")
    password = password or secrets.token_urlsafe(12)
    env = airflow_env(config, password)
    logs = config.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    airflow = str(bin_dir / "airflow")
    say("migrating the Airflow metadata database ...")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")

    stack = Stack(config=config, password=password)
    commands: list[tuple[str, list[str]]] = [
        ("api-server", [airflow, "api-server", "--port", str(config.airflow_port), "--host", "127.0.0.1"]),
        ("scheduler", [airflow, "scheduler"]),
        ("dag-processor", [airflow, "dag-processor"]),
        ("triggerer", [airflow, "triggerer"]),
    ]
    if config.with_mlflow_ui:
        tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{config.home / 'mlflow.db'}"
        commands.append(("mlflow-ui", [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", tracking,
                                       "--host", "127.0.0.1", "--port", str(config.mlflow_port)]))
    if config.with_serving:
        commands.append(("serving", [str(bin_dir / "lockstep"), "serve", "--host", "127.0.0.1",
                                     "--port", str(config.serving_port)]))
    try:
        for name, cmd in commands:
            log = logs / f"{name}.log"
            handle = log.open("ab")
            process = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            stack.children.append(Child(name, process, log))
            say(f"started {name} (pid {process.pid}, log {log})")
        _wait_http(stack, f"{config.airflow_url}/api/v2/monitor/health", "Airflow api-server", 180)
        if config.with_serving:
            _wait_http(stack, f"{config.serving_url}/healthz", "serving app", 120)
        if config.with_mlflow_ui:
            _wait_http(stack, f"http://127.0.0.1:{config.mlflow_port}/health", "MLflow UI", 120)
        stack.client().ensure_pool(*ROLLOUT_POOL)
    except BaseException:
        stack.stop()
        raise
    return stack


class AirflowClient:
    """The few calls of Airflow's REST API (v2) that Lockstep needs."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=30)
        self._username, self._password = username, password
        self._token: str | None = None

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            resp = self._http.post("/auth/token", json={"username": self._username, "password": self._password})
            if resp.status_code >= 400:
                raise StackError(f"Airflow login failed ({resp.status_code}): {resp.text[:300]}")
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kw) -> Any:
        resp = self._http.request(method, path, headers=self._headers(), **kw)
        if resp.status_code >= 400:
            raise StackError(f"Airflow API {method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed these DAGs (they exist in the API)."""
        deadline = time.monotonic() + timeout
        missing = set(dag_ids)
        while missing:
            for dag_id in list(missing):
                resp = self._http.get(f"/api/v2/dags/{dag_id}", headers=self._headers())
                if resp.status_code == 200:
                    missing.discard(dag_id)
            if missing and time.monotonic() > deadline:
                raise StackError(f"DAGs not parsed after {timeout:.0f} s: {sorted(missing)}; check the dag-processor log")
            if missing:
                time.sleep(2)

    def ensure_pool(self, name: str, slots: int, description: str) -> None:
        """Create the pool, or set its slots and description if it exists (idempotent)."""
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        resp = self._http.get(f"/api/v2/pools/{name}", headers=self._headers())
        if resp.status_code == 404:
            self.request("POST", "/api/v2/pools", json=body)
        elif resp.status_code == 200:
            self.request("PATCH", f"/api/v2/pools/{name}", json=body)
        else:
            raise StackError(f"Airflow API GET /api/v2/pools/{name} -> {resp.status_code}: {resp.text[:300]}")

    def pool(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/pools/{name}")

    def failed_runs(self) -> list[dict[str, Any]]:
        """Every failed DAG run of every DAG (what a newcomer would see as red in the UI)."""
        body = self.request("GET", "/api/v2/dags/~/dagRuns", params={"state": "failed", "limit": 100})
        return body["dag_runs"]

    def dag_ids(self) -> list[str]:
        """Every DAG the dag-processor has parsed."""
        return [d["dag_id"] for d in self.request("GET", "/api/v2/dags", params={"limit": 100})["dags"]]

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        body = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return body["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "-start_date"})["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500})
        out = {}
        for ti in body["task_instances"]:
            key = ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"
            out[key] = ti["state"]
        return out

    def wait(self, dag_id: str, run_id: str, timeout: float = 900, poll: float = 1.0, stack: Stack | None = None) -> str:
        """Wait for a run to end; returns its final state ('success' or 'failed')."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            if stack is not None:
                stack.check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")
            time.sleep(poll)

    def wait_for_new_run(self, dag_id: str, after: set[str], timeout: float = 300, poll: float = 1.0) -> str:
        """Wait for a run that is not in ``after`` (an asset-triggered run); returns its id."""
        deadline = time.monotonic() + timeout
        while True:
            for run in self.runs(dag_id):
                if run["dag_run_id"] not in after:
                    return run["dag_run_id"]
            if time.monotonic() > deadline:
                raise StackError(f"no new {dag_id} run appeared within {timeout:.0f} s (asset trigger?)")
            time.sleep(poll)


def _wait_http(stack: Stack, url: str, what: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        stack.check_alive()
        try:
            if httpx.get(url, timeout=3).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not answer at {url} within {timeout:.0f} s")
        time.sleep(1)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the supervisor's cleanup runs (``kill``, CI timeouts)."""

    def handler(_signum, _frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, handler)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
