"""Batch serving benchmark: related top-10 for every record of a 1M index, against raw FAISS.

Synthetic unit vectors (seeded: points around 2,000 random centres, dimension 256, the
default model's) stand in for a version's stored embeddings. The index is what a 1M-record
version gets (``choose_spec``: HNSW, M=32, efSearch 128). Then, in the same run:

- **library**: ``lockstep.batch.related.related`` over every record (its stored vector read
  back by id, a batched search for k + 1, the record itself dropped, ids mapped back);
- **raw**: ``faiss.Index.search`` on the same FAISS object, same batches, same search
  parameters, straight from the vector matrix (no ids, nothing dropped): the floor;
- the ratio raw time / library time (1.0 = as fast as raw), over all records once and then
  in alternating rounds (raw, library, raw, ...) on the first 200k keys, whose median is
  the figure to compare (the machine is shared, so one pass of each can be skewed);
- recall@10 of the library's lists against exact brute force on a seeded sample;
- writing rows into the operational table (SQLite, ``BatchResultStore.write_rows``).

Heavy (about 3 GB and several minutes): run it under ``flock /tmp/lockstep-heavy.lock``.

Run: .venv/bin/python benchmarks/bench_batch.py [--records 1000000] [--dim 256] [--write-rows 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_vectors(n: int, dim: int, centres: int = 2000, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``centres`` random unit centres (seeded), float32."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, dim)).astype(np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = rng.integers(centres, size=stop - start)
        block = middle[which] + 0.6 / np.sqrt(dim) * rng.standard_normal((stop - start, dim)).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def bench(args: argparse.Namespace) -> dict:
    from lockstep.batch.related import related
    from lockstep.index.vector_index import VectorIndex, choose_spec

    vectors = synthetic_vectors(args.records, args.dim, seed=args.seed)
    ids = [f"r{i:07d}" for i in range(args.records)]
    spec = choose_spec(args.records, args.dim)
    started = time.perf_counter()
    index = VectorIndex.build(ids, vectors, spec)
    build_s = time.perf_counter() - started

    started = time.perf_counter()
    lists = {}
    sample = set(np.random.default_rng(args.seed + 1).choice(args.records, size=args.recall_sample, replace=False).tolist())
    sample_ids = {ids[i] for i in sample}
    rows = 0
    for key, hits in related(index, ids, args.k):
        rows += 1
        if key in sample_ids:
            lists[key] = hits
    library_s = time.perf_counter() - started

    raw_s = _raw_pass(index, vectors, 0, args.records, args.k)
    rounds = _alternating_rounds(index, vectors, ids, args)

    recall = _recall(vectors, ids, sorted(sample), lists, args.k)
    write = _write_rows(index, ids[: args.write_rows], args.k) if args.write_rows else None
    return {
        "records": args.records, "dim": args.dim, "k": args.k, "index": spec.to_dict(), "build_s": round(build_s, 1),
        "library_s": round(library_s, 1), "library_rows_per_s": round(rows / library_s),
        "raw_s": round(raw_s, 1), "raw_rows_per_s": round(args.records / raw_s),
        "ratio_raw_over_library": round(raw_s / library_s, 3),
        "alternating_rounds": rounds,
        "median_ratio_raw_over_library": round(float(np.median([r["ratio"] for r in rounds])), 3) if rounds else None,
        "recall_at_10_vs_exact": round(recall, 4), "recall_sample": args.recall_sample,
        "write": write, "cores": os.cpu_count(),
    }


def _raw_pass(index, vectors: np.ndarray, start: int, stop: int, k: int) -> float:
    """Seconds for raw FAISS over rows [start, stop): same object, batches and search parameters."""
    from lockstep.batch.related import BATCH

    params = index._search_params()  # the index's own search parameters (efSearch), as the library uses
    started = time.perf_counter()
    for first in range(start, stop, BATCH):
        index._faiss.search(vectors[first : min(stop, first + BATCH)], k + 1, params=params)
    return time.perf_counter() - started


def _alternating_rounds(index, vectors: np.ndarray, ids: list[str], args: argparse.Namespace) -> list[dict]:
    """Raw, then library, on the same slice of keys, ``--rounds`` times (the machine is shared:
    alternating spreads other work over both sides)."""
    from lockstep.batch.related import related

    stop = min(args.records, args.round_keys)
    out = []
    for _ in range(args.rounds):
        raw = _raw_pass(index, vectors, 0, stop, args.k)
        started = time.perf_counter()
        for _ in related(index, ids[:stop], args.k):
            pass
        library = time.perf_counter() - started
        out.append({"keys": stop, "raw_s": round(raw, 2), "library_s": round(library, 2), "ratio": round(raw / library, 3)})
    return out


def _recall(vectors: np.ndarray, ids: list[str], sample: list[int], lists: dict, k: int) -> float:
    """Share of the exact top-k (itself left out) that the library's lists hold."""
    import faiss

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, labels = exact.search(vectors[sample], k + 1)
    found = total = 0
    for row, i in enumerate(sample):
        truth = [ids[j] for j in labels[row] if j != i][:k]
        got = {h for h, _ in lists[ids[i]]}
        found += sum(t in got for t in truth)
        total += len(truth)
    return found / total


def _write_rows(index, keys: list[str], k: int) -> dict:
    """Rows per second into a fresh SQLite operational table (computing included, then writing alone)."""
    from lockstep.batch.related import related
    from lockstep.store.batch_results import RELATED, BatchResultStore

    computed = list(related(index, keys, k))
    with tempfile.TemporaryDirectory() as tmp:
        store = BatchResultStore(f"sqlite:///{Path(tmp) / 'bench.db'}")
        started = time.perf_counter()
        store.write_rows(RELATED, "1", computed, input_seq=1)
        seconds = time.perf_counter() - started
    return {"rows": len(keys), "write_s": round(seconds, 1), "rows_per_s": round(len(keys) / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recall-sample", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/library rounds on --round-keys keys")
    parser.add_argument("--round-keys", type=int, default=200_000)
    parser.add_argument("--write-rows", type=int, default=200_000, help="rows written to SQLite (0: skip)")
    parser.add_argument("--results", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    figures = bench(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.results:
        args.results.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
