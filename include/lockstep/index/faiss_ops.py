"""Two small FAISS operations the index and its compaction share: every core for a build, label bitmaps.

Serving threads run FAISS single-threaded; builds and rebuilds take every core for as
long as they run (``all_cores``). ``set_bits`` fills the bitmaps behind FAISS's
``IDSelectorBitmap``, which the tombstones of an HNSW index and the filtered searches use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def all_cores() -> Iterator[None]:
    """Let FAISS use every core in this thread (serving threads run it single-threaded)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def set_bits(bitmap: np.ndarray, labels: np.ndarray) -> None:
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels):
        np.bitwise_or.at(bitmap, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
