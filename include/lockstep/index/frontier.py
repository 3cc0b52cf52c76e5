"""The measured speed/recall frontier that ``auto`` follows (``benchmarks/bench_frontier.py``).

Why a table and not a rule of thumb: the FAISS wiki's 1M benchmarks put IVF with fast-scan
PQ and a re-rank well ahead of HNSW, and on this project's vectors (TF-IDF + SVD, 256-d,
queried with 3-8-word fragments) it never reached recall@10 0.95: the 4-bit codes rank the
candidates so badly that the re-rank of 8 x k of them still found only 0.79 (nprobe 128).
Only a measurement on the vectors users have says which configuration is cheapest.

Each candidate is the cheapest point of one configuration that reached recall@10 >= 0.95 on
2,000 held-out fragment queries at 1M x 256 (2 cores, docs/benchmarks.md): its search cost
on one core and its build time. ``choose`` projects the build time to the record count and
dimension (linear in both: the HNSW insert is ~log n per vector, a small factor over the
range served here) and takes the fastest search whose build fits the budget
(``LOCKSTEP_INDEX_BUILD_BUDGET`` seconds, default 300); when none fits, the fastest build.
The search setting in the table is where validation's walk is expected to stop; validation
(``tuning``) chooses it again on the index actually built.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.index.kinds import IndexSpec

DEFAULT_BUILD_BUDGET = 300.0  # seconds on the machine that runs the merge
MEASURED_RECORDS, MEASURED_DIM = 1_000_000, 256


@dataclass(frozen=True)
class Candidate:
    """One configuration's cheapest point at recall@10 >= 0.95 on fragments, measured at 1M x 256."""

    name: str
    spec: IndexSpec
    search_ms: float  # one query, one core
    build_seconds: float  # both cores

    def projected_build(self, n_records: int, dim: int) -> float:
        return self.build_seconds * (n_records / MEASURED_RECORDS) * (dim / MEASURED_DIM)


# bench_frontier.py at 1M x 256, 2 cores (2026-12-08; the machine was shared, timings +-15 %).
CANDIDATES = (
    Candidate("HNSW48, efConstruction 80", IndexSpec(kind="hnsw", hnsw_m=48, ef_construction=80, ef_search=96), 0.751, 433),
    Candidate("HNSW32, efConstruction 80", IndexSpec(kind="hnsw", hnsw_m=32, ef_construction=80, ef_search=192), 0.842, 242),
    Candidate("HNSW16, efConstruction 80", IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=80, ef_search=256), 1.071, 222),
    Candidate("HNSW32, efConstruction 40", IndexSpec(kind="hnsw", hnsw_m=32, ef_construction=40, ef_search=192), 1.168, 228),
    Candidate("IVF4096, flat", IndexSpec(kind="ivf", nprobe=64), 2.118, 185),
)


def build_budget() -> float:
    """Seconds an ``auto`` index may take to build (``LOCKSTEP_INDEX_BUILD_BUDGET``)."""
    from lockstep.core.config import build_budget_setting

    return build_budget_setting(DEFAULT_BUILD_BUDGET)


def choose(n_records: int, dim: int, budget: float | None = None) -> Candidate:
    """The fastest-searching candidate whose projected build fits ``budget``; else the fastest build."""
    budget = build_budget() if budget is None else budget
    fits = [c for c in CANDIDATES if c.projected_build(n_records, dim) <= budget]
    if fits:
        return min(fits, key=lambda c: c.search_ms)
    return min(CANDIDATES, key=lambda c: c.build_seconds)
