"""The index types: how each is configured, built, searched, and what it can do.

Four types, one contract (``VectorIndex``: exact upserts and deletes, search by inner
product, stored vectors readable exactly):

- ``flat``: exact (``IndexIDMap2`` over ``IndexFlatIP``); removes for real.
- ``ivf``: ``IndexIVFFlat``; removes for real (a hashtable direct map); ``nprobe`` cells
  visited per query.
- ``hnsw``: ``IndexHNSWFlat``; cannot remove, so deletes are tombstones (see
  ``compaction``); ``ef_search`` is the beam.
- ``ivfpq``: IVF cells over 4-bit fast-scan product-quantised codes, with an exact
  re-rank of the best ``refine_factor * k`` candidates against the full vectors
  (``index_factory("IVF{nlist},PQ{m}x4fs,RFlat")``). The codes are scanned with SIMD
  lookup tables, so a probe costs a fraction of a flat one, and the re-rank gives back
  the exact order; it builds in a fraction of HNSW's time (k-means instead of a graph).
  It cannot remove either (``IndexRefine`` has no ``remove_ids``), so it shares HNSW's
  tombstones: labels are positions, the dead ones are filtered inside FAISS by the
  base index's ``IDSelector``. Its stored vectors are the re-rank's exact copies.

"Positional" types (``hnsw``, ``ivfpq``) label vectors by their position, keep a flat
copy of every vector (``flat_storage``) and compact by rebuilding; "trained" types
(``ivf``, ``ivfpq``) learn their cells from a sample before the first add. The search
settings (``SEARCH_KNOBS``) are not part of what is built: validation chooses them
(``lockstep.index.tuning``), the manifest keeps them, loading applies them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lockstep.core.errors import LockstepError

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
POSITIONAL_KINDS = ("hnsw", "ivfpq")  # labels are positions; deletes are tombstones
TRAINED_KINDS = ("ivf", "ivfpq")  # cells learnt from a sample before the first add
SEARCH_KNOBS: dict[str, tuple[str, ...]] = {"flat": (), "ivf": ("nprobe",), "hnsw": ("ef_search",),
                                            "ivfpq": ("nprobe", "refine_factor")}
IVF_TRAIN_PER_CELL = 39  # FAISS warns below 39 training points per cell
IVF_TRAIN_MAX = 160_000  # more training points buy no recall here and cost k-means time


@dataclass(frozen=True)
class IndexSpec:
    """How to build an index and search it. Defaults give exact search."""

    kind: str = "flat"
    nlist: int | None = None  # IVF cells; None: about 4*sqrt(n)
    nprobe: int = 16  # IVF cells visited per query
    hnsw_m: int = 32
    ef_construction: int = 40  # 1M x 256: 110 s to build instead of 139 s at 80, same recall (docs/benchmarks.md)
    ef_search: int = 96
    pq_m: int | None = None  # ivfpq: sub-quantisers of 4 bits; None: dim / 4 (16 bytes per 64 dims)
    refine_factor: int = 16  # ivfpq: candidates re-ranked exactly per result wanted (8 held 0.79 at 1M: bench_frontier)
    max_dead_fraction: float = 0.25  # positional types: rebuild when more labels are dead

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise LockstepError(f"unknown index type {self.kind!r}; choose one of {', '.join(INDEX_TYPES)}")
        if not 0.0 < self.max_dead_fraction <= 1.0:
            raise LockstepError(f"max_dead_fraction must lie in (0, 1], got {self.max_dead_fraction}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "refine_factor"):
            if int(getattr(self, name)) < 1:
                raise LockstepError(f"index setting {name} must be at least 1, got {getattr(self, name)}")
        if self.nlist is not None and int(self.nlist) < 1:
            raise LockstepError(f"index setting nlist must be at least 1, got {self.nlist}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def search_settings(self) -> dict[str, int]:
        """The settings of this type that searches read and validation tunes (``SEARCH_KNOBS``)."""
        return {name: int(getattr(self, name)) for name in SEARCH_KNOBS[self.kind]}


def ivf_cells(n: int) -> int:
    """IVF cells for ``n`` vectors: about 4*sqrt(n), with at least 39 vectors per cell."""
    return max(1, min(int(4 * np.sqrt(max(n, 1))), max(1, n // IVF_TRAIN_PER_CELL)))


def pq_subquantizers(spec: IndexSpec, dim: int) -> int:
    """Sub-quantisers of an ``ivfpq`` index: the spec's, or dim/4; must divide ``dim``."""
    m = int(spec.pq_m or max(1, dim // 4))
    if dim % m:
        raise LockstepError(f"an ivfpq index of dimension {dim} needs pq_m dividing it, got {m}")
    return m


def new_faiss(spec: IndexSpec, dim: int, training: np.ndarray) -> Any:
    """An empty FAISS index of ``spec``'s type, trained on ``training`` where the type learns cells."""
    import faiss

    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if spec.kind == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = spec.ef_construction
        return idx
    n = len(training)
    nlist = spec.nlist or ivf_cells(n)
    if n < nlist:
        raise LockstepError(f"an IVF index with {nlist} cells needs at least {nlist} vectors to train, got {n}")
    training = _training_sample(training, nlist)
    if spec.kind == "ivf":
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(training)
        # A hashtable direct map lets us reconstruct stored vectors and still remove ids.
        idx.set_direct_map_type(faiss.DirectMap.Hashtable)
        return idx
    idx = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_subquantizers(spec, dim)}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    idx.train(training)
    return idx


def _training_sample(training: np.ndarray, nlist: int) -> np.ndarray:
    """An evenly spread subset of the training vectors: k-means needs ~39 per cell, not all of them."""
    want = min(len(training), max(IVF_TRAIN_PER_CELL * nlist, min(IVF_TRAIN_MAX, len(training))))
    if want >= len(training):
        return training
    step = len(training) / want
    return np.ascontiguousarray(training[(np.arange(want) * step).astype(np.int64)])


def empty_like(index: Any, spec: IndexSpec, dim: int) -> Any:
    """An empty index of the same type and training, for a compaction to fill again."""
    import faiss

    if spec.kind == "ivfpq":
        refine = faiss.downcast_index(index)
        base = faiss.clone_index(faiss.downcast_index(refine.base_index))
        base.reset()
        out = faiss.IndexRefineFlat(base)
        out.k_factor = refine.k_factor
        return out
    if spec.kind == "hnsw":
        return new_faiss(spec, dim, np.zeros((0, dim), dtype=np.float32))
    raise LockstepError(f"an index of type {spec.kind} is compacted by FAISS itself")


def flat_storage(index: Any, spec: IndexSpec) -> Any:
    """The ``IndexFlat`` holding the exact vectors of a positional or flat index (None for ``ivf``)."""
    import faiss

    if spec.kind == "hnsw":
        return faiss.downcast_index(index.storage)
    if spec.kind == "ivfpq":
        return faiss.downcast_index(faiss.downcast_index(index).refine_index)
    if spec.kind == "flat":
        return faiss.downcast_index(index.index)
    return None


def search_params(spec: IndexSpec, overrides: dict[str, int] | None = None, selector: Any = None) -> Any:
    """FAISS search parameters of one call: the spec's settings, ``overrides`` on top, ``selector``.

    Parameters go with each call, never onto the shared index object (field notes:
    setting ``nprobe`` or ``efSearch`` on the index races between threads).
    """
    import faiss

    settings = {**spec.search_settings(), **(overrides or {})}
    if spec.kind == "flat":
        params = faiss.SearchParameters() if selector is not None else None
    elif spec.kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(settings["ef_search"])
    else:
        params = faiss.SearchParametersIVF()
        params.nprobe = int(settings["nprobe"])
    if selector is not None:
        params.sel = selector
    if spec.kind != "ivfpq":
        return params
    refine = faiss.IndexRefineSearchParameters()
    refine.k_factor = float(settings["refine_factor"])
    refine.base_index_params = params
    refine.keep = params  # the SWIG object must outlive the call: the C++ side only points to it
    return refine
