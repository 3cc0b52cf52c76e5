"""Related records (search): each record's top-k neighbours in its version's own index.

A record's query is its stored vector; the index is searched in batches (one FAISS call
per ``BATCH`` records) for k + 1 neighbours, and the record itself is dropped, so a
list holds k other records by inner product, best first. With the exact flat index (the
default below ``LOCKSTEP_ANN_THRESHOLD`` records) this is a brute-force search; with
HNSW it is the serving index's own approximate answer.

**Which keys an incremental run recomputes** (inputs changed through sequence T, since the
version's last complete run at T0; C = records with any change in (T0, T], U = those of
C still live at T, D = those deleted):

1. every record of U (its own vector changed, or it is new);
2. every record whose stored list contains an id of C (a neighbour moved or is gone);
3. every record r that some u of U would now enter: ``r . u >= `` the k-th score of r's
   stored list (any u when the list is shorter than k). Found exactly by scanning the
   stored vectors against U's vectors (|U| x records products);
4. every live record that has no row yet.

Every other record keeps its list: its own vector and every vector on its list are
unchanged, and no changed vector scores high enough to enter it, so a full recompute
gives the same list. With an exact index an incremental run therefore equals a full
recompute (the tests check it); with HNSW the recomputed rows are as approximate as the
index. Rows of D are removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from lockstep.index.vector_index import VectorIndex
from lockstep.store.batch_results import BatchRow, Hit

BATCH = 4096  # records per FAISS search call


def related(index: VectorIndex, keys: list[str], k: int) -> Iterator[tuple[str, list[Hit]]]:
    """(key, its k nearest other records) for each key, in batches of ``BATCH``."""
    for start in range(0, len(keys), BATCH):
        block = keys[start : start + BATCH]
        hits = index.search(index.vectors_of(block), k + 1)
        for key, found in zip(block, hits, strict=True):
            yield key, without_self(key, found.ids, found.scores, k)


def without_self(key: str, ids: list[str], scores: list[float], k: int) -> list[Hit]:
    """The list minus the record itself (or minus the last place when it was not found)."""
    pairs = [(i, float(s)) for i, s in zip(ids, scores, strict=True) if i != key]
    return pairs[:k]


def affected(
    index: VectorIndex, rows: Iterable[BatchRow], changed: set[str], k: int, *, chunk: int = 50_000
) -> tuple[set[str], list[str]]:
    """The keys an incremental run recomputes and the keys whose rows go (rules in the module docstring)."""
    live = set(index.ids)
    upserted = sorted(c for c in changed if c in live)
    recompute = set(upserted)
    threshold: dict[str, float] = {}
    removed = [c for c in changed if c not in live]
    with_row: set[str] = set()
    for row in rows:
        with_row.add(row.key)
        if row.key not in live:  # deleted (in D), or a leftover of an earlier run
            removed.append(row.key)
            continue
        if any(i in changed for i, _ in row.results):
            recompute.add(row.key)
        elif len(row.results) < k:
            threshold[row.key] = -np.inf
        else:
            threshold[row.key] = row.results[k - 1][1]
    recompute |= live - with_row
    if upserted:
        recompute |= entering(index, index.vectors_of(upserted), threshold, chunk=chunk)
    return recompute, sorted(set(removed))


def entering(index: VectorIndex, new_vectors: np.ndarray, threshold: dict[str, float], *, chunk: int = 50_000) -> set[str]:
    """Records (among ``threshold``'s keys) whose k-th score some new vector reaches."""
    hit: set[str] = set()
    for ids, block in index.iter_stored(chunk):
        best = (block @ new_vectors.T).max(axis=1)
        for rid, score in zip(ids, best.tolist(), strict=True):
            bar = threshold.get(rid)
            if bar is not None and score >= bar - 1e-6:
                hit.add(rid)
    return hit
