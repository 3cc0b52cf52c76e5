"""The embedded stack: Airflow, the MLflow UI and the serving app as child processes.

``lockstep up`` and the real-scheduler integration test start the same processes the
production compose file runs (api-server, scheduler, dag-processor, triggerer with
LocalExecutor; ``mlflow ui``; ``lockstep serve``), all configured from one
``LOCKSTEP_HOME``. A supervisor owns them: it waits until each answers, restarts
nothing behind your back, and stops every child (process group) on exit or Ctrl-C.
``AirflowClient`` drives DAGs through Airflow's public REST API, as a user would, with the
official ``apache-airflow-client``.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.core.config import environment, masked_repr
from lockstep.core.errors import LockstepError

REPO = Path(__file__).resolve().parents[3]  # include/lockstep/ops/stack.py -> the repository
ADMIN_USER = "admin"
# Rollout tasks run in this pool (their DAG says so); the stack creates it before any run.
ROLLOUT_POOL = ("lockstep_rollout", 8, "Lockstep rollouts: each step's analysis and traffic change")
# The MLflow UI is one user's browser tab: one web worker, not MLflow's default 4 (each a
# spawned interpreter importing MLflow), and no job runner (7 Huey consumers for MLflow's
# GenAI jobs, which Lockstep never submits). Together they cost ~80 CPU-seconds while the
# stack starts on 2 cores, the MLflow UI answered last, ~60 s after the api-server.
MLFLOW_UI_OPTIONS = ("--workers", "1")
MLFLOW_UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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
    extra_env: Mapping[str, str] = field(default_factory=dict)  # more variables for the child processes only

    def __repr__(self) -> str:
        """Every field with the API token and the metadata URL's password masked (reprs reach logs)."""
        return masked_repr(self)

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
        jwt_file.write_text(secrets.token_urlsafe(64))  # HS512 wants a key of 64+ bytes
        jwt_file.chmod(0o600)
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({ADMIN_USER: password}))
    passwords.chmod(0o600)
    env = dict(environment())
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
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        PYTHONUNBUFFERED="1",
        LOCKSTEP_SCHEDULES="on" if config.time_schedules else "off",
    )
    env.update(config.extra_env)
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
    from lockstep.core.config import Settings
    from lockstep.store.db import migrate_database

    # Lockstep's own tables (Alembic), as deploy/airflow-init.sh does in the compose stack.
    say(f"Lockstep database: {migrate_database(Settings.from_env(env).database_url).describe()}")

    stack = Stack(config=config, password=password)
    commands = component_commands(config, env, bin_dir)
    try:
        for name, cmd, child_env in commands:
            log = logs / f"{name}.log"
            handle = log.open("ab")
            process = subprocess.Popen(cmd, env=child_env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
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


def component_commands(config: StackConfig, env: Mapping[str, str], bin_dir: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """Each child process of the stack: its name, its command line and its environment."""
    airflow = str(bin_dir / "airflow")
    commands: list[tuple[str, list[str], dict[str, str]]] = [
        ("api-server", [airflow, "api-server", "--port", str(config.airflow_port), "--host", "127.0.0.1"], dict(env)),
        ("scheduler", [airflow, "scheduler"], dict(env)),
        ("dag-processor", [airflow, "dag-processor"], dict(env)),
        ("triggerer", [airflow, "triggerer"], dict(env)),
    ]
    if config.with_mlflow_ui:
        tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{config.home / 'mlflow.db'}"
        commands.append(("mlflow-ui", [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", tracking,
                                       "--host", "127.0.0.1", "--port", str(config.mlflow_port), *MLFLOW_UI_OPTIONS],
                         {**env, **MLFLOW_UI_ENV}))
    if config.with_serving:
        commands.append(("serving", [str(bin_dir / "lockstep"), "serve", "--host", "127.0.0.1",
                                     "--port", str(config.serving_port)], dict(env)))
    return commands


class AirflowClient:
    """The few calls of Airflow's REST API (v2) that Lockstep needs, through the official
    ``apache-airflow-client``.

    Authentication is the auth manager's JWT flow, as the client's documentation shows it:
    ``POST /auth/token`` with the user and password gives a bearer token, which the client
    sends with every call. A token that expires mid-demo is fetched again once (on a 401).
    Every failure is a ``StackError`` naming the call and Airflow's answer.
    """

    def __init__(self, base_url: str, username: str, password: str) -> None:
        from airflow_client import client as airflow

        self.base_url = base_url.rstrip("/")
        self._username, self._password = username, password
        self._api = airflow.ApiClient(airflow.Configuration(host=self.base_url))
        self._dags = airflow.DAGApi(self._api)
        self._dag_runs = airflow.DagRunApi(self._api)
        self._task_instances = airflow.TaskInstanceApi(self._api)
        self._pools = airflow.PoolApi(self._api)
        self._token: str | None = None

    # --- auth and errors ---------------------------------------------------------------------

    def _login(self) -> None:
        """Fetch a JWT from the auth manager's token endpoint and hand it to the client."""
        import httpx

        resp = httpx.post(f"{self.base_url}/auth/token", json={"username": self._username, "password": self._password},
                          timeout=30)
        if resp.status_code >= 400:
            raise StackError(f"Airflow login failed ({resp.status_code}): {resp.text[:300]}")
        self._token = resp.json()["access_token"]
        self._api.configuration.access_token = self._token

    def _call(self, what: str, call: Callable[[], Any], *, missing_ok: bool = False) -> Any:
        """Run one API call (logging in first, and again once if the token expired).

        With ``missing_ok`` a 404 answers None instead of raising: "not there yet" is an
        answer for the calls that wait or create. Request bodies are built inside ``call``,
        so a value the API would refuse (the client's models check them) is a StackError too.
        """
        from airflow_client.client.exceptions import (
            ApiException,
            NotFoundException,
            UnauthorizedException,
        )
        from pydantic import ValidationError

        if self._token is None:
            self._login()
        try:
            try:
                return call()
            except UnauthorizedException:
                self._login()
                return call()
        except NotFoundException:
            if missing_ok:
                return None
            raise StackError(f"Airflow API {what}: not found") from None
        except ApiException as exc:
            raise StackError(f"Airflow API {what} -> {exc.status}: {(exc.body or exc.reason or '')[:500]}") from None
        except ValidationError as exc:
            raise StackError(f"Airflow API {what}: invalid value: {exc}") from None

    # --- DAGs --------------------------------------------------------------------------------

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed these DAGs (they exist in the API)."""
        deadline = time.monotonic() + timeout
        missing = set(dag_ids)
        while missing:
            for dag_id in list(missing):
                if self._call(f"get DAG {dag_id}", lambda d=dag_id: self._dags.get_dag(d), missing_ok=True) is not None:
                    missing.discard(dag_id)
            if missing and time.monotonic() > deadline:
                raise StackError(f"DAGs not parsed after {timeout:.0f} s: {sorted(missing)}; check the dag-processor log")
            if missing:
                time.sleep(2)

    def dag_ids(self) -> list[str]:
        """Every DAG the dag-processor has parsed."""
        return [d.dag_id for d in self._call("list DAGs", lambda: self._dags.get_dags(limit=100)).dags]

    def unpause(self, dag_id: str) -> None:
        from airflow_client.client import DAGPatchBody

        self._call(f"unpause {dag_id}", lambda: self._dags.patch_dag(dag_id, DAGPatchBody(is_paused=False)))

    # --- pools -------------------------------------------------------------------------------

    def ensure_pool(self, name: str, slots: int, description: str) -> None:
        """Create the pool, or set its slots and description if it exists (idempotent)."""
        from airflow_client.client import PoolBody, PoolPatchBody

        fields = {"slots": slots, "description": description, "include_deferred": False}
        if self._call(f"get pool {name}", lambda: self._pools.get_pool(name), missing_ok=True) is None:
            self._call(f"create pool {name}", lambda: self._pools.post_pool(PoolBody(name=name, **fields)))
        else:
            self._call(f"update pool {name}", lambda: self._pools.patch_pool(name, PoolPatchBody(pool=name, **fields)))

    def pool(self, name: str) -> dict[str, Any]:
        return self._call(f"get pool {name}", lambda: self._pools.get_pool(name)).to_dict()

    # --- runs --------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Start a manual run now (no logical date, as the UI's trigger button does); its id."""
        from airflow_client.client import TriggerDAGRunPostBody

        def call() -> Any:
            return self._dag_runs.trigger_dag_run(dag_id, TriggerDAGRunPostBody(logical_date=None, conf=conf or {}))

        return self._call(f"trigger {dag_id}", call).dag_run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        run = self._call(f"get run {dag_id} {run_id}", lambda: self._dag_runs.get_dag_run(dag_id, run_id))
        return run.state.value

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs, newest first, as the API's JSON objects."""
        body = self._call(f"list runs of {dag_id}", lambda: self._dag_runs.get_dag_runs(dag_id, order_by=["-start_date"]))
        return [run.to_dict() for run in body.dag_runs]

    def failed_runs(self) -> list[dict[str, Any]]:
        """Every failed DAG run of every DAG (what a newcomer would see as red in the UI)."""
        body = self._call("list failed runs", lambda: self._dag_runs.get_dag_runs("~", state=["failed"], limit=100))
        return [run.to_dict() for run in body.dag_runs]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """Task id (``task[i]`` for a mapped task) -> state; None for a task not yet scheduled."""
        body = self._call(f"list tasks of {dag_id} {run_id}",
                          lambda: self._task_instances.get_task_instances(dag_id, run_id, limit=500))
        out: dict[str, str | None] = {}
        for ti in body.task_instances:
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            out[key] = ti.state.value if ti.state is not None else None
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
