"""Scale benchmark: Lockstep at 100k to 1M records against the raw model + FAISS floor.

For each N (``--sizes``, default 100k,250k,500k,1M) it generates N records reproducibly
from the demo corpus (seeded random windows of 30 to 60 words of the demo posts, each
keeping its post's category), then measures in a fresh Lockstep home:

- load:  ``lockstep corpus load --path`` (a subprocess: wall time and peak RSS);
- train: ``lockstep train`` (subprocess; ``--train sample`` instead registers a model
  fitted in-process on a 100k sample, for quick runs of the index path alone);
- library: ``lockstep index build`` (subprocess: snapshot to ready, peak RSS of the
  process and of its process tree, which includes the embedding workers);
- raw: the same model's ``transform`` over all texts + ``faiss.IndexFlatIP.add`` in
  one process (the floor), and the ratio raw time / Lockstep time (1.0 = as fast as raw);
- DAG: ``lockstep_reembed`` through ``dag.test()`` (``--dag``), with the time per task;
  ``--dag-executor local`` runs it instead on a real Airflow stack (``lockstep.ops.stack``:
  api-server, scheduler, dag-processor, triggerer with the LocalExecutor, so mapped shards
  run in parallel), triggered through the REST API, and reads each task instance's times
  from the metadata DB: trigger to success, first task start to last task end, per task,
  the shards that overlapped, the time no task ran (the scheduler between tasks);
- writes: ``PUT /records`` latency on a serving replica (127.0.0.1) when idle and
  while ``lockstep index build`` re-embeds every record (``--writes``);
- the index size on disk.

It writes the figures as JSON (``--results``), a PNG of time and memory against N
(``--plot``, default docs/bench_scale.png) and prints a projection to 10M and 100M.
``--profile`` runs the library build at the largest N under py-spy and prints where
the time goes. Heavy: run it under ``flock /tmp/lockstep-heavy.lock``.

Run: .venv/bin/python benchmarks/bench_scale.py [--sizes 100k,1M] [--dag] [--writes] [--profile]
     [--dag-executor local [--dag-parallelism 2] [--dag-conf '{"early_verdict_share": 0.01}'] [--dag-airflow-env JSON] [--dag-profile]]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_SIZES = "100k,250k,500k,1M"
TOKEN = "bench-scale-token"
MB = 1024 * 1024


# --- measuring a subprocess ---------------------------------------------------------------------


@dataclass
class Measured:
    """One subprocess: wall time, its own peak RSS and the peak RSS of its whole process tree."""

    wall_s: float
    peak_rss_mb: float  # the largest single process in the tree (kernel's ru_maxrss via wait4)
    tree_peak_mb: float  # the largest sum of RSS over the tree, sampled every 0.1 s
    returncode: int
    stdout: str = ""
    stderr: str = field(default="", repr=False)


def run_measured(cmd: list[str], env: dict[str, str], timeout: float = 7200) -> Measured:
    """Run ``cmd`` to completion, sampling its tree's memory; raise with its stderr on failure."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
        peak = [0]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, done, peak), daemon=True)
        sampler.start()
        timer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child (max over its reaped descendants)
        timer.cancel()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = Measured(wall, usage.ru_maxrss / 1024, peak[0] / MB, proc.returncode,
                          out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}\n{result.stdout[-2000:]}")
    return result


def _sample_tree(pid: int, done: threading.Event, peak: list[int]) -> None:
    """Keep the largest sum of RSS over ``pid`` and its descendants in ``peak[0]``."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not done.is_set():
        total = 0
        try:
            for p in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        except psutil.Error:
            return
        peak[0] = max(peak[0], total)
        done.wait(0.1)


# --- the generated corpus ---------------------------------------------------------------------


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def generate_corpus(n: int, path: Path, seed: int = 0) -> Path:
    """N records of 30 to 60 consecutive words from random demo posts (seeded), as parquet."""
    if path.exists():
        return path
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lockstep.store.corpus import load_demo_corpus

    posts = [(r.text.split(), r.metadata["category"]) for r in load_demo_corpus()]
    posts = [(words, cat) for words, cat in posts if len(words) >= 30]
    # A post is drawn in proportion to its number of windows, so every window is about
    # equally likely and few texts repeat (short posts drawn uniformly would repeat, and
    # training's data validation refuses more than 5 % duplicate texts).
    weights = np.array([len(words) - 29 for words, _ in posts], dtype=np.float64)
    rng = np.random.default_rng(seed)
    which = rng.choice(len(posts), n, p=weights / weights.sum())
    lengths = rng.integers(30, 61, n)
    offsets = rng.random(n)
    ids, texts, cats = [], [], []
    for i in range(n):
        words, cat = posts[which[i]]
        length = min(int(lengths[i]), len(words))
        start = int(offsets[i] * (len(words) - length + 1))
        ids.append(f"s{i:08d}")
        texts.append(" ".join(words[start : start + length]))
        cats.append(cat)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts, "category": cats}), path)
    return path


# --- one size -----------------------------------------------------------------------------------


def lockstep_env(home: Path, airflow_home: Path) -> dict[str, str]:
    passed = ("LOCKSTEP_REEMBED_WORKERS", "LOCKSTEP_CACHE_DIR")  # settings a run may choose; the rest is the bench's
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOCKSTEP_", "MLFLOW_TRACKING")) or k in passed}
    env.update(
        LOCKSTEP_HOME=str(home),
        LOCKSTEP_CACHE_DIR=os.environ.get("LOCKSTEP_CACHE_DIR", str(_demo_cache())),
        LOCKSTEP_API_TOKEN=TOKEN,
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        PYTHONPATH=os.pathsep.join([str(ROOT / "dags"), str(ROOT), env.get("PYTHONPATH", "")]),
    )
    return env


def _demo_cache() -> Path:
    tests_cache = Path.home() / ".cache" / "lockstep-tests"
    return tests_cache if (tests_cache / "20newsgroups").exists() else Path.home() / ".cache" / "lockstep"


def bench_size(n: int, args: argparse.Namespace, work: Path, airflow_home: Path) -> dict[str, Any]:
    corpus = generate_corpus(n, work / "corpus" / f"corpus-{n}-seed{args.seed}-v2.parquet", args.seed)
    home = work / f"home-{n}"
    shutil.rmtree(home, ignore_errors=True)
    env = lockstep_env(home, airflow_home)
    cli = str(BIN / "lockstep")
    me = [sys.executable, str(Path(__file__).resolve())]
    out: dict[str, Any] = {"n": n}
    say = lambda msg: print(f"[{n:,}] {msg}", flush=True)  # noqa: E731

    load = run_measured([cli, "corpus", "load", "--path", str(corpus)], env)
    out["load"] = _fig(load)
    say(f"load {load.wall_s:.1f} s, peak RSS {load.peak_rss_mb:,.0f} MB")

    if args.train == "cli":
        train = run_measured([cli, "train", "--dim", str(args.dim)], env)
    else:
        train = run_measured([*me, "--worker", "fit-sample", "--dim", str(args.dim)], env)
    out["train"] = {**_fig(train), "mode": args.train}
    say(f"train ({args.train}) {train.wall_s:.1f} s, peak RSS {train.peak_rss_mb:,.0f} MB")
    run_measured([*me, "--worker", "register-copies"], env)  # v2 for the writes run, v3 for the DAG

    # flat, like the raw baseline (the default at this size is HNSW: its graph build is
    # extra work the raw floor does not do; docs/benchmarks.md measures it on its own)
    build_cmd = [cli, "index", "build", "--model-version", "1", "--index-type", args.index_type]
    if args.profile and n == max(args.sizes):
        build_cmd = [str(BIN / "py-spy"), "record", "--subprocesses", "--rate", "20", "--format", "raw",
                     "-o", str(work / f"profile-{n}.txt"), "--", *build_cmd]
    build = run_measured(build_cmd, env)
    outcome = _last_json(build.stdout)
    laps = outcome.get("seconds", {})
    out["library"] = {**_fig(build), "shards": outcome.get("shards"), "workers": outcome.get("workers"),
                      "shard_size": outcome.get("shard_size"), "profiled": build_cmd[0].endswith("py-spy"),
                      "steps_s": laps, "ready_s": sum(v for k, v in laps.items() if k != "prepare") or build.wall_s}
    out["index_bytes"] = sum(f.stat().st_size for f in Path(outcome["index_location"]).rglob("*") if f.is_file())
    say(f"library build {build.wall_s:.1f} s ({outcome.get('shards')} shards, {outcome.get('workers')} workers), "
        f"peak RSS {build.peak_rss_mb:,.0f} MB (tree {build.tree_peak_mb:,.0f} MB), index {out['index_bytes'] / MB:,.0f} MB")

    raw = run_measured([*me, "--worker", "raw", "--corpus", str(corpus)], env)
    figures = _last_json(raw.stdout)
    out["raw"] = {**_fig(raw), **figures}
    out["library"]["vs_raw"] = figures["total_s"] / out["library"]["ready_s"]
    out["library"]["vs_raw_wall"] = figures["total_s"] / build.wall_s
    say(f"raw transform {figures['embed_s']:.1f} s + faiss add {figures['add_s']:.2f} s = {figures['total_s']:.1f} s; "
        f"library snapshot-to-ready {out['library']['ready_s']:.1f} s {laps}; throughput vs raw "
        f"{out['library']['vs_raw']:.2f}x (whole command {out['library']['vs_raw_wall']:.2f}x)")

    if args.writes:
        out["writes"] = bench_writes(env, cli, n)
        w = out["writes"]
        say(f"PUT /records p99 idle {w['idle_p99_ms']:.1f} ms, during re-embed {w['load_p99_ms']:.1f} ms "
            f"({w['ratio_p99']:.2f}x; {w['load_requests']} requests during {w['load_s']:.0f} s)")
    if args.dag and args.dag_executor == "test":
        dag = run_measured([*me, "--worker", "dag", "--version", "3"], env)
        figures = _last_json(dag.stdout)
        out["dag"] = {**_fig(dag), **figures, "executor": "dag.test", "vs_raw": out["raw"]["total_s"] / figures["run_s"]}
        say(f"DAG {figures['run_s']:.1f} s ({figures['tasks']} tasks; in tasks {figures['in_tasks_s']:.1f} s), "
            f"peak RSS {dag.peak_rss_mb:,.0f} MB; DAG/raw throughput {out['dag']['vs_raw']:.2f}x")
    elif args.dag:
        out["dag"] = bench_dag_local(args, env, work, n, out["raw"]["total_s"], say)
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return out


def bench_dag_local(args: argparse.Namespace, env: dict[str, str], work: Path, n: int, raw_s: float,
                    say) -> dict[str, Any]:
    """``lockstep_reembed`` of v3 on a real Airflow stack with the LocalExecutor (its own process)."""
    me = [sys.executable, str(Path(__file__).resolve())]
    cmd = [*me, "--worker", "dag-local", "--version", "3", "--dag-conf", args.dag_conf]
    if args.dag_parallelism:
        cmd += ["--dag-parallelism", str(args.dag_parallelism)]
    if args.dag_airflow_env != "{}":
        cmd += ["--dag-airflow-env", args.dag_airflow_env]
    if args.dag_profile:
        cmd += ["--dag-profile-dir", str(work)]
    dag = run_measured(cmd, env)
    figures = _last_json(dag.stdout)
    out = {**_fig(dag), **figures, "executor": "LocalExecutor", "run_s": figures["trigger_to_success_s"],
           "vs_raw": raw_s / figures["trigger_to_success_s"], "vs_raw_tasks": raw_s / figures["timeline"]["span_s"]}
    t = figures["timeline"]
    say(f"DAG (LocalExecutor, parallelism {figures['parallelism']}) trigger to success {out['run_s']:.1f} s, "
        f"first task start to last end {t['span_s']:.1f} s (no task running {t['idle_s']:.1f} s), "
        f"{t['task_instances']} task instances, at most {t['max_shard_concurrency']} shards at once; "
        f"DAG/raw {out['vs_raw']:.2f}x (tasks span {out['vs_raw_tasks']:.2f}x); stack start {figures['stack_start_s']:.1f} s; "
        f"process tree peak {dag.tree_peak_mb:,.0f} MB")
    for task_id, f in t["per_task"].items():
        say(f"  {task_id:<20} x{f['count']:<3} starts at {f['starts_at_s']:6.1f} s, span {f['span_s']:6.1f} s, "
            f"sum {f['sum_s']:6.1f} s, longest {f['max_s']:5.1f} s, queue wait {f['queue_wait_mean_s']} s")
    return out


def _fig(m: Measured) -> dict[str, float]:
    return {"wall_s": round(m.wall_s, 2), "peak_rss_mb": round(m.peak_rss_mb), "tree_peak_mb": round(m.tree_peak_mb)}


def _last_json(text: str) -> dict[str, Any]:
    """The last JSON object a command prints on a line of its own (``lockstep index build``'s outcome)."""
    decoder = json.JSONDecoder()
    at = len(text)
    while (at := text.rfind("{", 0, at)) >= 0:
        if at == 0 or text[at - 1] == "\n":
            try:
                return decoder.raw_decode(text, at)[0]
            except json.JSONDecodeError:
                pass
    return {}


# --- PUT /records while re-embedding ------------------------------------------------------------


def bench_writes(env: dict[str, str], cli: str, n: int, idle_requests: int = 300) -> dict[str, Any]:
    """PUT latency on a replica when idle, then while ``lockstep index build`` re-embeds v2."""
    import httpx
    import numpy as np

    port = _free_port()
    log = open(env["LOCKSTEP_HOME"] + f"-serve-{port}.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen([cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=log, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, server)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            idle = [_put(client, f"w-idle-{i}") for i in range(idle_requests)]
            builder = subprocess.Popen([cli, "index", "build", "--model-version", "2", "--no-promote"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            started, during = time.perf_counter(), []
            while builder.poll() is None:
                during.append(_put(client, f"w-load-{len(during)}"))
            load_s = time.perf_counter() - started
        if builder.returncode != 0:
            raise SystemExit(f"index build of v2 under writes failed ({builder.returncode})")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    idle_ms, load_ms = np.array(idle) * 1000, np.array(during) * 1000
    return {
        "idle_requests": len(idle), "idle_p50_ms": float(np.percentile(idle_ms, 50)),
        "idle_p99_ms": float(np.percentile(idle_ms, 99)), "load_requests": len(during), "load_s": load_s,
        "load_p50_ms": float(np.percentile(load_ms, 50)), "load_p99_ms": float(np.percentile(load_ms, 99)),
        "ratio_p99": float(np.percentile(load_ms, 99) / np.percentile(idle_ms, 99)),
    }


def _put(client, rid: str) -> float:
    time.sleep(0.02)  # about 40 writes a second: a steady trickle, not a load test
    started = time.perf_counter()
    response = client.put(f"/records/{rid}", json={"text": f"bench write {rid} about hockey and orbits"})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def _wait_ready(base: str, server: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the serving replica exited ({server.returncode}) before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the serving replica at {base} was not ready within {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- workers (run in their own process, so memory is measured per step) --------------------------


def worker(args: argparse.Namespace) -> None:
    if args.worker == "fit-sample":
        _worker_fit_sample(args.dim)
    elif args.worker == "register-copies":
        _worker_register_copies()
    elif args.worker == "raw":
        _worker_raw(Path(args.corpus))
    elif args.worker == "dag":
        _worker_dag(args.version)
    elif args.worker == "dag-local":
        _worker_dag_local(args.version, json.loads(args.dag_conf), args.dag_parallelism, args.dag_profile_dir,
                          json.loads(args.dag_airflow_env))
    else:
        raise SystemExit(f"unknown worker {args.worker}")


def _worker_fit_sample(dim: int, sample: int = 100_000) -> None:
    """Register v1 fitted on a seeded sample of the store (``--train sample``)."""
    import numpy as np

    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import fit_embedder

    store = RecordStore()
    texts: list[str] = []
    with store.stream_snapshot(50_000) as stream:
        for chunk in stream.chunks:
            texts.extend(chunk.texts)
    rng = np.random.default_rng(0)
    picked = [texts[i] for i in sorted(rng.choice(len(texts), min(sample, len(texts)), replace=False))]
    del texts
    model = fit_embedder(picked, TrainConfig(dim=dim))
    Registry().log_and_register(model, params={"dim": dim, "sample": sample}, metrics={}, snapshot_seq=store.head())


def _worker_register_copies() -> None:
    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore

    registry = Registry()
    model = registry.load_embedder("1")
    for _ in range(2):
        registry.log_and_register(model, params={"copy_of": 1}, metrics={}, snapshot_seq=RecordStore().head())


def _worker_raw(corpus: Path) -> None:
    """The floor: the registered model's transform over every text, then one FAISS flat add."""
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    from lockstep.model.registry import Registry

    model = Registry().load_embedder("1")
    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    started = time.perf_counter()
    vectors = model.transform(texts)
    embed_s = time.perf_counter() - started
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors))
    total_s = time.perf_counter() - started
    print(json.dumps({"n": len(texts), "dim": int(vectors.shape[1]), "embed_s": embed_s,
                      "add_s": total_s - embed_s, "total_s": total_s, "docs_per_s": len(texts) / total_s}))


def _worker_dag(version: str) -> None:
    """lockstep_reembed through dag.test(): wall time of the run and of each task."""
    from dag_timing import task_seconds

    sys.path.insert(0, str(ROOT / "dags"))
    import lockstep_reembed

    started = time.perf_counter()
    # flat, like `lockstep index build` and the raw baseline (the DAG's "auto" picks HNSW above the ANN threshold)
    run = lockstep_reembed.dag.test(run_conf={"model_version": version, "promote_if_first": False, "index_type": "flat"})
    run_s = time.perf_counter() - started
    state = getattr(run.state, "value", str(run.state))
    if state != "success":
        raise SystemExit(f"the DAG run ended {state}")
    per_task, count = task_seconds(run)
    print(json.dumps({"run_s": run_s, "in_tasks_s": sum(per_task.values()), "tasks": sum(count.values()),
                      "per_task_s": dict(per_task), "per_task_count": dict(count)}))


DAG_CONF_KEYS = ("early_verdict_share", "early_verdict_action", "early_verdict_margin", "shard_size", "target_shards")


def _worker_dag_local(version: str, extra_conf: dict[str, Any], parallelism: int | None, profile_dir: str | None,
                      airflow_env: dict[str, str]) -> None:
    """lockstep_reembed on a real stack (LocalExecutor): trigger through the REST API, wait, read the timeline.

    The stack runs on this process's LOCKSTEP_HOME (the bench's home for this size), with
    no MLflow UI, no serving app and no clock schedules; only lockstep_reembed is unpaused
    (its index-ready asset would start lockstep_rollout, which stays paused). The stack is
    stopped at the end, also on error.
    """
    from lockstep.ops.stack import StackConfig, start

    unknown = set(extra_conf) - set(DAG_CONF_KEYS)
    if unknown:
        raise SystemExit(f"--dag-conf: unknown keys {sorted(unknown)}; allowed: {', '.join(DAG_CONF_KEYS)}")
    if any(not key.startswith("AIRFLOW__") for key in airflow_env):
        raise SystemExit(f"--dag-airflow-env: only AIRFLOW__SECTION__KEY settings, got {sorted(airflow_env)}")
    home = Path(os.environ["LOCKSTEP_HOME"])
    extra_env = {key: str(value) for key, value in airflow_env.items()}
    if parallelism:
        extra_env["AIRFLOW__CORE__PARALLELISM"] = str(parallelism)
    config = StackConfig(home=home, airflow_port=_free_port(), mlflow_port=_free_port(), serving_port=_free_port(),
                         with_mlflow_ui=False, with_serving=False, time_schedules=False, api_token=TOKEN,
                         extra_env=extra_env)
    say = lambda msg: print(f"  stack: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    conf = {"model_version": version, "promote_if_first": False, "index_type": "flat", **extra_conf}
    dag_file = _dag_file_version()  # before the stack parses it
    started = time.perf_counter()
    stack = start(config, say)
    profilers: list[subprocess.Popen] = []
    try:
        client = stack.client()
        client.wait_for_dags(["lockstep_reembed"])
        client.unpause("lockstep_reembed")
        stack_start_s = time.perf_counter() - started
        if profile_dir:
            profilers = _start_profilers(stack, Path(profile_dir))
        triggered = time.perf_counter()
        run_id = client.trigger("lockstep_reembed", conf)
        state = client.wait("lockstep_reembed", run_id, timeout=3600, poll=0.5, stack=stack)
        wall_s = time.perf_counter() - triggered
        _stop_profilers(profilers)
        if state != "success":
            failed = {k: v for k, v in client.task_states("lockstep_reembed", run_id).items() if v != "success"}
            raise SystemExit(f"lockstep_reembed run {run_id} ended {state}: {failed}; task logs under {config.airflow_home}")
        tasks, run_times = _read_task_runs(config.airflow_home / "airflow.db", "lockstep_reembed", run_id)
    finally:
        _stop_profilers(profilers)
        stack.stop()
    from dag_timing import run_timeline

    print(json.dumps({
        "trigger_to_success_s": wall_s, "stack_start_s": stack_start_s, "run_id": run_id, "conf": conf,
        "parallelism": parallelism or "default (32)", "airflow_env": airflow_env, "dag_run_s": run_times, "timeline": run_timeline(tasks),
        "dag_file": dag_file,
        "profiles": [str(Path(profile_dir) / f"profile-dag-{name}.txt") for name in _PROFILED] if profile_dir else [],
    }))


def _dag_file_version() -> dict[str, Any]:
    """Which DAG file ran: the commit and whether the working tree changed it (the tree is shared)."""
    import hashlib

    dag_file = ROOT / "dags" / "lockstep_reembed.py"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "dags/lockstep_reembed.py", "include/lockstep"],
                             cwd=ROOT).returncode != 0
    return {"head": head, "uncommitted_changes": changed, "sha256": hashlib.sha256(dag_file.read_bytes()).hexdigest()[:12]}


_PROFILED = ("scheduler", "api-server")  # task processes descend from the scheduler (LocalExecutor)


def _start_profilers(stack, out_dir: Path) -> list[subprocess.Popen]:
    """py-spy on the scheduler (with its task processes) and the api-server, until stopped."""
    procs = []
    for child in stack.children:
        if child.name in _PROFILED:
            out = out_dir / f"profile-dag-{child.name}.txt"
            procs.append(subprocess.Popen(
                [str(BIN / "py-spy"), "record", "--subprocesses", "--rate", "20", "--format", "raw", "--nonblocking",
                 "-o", str(out), "--pid", str(child.process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(2)  # attached before the trigger
    return procs


def _stop_profilers(procs: list[subprocess.Popen]) -> None:
    """SIGINT makes py-spy write its file; wait for it."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    procs.clear()


def _read_task_runs(db: Path, dag_id: str, run_id: str):
    """The run's task instances and its own start/end, from the stack's SQLite metadata DB."""
    import sqlite3

    from dag_timing import TaskRun

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute("SELECT task_id, map_index, state, queued_dttm, start_date, end_date FROM task_instance "
                           "WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)).fetchall()
        run = con.execute("SELECT start_date, end_date FROM dag_run WHERE dag_id = ? AND run_id = ?",
                          (dag_id, run_id)).fetchone()
    tasks = [TaskRun(task_id, map_index, state, _when(q), _when(s), _when(e)) for task_id, map_index, state, q, s, e in rows]
    start, end = _when(run[0]), _when(run[1])
    return tasks, {"start_to_end_s": (end - start).total_seconds() if start and end else None}


def _when(value: str | None):
    """A datetime column of Airflow's SQLite DB (UTC, with or without an offset)."""
    from datetime import UTC, datetime

    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- report: table, projection, plot ------------------------------------------------------------


def report(results: list[dict[str, Any]], plot: Path | None) -> None:
    print(f"\nmachine: {os.cpu_count()} cores, {_total_ram_gb():.0f} GB RAM (shared with other work while measured)")
    header = f"{'N':>9} {'load s':>7} {'train s':>8} {'train MB':>9} {'build s':>8} {'ready s':>8} {'build MB':>9} " \
             f"{'tree MB':>8} {'raw s':>6} {'lib/raw':>7} {'DAG s':>7} {'DAG/raw':>7} {'index MB':>9}"
    print(header)
    for r in results:
        dag = r.get("dag", {})
        print(f"{r['n']:>9,} {r['load']['wall_s']:>7.1f} {r['train']['wall_s']:>8.1f} {r['train']['peak_rss_mb']:>9,.0f} "
              f"{r['library']['wall_s']:>8.1f} {r['library']['ready_s']:>8.1f} {r['library']['peak_rss_mb']:>9,.0f} "
              f"{r['library']['tree_peak_mb']:>8,.0f} "
              f"{r['raw']['total_s']:>6.1f} {r['library']['vs_raw']:>7.2f} {dag.get('run_s', float('nan')):>7.1f} "
              f"{dag.get('vs_raw', float('nan')):>7.2f} {r['index_bytes'] / MB:>9,.0f}")
    for r in results:
        print(f"library steps at {r['n']:,} (s): {r['library']['steps_s']}")
        if "writes" in r:
            w = r["writes"]
            print(f"writes at {r['n']:,}: PUT p50/p99 idle {w['idle_p50_ms']:.1f}/{w['idle_p99_ms']:.1f} ms, during "
                  f"re-embed {w['load_p50_ms']:.1f}/{w['load_p99_ms']:.1f} ms (p99 {w['ratio_p99']:.2f}x)")
        if "dag" in r and "per_task_s" in r["dag"]:
            tasks = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["dag"]["per_task_s"].items(), key=lambda kv: -kv[1]))
            print(f"DAG tasks at {r['n']:,}: {tasks}")
        elif "dag" in r:
            tasks = ", ".join(f"{k} span {v['span_s']:.1f} s (x{v['count']})"
                              for k, v in r["dag"]["timeline"]["per_task"].items())
            print(f"DAG tasks at {r['n']:,} (LocalExecutor, in order): {tasks}")
    print_projection(results)
    if plot is not None:
        draw(results, plot)
        print(f"\nplot: {plot}")


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares a + b*x (a single point: through the origin)."""
    import numpy as np

    if len(xs) < 2:
        return 0.0, ys[0] / xs[0]
    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def print_projection(results: list[dict[str, Any]]) -> None:
    ns = [r["n"] for r in results]
    dim = results[-1]["raw"]["dim"]
    print("\nprojection (linear fits over the measured sizes; assumptions below):")
    for label, ys in (
        ("library build s", [r["library"]["wall_s"] for r in results]),
        ("snapshot-to-ready s", [r["library"]["ready_s"] for r in results]),
        ("raw s", [r["raw"]["total_s"] for r in results]),
        ("load s", [r["load"]["wall_s"] for r in results]),
        ("build peak RSS MB", [r["library"]["peak_rss_mb"] for r in results]),
        ("index MB on disk", [r["index_bytes"] / MB for r in results]),
    ):
        a, b = _fit(ns, ys)
        print(f"  {label:<20} 10M: {a + b * 1e7:>10,.0f}   100M: {a + b * 1e8:>11,.0f}")
    print(f"  assumptions: flat index of float32 vectors, {dim} dims ({dim * 4} B/vector: "
          f"{1e7 * dim * 4 / 1e9:.0f} GB at 10M, {1e8 * dim * 4 / 1e9:.0f} GB at 100M, held in RAM to build and to serve);\n"
          "  the time grows linearly (each shard reads only its row group, the merge adds one shard at a\n"
          "  time); training fits on a fixed-size sample, so its time does not grow with N; the record store\n"
          "  streams the snapshot. Beyond ~20M records a flat index no longer fits this 24 GB machine: use\n"
          "  IVF-PQ (tens of bytes per vector) and workers on more machines (the DAG's mapped shards).")


def draw(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] / 1e6 for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [("load", [r["load"]["wall_s"] for r in results]), ("train", [r["train"]["wall_s"] for r in results]),
              ("index build (lockstep index build)", [r["library"]["wall_s"] for r in results]),
              ("snapshot to ready (inside it)", [r["library"]["ready_s"] for r in results]),
              ("raw transform + FAISS add", [r["raw"]["total_s"] for r in results])]
    if all("dag" in r for r in results):
        series.append((f"index build (DAG, {results[0]['dag'].get('executor', 'dag.test')})",
                       [r["dag"]["run_s"] for r in results]))
    for label, ys in series:
        left.plot(ns, ys, marker="o", label=label)
    left.set(xlabel="records (millions)", ylabel="seconds", title="time")
    left.legend(fontsize=8)
    for label, key in (("train", "train"), ("index build", "library"), ("load", "load")):
        right.plot(ns, [r[key]["peak_rss_mb"] / 1024 for r in results], marker="o", label=f"{label} (largest process)")
    right.plot(ns, [r["library"]["tree_peak_mb"] / 1024 for r in results], marker="x", linestyle="--",
               label="index build (process tree)")
    right.axhline(3, color="grey", linestyle=":", label="3 GB target (build)")
    right.set(xlabel="records (millions)", ylabel="peak RSS (GB)", title="memory")
    right.legend(fontsize=8)
    fig.suptitle(f"Lockstep at scale ({os.cpu_count()} cores, shared machine)")
    fig.tight_layout()
    from lockstep.core.atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def summarise_profile(path: Path, top: int = 15) -> None:
    """Where a py-spy raw (collapsed stacks) profile spends its samples: by own time and inclusive."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]  # drop the process, keep func (file)
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    print(f"\nprofile {path} ({total} samples): own time")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:5.1f} %  {frame}")
    print("inclusive (lockstep functions)")
    mine = {k: v for k, v in inclusive.items() if any(s in k for s in ("reembed", "index_store", "records", "vector_index"))}
    for frame, n in sorted(mine.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:5.1f} %  {frame}")


def _total_ram_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 1024**3


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated record counts (default {DEFAULT_SIZES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--train", choices=["cli", "sample"], default="cli")
    parser.add_argument("--dag", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--dag-executor", choices=["test", "local"], default="test",
                        help="test: dag.test() (shards one after another in one process); local: a real Airflow "
                             "stack with the LocalExecutor (shards in parallel)")
    parser.add_argument("--dag-parallelism", type=int, default=None,
                        help="local: AIRFLOW__CORE__PARALLELISM for the stack (default Airflow's 32)")
    parser.add_argument("--dag-conf", default="{}",
                        help=f"local: JSON merged into the run's conf (keys: {', '.join(DAG_CONF_KEYS)})")
    parser.add_argument("--dag-airflow-env", default="{}",
                        help='local: JSON of Airflow settings for the stack, e.g. {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2"}')
    parser.add_argument("--dag-profile", action="store_true", help="local: py-spy the scheduler's tasks and the api-server")
    parser.add_argument("--writes", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--index-type", default="flat", choices=["flat", "auto", "hnsw", "ivf"],
                        help="index of the library build (flat: like the raw floor; auto: the default at N)")
    parser.add_argument("--profile", action="store_true", help="py-spy the library build at the largest size")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lockstep-bench-scale")
    parser.add_argument("--results", type=Path, default=None, help="JSON figures (default: WORK/results.json)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench_scale.png")
    parser.add_argument("--report-only", action="store_true", help="re-print and re-plot an earlier --results file")
    parser.add_argument("--keep", action="store_true", help="keep each size's Lockstep home")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    parser.add_argument("--dag-profile-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    results_path = args.results or args.work / "results.json"
    if args.report_only:
        return report(json.loads(results_path.read_text()), args.plot)
    args.work.mkdir(parents=True, exist_ok=True)
    airflow_home = args.work / "airflow"
    if args.dag and args.dag_executor == "test" and not (airflow_home / "airflow.db").exists():
        env = lockstep_env(args.work / "unused", airflow_home)
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    results = []
    for n in args.sizes:
        results.append(bench_size(n, args, args.work, airflow_home))
        results_path.write_text(json.dumps(results, indent=2))
    report(results, args.plot)
    print(f"figures: {results_path}")
    profile = args.work / f"profile-{max(args.sizes)}.txt"
    if args.profile and profile.exists():
        summarise_profile(profile)
    for r in results:
        for path in r.get("dag", {}).get("profiles", []):
            if Path(path).exists():
                summarise_profile(Path(path))


if __name__ == "__main__":
    main()
