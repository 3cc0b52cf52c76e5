"""Frontier benchmark: raw FAISS index configurations on the speed/recall plane (issue 26).

It sweeps index configurations over real embeddings of the demo corpus and draws the
speed/recall frontier the ``auto`` index kind chooses from:

- data (built once, cached under ``--cache``): 1M records made as ``bench_serving --scale``
  makes them (``_scale_records``: ``bench_scale.generate_corpus``'s 30-60-word windows of the
  demo posts), the product's model fitted as ``_build_scale_index`` fits it
  (``TextEmbedder(dim=256, random_state=1)`` on a seeded 100k sample), every record's vector
  (float32, unit rows: ``vectors.npy``, ``ids.json``, the texts in the corpus parquet,
  ``model.joblib``);
- queries, all held out from any tuning: 2,000 fragment queries (3-8 consecutive words,
  ``lockstep.index.beam.fragment_queries``) of seeded sampled records and 1,000 whole-record
  queries (other sampled records' texts, embedded again). Those records stay in the index,
  as a user's whole-record query does. The exact top-10 comes from ``faiss.knn`` (inner
  product) over all vectors; a returned record is a hit when its *exact* score (recomputed
  from the stored vector, so quantised scores cannot flatter) is >= the exact 10th score
  - 1e-5: ties count, the rule of ``lockstep.index.recall``;
- per configuration: build seconds (train + add, 2 threads; IVF's coarse k-means on a seeded
  200k sample is trained once, timed, and its time is added to every IVF configuration's
  build), memory (bytes of ``faiss.serialize_index``), and for each search parameter
  recall@10 on fragments and on whole records, ms/query median on ONE thread with queries
  one at a time (as serving runs them) and ms/query of a 1,000-query batch on 2 threads.

Every point is written to ``<cache>/frontier-<records>.json`` as it is measured; a re-run
skips configurations already finished, so a crash loses at most one build. ``--plot`` draws
recall@10 on fragments against queries/s on one core (log), one line per configuration
(build time in the legend), the Pareto frontier and a line at recall 0.95.
``--records N`` (< the cached 1M) measures on the first N vectors (queries re-sampled
from those N, exact truth recomputed).

Run: ``.venv/bin/python benchmarks/bench_frontier.py [--records 1000000] [--cache DIR]
[--configs NAME ...] [--plot docs/bench_frontier.png]``. Heavy: it takes
``flock /tmp/lockstep-heavy.lock`` itself around each configuration's build and
measurement (``--no-lock`` to skip), releasing it between configurations.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA_RECORDS = 1_000_000
DIM = 256
K = 10
TRAIN_SAMPLE = 200_000  # seeded sample the IVF k-means and PQ / SQ codebooks train on
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE_LADDER = (8, 16, 32, 64, 128)
K_FACTORS = (2, 4, 8)
LOCK = Path("/tmp/lockstep-heavy.lock")

# name -> how it is built; "refine" configs reuse their base's build (plus the flat copy's add)
CONFIGS: dict[str, dict[str, Any]] = {  # the most decisive first: a short run still answers the question
    "HNSW32,efC40": {"kind": "hnsw", "m": 32, "efc": 40},
    "IVF4096,PQ64x4fs,RFlat": {"kind": "ivf", "factory": "IVF4096,PQ64x4fs,RFlat"},
    "HNSW32,SQ8,efC80": {"kind": "hnsw_sq", "m": 32, "efc": 80, "k_factors": (2, 4)},
    "IVF4096,PQ32x4fs,RFlat": {"kind": "ivf", "factory": "IVF4096,PQ32x4fs,RFlat"},
    "IVF4096,Flat": {"kind": "ivf", "factory": "IVF4096,Flat"},
    "HNSW32,efC80": {"kind": "hnsw", "m": 32, "efc": 80},
    "IVF4096_HNSW32,PQ64x4fs,RFlat": {"kind": "ivf", "factory": "IVF4096_HNSW32,PQ64x4fs,RFlat"},
    "HNSW16,efC80": {"kind": "hnsw", "m": 16, "efc": 80},
    "HNSW48,efC80": {"kind": "hnsw", "m": 48, "efc": 80},
}


# --- data -------------------------------------------------------------------------------------


def prepare_data(cache: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Ids, texts and unit vectors of the 1M records (cached), and the fitted model on disk."""
    from bench_serving import _scale_records

    from lockstep.model.embedding import TextEmbedder

    cache.mkdir(parents=True, exist_ok=True)
    ids, texts = _scale_records(cache, DATA_RECORDS, "posts")
    vectors_path, model_path = cache / "vectors.npy", cache / "model.joblib"
    if vectors_path.exists() and model_path.exists():
        return ids, texts, np.load(vectors_path, mmap_mode="r")
    t = time.perf_counter()
    model = TextEmbedder(dim=DIM, random_state=1).fit(random.Random(1).sample(texts, min(len(texts), 100_000)))
    model.save(model_path)
    print(f"  model fitted in {time.perf_counter() - t:.0f} s", flush=True)
    vectors = np.vstack([model.transform(texts[i : i + 50_000]) for i in range(0, len(texts), 50_000)])
    vectors = unit_rows(vectors)
    np.save(vectors_path, vectors)
    (cache / "ids.json").write_text(json.dumps(ids))
    print(f"  embedded {len(texts)} records in {time.perf_counter() - t:.0f} s", flush=True)
    return ids, texts, vectors


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def prepare_queries(cache: Path, texts: list[str], vectors: np.ndarray, n: int) -> dict[str, Any]:
    """Fragment and whole-record query vectors over the first ``n`` records, with exact 10th scores."""
    import faiss

    from lockstep.index.beam import fragment_queries
    from lockstep.model.embedding import TextEmbedder

    path = cache / f"queries-{n}.npz"
    if path.exists():
        got = np.load(path)
        return {name: got[name] for name in got.files}
    rows = random.Random(11).sample(range(n), 3_000)
    fragment_rows, whole_rows = rows[:2_000], rows[2_000:]
    fragments = fragment_queries([texts[i] for i in fragment_rows], seed=12)
    model = TextEmbedder.load(cache / "model.joblib")
    out: dict[str, Any] = {
        "fragments": unit_rows(model.transform(fragments)),
        "whole": unit_rows(model.transform([texts[i] for i in whole_rows])),
        "fragment_rows": np.array(fragment_rows), "whole_rows": np.array(whole_rows),
    }
    base = np.ascontiguousarray(vectors[:n])
    faiss.omp_set_num_threads(2)
    for name in ("fragments", "whole"):
        scores, _ = faiss.knn(out[name], base, K, metric=faiss.METRIC_INNER_PRODUCT)
        out[f"{name}_kth"] = scores[:, K - 1].copy()
    (cache / f"queries-{n}.json").write_text(json.dumps({"fragments": fragments}))
    np.savez(path, **out)
    return out


# --- building ---------------------------------------------------------------------------------


def train_sample(vectors: np.ndarray, n: int) -> np.ndarray:
    rows = np.sort(np.random.default_rng(7).choice(n, min(n, TRAIN_SAMPLE), replace=False))
    return np.ascontiguousarray(vectors[rows])


def coarse_centroids(cache: Path, vectors: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """IVF4096 k-means centroids on the seeded sample (cached with their training seconds)."""
    import faiss

    path = cache / f"ivf4096-centroids-{n}.npz"
    if path.exists():
        got = np.load(path)
        return got["centroids"], float(got["seconds"])
    sample = train_sample(vectors, n)
    t = time.perf_counter()
    kmeans = faiss.Kmeans(DIM, 4096, niter=20, seed=1234, spherical=True, verbose=False)
    kmeans.train(sample)
    seconds = time.perf_counter() - t
    np.savez(path, centroids=kmeans.centroids, seconds=seconds)
    return kmeans.centroids, seconds


def build(config: dict[str, Any], base: np.ndarray, cache: Path, n: int):
    """The index of one configuration over ``base`` and its build seconds (2 threads)."""
    import faiss

    faiss.omp_set_num_threads(2)
    ip = faiss.METRIC_INNER_PRODUCT
    extra = 0.0
    t = time.perf_counter()
    if config["kind"] == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, config["m"], ip)
        index.hnsw.efConstruction = config["efc"]
    elif config["kind"] == "hnsw_sq":
        index = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, config["m"], ip)
        index.hnsw.efConstruction = config["efc"]
        index.train(train_sample(base, n))
    else:
        centroids, extra = coarse_centroids(cache, base, n)
        t = time.perf_counter()
        index = faiss.index_factory(DIM, config["factory"], ip)
        ivf = faiss.extract_index_ivf(index)
        ivf.quantizer.add(centroids)  # trained: IndexIVF.train skips the coarse k-means
        index.train(train_sample(base, n))
    for i in range(0, len(base), 100_000):
        index.add(np.ascontiguousarray(base[i : i + 100_000]))
    return index, time.perf_counter() - t + extra


def search_params(config: dict[str, Any]) -> list[tuple[dict[str, int], Any]]:
    """(label, faiss SearchParameters) for each point of the configuration's ladder."""
    import faiss

    out = []
    if config["kind"] == "hnsw":
        for ef in EF_LADDER:
            out.append(({"efSearch": ef}, faiss.SearchParametersHNSW(efSearch=ef)))
    elif config["kind"] == "hnsw_refine":
        for kf in config["k_factors"]:
            for ef in EF_LADDER:
                p = faiss.IndexRefineSearchParameters(k_factor=kf, base_index_params=faiss.SearchParametersHNSW(efSearch=ef))
                out.append(({"efSearch": ef, "k_factor": kf}, p))
    elif config["kind"] == "hnsw_sq":
        for ef in EF_LADDER:
            out.append(({"efSearch": ef}, faiss.SearchParametersHNSW(efSearch=ef)))
    elif "RFlat" in config["factory"]:
        for kf in K_FACTORS:
            for nprobe in NPROBE_LADDER:
                p = faiss.IndexRefineSearchParameters(k_factor=kf, base_index_params=faiss.SearchParametersIVF(nprobe=nprobe))
                out.append(({"nprobe": nprobe, "k_factor": kf}, p))
    else:
        for nprobe in NPROBE_LADDER:
            out.append(({"nprobe": nprobe}, faiss.SearchParametersIVF(nprobe=nprobe)))
    return out


# --- measuring --------------------------------------------------------------------------------


def recall(found: np.ndarray, queries: np.ndarray, kth: np.ndarray, vectors: np.ndarray) -> float:
    """Recall@10 by exact scores of the returned rows (>= exact 10th - 1e-5; ties count)."""
    safe = np.where(found >= 0, found, 0)
    exact = np.einsum("qkd,qd->qk", np.asarray(vectors[safe.ravel()]).reshape(*safe.shape, DIM), queries)
    hits = ((exact >= kth[:, None] - 1e-5) & (found >= 0)).sum(axis=1)
    return float(np.mean(np.minimum(hits, K) / K))


def one_at_a_time(index, queries: np.ndarray, params) -> tuple[np.ndarray, float]:
    """Each query alone on one thread, as serving runs them: rows found, median ms/query."""
    import faiss

    faiss.omp_set_num_threads(1)
    found = np.empty((len(queries), K), dtype=np.int64)
    times = []
    for i in range(len(queries)):
        t = time.perf_counter()
        _, rows = index.search(queries[i : i + 1], K, params=params)
        times.append(time.perf_counter() - t)
        found[i] = rows[0]
    return found, statistics.median(times) * 1000


def batched(index, queries: np.ndarray, params) -> float:
    import faiss

    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    index.search(queries, K, params=params)
    return (time.perf_counter() - t) * 1000 / len(queries)


def measure(name: str, config: dict[str, Any], base: np.ndarray, queries: dict[str, Any], cache: Path,
            results: dict[str, Any], save) -> None:
    """Build one configuration (and its refine variant) and measure every ladder point."""
    import faiss

    n = len(base)
    index, build_s = build(config, base, cache, n)
    variants = [(name, config, index, build_s)]
    if config["kind"] == "hnsw_sq" and f"{name},RFlat" not in results:
        t = time.perf_counter()
        refine = faiss.IndexRefineFlat(index, faiss.swig_ptr(base))  # copies base into its flat stage
        refine_config = {"kind": "hnsw_refine", "k_factors": config["k_factors"]}
        variants.append((f"{name},RFlat", refine_config, refine, build_s + time.perf_counter() - t))
    for label, cfg, idx, seconds in variants:
        if results.get(label, {}).get("done"):
            continue
        entry = {"build_s": round(seconds, 1), "memory_mb": round(faiss.serialize_index(idx).nbytes / 2**20, 1),
                 "points": [], "done": False}
        results[label] = entry
        for param, params in search_params(cfg):
            frag_found, frag_ms = one_at_a_time(idx, queries["fragments"], params)
            whole_found, whole_ms = one_at_a_time(idx, queries["whole"], params)
            point = {
                "params": param,
                "recall_fragments": round(recall(frag_found, queries["fragments"], queries["fragments_kth"], base), 4),
                "recall_whole": round(recall(whole_found, queries["whole"], queries["whole_kth"], base), 4),
                "ms_1thread": round(frag_ms, 4), "ms_1thread_whole": round(whole_ms, 4),
                "ms_batch1000_2threads": round(batched(idx, queries["fragments"][:1000], params), 4),
            }
            entry["points"].append(point)
            save()
            print(f"    {label} {param}: recall frag {point['recall_fragments']:.3f} whole {point['recall_whole']:.3f}"
                  f" {point['ms_1thread']:.3f} ms/q", flush=True)
        entry["done"] = True
        save()
        print(f"  {label}: build {seconds:.0f} s, {entry['memory_mb']:.0f} MB", flush=True)


@contextlib.contextmanager
def heavy_lock(enabled: bool):
    """Hold the machine's heavy-job lock for one configuration (others' jobs interleave between)."""
    if not enabled:
        yield
        return
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def machine() -> dict[str, Any]:
    import faiss

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "ram_gb": round(memory, 1), "python": platform.python_version(),
            "faiss": faiss.__version__, "cpu": platform.processor() or platform.machine(), "shared": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=DATA_RECORDS, help="measure on the first N vectors")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lockstep-frontier"))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), metavar="NAME",
                        help="configuration names, space-separated (default: all, in this order: %(default)s)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to draw (e.g. docs/bench_frontier.png)")
    parser.add_argument("--prepare-only", action="store_true", help="build the data and queries, then stop")
    parser.add_argument("--no-lock", action="store_true", help=f"do not take {LOCK}")
    args = parser.parse_args()
    if not 1_000 <= args.records <= DATA_RECORDS:
        parser.error(f"--records must be between 1000 and {DATA_RECORDS}, got {args.records}")
    names = args.configs
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown --configs {unknown}; known: {', '.join(CONFIGS)}")
    cached = (args.cache / "vectors.npy").exists() and (args.cache / f"queries-{args.records}.npz").exists()
    with heavy_lock(not args.no_lock and not cached):  # loading the cache is light
        _, texts, vectors = prepare_data(args.cache)
        queries = prepare_queries(args.cache, texts, vectors, args.records)
    print(f"data: {len(texts)} records, {len(queries['fragments'])} fragment + {len(queries['whole'])} whole-record "
          f"queries at n={args.records} in {args.cache}", flush=True)
    if args.prepare_only:
        return
    out = args.cache / f"frontier-{args.records}.json"
    doc = json.loads(out.read_text()) if out.exists() else {"machine": machine(), "records": args.records,
                                                             "train_sample": TRAIN_SAMPLE, "configs": {}}
    results = doc["configs"]

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)

    base = np.load(args.cache / "vectors.npy", mmap_mode="r")[: args.records]
    base = np.ascontiguousarray(base)
    for name in names:
        wanted = [name] + ([f"{name},RFlat"] if CONFIGS[name]["kind"] == "hnsw_sq" else [])
        if all(results.get(w, {}).get("done") for w in wanted):
            print(f"  {name}: measured before, skipped", flush=True)
            continue
        with heavy_lock(not args.no_lock):
            measure(name, CONFIGS[name], base, queries, args.cache, results, save)
    print(summary(results), flush=True)
    if args.plot:
        plot(results, args.plot, args.records)
        print(f"plot: {args.plot}", flush=True)


# --- reporting --------------------------------------------------------------------------------


def qps(point: dict[str, Any]) -> float:
    return 1000.0 / max(point["ms_1thread"], 1e-6)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (recall, qps) points no other point beats on both, by recall."""
    best: list[tuple[float, float]] = []
    for r, q in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not best or q > best[-1][1]:
            best.append((r, q))
    return sorted(best)


def cheapest(entry: dict[str, Any], target: float) -> dict[str, Any] | None:
    """The fastest single-thread point whose fragment AND whole-record recall reach ``target``."""
    ok = [p for p in entry["points"] if p["recall_fragments"] >= target and p["recall_whole"] >= target]
    return min(ok, key=lambda p: p["ms_1thread"]) if ok else None


def summary(results: dict[str, Any]) -> str:
    """Markdown: the cheapest point per configuration at recall >= 0.95 and >= 0.96, then every point."""
    lines = ["| config | target | params | recall frag | recall whole | ms/q 1 thread | q/s 1 core | "
             "ms/q batch 2 thr | build s | MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results.items():
        for target in (0.95, 0.96):
            p = cheapest(entry, target)
            if p is None:
                lines.append(f"| {name} | {target} | not reached | | | | | | {entry['build_s']:.0f} | {entry['memory_mb']:.0f} |")
                continue
            lines.append(f"| {name} | {target} | {_params(p)} | {p['recall_fragments']:.3f} | {p['recall_whole']:.3f} | "
                         f"{p['ms_1thread']:.3f} | {qps(p):.0f} | {p['ms_batch1000_2threads']:.3f} | "
                         f"{entry['build_s']:.0f} | {entry['memory_mb']:.0f} |")
    lines += ["", "All points (params: recall fragments / recall whole / ms per query on 1 thread):", ""]
    for name, entry in results.items():
        cells = [f"{_params(p)}: {p['recall_fragments']:.3f}/{p['recall_whole']:.3f}/{p['ms_1thread']:.3f}"
                 for p in entry["points"]]
        lines.append(f"- **{name}** (build {entry['build_s']:.0f} s, {entry['memory_mb']:.0f} MB): " + "; ".join(cells))
    return "\n".join(lines)


def _params(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in point["params"].items())


def plot(results: dict[str, Any], path: Path, records: int) -> None:
    """Recall@10 on fragments (x) against queries/s on one core (y, log); Pareto frontier marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # more lines than the default 10 colours
    everything = []
    for name, entry in results.items():
        groups: dict[Any, list[dict[str, Any]]] = {}
        for p in entry["points"]:
            groups.setdefault(p["params"].get("k_factor"), []).append(p)
        for kf, points in groups.items():
            label = f"{name}{f' k_factor {kf}' if kf else ''} (build {entry['build_s']:.0f} s, {entry['memory_mb']:.0f} MB)"
            xs, ys = [p["recall_fragments"] for p in points], [qps(p) for p in points]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=label,
                    linestyle="--" if name.startswith("IVF") else "-")
            everything += list(zip(xs, ys, strict=True))
    if everything:
        front = pareto(everything)
        ax.plot([r for r, _ in front], [q for _, q in front], color="black", linewidth=2.5, alpha=0.35,
                label="Pareto frontier")
    ax.axvline(0.95, color="red", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 on 3-8-word fragment queries (held out)")
    ax.set_ylabel("queries/s on one core (one query at a time)")
    ax.set_title(f"FAISS speed/recall frontier, {records:,} x {DIM} TF-IDF/SVD vectors of the demo posts (shared 2-core box)")
    ax.set_xlim(left=min((r for r, _ in everything), default=0.5) - 0.01, right=1.001)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
