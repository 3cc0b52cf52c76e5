"""One version's item vectors in FAISS, and ``recommend``: the server side of a version.

Scores are inner products (``score = user . item``), the same pairing as search.

- ``flat`` (``IndexFlatIP``, exact): the default below ``HNSW_THRESHOLD`` items
  (MovieLens' 1,682 items take microseconds to scan);
- ``hnsw`` (``IndexHNSWFlat``, L2 over augmented vectors): large catalogues. Maximum
  inner product is searched as a nearest-neighbour search (``mips``: each item gets one
  more coordinate so all have the same norm, each query a 0), which a graph answers far
  better than inner product itself (1M items: recall@10 0.82 before, measured again in
  ``benchmarks/bench_recommender.py``). ``efSearch`` is passed per search (never set on
  the shared index) and raised to the number of candidates a request needs.

An index is built once, by the version's build (``recommender.build``), and stored as a
FAISS file beside the fit (``item_index_file``); replicas read that file instead of
building (``from_faiss``), the way a search index is loaded.

``recommend`` asks FAISS for ``k`` plus as many candidates as it has to drop (the
user's seen items, replaced vectors), then **rescores** the survivors from the stored
float32 vectors: each product of two float32 numbers is exact in float64 and
``math.fsum`` rounds their sum once, so a returned score is the inner product of the
stored vectors correctly rounded, whatever order FAISS or BLAS summed in. With
``flat`` the list is the exact top k (up to float32 ties at the boundary).

Items join after a fit through fold-in: ``add`` appends new items; ``update`` replaces
an item's vector (flat: in place; HNSW cannot move a node, so the new vector gets a new
label and the old label is dropped from every answer). An item added to ``hnsw`` with a
norm above the build's largest (``max_norm``) is outside the reduction: it is scored
exactly on every search (``mips``). FAISS allows concurrent searches
but no add during a search, so searches take a readers-writer lock's shared side.
``try_recommend`` takes it only if it is free at once and never waits: the serving
event loop uses it, so a fold-in holding the write side cannot freeze the process
(issue 21).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lockstep.core.rwlock import RWLock
from lockstep.recommender import mips
from lockstep.recommender.fold_in import UnknownIdError

__all__ = ["HNSW_THRESHOLD", "ItemIndex"]

HNSW_THRESHOLD = 200_000  # items; below it the exact scan is fast enough (docs/benchmarks.md)
# The graph is over augmented vectors (L2 = inner product, see ``mips``); before the
# reduction, an inner-product graph (efConstruction 40, efSearch 128) found 0.54 of the exact
# top 10 at 1M items, with efConstruction 160 / efSearch 512 0.82 (docs/benchmarks.md).
EF_CONSTRUCTION = 160
EF_SEARCH = 512
KINDS = ("flat", "hnsw")


class ItemIndex:
    """Item id -> vector in FAISS, searched by inner product with a user vector."""

    def __init__(self, dim: int, kind: str = "flat", hnsw_m: int = 32, ef_construction: int = EF_CONSTRUCTION,
                 ef_search: int = EF_SEARCH, max_norm: float | None = None) -> None:
        """An empty index; ``max_norm`` (hnsw) is the reduction's M, else the first ``add``'s largest norm."""
        import faiss

        _check_kind(kind)
        if kind == "flat":
            index = faiss.IndexFlatIP(int(dim))
        else:
            index = faiss.IndexHNSWFlat(int(dim) + 1, hnsw_m, faiss.METRIC_L2)
            index.hnsw.efConstruction = ef_construction
        self._setup(index, int(dim), kind, int(ef_search), max_norm)

    def _setup(self, index: Any, dim: int, kind: str, ef_search: int, max_norm: float | None) -> None:
        self._faiss = index
        self.dim, self.kind, self.ef_search = dim, kind, ef_search
        self.max_norm = None if max_norm is None else float(max_norm)
        self._label_of: dict[str, int] = {}
        self._id_of: list[str | None] = []  # label -> id; None for a replaced (dead) label
        self._beyond: set[int] = set()  # hnsw labels whose norm exceeds max_norm: scored on every search
        self._lock = RWLock()

    @classmethod
    def build(cls, item_ids: Sequence[str], vectors: np.ndarray, kind: str = "auto", **options: int) -> ItemIndex:
        """An index over these items; ``auto`` is flat below ``HNSW_THRESHOLD`` items, else HNSW."""
        vectors = _as_matrix(vectors)
        kind = resolve_kind(kind, len(item_ids))
        if kind == "hnsw":
            options.setdefault("max_norm", mips.max_norm(vectors))
        index = cls(vectors.shape[1], kind, **options)
        index.add(item_ids, vectors)
        return index

    @classmethod
    def from_faiss(cls, faiss_index: Any, item_ids: Sequence[str], *, kind: str, dim: int,
                   ef_search: int = EF_SEARCH, max_norm: float | None = None) -> ItemIndex:
        """An index around a FAISS index ``write`` stored (labels 0..n-1 = ``item_ids``): no build.

        Raises ValueError when the FAISS index is not what ``kind`` builds for ``dim``
        dimensions, or holds another number of items.
        """
        import faiss

        _check_kind(kind)  # (faiss.read_index gives the concrete class; a downcast copy would not own it)
        if kind == "flat":
            fits = isinstance(faiss_index, faiss.IndexFlat) and faiss_index.metric_type == faiss.METRIC_INNER_PRODUCT
            width = dim
        else:
            fits = isinstance(faiss_index, faiss.IndexHNSWFlat) and faiss_index.metric_type == faiss.METRIC_L2
            width = dim + 1
            if max_norm is None or not math.isfinite(max_norm) or max_norm < 0:
                raise ValueError(f"an hnsw item index needs its max_norm (a finite number >= 0), got {max_norm!r}")
        if not fits or faiss_index.d != width:
            raise ValueError(f"the FAISS index ({type(faiss_index).__name__}, d={faiss_index.d}) is not a {kind!r} "
                             f"item index of {dim} dimensions")
        item_ids = [str(i) for i in item_ids]
        if faiss_index.ntotal != len(item_ids) or len(set(item_ids)) != len(item_ids):
            raise ValueError(f"the FAISS index holds {faiss_index.ntotal} items, the fit {len(item_ids)} distinct ids")
        index = cls.__new__(cls)
        index._setup(faiss_index, int(dim), kind, int(ef_search), max_norm)
        index._label_of = {item_id: label for label, item_id in enumerate(item_ids)}
        index._id_of = list(item_ids)
        return index

    def write(self, path: str) -> None:
        """The FAISS index into ``path`` (``faiss.write_index``); only a fresh build, before any fold-in.

        A stored index maps label i to item i of the fit (``from_faiss``), which holds
        while no item was replaced or added beyond the reduction's norm.
        """
        import faiss

        with self._lock.read():
            if len(self._label_of) != self._faiss.ntotal or self._beyond:
                raise ValueError("write stores a freshly built item index; this one has replaced or out-of-range items")
            faiss.write_index(self._faiss, str(path))

    def holds(self, vectors: np.ndarray) -> bool:
        """Whether the stored vectors are exactly these rows, in label order (a stored index's check)."""
        with self._lock.read():
            stored = self._stored()
            return stored.shape == np.shape(vectors) and bool(np.array_equal(stored, vectors))

    # --- changes ----------------------------------------------------------------------------------

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add items that are not in the index yet (``update`` replaces known ones)."""
        item_ids = [str(i) for i in item_ids]
        vectors = _as_matrix(vectors, self.dim, len(item_ids))
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("add: the item ids repeat; pass each item once")
        with self._lock.write():
            known = [i for i in item_ids if i in self._label_of]
            if known:
                raise ValueError(f"add: items already in the index (use update): {', '.join(map(repr, known[:20]))}")
            self._append(item_ids, vectors)

    def update(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Replace the vectors of known items (e.g. refolded after new interactions)."""
        item_ids = [str(i) for i in item_ids]
        vectors = _as_matrix(vectors, self.dim, len(item_ids))
        with self._lock.write():
            unknown = [i for i in item_ids if i not in self._label_of]
            if unknown:
                raise UnknownIdError("item", unknown, "update replaces known items; use add for new ones")
            if self.kind == "flat":
                stored = self._stored()
                for item_id, vector in zip(item_ids, vectors, strict=True):
                    stored[self._label_of[item_id]] = vector
                return
            for item_id in item_ids:
                label = self._label_of.pop(item_id)
                self._id_of[label] = None
                self._beyond.discard(label)
            self._append(item_ids, vectors)

    def _append(self, item_ids: list[str], vectors: np.ndarray) -> None:
        start = self._faiss.ntotal
        if self.kind == "flat":
            self._faiss.add(vectors)
        else:
            if self.max_norm is None:
                self.max_norm = mips.max_norm(vectors)
            self._beyond.update(start + int(row) for row in mips.beyond(vectors, self.max_norm))
            self._faiss.add(mips.augment_items(vectors, self.max_norm))
        for offset, item_id in enumerate(item_ids):
            self._label_of[item_id] = start + offset
        self._id_of.extend(item_ids)

    # --- queries ---------------------------------------------------------------------------------

    def recommend(self, user_vector: np.ndarray, k: int = 10, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The ``k`` best items for this user by ``user . item``, skipping ``exclude`` (seen ids).

        Excluded ids the index does not know are ignored (a user may have seen an item
        this version was fitted without). Fewer than ``k`` when the catalogue runs out.
        """
        query = _recommend_query(user_vector, k, self.dim)
        with self._lock.read():
            hits = self._candidates_locked(query, k, exclude)
        return _best(hits, k)

    def try_recommend(self, user_vector: np.ndarray, k: int = 10, exclude: Iterable[str] = ()) -> list[tuple[str, float]] | None:
        """``recommend`` if the read lock is free right now, else None at once (never waits).

        For the serving event loop: a writer holding or awaiting the lock (a fold-in
        adding or replacing an item) would otherwise freeze every request of the
        process while it lasts; on None the caller asks again from a worker thread.
        """
        query = _recommend_query(user_vector, k, self.dim)
        with self._lock.try_read() as ok:
            hits = self._candidates_locked(query, k, exclude) if ok else None
        return None if hits is None else _best(hits, k)

    def _candidates_locked(self, query: np.ndarray, k: int, exclude: Iterable[str]) -> list[tuple[str, float]]:
        """FAISS's candidates for ``recommend``, unseen and alive, rescored exactly (read lock held)."""
        excluded = {self._label_of[i] for i in exclude if i in self._label_of}
        dead = len(self._id_of) - len(self._label_of)
        wanted = min(k + len(excluded) + dead, self._faiss.ntotal)
        if wanted == 0:
            return []
        if self.kind == "flat":
            _, labels = self._faiss.search(query, wanted)
        else:
            _, labels = self._faiss.search(mips.augment_queries(query), wanted, params=self._search_params(wanted))
        found = [int(label) for label in labels[0] if label >= 0]
        if self._beyond:  # outside the reduction: always candidates, scored exactly below
            found = list(dict.fromkeys([*found, *sorted(self._beyond)]))
        picked = [label for label in found if label not in excluded and self._id_of[label] is not None]
        stored = self._stored()
        return [(self._id_of[label], exact_score(query[0], stored[label])) for label in picked]

    def vectors_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of known items (a copy), one row each."""
        with self._lock.read():
            unknown = [i for i in item_ids if i not in self._label_of]
            if unknown:
                raise UnknownIdError("item", unknown, f"the index holds {len(self._label_of)} items")
            stored = self._stored()
            return np.stack([stored[self._label_of[i]] for i in item_ids]) if item_ids else np.zeros((0, self.dim), np.float32)

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    def _search_params(self, wanted: int) -> Any:
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, wanted)
        return params

    def _stored(self) -> np.ndarray:
        """A (ntotal, dim) view of FAISS's own float32 storage (no copy; it moves on add).

        For ``hnsw`` the storage holds augmented rows; their first ``dim`` coordinates
        are the items' vectors bit for bit (``mips``).
        """
        import faiss

        flat = self._faiss if self.kind == "flat" else faiss.downcast_index(self._faiss.storage)
        n, width = flat.ntotal, flat.d
        rows = faiss.rev_swig_ptr(flat.get_xb(), n * width).reshape(n, width)
        return rows if width == self.dim else rows[:, : self.dim]


def resolve_kind(kind: str, items: int) -> str:
    """``auto``: flat below ``HNSW_THRESHOLD`` items, else hnsw; a named kind is checked."""
    if kind == "auto":
        return "flat" if items < HNSW_THRESHOLD else "hnsw"
    _check_kind(kind)
    return kind


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown item index kind {kind!r}; use one of {', '.join(KINDS)} (or 'auto' in build)")


def exact_score(user_vector: np.ndarray, item_vector: np.ndarray) -> float:
    """``user . item`` of two float32 vectors, correctly rounded to float64 (order-free)."""
    products = np.asarray(user_vector, dtype=np.float64) * np.asarray(item_vector, dtype=np.float64)
    return math.fsum(products.tolist())


def _recommend_query(user_vector: np.ndarray, k: int, dim: int) -> np.ndarray:
    """The checked (1, dim) query of a ``recommend`` call (checked before any lock is taken)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return _as_matrix(user_vector, dim, 1)


def _best(hits: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """The ``k`` best rescored hits, ties by id (sorted after the lock is let go)."""
    hits.sort(key=lambda hit: (-hit[1], hit[0]))
    return hits[:k]


def _as_matrix(vectors: np.ndarray, dim: int | None = None, rows: int | None = None) -> np.ndarray:
    matrix = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
    if matrix.ndim != 2 or (dim is not None and matrix.shape[1] != dim) or (rows is not None and matrix.shape[0] != rows):
        want = f"({rows if rows is not None else 'n'}, {dim if dim is not None else 'dim'})"
        raise ValueError(f"expected vectors of shape {want}, got {np.shape(vectors)}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("vectors contain NaN or infinity")
    return matrix
