"""One model version's vectors in FAISS, addressed by record id.

FAISS knows int64 labels; records have string ids. ``VectorIndex`` keeps the mapping
and hides the differences between index types:

- ``flat``: exact inner product (``IndexIDMap2`` over ``IndexFlatIP``), the default and
  the recall baseline; upsert and delete remove the old vector for real.
- ``ivf``: ``IndexIVFFlat``, trained by k-means on the vectors it is built from; ids
  are stable under ``remove_ids``; ``nprobe`` is passed per search, never set on the
  shared object (field notes: setting it races between threads).
- ``hnsw``: ``IndexHNSWFlat``, which cannot remove. Deletes and updates stay exact
  all the same: an upsert adds the new vector under a new label and tombstones the
  old label, a delete tombstones. A tombstoned label leaves the id map at once (so it
  can never be reported as a record) and is excluded inside FAISS's search by an
  ``IDSelector`` over a bitmap of dead labels (so it never takes one of the k places
  either). When the dead share passes ``IndexSpec.max_dead_fraction`` the graph is
  rebuilt from the live vectors alone (``compact``); labels are internal, ids stay.
  Builds and rebuilds use every core (``faiss.omp_set_num_threads``).

  A rebuild never holds the write lock while it builds (issue 21: at 1M records that
  froze every search for minutes). It copies the live vectors out under the read lock,
  a block at a time, builds the new graph from the copies with no lock held, catches up
  with the records added meanwhile the same way, and takes the write lock only for the
  swap: the last few additions, the tombstones of records deleted or replaced during
  the build (kept in a journal), and the new maps. Searches meanwhile use the old graph.
  Tombstones and compaction are ``lockstep.index.compaction`` (a mixin of the index).
- ``ivfpq``: IVF over fast-scan PQ codes with an exact re-rank (``kinds``); it cannot
  remove either and shares HNSW's tombstones and compaction.

How each type is built and searched, and which search settings it has, is
``lockstep.index.kinds``; per-call settings go with each search (never onto the shared
FAISS object).

``choose_spec`` picks the type from the record count: exact ``flat`` below
``LOCKSTEP_ANN_THRESHOLD`` records (default 200,000), above it the measured frontier's
fastest configuration within the build budget (``lockstep.index.frontier``). ``lockstep.index.recall.measure_recall`` gives recall@k of
any index against a brute-force scan of its own stored vectors, for the validation that
must show >= 0.95.

All mutation and search goes through a readers-writer lock: FAISS searches may run
together but never beside an add or remove. ``try_search`` searches only if the lock is
free at once, for callers that must never wait (the serving event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lockstep.core.errors import LockstepError
from lockstep.core.rwlock import RWLock
from lockstep.index.compaction import HnswCompaction
from lockstep.index.faiss_ops import all_cores, set_bits
from lockstep.index.kinds import (
    POSITIONAL_KINDS,
    SEARCH_KNOBS,
    IndexSpec,
    flat_storage,
    new_faiss,
    search_params,
)

DEFAULT_ANN_THRESHOLD = 200_000


@dataclass
class SearchHits:
    """Results of one query: record ids and inner-product scores, best first."""

    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


class VectorIndex(HnswCompaction):
    """A FAISS index of unit vectors keyed by record id (thread-safe)."""

    def __init__(self, dim: int, spec: IndexSpec | None = None) -> None:
        self.dim = int(dim)
        self.spec = spec or IndexSpec()
        self._faiss = None
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._dead: set[int] = set()
        self._dead_selector: Any = None  # (bitmap, IDSelectorBitmap, IDSelectorNot), built lazily
        self._lock = RWLock()
        self._compacting = threading.Lock()  # one compaction at a time
        self._journal: list[int] | None = None  # labels tombstoned while a compaction builds
        # Called with "snapshot", "chunk" (after each block is added) and "built" (before the
        # swap) from the compacting thread, holding no lock: tests pause a compaction here.
        self.compaction_hook: Callable[[str], None] | None = None

    # --- building ------------------------------------------------------------------

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, spec: IndexSpec | None = None) -> VectorIndex:
        """A new index over these vectors (IVF is trained on them)."""
        vectors = as_matrix(vectors)
        index = cls(vectors.shape[1], spec)
        index._faiss = index._new_faiss(vectors)
        index.add(ids, vectors)
        return index

    def _new_faiss(self, training: np.ndarray):
        return new_faiss(self.spec, self.dim, training)

    # --- mutation --------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add records that are not in the index yet (use ``upsert`` otherwise)."""
        vectors = as_matrix(vectors, self.dim)
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
        vectors = as_matrix(vectors, self.dim)
        last = {rid: i for i, rid in enumerate(ids)}
        keep = sorted(last.values())
        ids = [ids[i] for i in keep]
        vectors = vectors[keep]
        with self._lock.write():
            self._remove_locked([i for i in ids if i in self._label_of])
            self._add_locked(ids, vectors)
        self._compact_if_due()

    def remove(self, ids: Sequence[str]) -> int:
        """Remove records by id; ids not in the index are ignored. Returns how many went."""
        with self._lock.write():
            removed = self._remove_locked([i for i in dict.fromkeys(ids) if i in self._label_of])
        self._compact_if_due()
        return removed

    def _add_locked(self, ids: list[str], vectors: np.ndarray) -> None:
        if not ids:
            return
        if self._faiss is None:
            self._faiss = self._new_faiss(vectors)
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        if self.spec.kind in POSITIONAL_KINDS:
            if self._faiss.ntotal != self._next_label:
                raise LockstepError(f"{self.spec.kind} labels out of step with the index; rebuild it")
            with all_cores():
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
        if self.spec.kind in POSITIONAL_KINDS:
            self._mark_dead(labels)
        else:
            import faiss

            self._faiss.remove_ids(faiss.IDSelectorArray(labels))
        return len(labels)

    # --- queries ---------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, *, ef_search: int | None = None,
               settings: dict[str, int] | None = None) -> list[SearchHits]:
        """The ``k`` nearest records of each query by inner product.

        ``settings`` override the type's search settings for this call only (``nprobe``,
        ``ef_search``, ``refine_factor``: ``kinds.SEARCH_KNOBS``; ``tuning`` tries several);
        ``ef_search`` is the HNSW beam's shorthand.
        """
        queries = as_matrix(queries, self.dim)
        with self._lock.read():
            return self._search_locked(queries, k, self._overrides(ef_search, settings))

    def try_search(self, queries: np.ndarray, k: int = 10, *, ef_search: int | None = None) -> list[SearchHits] | None:
        """``search`` if the read lock is free right now, else None at once (never waits).

        For the serving event loop: a writer holding or awaiting the lock would otherwise
        freeze every request of the process while it lasts; on None the caller searches
        from a worker thread instead.
        """
        queries = as_matrix(queries, self.dim)
        with self._lock.try_read() as ok:
            return self._search_locked(queries, k, self._overrides(ef_search, None)) if ok else None

    def _overrides(self, ef_search: int | None, settings: dict[str, int] | None) -> dict[str, int]:
        """Per-call search settings, checked against what this type has."""
        out = dict(settings or {})
        if ef_search and self.spec.kind == "hnsw":
            out["ef_search"] = int(ef_search)
        unknown = sorted(set(out) - set(SEARCH_KNOBS[self.spec.kind]))
        if unknown:
            raise LockstepError(f"an index of type {self.spec.kind} has no search setting {', '.join(unknown)}")
        return out

    def _search_locked(self, queries: np.ndarray, k: int, overrides: dict[str, int]) -> list[SearchHits]:
        """The body of ``search`` (read lock held)."""
        if self._faiss is None or len(self._label_of) == 0:
            return [SearchHits() for _ in range(len(queries))]
        k_eff = min(k, len(self._label_of))
        scores, labels = self._faiss.search(queries, k_eff, params=self._search_params(overrides))
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

    def search_within(
        self, queries: np.ndarray, ids: Iterable[str], k: int = 10, *, ef_search: int | None = None,
        gather_below: float = 0.5,
    ) -> list[SearchHits]:
        """The ``k`` nearest records of each query among ``ids`` only (others are never returned).

        Added for the early verdict (issue 14): a champion's index searched as if it held
        only the records a candidate has loaded so far. The filter runs inside FAISS (an
        ``IDSelectorBitmap`` over the allowed labels in the search parameters), so all
        ``k`` places go to allowed records; ids not in the index are ignored, and
        tombstoned HNSW labels are never allowed (they are not in the id map).
        ``ef_search`` widens an HNSW beam, which a selective filter needs.

        A flat index whose filter admits fewer than ``gather_below`` of its vectors is
        searched exactly over just those rows instead (copied from its storage, one matrix
        product per batch): FAISS's filtered flat scan tests every stored vector one by one
        without BLAS, 40 s for 2,000 queries at 1M vectors where the gathered 10 % takes 2 s.
        """
        queries = as_matrix(queries, self.dim)
        with self._lock.read():
            labels = np.fromiter((self._label_of[i] for i in set(ids) if i in self._label_of), dtype=np.int64)
            if self._faiss is None or len(labels) == 0:
                return [SearchHits() for _ in range(len(queries))]
            k_eff = min(k, len(labels))
            if self.spec.kind == "flat" and len(labels) < gather_below * self._faiss.ntotal:
                scores, found = self._gathered_search(queries, np.sort(labels), k_eff)
            else:
                scores, found = self._selected_search(queries, labels, k_eff, ef_search)
            return [self._hits(row_scores, row_labels) for row_scores, row_labels in zip(scores, found, strict=True)]

    def _selected_search(self, queries: np.ndarray, labels: np.ndarray, k: int, ef_search: int | None):
        """FAISS's own search with an IDSelectorBitmap of ``labels`` (read lock held)."""
        import faiss

        bitmap = np.zeros(self._next_label // 8 + 1, dtype=np.uint8)
        set_bits(bitmap, labels)
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        overrides = {}
        if self.spec.kind == "hnsw" and ef_search:
            overrides["ef_search"] = max(self.spec.ef_search, int(ef_search))
        # The selector replaces the tombstone filter: dead labels are not in ``labels``.
        params = search_params(self.spec, overrides, selector)
        result = self._faiss.search(queries, k, params=params)
        del bitmap, selector
        return result

    def _gathered_search(self, queries: np.ndarray, labels: np.ndarray, k: int, batch: int = 256):
        """Exact top-k over the stored rows of ``labels`` only (flat; read lock held); ties by label."""
        stored_labels, matrix = self._storage_view()
        rows = np.flatnonzero(np.isin(stored_labels, labels))
        vectors, row_labels = matrix[rows], stored_labels[rows]
        out_scores = np.empty((len(queries), k), dtype=np.float32)
        out_labels = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), batch):
            scores = queries[start : start + batch] @ vectors.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores, axis=1)
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.lexsort((row_labels[top], -top_scores), axis=1)
            out_labels[start : start + batch] = row_labels[np.take_along_axis(top, order, axis=1)]
            out_scores[start : start + batch] = np.take_along_axis(top_scores, order, axis=1)
        return out_scores, out_labels

    def _hits(self, scores: np.ndarray, labels: np.ndarray) -> SearchHits:
        hits = SearchHits()
        for s, label in zip(scores.tolist(), labels.tolist(), strict=True):
            rid = self._id_of.get(label)
            if label >= 0 and rid is not None:
                hits.ids.append(rid)
                hits.scores.append(s)
        return hits

    def set_ef_search(self, ef_search: int) -> None:
        """Set the HNSW beam of later searches (the one validation chose: ``tuning``)."""
        if self.spec.kind != "hnsw":
            raise LockstepError(f"efSearch is a setting of HNSW indexes; this index is {self.spec.kind}")
        self.set_search(ef_search=ef_search)

    def set_search(self, **settings: int) -> None:
        """Set search settings of later searches (``nprobe``, ``ef_search``, ``refine_factor``)."""
        self._overrides(None, settings)
        with self._lock.write():
            self.spec = replace(self.spec, **{name: int(value) for name, value in settings.items()})

    def _search_params(self, overrides: dict[str, int] | None = None):
        dead = self._live_selector() if self.spec.kind in POSITIONAL_KINDS and self._dead else None
        return search_params(self.spec, overrides, dead)

    def _stored_rows(self, labels: np.ndarray) -> np.ndarray:
        """Copies of the stored vectors of these labels (HNSW and flat: straight from storage)."""
        view = self._storage_view()
        if view is not None:
            stored_labels, matrix = view
            if self.spec.kind in POSITIONAL_KINDS:
                return matrix[labels]
            rows = {int(lbl): row for row, lbl in enumerate(stored_labels.tolist())}
            return matrix[[rows[int(lbl)] for lbl in labels.tolist()]]
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        for row, label in enumerate(labels.tolist()):
            out[row] = self._reconstruct(label)
        return out

    def _storage_view(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, vectors) of every stored row as zero-copy views, or None for IVF.

        Only valid while the lock is held (the views point into FAISS's own memory).
        """
        import faiss

        if self._faiss is None or self._faiss.ntotal == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        flat = flat_storage(self._faiss, self.spec)
        if flat is None:
            return None
        if self.spec.kind in POSITIONAL_KINDS:
            labels = np.arange(self._faiss.ntotal, dtype=np.int64)
        else:
            labels = faiss.vector_to_array(self._faiss.id_map)
        n = flat.ntotal
        return labels, faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def iter_stored(self, chunk: int = 50_000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Live (ids, vectors) in blocks of ``chunk``, under the read lock, for exact scans.

        HNSW and flat blocks are views into FAISS's storage (no copy; valid until the
        next block is asked for); IVF blocks are reconstructed.
        """
        with self._lock.read():
            view = self._storage_view()
            if view is None:
                ids = list(self._label_of)
                for start in range(0, len(ids), chunk):
                    block = ids[start : start + chunk]
                    yield block, self._stored_rows(np.array([self._label_of[i] for i in block], dtype=np.int64))
                return
            labels, matrix = view
            id_of = self._id_of
            for start in range(0, len(labels), chunk):
                block = labels[start : start + chunk].tolist()
                keep = [row for row, label in enumerate(block) if label in id_of]
                rows = matrix[start : start + chunk]
                if len(keep) == len(block):
                    yield [id_of[label] for label in block], rows
                elif keep:
                    yield [id_of[block[row]] for row in keep], rows[keep]

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
            return blob, self._mapping_locked()

    @classmethod
    def from_state(cls, blob: bytes, mapping: dict[str, Any]) -> VectorIndex:
        import faiss

        index = cls(int(mapping["dim"]), IndexSpec.from_dict(mapping["spec"]))
        index._faiss = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        index._id_of = {int(lbl): rid for lbl, rid in zip(mapping["labels"], mapping["ids"], strict=True)}
        index._label_of = {rid: lbl for lbl, rid in index._id_of.items()}
        index._next_label = int(mapping["next_label"])
        index._dead = set(mapping.get("dead", []))
        expected = index._next_label if index.spec.kind in POSITIONAL_KINDS else len(index._id_of)
        if index._faiss.ntotal != expected or index._faiss.d != index.dim:
            raise LockstepError(
                f"index holds {index._faiss.ntotal} vectors of dim {index._faiss.d}, "
                f"its id map expects {expected} of dim {index.dim}"
            )
        return index

    def write_state(self, path: str) -> dict[str, Any]:
        """Write the FAISS index straight to ``path``; returns the id mapping of ``to_state``.

        Added for index_store (issue 10): at a million vectors ``to_state`` holds the
        index twice more in memory (serialised array, then bytes); this streams it.
        """
        import faiss

        with self._lock.read():
            if self._faiss is None:
                raise LockstepError("cannot save an empty index that was never built")
            faiss.write_index(self._faiss, str(path))
            return self._mapping_locked()

    def _mapping_locked(self) -> dict[str, Any]:
        """The id map, tombstones and spec that ``from_state`` needs beside the FAISS bytes."""
        return {
            "labels": list(self._id_of.keys()),
            "ids": list(self._id_of.values()),
            "next_label": self._next_label,
            "dead": sorted(self._dead),
            "dim": self.dim,
            "spec": self.spec.to_dict(),
        }


def ann_threshold() -> int:
    """Record count from which ``choose_spec`` picks an approximate index (LOCKSTEP_ANN_THRESHOLD)."""
    from lockstep.core.config import ann_threshold_setting

    return ann_threshold_setting(DEFAULT_ANN_THRESHOLD)


def choose_spec(n_records: int, dim: int) -> IndexSpec:
    """The index for ``n_records`` vectors of ``dim``: exact below the threshold, the measured frontier above.

    Above ``LOCKSTEP_ANN_THRESHOLD`` (default 200,000) a flat scan costs ~100 ms a query
    at 256-d; ``frontier.choose`` then takes the configuration that searched fastest at
    recall@10 >= 0.95 on fragment queries in ``bench_frontier`` whose build, projected to
    this size, fits ``LOCKSTEP_INDEX_BUILD_BUDGET`` (at 1M x 256 and 300 s: HNSW M=32,
    efConstruction 80, 0.84 ms a query where the earlier efConstruction 40 needed 1.17 ms
    for 6 % less build time). Validation then chooses the search setting on the index
    actually built (``tuning``), held to a 95 % lower bound on held-out queries.
    """
    from lockstep.index.frontier import choose

    if n_records < 0 or dim < 1:
        raise LockstepError(f"choose_spec needs n_records >= 0 and dim >= 1, got {n_records} and {dim}")
    if n_records < ann_threshold():
        return IndexSpec(kind="flat")
    return choose(n_records, dim).spec


def spec_for(index_type: str, n_records: int, dim: int) -> IndexSpec:
    """An index type as a user names it ("auto", "flat", "ivf", "hnsw", "ivfpq") as a spec."""
    if index_type == "auto":
        return choose_spec(n_records, dim)
    return IndexSpec(kind=index_type)


def resolve_spec(spec: IndexSpec | dict[str, Any] | None, n_records: int, dim: int) -> IndexSpec:
    """A spec from a DAG Param or CLI option, with kind "auto" (or none given) chosen by size.

    Other fields given in the dict (e.g. ``ef_search``) override the chosen ones.
    """
    if isinstance(spec, IndexSpec):
        return spec
    data = dict(spec or {})
    kind = data.pop("kind", None) or "auto"
    chosen = spec_for(kind, n_records, dim)
    return IndexSpec.from_dict({**chosen.to_dict(), **data}) if data else chosen


def as_matrix(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Vectors as a C-contiguous float32 matrix (one vector: one row), of ``dim`` columns when given."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise LockstepError(f"expected a 2-D array of vectors, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise LockstepError(f"vectors have dimension {x.shape[1]}, the index has {dim}")
    return x
