"""A transformer at its real cost: raw onnxruntime vs ``lockstep index build`` vs the reembed DAG.

all-MiniLM-L6-v2 (int8 ONNX, the shipped demo model of requirements-models.txt) on demo
posts, in one run:

- raw: what a team writes by hand with the same files: tokenizers' batch encode (padding to
  the longest text of each batch, cut at ``--max-length`` tokens), one ``session.run`` per
  batch of ``--batch`` texts in input order, mean pooling, L2 normalisation; the same threads;
- library: ``reembed_version`` of the version ``lockstep model import --onnx`` registered
  (shards, checkpoints, merge, validation, catch-up), one worker process with every core;
- DAG: ``lockstep_reembed`` with ``dag.test()`` (the LocalExecutor's task code, in process);
- workers: the library with 1 process x 1 thread and with 2 processes x 1 thread (what two
  workers give on this machine's two cores; Celery workers on separate machines are
  issue 25's share-nothing test);
- queries: ``embed_query`` of one text through Lockstep's loaded model against one raw
  ``session.run`` of one text (p50/p99 over ``--queries`` held-out queries);
- projection: hours for 1M and 10M records at the measured rate for 1, 2, 8 and 32 workers
  (linear in workers, measured here only up to 2) and for a GPU at ``--gpu-rate`` texts/s
  (a stated assumption, not a measurement).

Run: flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_transformer.py [--records 2000]
     [--max-length 128] [--batch 32] [--queries 200]
The issue's 20k records take ~17 minutes per leg at ~20 texts/s: the default 2,000 keeps the
whole run near 10 minutes; rates do not depend on the count past a few hundred texts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def raw_embed(folder: Path, texts: list[str], *, batch: int, max_length: int, threads: int) -> np.ndarray:
    """The hand-written baseline: tokenizers + onnxruntime, mean pooling, L2 normalisation."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding()  # to the longest text of each batch
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    out = []
    for start in range(0, len(texts), batch):
        enc = tok.encode_batch(texts[start:start + batch])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.vstack(out)


def raw_one(folder: Path, texts: list[str], *, max_length: int, threads: int) -> list[float]:
    """Seconds of one raw ``session.run`` per text, one session kept (the floor of a query's embedding)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    times = []
    for text in texts:
        started = time.perf_counter()
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        session.run(None, {k: v for k, v in feeds.items() if k in wanted})
        times.append(time.perf_counter() - started)
    return times


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=128, help="tokens a text is cut at (MiniLM's own default is 128; the demo config 256)")
    parser.add_argument("--batch", type=int, default=32, help="texts per model call, raw and library alike")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--gpu-rate", type=float, default=2000.0, help="assumed texts/s of one GPU for the projection")
    parser.add_argument("--skip-dag", action="store_true")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))

    tmp = Path(tempfile.mkdtemp(prefix="lockstep-bench-transformer-"))
    os.environ.update(
        LOCKSTEP_HOME=str(tmp / "home"), AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        LOCKSTEP_EMBED_BATCH=str(args.batch),
    )
    sys.path.insert(0, str(ROOT / "dags"))

    from lockstep.index.build import reembed_version
    from lockstep.model.minilm import minilm_folder
    from lockstep.model.onnx_text import import_onnx
    from lockstep.model.registry import Registry
    from lockstep.ops.simulator import held_out_queries
    from lockstep.store.corpus import demo_sample
    from lockstep.store.records import RecordStore

    records = demo_sample(args.records, seed=0)
    texts = [r.text for r in records]
    store = RecordStore()
    store.upsert_many(records)
    folder = minilm_folder(tmp / "minilm")
    registry = Registry()
    overrides = {"max_length": args.max_length}
    versions = [import_onnx(registry, folder, overrides, set_challenger=False).version for _ in range(4 if not args.skip_dag else 3)]
    n = len(texts)
    rows: list[tuple[str, float]] = []

    def leg(name: str, fn) -> float:
        print(f"... {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        outcome = fn()
        secs = time.perf_counter() - started
        if isinstance(outcome, dict) and "shards" in outcome:  # a library build says how it ran
            name += f" [{outcome['shards']} shards, {outcome['workers']} proc x {outcome.get('threads_per_worker')} thr]"
        rows.append((name, secs))
        return secs

    raw_s = leg(f"raw onnxruntime ({cores} threads)", lambda: raw_embed(folder, texts, batch=args.batch, max_length=args.max_length, threads=cores))
    os.environ.update(LOCKSTEP_REEMBED_WORKERS="1", LOCKSTEP_EMBED_THREADS=str(cores))
    lib_s = leg(f"library (1 process x {cores} threads)", lambda: reembed_version(store, registry, versions[0], promote_if_first=False))
    os.environ.update(LOCKSTEP_REEMBED_WORKERS="1", LOCKSTEP_EMBED_THREADS="1")
    one_s = leg("library, 1 worker x 1 thread", lambda: reembed_version(store, registry, versions[1], promote_if_first=False))
    os.environ.update(LOCKSTEP_REEMBED_WORKERS="2", LOCKSTEP_EMBED_THREADS="1")
    two_s = leg("library, 2 workers x 1 thread", lambda: reembed_version(store, registry, versions[2], promote_if_first=False))
    for key in ("LOCKSTEP_REEMBED_WORKERS", "LOCKSTEP_EMBED_THREADS"):
        os.environ.pop(key, None)
    dag_s = None
    if not args.skip_dag:
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)
        import lockstep_reembed

        def dag() -> None:
            run = lockstep_reembed.dag.test(run_conf={"model_version": versions[3], "promote_if_first": False})
            if getattr(run.state, "value", run.state) != "success":
                raise SystemExit(f"DAG run ended {run.state}")

        dag_s = leg("DAG (dag.test)", dag)

    queries = [q.text for q in held_out_queries(limit=args.queries)]
    raw_q = raw_one(folder, queries, max_length=args.max_length, threads=cores)
    model = registry.load_embedder(versions[0])
    lib_q = []
    for q in queries:
        started = time.perf_counter()
        model.embed_query(q)
        lib_q.append(time.perf_counter() - started)

    print(f"\nmachine: {cores} cores; {n:,} demo posts; all-MiniLM-L6-v2 int8 ONNX, cut at {args.max_length} tokens, "
          f"batches of {args.batch}\n")
    print(f"{'path':<66} {'seconds':>8} {'texts/s':>8} {'vs raw':>7}")
    for name, secs in rows:
        print(f"{name:<66} {secs:8.1f} {n / secs:8.1f} {raw_s / secs:6.2f}x")
    print(f"\ntwo workers vs one (1 thread each): {one_s / two_s:.2f}x")
    print(f"library vs raw: {raw_s / lib_s:.2f}x" + (f"; DAG vs raw: {raw_s / dag_s:.2f}x" if dag_s else ""))
    print(f"\none query's embedding: raw p50 {1000 * pct(raw_q, 50):.1f} ms p99 {1000 * pct(raw_q, 99):.1f} ms; "
          f"lockstep embed_query p50 {1000 * pct(lib_q, 50):.1f} ms p99 {1000 * pct(lib_q, 99):.1f} ms")
    rate = n / lib_s
    per_worker = n / one_s
    print(f"\nprojection at the measured rate (library {rate:.1f} texts/s; {per_worker:.1f} per 1-thread worker, linear in workers):")
    print(f"{'records':>11} {'this machine':>13} " + " ".join(f"{f'{w} workers':>11}" for w in (2, 8, 32)) + f" {'1 GPU':>9}")
    for total in (1_000_000, 10_000_000):
        cells = " ".join(f"{total / (per_worker * w) / 3600:10.1f}h" for w in (2, 8, 32))
        print(f"{total:>11,} {total / rate / 3600:12.1f}h {cells} {total / args.gpu_rate / 3600:8.1f}h")
    print(f"(GPU: an assumed {args.gpu_rate:,.0f} texts/s, not measured here)")


if __name__ == "__main__":
    main()
