"""Re-embedding benchmark: through the DAG, through the library, and raw model + FAISS.

On the demo corpus (~18.8k posts) it measures, in one run:
- raw: TextEmbedder.transform over all texts + faiss IndexFlatIP.add (the floor);
- library: lockstep.index.steps.reembed_version (shards on disk, merge, catch-up, validation);
- DAG: lockstep_reembed with dag.test(), and where its time goes: per-task run time
  (embed shards, merge, validate, publish) and Airflow's overhead (wall time not
  spent inside any task).

Run: .venv/bin/python benchmarks/bench_reembed.py [--shard-size N] [--dim 128]
(no --shard-size: chosen from the record count, as ``lockstep index build`` and the DAG do;
at 1M records see benchmarks/bench_scale.py)
Needs nothing running; uses temporary LOCKSTEP_HOME and AIRFLOW_HOME folders.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dag_timing import task_seconds

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-size", type=int, default=None, help="records per shard (default: from the record count)")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lockstep-bench-"))
    os.environ.update(
        LOCKSTEP_HOME=str(tmp / "home"),
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )
    sys.path.insert(0, str(ROOT / "dags"))
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)

    import faiss
    import numpy as np

    from lockstep.index.build import reembed_version
    from lockstep.model.registry import Registry
    from lockstep.store.corpus import load_demo_corpus
    from lockstep.store.records import RecordStore
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import fit_embedder

    records = load_demo_corpus()
    store = RecordStore()
    store.upsert_many(records)
    model = fit_embedder([r.text for r in records], TrainConfig(dim=args.dim))
    registry = Registry()
    v1 = registry.log_and_register(model, params={}, metrics={}, snapshot_seq=store.head()).version
    v2 = registry.log_and_register(model, params={}, metrics={}, snapshot_seq=store.head()).version
    n = len(records)
    texts = [r.text for r in records]

    started = time.perf_counter()
    vectors = model.transform(texts)
    embed_s = time.perf_counter() - started
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors))
    raw_s = time.perf_counter() - started

    started = time.perf_counter()
    outcome = reembed_version(store, registry, v1, shard_size=args.shard_size, promote_if_first=False)
    lib_s = time.perf_counter() - started

    import lockstep_reembed

    started = time.perf_counter()
    conf = {"model_version": v2, "promote_if_first": False}
    if args.shard_size:
        conf["shard_size"] = args.shard_size
    run = lockstep_reembed.dag.test(run_conf=conf)
    dag_s = time.perf_counter() - started
    if str(run.state) != "success" and getattr(run.state, "value", "") != "success":
        raise SystemExit(f"DAG run ended {run.state}")
    per_task, count = task_seconds(run)
    in_tasks = sum(per_task.values())

    print(f"machine: {os.cpu_count()} cores; corpus {n:,} docs; dim {model.dim_}; "
          f"shard size {outcome['shard_size']} ({outcome['shards']} shards, {outcome['workers']} embedding processes)\n")
    print(f"{'path':<34} {'seconds':>8} {'docs/s':>9} {'vs raw':>7}")
    for name, secs in (("raw (transform + faiss add)", raw_s), ("library (reembed_version)", lib_s),
                       ("DAG (dag.test, whole run)", dag_s)):
        print(f"{name:<34} {secs:8.1f} {n / secs:9,.0f} {secs / raw_s:6.1f}x")
    print(f"\nraw split: embed {embed_s:.1f} s, faiss add {raw_s - embed_s:.2f} s")
    print("\nwhere the DAG's time goes (task run time, summed over mapped instances):")
    for task_id, secs in sorted(per_task.items(), key=lambda kv: -kv[1]):
        print(f"  {task_id:<12} x{count[task_id]:<3} {secs:7.1f} s")
    overhead = dag_s - in_tasks
    tasks = sum(count.values())
    print(f"  {'airflow overhead':<17} {overhead:7.1f} s  ({overhead / max(tasks, 1):.2f} s per task over {tasks} tasks)")


if __name__ == "__main__":
    main()
