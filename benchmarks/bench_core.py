"""Core library benchmark: Lockstep's paths against the raw model and raw FAISS calls.

Prints, on the demo corpus (20 Newsgroups, ~18.8k posts):
- bulk upsert throughput into the SQLite record store (demo posts and short records);
- bulk embedding throughput: TextEmbedder.transform vs a plain sklearn pipeline;
- index build throughput: sharded build (partial files + merge) vs raw FAISS add;
- single-query embed latency: the fast path vs the sklearn pipeline on one text;
- single-query search latency: VectorIndex.search vs raw faiss search.
Each Lockstep figure comes with the baseline measured in the same run and a ratio.

Run: ./dev lockstep ... or `.venv/bin/python benchmarks/bench_core.py [--dim 256]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def latencies(fn, items) -> list[float]:
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    import faiss
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    from lockstep.index.shards import build_index
    from lockstep.index.vector_index import VectorIndex
    from lockstep.model.embedding import TextEmbedder
    from lockstep.store.corpus import load_demo_corpus
    from lockstep.store.records import Record, RecordStore

    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
          f"faiss {faiss.__version__}")
    records = load_demo_corpus()
    texts = [r.text for r in records]
    n = len(texts)
    rows = []

    # --- record store ------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        store = RecordStore(f"sqlite:///{tmp}/a.db")
        t_posts = timed(lambda: store.upsert_many(records))
        short = [Record(f"s{i}", f"short record number {i} about things") for i in range(50_000)]
        store2 = RecordStore(f"sqlite:///{tmp}/b.db")
        t_short = timed(lambda: store2.upsert_many(short))
    rows.append(("bulk upsert, demo posts (SQLite)", f"{n / t_posts:,.0f} rec/s", "", ""))
    rows.append(("bulk upsert, 50k short records (SQLite)", f"{len(short) / t_short:,.0f} rec/s", "", ""))

    # --- fit -------------------------------------------------------------------------------------
    model = TextEmbedder(dim=args.dim).fit(texts)
    raw = make_pipeline(
        TfidfVectorizer(max_features=50_000, min_df=2, max_df=0.5, sublinear_tf=True, stop_words="english",
                        dtype=np.float32),
        TruncatedSVD(n_components=args.dim, n_iter=5, random_state=0),
        Normalizer(),
    ).fit(texts)

    # --- bulk embedding ----------------------------------------------------------------------------
    t_ours = timed(lambda: model.transform(texts))
    t_raw = timed(lambda: raw.transform(texts))
    rows.append(("bulk embed", f"{n / t_ours:,.0f} docs/s", f"{n / t_raw:,.0f} docs/s (sklearn pipeline)",
                 f"{t_raw / t_ours:.2f}x"))

    # --- index build ---------------------------------------------------------------------------------
    vectors = model.transform(texts)
    ids = [r.id for r in records]

    def raw_build():
        idx = faiss.IndexFlatIP(vectors.shape[1])
        idx.add(vectors)
        return idx

    t_raw_build = timed(raw_build, repeat=3)
    t_ours_build = timed(lambda: VectorIndex.build(ids, vectors), repeat=3)
    rows.append(("index build from vectors (flat)", f"{n / t_ours_build:,.0f} vec/s",
                 f"{n / t_raw_build:,.0f} vec/s (faiss add)", f"{t_ours_build / t_raw_build:.1f}x slower"))
    with tempfile.TemporaryDirectory() as tmp:
        t_sharded = timed(lambda: build_index(model, records, Path(tmp) / "x", fingerprint=model.fingerprint,
                                              snapshot_seq=1, shard_size=2000))
    t_raw_e2e = t_raw + t_raw_build
    rows.append(("embed + sharded build (files, merge)", f"{n / t_sharded:,.0f} docs/s",
                 f"{n / t_raw_e2e:,.0f} docs/s (sklearn + faiss)", f"{t_raw_e2e / t_sharded:.2f}x"))

    # --- single query ----------------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    sample = [texts[i][:300] for i in rng.choice(n, args.queries, replace=False)]
    ours_ms = latencies(model.embed_query, sample)
    raw_ms = latencies(lambda q: raw.transform([q]), sample)
    rows.append(("single-query embed p50", f"{pct(ours_ms, 50):.3f} ms", f"{pct(raw_ms, 50):.3f} ms (sklearn)",
                 f"{pct(raw_ms, 50) / pct(ours_ms, 50):.0f}x faster"))
    rows.append(("single-query embed p99", f"{pct(ours_ms, 99):.3f} ms", f"{pct(raw_ms, 99):.3f} ms", ""))

    index = VectorIndex.build(ids, vectors)
    flat = raw_build()
    qvecs = [model.embed_query(q) for q in sample]
    ours_s = latencies(lambda v: index.search(v, 10), qvecs)
    raw_s = latencies(lambda v: flat.search(v[None, :], 10), qvecs)
    rows.append(("single-query search p50 (k=10)", f"{pct(ours_s, 50):.3f} ms",
                 f"{pct(raw_s, 50):.3f} ms (faiss)", f"{statistics.median(ours_s) / statistics.median(raw_s):.2f}x"))
    rows.append(("single-query search p99", f"{pct(ours_s, 99):.3f} ms", f"{pct(raw_s, 99):.3f} ms", ""))

    width = max(len(r[0]) for r in rows)
    print(f"\ncorpus: {n:,} docs, dim {model.dim_}\n")
    print(f"{'measure':<{width}}  {'lockstep':>18}  {'baseline':<34}  ratio")
    for name, ours, base, ratio in rows:
        print(f"{name:<{width}}  {ours:>18}  {base:<34}  {ratio}")


if __name__ == "__main__":
    main()
