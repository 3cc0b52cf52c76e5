"""Early-verdict benchmark: time to the verdict against time to a full build (issue 14).

In a fresh Lockstep home it loads N generated records (``bench_scale.generate_corpus``:
windows of demo posts, each with its post's category), registers a champion (TF-IDF +
SVD fitted on a seeded 100k sample) and builds its index with ``lockstep index build``'s
library path (``--index-type``, default auto: HNSW from 200k records), logs 500 searches,
then registers a worse candidate (the "wrong half": fitted on the posts of 10 of the 20
categories only) and runs the re-embed DAG's steps for it in order, in this one process
(as ``dag.test()`` runs them; a real executor runs the shards of each part in parallel):

    prepare -> sliced snapshot -> embed the first slice -> early verdict      = time to verdict
            -> embed the rest -> merge -> validate                             = + the rest of a full build

It prints each step's seconds, the ratio time to verdict / time to a full build, the
verdict with its figures, and the cost of slicing the snapshot (the same snapshot
written unsliced). Heavy at 1M: run it under ``flock /tmp/lockstep-heavy.lock``.

Run: .venv/bin/python benchmarks/bench_early_verdict.py [--records 1M] [--share 0.1] [--index-type auto]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import generate_corpus, parse_size  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIT_SAMPLE = 100_000
LOGGED = 500


class Laps:
    """Seconds per named step, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        print(f"  {name}: {self.seconds[name]:.1f} s", flush=True)
        return result


def fit_and_register(corpus: Path, dim: int) -> tuple[str, str]:
    """The champion (all categories) and the worse candidate (half of them), each fitted on a seeded sample."""
    import numpy as np
    import pyarrow.parquet as pq

    from lockstep.model.registry import Registry
    from lockstep.store.corpus import DEMO_CATEGORIES
    from lockstep.store.records import RecordStore
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import fit_embedder

    table = pq.read_table(corpus, columns=["text", "category"])
    texts, cats = table.column("text").to_pylist(), table.column("category").to_pylist()
    rng = np.random.default_rng(0)
    half = set(DEMO_CATEGORIES[:10])
    everyone = rng.choice(len(texts), min(FIT_SAMPLE, len(texts)), replace=False)
    wrong = np.array([i for i in range(len(texts)) if cats[i] in half])
    wrong = rng.choice(wrong, min(FIT_SAMPLE, len(wrong)), replace=False)
    registry, head = Registry(), RecordStore().head()
    versions = []
    for rows in (everyone, wrong):
        model = fit_embedder([texts[i] for i in sorted(rows.tolist())], TrainConfig(dim=dim))
        versions.append(registry.log_and_register(model, params={"dim": dim}, metrics={}, snapshot_seq=head).version)
    return versions[0], versions[1]


def log_searches(corpus: Path, n: int = LOGGED) -> None:
    import pyarrow.parquet as pq

    from lockstep.serving.logs import LogWriter
    from lockstep.store.db import get_engine

    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    writer = LogWriter(get_engine())
    step = max(1, len(texts) // n)
    for i, text in enumerate(texts[::step][:n]):
        writer.request(request_id=f"bench-{i}", model_version="1", query=" ".join(text.split()[:10]), k=10,
                       latency_ms=1.0, status=200, top_ids=[])
    writer.flush()


def candidate_run(version: str, share: float, index_type: str) -> dict[str, Any]:
    """The DAG's steps for the candidate, timed; returns the laps and the verdict."""
    from lockstep.index import early_verdict, steps

    laps = Laps()
    plan = laps.run("prepare", steps.prepare, version)
    snap = laps.run("snapshot", steps.snapshot, plan, None, first_slice_share=share)
    first = [laps.run("embed first slice", steps.embed, plan, snap, s) for s in snap["first_slice"]]
    verdict = laps.run("early verdict", early_verdict.judge_first_slice, plan, snap, first, action="warn")
    rest = [laps.run("embed rest", steps.embed, plan, snap, s) for s in snap["rest"]]
    laps.run("merge", steps.merge, plan, snap, first + rest, {"kind": index_type})
    laps.run("validate", steps.validate, plan)
    return {"laps": laps.seconds, "verdict": verdict, "shards": len(snap["shards"]),
            "first_slice_shards": len(snap["first_slice"]), "first_slice_records": snap["first_slice_records"],
            "shard_size": snap["shard_size"], "location": plan["location"]}


def unsliced_snapshot_seconds(shard_size: int) -> float:
    """The same snapshot written the old way (no first slice), for the cost of slicing."""
    from lockstep.index.snapshot import write_snapshot
    from lockstep.store.records import RecordStore

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_snapshot(RecordStore(), Path(tmp), shard_size)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=parse_size, default=parse_size("1M"))
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--index-type", default="auto", choices=["auto", "flat", "hnsw"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lockstep-bench-scale")
    parser.add_argument("--results", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    n = args.records
    corpus = generate_corpus(n, args.work / "corpus" / f"corpus-{n}-seed0-v2.parquet", 0)
    home = Path(tempfile.mkdtemp(prefix="lockstep-bench-early-"))
    os.environ.update(LOCKSTEP_HOME=str(home), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    for var in ("LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE"):
        os.environ.pop(var, None)
    try:
        print(f"[{n:,}] loading", flush=True)
        subprocess.run([str(BIN / "lockstep"), "corpus", "load", "--path", str(corpus)], check=True,
                       capture_output=True, env=os.environ.copy())
        from lockstep.index.build import reembed_version
        from lockstep.index.vector_index import spec_for
        from lockstep.model.registry import Registry
        from lockstep.store.records import RecordStore

        champion, candidate = fit_and_register(corpus, args.dim)
        started = time.perf_counter()
        spec = None if args.index_type == "auto" else spec_for(args.index_type, n, args.dim)
        built = reembed_version(RecordStore(), Registry(), champion, spec=spec, promote_if_first=True)
        champion_s = time.perf_counter() - started
        print(f"[{n:,}] champion v{champion} built in {champion_s:.1f} s ({built.get('workers')} workers)", flush=True)
        log_searches(corpus)

        print(f"[{n:,}] candidate v{candidate} (wrong half), share {args.share}:", flush=True)
        run = candidate_run(candidate, args.share, args.index_type)
        laps = run["laps"]
        to_verdict = laps["prepare"] + laps["snapshot"] + laps["embed first slice"] + laps["early verdict"]
        full = sum(v for k, v in laps.items() if k != "early verdict")
        plain = unsliced_snapshot_seconds(run["shard_size"])
        out = {
            "records": n, "share": args.share, "dim": args.dim, "index_type": args.index_type, **run,
            "time_to_verdict_s": to_verdict, "full_build_s": full, "ratio": to_verdict / full,
            "unsliced_snapshot_s": plain, "champion_build_s": champion_s,
        }
        fig = run["verdict"]["figures"]
        print(f"[{n:,}] time to verdict {to_verdict:.1f} s vs full build {full:.1f} s: {100 * out['ratio']:.0f} % "
              f"(snapshot {laps['snapshot']:.1f} s sliced vs {plain:.1f} s unsliced)")
        print(f"[{n:,}] verdict {run['verdict']['verdict']}: {run['verdict']['reason']}")
        print(json.dumps({k: v for k, v in out.items() if k != "verdict"} | {"figures": fig}, indent=1, default=str))
        if args.results:
            args.results.write_text(json.dumps(out, indent=1, default=str))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
