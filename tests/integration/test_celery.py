"""Celery for real: ``lockstep_reembed`` on the CeleryExecutor with two workers.

A local ``redis-server`` (Debian's package) is the broker; Airflow's metadata (and the
Celery result backend) live on the harness's real PostgreSQL server. The processes are
the production ones: api-server (the workers' tasks call its execution API), scheduler,
dag-processor and two ``airflow celery worker`` processes, each reporting its own
hostname. The run's mapped ``embed`` shards must all succeed and, read back from the
metadata database (``task_instance.hostname``), must have run on both workers: that is
what scaling out by adding workers means.

The workers share what every worker must share in production: the Lockstep database,
the MLflow store and the index store path (here one ``LOCKSTEP_HOME`` on one machine).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_harness import running_redis

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.airflow, pytest.mark.timeout(900)]

WORKERS = ("worker-a", "worker-b")
RECORDS = 800
SHARD_SIZE = 100  # 8 mapped shards
HOSTNAME_MODULE = '''"""Written by tests/integration/test_celery.py: the hostname a worker reports."""
import os


def hostname() -> str:
    return os.environ["LOCKSTEP_TEST_WORKER"]
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, no persistence (tests/redis_harness.py)."""
    with running_redis(tmp_path) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def demo_world(tmp_path, monkeypatch):
    """Demo records and one registered model version in a fresh LOCKSTEP_HOME."""
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry
    from lockstep.store.corpus import demo_sample
    from lockstep.store.db import dispose_engines
    from lockstep.store.records import RecordStore
    from tests.conftest import DEMO_CACHE

    home = tmp_path / "home"
    monkeypatch.setenv("LOCKSTEP_HOME", str(home))
    for var in ("LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE", "LOCKSTEP_FAULTS",
                "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
    dispose_engines()
    store = RecordStore()
    records = demo_sample(RECORDS, seed=11)
    store.upsert_many(records)
    embedder = TextEmbedder(dim=16, min_df=2, max_df=0.5, random_state=0).fit([r.text for r in records])
    info = Registry().log_and_register(embedder, params={"dim": 16}, metrics={}, snapshot_seq=store.head())
    yield {"home": home, "store": store, "version": info.version}
    dispose_engines()


def test_reembed_shards_spread_over_two_celery_workers(demo_world, redis_url, postgres_server, tmp_path):
    from lockstep.ops import stack as stacklib

    metadata_url = postgres_server.create_database("airflow")
    config = stacklib.StackConfig(home=demo_world["home"], airflow_port=_free_port(), metadata_url=metadata_url,
                                  with_mlflow_ui=False, with_serving=False, time_schedules=False)
    password = secrets.token_urlsafe(12)
    env = _celery_env(stacklib.airflow_env(config, password), redis_url, metadata_url, tmp_path)
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-3000:]

    stack = stacklib.Stack(config=config, password=password)
    try:
        _spawn(stack, "api-server", [airflow, "api-server", "--port", str(config.airflow_port), "--host", "127.0.0.1"], env)
        _spawn(stack, "scheduler", [airflow, "scheduler"], env)
        _spawn(stack, "dag-processor", [airflow, "dag-processor"], env)
        for name in WORKERS:
            worker_env = {**env, "LOCKSTEP_TEST_WORKER": name,
                          "AIRFLOW__CORE__HOSTNAME_CALLABLE": "lockstep_test_hostname.hostname"}
            _spawn(stack, name, [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "1",
                                 "--skip-serve-logs", "--pid", str(tmp_path / f"{name}.pid")], worker_env)
        stacklib._wait_http(stack, f"{config.airflow_url}/api/v2/monitor/health", "Airflow api-server", 300)
        for child in stack.children:
            if child.name in WORKERS:
                _wait_for_log(stack, child, f"{child.name}@", "ready.", timeout=300)

        client = stack.client()
        client.wait_for_dags(["lockstep_reembed"], timeout=300)
        client.unpause("lockstep_reembed")
        run_id = client.trigger("lockstep_reembed", {"model_version": demo_world["version"], "shard_size": SHARD_SIZE,
                                                      "promote_if_first": True})
        state = client.wait("lockstep_reembed", run_id, timeout=600, stack=stack)
        states = client.task_states("lockstep_reembed", run_id)
        assert state == "success", f"run {state}: {states}\n{_logs(stack)}"
    finally:
        stack.stop()

    shards = _embed_task_instances(metadata_url, run_id)
    assert len(shards) == RECORDS // SHARD_SIZE, shards
    assert {state for _, _, state in shards} == {"success"}
    hosts = {host for _, host, _ in shards}
    assert hosts == set(WORKERS), f"mapped shards ran on {sorted(hosts)}: {shards}"

    from lockstep.index.manifest import read_manifest
    from lockstep.store import routing

    slot = routing.read_table().slot(demo_world["version"])
    assert slot is not None and slot.state == "live"  # first model: published and made champion
    assert read_manifest(slot.index_location).record_count == demo_world["store"].count() == RECORDS


def _celery_env(env: dict[str, str], redis_url: str, metadata_url: str, tmp_path: Path) -> dict[str, str]:
    """The stack's Airflow environment, switched to the CeleryExecutor."""
    (tmp_path / "lockstep_test_hostname.py").write_text(HOSTNAME_MODULE)
    env = dict(env)
    env.update(
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CELERY__BROKER_URL=redis_url,
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+{metadata_url}",
        AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER="1",
        # INFO at least: the workers' "ready." line is what the test waits for (tests/dags/conftest.py
        # lowers the level to WARNING for its own session when both run in one pytest).
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        # Only the DAG under test runs (time schedules are off too).
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        PYTHONPATH=os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p),
    )
    return env


def _spawn(stack, name: str, cmd: list[str], env: dict[str, str]) -> None:
    """Start one Airflow process as a child of the stack (stopped, with its group, by stack.stop)."""
    from lockstep.ops.stack import Child

    logs = stack.config.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    process = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    stack.children.append(Child(name, process, log))


def _wait_for_log(stack, child, *needles: str, timeout: float) -> None:
    """Wait until one line of the child's log holds every needle (a Celery worker's "ready.")."""
    deadline = time.monotonic() + timeout
    while True:
        stack.check_alive()
        text = child.log.read_text(errors="replace") if child.log.exists() else ""
        if any(all(n in line for n in needles) for line in text.splitlines()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{child.name} not ready after {timeout:.0f} s:\n{text[-3000:]}")
        time.sleep(1)


def _embed_task_instances(metadata_url: str, run_id: str) -> list[tuple[int, str, str]]:
    """(map_index, hostname, state) of every embed shard of the run, from Airflow's metadata DB."""
    from sqlalchemy import create_engine, text

    engine = create_engine(metadata_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT map_index, hostname, state FROM task_instance "
                     "WHERE dag_id = 'lockstep_reembed' AND task_id = 'embed' AND run_id = :run ORDER BY map_index"),
                {"run": run_id},
            ).all()
    finally:
        engine.dispose()
    return [(int(r.map_index), r.hostname, r.state) for r in rows]


def _logs(stack) -> str:
    from lockstep.ops.stack import _tail

    return "\n".join(f"--- {c.name} ---\n{_tail(c.log, 40)}" for c in stack.children)
