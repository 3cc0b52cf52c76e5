"""Celery for real, on workers that share nothing: ``lockstep_reembed`` on the CeleryExecutor.

The shared services are the ones production shares and nothing else: PostgreSQL (Airflow's
metadata, the Celery result backend, the Lockstep database, MLflow's backend store), Redis
(the Celery broker) and an S3-protocol server (moto: the index store, and MLflow's
artifacts behind ``mlflow server --serve-artifacts``). Each worker has its own
``LOCKSTEP_HOME``, its own index cache and its own ``AIRFLOW_HOME``: no folder is common to
two of them. The processes are the production ones: api-server (the workers' tasks call
its execution API), scheduler, dag-processor, an MLflow server and two ``airflow celery
worker`` processes, each reporting its own hostname.

Worker a is made to stop dead after its first checkpoint of a shard (``LOCKSTEP_FAULTS=
reembed.checkpoint!``), at a point the test knows, and is then SIGKILLed with its whole
process group, as a machine that dies. The run must still succeed: the scheduler finds the
task's heartbeat gone, the retry runs on worker b and resumes from the checkpoint worker a
stored, and the index holds every record. A serving replica on a third "host" (its own
home and cache) then answers searches from the version it pulled from the store.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.redis_harness import running_redis
from tests.s3_harness import new_bucket_name

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.airflow, pytest.mark.timeout(900)]

WORKERS = ("worker-a", "worker-b")
RECORDS = 800
SHARD_SIZE = 100  # 8 mapped shards
EMBED_BATCH = 20  # a shard is 5 model calls, each one a checkpoint (LOCKSTEP_CHECKPOINT_SECONDS=0)
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
def shared(tmp_path, monkeypatch, postgres_server, s3_server) -> Iterator[dict]:
    """The shared services' environment (databases, S3, an MLflow server) and a registered model."""
    from lockstep.index import mirror
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry
    from lockstep.store.corpus import demo_sample
    from lockstep.store.db import dispose_engines
    from lockstep.store.records import RecordStore
    from tests.conftest import DEMO_CACHE

    bucket = new_bucket_name()
    mlflow_port = _free_port()
    env = {
        **s3_server.env(bucket),
        "LOCKSTEP_DATABASE_URL": postgres_server.create_database("lockstep"),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "LOCKSTEP_CHECKPOINT_SECONDS": "0",
        "LOCKSTEP_EMBED_BATCH": str(EMBED_BATCH),
    }
    for var in ("LOCKSTEP_FAULTS", "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "LOCKSTEP_INDEX_STORE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in {**env, "LOCKSTEP_HOME": str(tmp_path / "host-test" / "home"),
                       "LOCKSTEP_INDEX_CACHE": str(tmp_path / "host-test" / "cache")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
    dispose_engines()
    mirror.ensure_bucket()
    mlflow_db = postgres_server.create_database("mlflow")
    log = tmp_path / "mlflow.log"
    mlflow = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--backend-store-uri", mlflow_db, "--artifacts-destination", f"s3://{bucket}/mlflow", "--serve-artifacts",
         "--workers", "1"],
        env={**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job runner: faster start
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow, log, 180)
        store = RecordStore()
        records = demo_sample(RECORDS, seed=11)
        store.upsert_many(records)
        embedder = TextEmbedder(dim=16, min_df=2, max_df=0.5, random_state=0).fit([r.text for r in records])
        info = Registry().log_and_register(embedder, params={"dim": 16}, metrics={}, snapshot_seq=store.head())
        yield {"env": env, "store": store, "version": info.version, "bucket": bucket}
    finally:
        os.killpg(mlflow.pid, signal.SIGTERM)
        mlflow.wait(timeout=60)
        dispose_engines()


def test_reembed_on_two_workers_that_share_no_folder_survives_a_dead_worker(shared, redis_url, postgres_server, tmp_path):
    from lockstep.ops import stack as stacklib

    metadata_url = postgres_server.create_database("airflow")
    control = tmp_path / "host-control"
    config = stacklib.StackConfig(home=control / "home", airflow_port=_free_port(), metadata_url=metadata_url,
                                  with_mlflow_ui=False, with_serving=False, time_schedules=False)
    password = secrets.token_urlsafe(12)
    env = _celery_env({**stacklib.airflow_env(config, password), **shared["env"]}, redis_url, metadata_url, tmp_path)
    env["LOCKSTEP_INDEX_CACHE"] = str(control / "cache")
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-3000:]

    homes = {name: tmp_path / f"host-{name}" for name in WORKERS}
    stack = stacklib.Stack(config=config, password=password)
    try:
        _spawn(stack, "api-server", [airflow, "api-server", "--port", str(config.airflow_port), "--host", "127.0.0.1"], env)
        _spawn(stack, "scheduler", [airflow, "scheduler"], env)
        _spawn(stack, "dag-processor", [airflow, "dag-processor"], env)
        for name in WORKERS:
            _spawn(stack, name, [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "1",
                                 "--skip-serve-logs", "--pid", str(homes[name] / "worker.pid")], _worker_env(env, name, homes[name]))
        stacklib._wait_http(stack, f"{config.airflow_url}/api/v2/monitor/health", "Airflow api-server", 300)
        for child in stack.children:
            if child.name in WORKERS:
                _wait_for_log(stack, child, f"{child.name}@", "ready.", timeout=300)

        client = stack.client()
        client.wait_for_dags(["lockstep_reembed"], timeout=300)
        client.unpause("lockstep_reembed")
        run_id = client.trigger("lockstep_reembed", {"model_version": shared["version"], "shard_size": SHARD_SIZE,
                                                      "promote_if_first": True})
        hanging = homes["worker-a"] / "home" / "faults" / "reembed.checkpoint.hanging"
        _wait_for_file(stack, hanging, timeout=600)
        worker_a = next(c for c in stack.children if c.name == "worker-a")
        os.killpg(worker_a.process.pid, signal.SIGKILL)  # the machine dies: worker, task supervisor, task
        worker_a.process.wait(timeout=60)
        stack.children.remove(worker_a)
        state = client.wait("lockstep_reembed", run_id, timeout=600, stack=stack)
        states = client.task_states("lockstep_reembed", run_id)
        assert state == "success", f"run {state}: {states}\n{_logs(stack)}"
    finally:
        stack.stop()

    tries = _embed_tries(metadata_url, run_id)
    final = {task: (host, n) for task, host, state, n in tries if state == "success"}
    assert {host for _, host, _, _ in tries} == set(WORKERS), f"embed tries ran on: {tries}"
    killed = {task for task, host, state, _ in tries if host == "worker-a" and state != "success"}
    assert len(killed) == 1 and all(final[t][0] == "worker-b" and final[t][1] >= 2 for t in killed), tries

    from lockstep.index.load_progress import load_status
    from lockstep.index.storage import load_index
    from lockstep.store import routing

    slot = routing.read_table().slot(shared["version"])
    assert slot is not None and slot.state == "live" and slot.index_location.startswith("s3://")
    status = load_status(slot.index_location)  # the load's record, read from the store
    assert status["state"] == "done" and status["done"] == RECORDS and len(status["shards"]) == len(final), tries
    loaded = load_index(slot.index_location, expected_fingerprint=slot.fingerprint)
    assert loaded.location.is_relative_to(tmp_path / "host-test")  # pulled into this host's cache
    assert set(loaded.index.ids) == set(shared["store"].snapshot().ids) and len(loaded.index) == RECORDS
    # The retry resumed from the dead worker's stored checkpoint, not from zero (the only shard that did).
    resumed = [s for s in status["shards"] if s.get("resumed_from", 0) > 0]
    assert len(resumed) == 1 and resumed[0]["resumed_from"] >= EMBED_BATCH, status["shards"]

    _serve_from_a_third_host(shared, tmp_path / "host-replica")


def _celery_env(env: dict[str, str], redis_url: str, metadata_url: str, tmp_path: Path) -> dict[str, str]:
    """The stack's Airflow environment, switched to the CeleryExecutor."""
    (tmp_path / "lockstep_test_hostname.py").write_text(HOSTNAME_MODULE)
    env = dict(env)
    env.update(
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CELERY__BROKER_URL=redis_url,
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+{metadata_url}",
        AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER="1",
        # A task whose worker died is found by its missing heartbeat: within seconds, not the default 5 minutes.
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
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


def _embed_tries(metadata_url: str, run_id: str) -> list[tuple[tuple[str, int], str, str, int]]:
    """((task, map_index), hostname, state, try) of every try of every shard task: the final tries
    (``task_instance``) and the earlier ones (``task_instance_history``)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(metadata_url)
    query = ("SELECT task_id, map_index, hostname, state, try_number FROM {table} WHERE dag_id = 'lockstep_reembed' "
             "AND task_id IN ('embed', 'embed_first_slice') AND run_id = :run")
    try:
        with engine.connect() as conn:
            rows = [r for table in ("task_instance", "task_instance_history")
                    for r in conn.execute(text(query.format(table=table)), {"run": run_id}).all()]
    finally:
        engine.dispose()
    return sorted(((r.task_id, int(r.map_index)), r.hostname or "", r.state or "", int(r.try_number)) for r in rows)


def _worker_env(env: dict[str, str], name: str, host: Path) -> dict[str, str]:
    """One worker's environment: its own home, index cache and Airflow home (nothing shared on disk)."""
    worker = {**env, "LOCKSTEP_TEST_WORKER": name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": "lockstep_test_hostname.hostname",
              "LOCKSTEP_HOME": str(host / "home"), "LOCKSTEP_INDEX_CACHE": str(host / "cache"),
              "AIRFLOW_HOME": str(host / "airflow")}
    if name == "worker-a":
        worker["LOCKSTEP_FAULTS"] = "reembed.checkpoint!"  # stops dead after its first checkpoint
    (host / "home").mkdir(parents=True, exist_ok=True)
    return worker


def _serve_from_a_third_host(shared: dict, host: Path) -> None:
    """``lockstep serve`` with its own home and cache answers from the version it pulled from the store."""
    port = _free_port()
    env = {**os.environ, **shared["env"], "LOCKSTEP_HOME": str(host / "home"), "LOCKSTEP_INDEX_CACHE": str(host / "cache")}
    log = host / "serve.log"
    host.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("lockstep")), "serve", "--port", str(port)],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, 300)
        answer = httpx.post(f"http://127.0.0.1:{port}/search", json={"query": "space shuttle launch", "k": 5}, timeout=60)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == str(shared["version"]) and len(body["results"]) == 5
        assert any((host / "cache").rglob("index-*.faiss"))  # its own copy, from the store
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until ``url`` answers 200 (the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the process ended ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(1)


def _wait_for_file(stack, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        stack.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared:\n{_logs(stack)}")
        time.sleep(0.5)


def _logs(stack) -> str:
    from lockstep.ops.stack import _tail

    return "\n".join(f"--- {c.name} ---\n{_tail(c.log, 40)}" for c in stack.children)
