"""One model version's vectors in FAISS, addressed by record id.

FAISS knows int64 labels; records have string ids. ``VectorIndex`` keeps the mapping
and hides the differences between index types:

- ``flat``: exact inner product (``IndexIDMap2`` over ``IndexFlatIP``), the default and
  the recall baseline; upsert and delete remove the old vector for real.
- ``ivf``: ``IndexIVFFlat``, trained by k-means on the vectors it is built from; ids
  are stable under ``remove_ids``; ``nprobe`` is passed per search, never set on the
  shared object (field notes: setting it races between threads).
- ``hnsw``: ``IndexHNSWFlat``, which cannot remove: an upsert adds a new label and
  tombstones the old one, a delete tombstones; searches exclude tombstones with an
  ``IDSelector`` so they never surface. ``dead_fraction`` tells when a rebuild pays.

All mutation and search goes through a readers-writer lock: FAISS searches may run
together but never beside an add or remove.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import LockstepError
from .rwlock import RWLock

INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexSpec:
    """How to build an index. Defaults give exact search."""

    kind: str = "flat"
    nlist: int | None = None  # IVF cells; None: about 4*sqrt(n)
    nprobe: int = 16  # IVF cells visited per query
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 96

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise LockstepError(f"unknown index type {self.kind!r}; choose one of {', '.join(INDEX_TYPES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class SearchHits:
    """Results of one query: record ids and inner-product scores, best first."""

    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


class VectorIndex:
    """A FAISS index of unit vectors keyed by record id (thread-safe)."""

    def __init__(self, dim: int, spec: IndexSpec | None = None) -> None:
        self.dim = int(dim)
        self.spec = spec or IndexSpec()
        self._faiss = None
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._dead: set[int] = set()
        self._dead_selector: Any = None
        self._lock = RWLock()

    # --- building ------------------------------------------------------------------

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, spec: IndexSpec | None = None) -> VectorIndex:
        """A new index over these vectors (IVF is trained on them)."""
        vectors = _as_matrix(vectors)
        index = cls(vectors.shape[1], spec)
        index._faiss = index._new_faiss(vectors)
        index.add(ids, vectors)
        return index

    def _new_faiss(self, training: np.ndarray):
        import faiss

        d = self.dim
        if self.spec.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if self.spec.kind == "hnsw":
            idx = faiss.IndexHNSWFlat(d, self.spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = self.spec.ef_construction
            return idx
        n = len(training)
        nlist = self.spec.nlist or max(1, min(int(4 * np.sqrt(max(n, 1))), max(1, n // 39)))
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        if n < nlist:
            raise LockstepError(f"an IVF index with {nlist} cells needs at least {nlist} vectors to train, got {n}")
        idx.train(training)
        # A hashtable direct map lets us reconstruct stored vectors and still remove ids.
        idx.set_direct_map_type(faiss.DirectMap.Hashtable)
        return idx

    # --- mutation --------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add records that are not in the index yet (use ``upsert`` otherwise)."""
        vectors = _as_matrix(vectors, self.dim)
        if len(ids) != len(vectors):
            raise LockstepError(f"{len(ids)} ids but {len(vectors)} vectors")
        if len(set(ids)) != len(ids):
            raise LockstepError("duplicate record ids in one add")
        with self._lock.write():
            clash = [i for i in ids if i in self._label_of]
            if clash:
                raise LockstepError(f"records already in the index: {clash[:5]} (use upsert)")
            self._add_locked(list(ids), vectors)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace: afterwards each id has exactly the given vector."""
        vectors = _as_matrix(vectors, self.dim)
        last = {rid: i for i, rid in enumerate(ids)}
        keep = sorted(last.values())
        ids = [ids[i] for i in keep]
        vectors = vectors[keep]
        with self._lock.write():
            self._remove_locked([i for i in ids if i in self._label_of])
            self._add_locked(ids, vectors)

    def remove(self, ids: Sequence[str]) -> int:
        """Remove records by id; ids not in the index are ignored. Returns how many went."""
        with self._lock.write():
            return self._remove_locked([i for i in dict.fromkeys(ids) if i in self._label_of])

    def _add_locked(self, ids: list[str], vectors: np.ndarray) -> None:
        if not ids:
            return
        if self._faiss is None:
            self._faiss = self._new_faiss(vectors)
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        if self.spec.kind == "hnsw":
            if self._faiss.ntotal != self._next_label:
                raise LockstepError("HNSW labels out of step with the graph; rebuild the index")
            self._faiss.add(vectors)
        else:
            self._faiss.add_with_ids(vectors, labels)
        for rid, label in zip(ids, labels.tolist(), strict=True):
            self._label_of[rid] = label
            self._id_of[label] = rid
        self._next_label += len(ids)

    def _remove_locked(self, ids: list[str]) -> int:
        if not ids:
            return 0
        labels = np.array([self._label_of.pop(rid) for rid in ids], dtype=np.int64)
        for label in labels.tolist():
            del self._id_of[label]
        if self.spec.kind == "hnsw":
            self._dead.update(labels.tolist())
            self._dead_selector = None
        else:
            import faiss

            self._faiss.remove_ids(faiss.IDSelectorArray(labels))
        return len(labels)

    # --- queries ---------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10) -> list[SearchHits]:
        """The ``k`` nearest records of each query by inner product."""
        queries = _as_matrix(queries, self.dim)
        with self._lock.read():
            if self._faiss is None or len(self._label_of) == 0:
                return [SearchHits() for _ in range(len(queries))]
            k_eff = min(k, len(self._label_of))
            scores, labels = self._faiss.search(queries, k_eff, params=self._search_params())
            id_of = self._id_of
            out = []
            for row_scores, row_labels in zip(scores, labels, strict=True):
                hits = SearchHits()
                for s, label in zip(row_scores.tolist(), row_labels.tolist(), strict=True):
                    rid = id_of.get(label)
                    if label >= 0 and rid is not None:
                        hits.ids.append(rid)
                        hits.scores.append(s)
                out.append(hits)
            return out

    def _search_params(self):
        import faiss

        if self.spec.kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.spec.nprobe)
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = self.spec.ef_search
            if self._dead:
                if self._dead_selector is None:
                    batch = faiss.IDSelectorBatch(np.fromiter(self._dead, dtype=np.int64))
                    self._dead_selector = (batch, faiss.IDSelectorNot(batch))
                params.sel = self._dead_selector[1]
            return params
        return None

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these records (for validation against fresh embeddings)."""
        with self._lock.read():
            missing = [i for i in ids if i not in self._label_of]
            if missing:
                raise LockstepError(f"records not in the index: {missing[:5]}")
            out = np.empty((len(ids), self.dim), dtype=np.float32)
            for row, rid in enumerate(ids):
                out[row] = self._reconstruct(self._label_of[rid])
            return out

    def _reconstruct(self, label: int) -> np.ndarray:
        return self._faiss.reconstruct(int(label))

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._label_of

    @property
    def ids(self) -> list[str]:
        with self._lock.read():
            return list(self._label_of)

    @property
    def dead_fraction(self) -> float:
        total = self._next_label
        return len(self._dead) / total if total else 0.0

    # --- serialisation (used by index_store) ---------------------------------------------

    def to_state(self) -> tuple[bytes, dict[str, Any]]:
        """The FAISS bytes and the id mapping, taken under the lock (consistent pair)."""
        import faiss

        with self._lock.read():
            if self._faiss is None:
                raise LockstepError("cannot save an empty index that was never built")
            blob = faiss.serialize_index(self._faiss).tobytes()
            mapping = {
                "labels": list(self._id_of.keys()),
                "ids": list(self._id_of.values()),
                "next_label": self._next_label,
                "dead": sorted(self._dead),
                "dim": self.dim,
                "spec": self.spec.to_dict(),
            }
            return blob, mapping

    @classmethod
    def from_state(cls, blob: bytes, mapping: dict[str, Any]) -> VectorIndex:
        import faiss

        index = cls(int(mapping["dim"]), IndexSpec.from_dict(mapping["spec"]))
        index._faiss = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        index._id_of = {int(lbl): rid for lbl, rid in zip(mapping["labels"], mapping["ids"], strict=True)}
        index._label_of = {rid: lbl for lbl, rid in index._id_of.items()}
        index._next_label = int(mapping["next_label"])
        index._dead = set(mapping.get("dead", []))
        expected = index._next_label if index.spec.kind == "hnsw" else len(index._id_of)
        if index._faiss.ntotal != expected or index._faiss.d != index.dim:
            raise LockstepError(
                f"index holds {index._faiss.ntotal} vectors of dim {index._faiss.d}, "
                f"its id map expects {expected} of dim {index.dim}"
            )
        return index


def recall_at_k(approx: VectorIndex, exact: VectorIndex, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k that the approximate index also returns (mean over queries)."""
    a = approx.search(queries, k)
    e = exact.search(queries, k)
    found = [len(set(x.ids) & set(y.ids)) / max(len(y.ids), 1) for x, y in zip(a, e, strict=True)]
    return float(np.mean(found)) if found else 1.0


def _as_matrix(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise LockstepError(f"expected a 2-D array of vectors, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise LockstepError(f"vectors have dimension {x.shape[1]}, the index has {dim}")
    return x
