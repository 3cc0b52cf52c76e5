"""What the batch tests share: a brute-force truth and comparisons that allow float ties."""

from __future__ import annotations

import numpy as np

from lockstep.store.batch_results import BatchResultStore


def brute_force_related(index, k: int) -> dict[str, list[tuple[str, float]]]:
    """Every record's k nearest other records by exact inner product (raw FAISS flat search)."""
    import faiss

    ids: list[str] = []
    blocks = []
    for block_ids, block in index.iter_stored():
        ids.extend(block_ids)
        blocks.append(np.array(block, dtype=np.float32))
    matrix = np.vstack(blocks)
    flat = faiss.IndexFlatIP(matrix.shape[1])
    flat.add(matrix)
    scores, labels = flat.search(matrix, k + 1)
    out = {}
    for row, rid in enumerate(ids):
        pairs = [(ids[j], float(s)) for j, s in zip(labels[row], scores[row], strict=True) if j >= 0 and ids[j] != rid]
        out[rid] = pairs[:k]
    return out


def rows_of(kind: str, version: str, engine=None) -> dict[str, list[tuple[str, float]]]:
    return {r.key: r.results for r in BatchResultStore(engine).iter_rows(kind, version)}


def same_list(got: list[tuple[str, float]], want: list[tuple[str, float]], tol: float = 1e-4) -> bool:
    """Equal scores place by place, and equal ids except among scores tied at the k-th place."""
    if len(got) != len(want):
        return False
    if not np.allclose([s for _, s in got], [s for _, s in want], atol=tol):
        return False
    if not want:
        return True
    last = want[-1][1]
    clear = lambda pairs: {i for i, s in pairs if s > last + tol}  # noqa: E731
    return clear(got) == clear(want)


def mismatches(got: dict, want: dict) -> list[str]:
    keys = set(got) | set(want)
    return sorted(k for k in keys if k not in got or k not in want or not same_list(got[k], want[k]))
