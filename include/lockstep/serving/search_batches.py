"""Concurrent searches of one slot sent to FAISS as one batched call (issue 26, item 2).

Before, every request searched its slot's index on its own: one FAISS call per query,
one after the other on the event loop. A ``SearchBatcher`` (one per loaded slot, so a
query embedded by version v only ever meets version v's index) collects the queries
that are waiting when the index is free and makes one ``search(matrix, max k)`` of
them. Nothing waits on a timer:

- A lone query (nothing else waiting) is searched right on the event loop, as before,
  with ``try_search``: it never waits there on the index's lock; when a writer holds it,
  the query goes to a thread where it may wait.
- Two or more waiting queries go to a worker thread as one call. FAISS releases the GIL,
  so while the batch runs the loop goes on reading, embedding and queueing the next
  requests, which become the next batch when this one returns: under load the batches
  grow by themselves, at low load every query is a batch of one and pays nothing.
- A batch of ``PARALLEL_FROM`` (8) queries or more uses FAISS's OpenMP parallelism
  (``batch_threads``: the cores divided by the worker processes); smaller ones run on one
  thread, where a team of threads would cost more than it gives.

Each request keeps its own: its ``k`` (the batch searches with the largest and cuts each
row), its empty answer when its vector is all zeros (no known term; never sent to FAISS),
its injected faults (``maybe_fail`` per request), its lease (held by the request while it
waits). A batched call that fails is retried one query at a time, so each request gets its
own answer or its own error: one bad query cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import numpy as np

from lockstep.core.faults import maybe_fail
from lockstep.index.vector_index import SearchHits

__all__ = ["MAX_BATCH", "PARALLEL_FROM", "SearchBatcher", "batch_threads", "one_openmp_thread", "openmp_threads"]

MAX_BATCH = 64  # queries per FAISS call at most (a batch of 64 HNSW queries is ~15 ms on 2 threads)
PARALLEL_FROM = 8  # queries from which a batch uses every thread it may (measured: docs/benchmarks.md)
THREAD_FROM = 2  # queries from which a batch leaves the event loop for a worker thread

SearchMany = Callable[..., "list[SearchHits] | None"]  # (matrix, k, *, wait) -> one SearchHits per row
_Waiting = tuple[np.ndarray, int, "asyncio.Future[SearchHits]"]


# --- OpenMP threads of the calling thread ---------------------------------------------------

_thread_state = threading.local()


def one_openmp_thread() -> None:
    """Make FAISS calls from this thread single-threaded (once per thread).

    FAISS wraps even a one-query search in an OpenMP region (IndexIDMap maps the result
    labels in one). With one OpenMP team per request thread the teams oversubscribe the
    cores: measured on 2 cores, 7-11 ms of CPU per search instead of about 1.5 ms. The
    requests are the parallelism here. The setting is per calling thread in OpenMP,
    which is why it is made here and not once at start-up.
    """
    if not getattr(_thread_state, "single", False):
        import faiss

        faiss.omp_set_num_threads(1)
        _thread_state.single = True


@contextmanager
def openmp_threads(threads: int) -> Iterator[None]:
    """FAISS calls of this thread use ``threads`` OpenMP threads inside, one again after."""
    import faiss

    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(1)
        _thread_state.single = True


def batch_threads() -> int:
    """OpenMP threads of a large batch: this machine's cores shared by the serving processes.

    ``LOCKSTEP_SERVING_WORKERS`` processes (``runner.run`` sets it for its workers) each get
    their share, so N processes batching at once do not oversubscribe the cores.
    """
    from lockstep.core.config import serving_workers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        workers = serving_workers()
    except Exception:  # a bad value is refused where the server starts (runner); here: one process
        workers = 1
    return max(1, cores // workers)


# --- the batcher ---------------------------------------------------------------------------


class SearchBatcher:
    """``await batcher.search(vector, k)``: the query's hits, searched together with its neighbours in time.

    ``search_many(matrix, k, wait=...)`` is the slot's batched index search
    (``LoadedSlot.search_vectors``): with ``wait=False`` None at once while a writer holds
    the index's lock. ``inline``: a lone query may be searched on the event loop (an ANN
    index or a small flat one; a large flat scan always goes to a thread). ``run`` runs a
    batch in a thread (default: a thread of the batcher's own, one batch at a time; a slow
    slot's ``SlotPool.run``). The batcher lives on the event loop: its queue needs no lock.
    """

    def __init__(
        self,
        search_many: SearchMany,
        *,
        version: str,
        inline: bool = True,
        run: Callable[..., Awaitable[Any]] | None = None,
        max_batch: int = MAX_BATCH,
        parallel_from: int = PARALLEL_FROM,
        thread_from: int = THREAD_FROM,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1 or parallel_from < 1 or thread_from < 1:
            raise ValueError(f"batch sizes must be at least 1, got max_batch={max_batch}, "
                             f"parallel_from={parallel_from}, thread_from={thread_from}")
        self.search_many = search_many
        self.version = version
        self.inline = inline
        self.max_batch = max_batch
        self.parallel_from = parallel_from
        self.thread_from = thread_from
        self.threads = threads if threads is not None else batch_threads()
        self._limiter = anyio.CapacityLimiter(1)
        self.run = run or self._own_thread
        self.batches = 0  # FAISS calls made (for the tests and the benchmark)
        self.queries = 0  # queries they answered
        self.largest = 0  # the largest batch so far
        self._pending: list[_Waiting] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    async def search(self, vector: Any, k: int) -> SearchHits:
        maybe_fail("serving.search", self.version)  # LOCKSTEP_FAULTS="serving.search:<version>*" breaks a version
        row = np.asarray(vector, dtype=np.float32).reshape(-1)
        if not row.any():  # no known term: every score would be 0, an arbitrary list
            return SearchHits()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SearchHits] = loop.create_future()
        self._pending.append((row, int(k), future))
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Search what is waiting, a batch at a time, until nothing is left."""
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                batch = [item for item in batch if not item[2].done()]  # a cancelled request (504) is not searched
                if not batch:
                    continue
                self.batches += 1
                self.queries += len(batch)
                self.largest = max(self.largest, len(batch))
                try:
                    results = await self._searched(np.vstack([row for row, _, _ in batch]), [k for _, k, _ in batch])
                except Exception as exc:  # the thread could not run it (a closed pool): every query gets the error
                    results = [exc] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = False
            self._task = None

    async def _searched(self, matrix: np.ndarray, ks: list[int]) -> list[SearchHits | Exception]:
        """One result (or error) per row: on the loop if it may and the lock is free, else in a thread."""
        if self.inline and len(ks) < self.thread_from:
            found = self._on_loop(matrix, max(ks))
            if found is not None:
                return _cut(found, ks)
        threads = self.threads if len(ks) >= self.parallel_from else 1
        return await self.run(self._in_thread, matrix, ks, threads)

    def _on_loop(self, matrix: np.ndarray, k: int) -> list[SearchHits] | None:
        """The batch searched right here, never waiting; None sends it to a thread (lock busy, or an error
        that the thread's query-by-query retry will give to its own request)."""
        one_openmp_thread()
        try:
            return self.search_many(matrix, k, wait=False)
        except Exception:
            return None

    def _in_thread(self, matrix: np.ndarray, ks: Sequence[int], threads: int) -> list[SearchHits | Exception]:
        """The batch in one call (waiting for the lock if need be); if it fails, each query alone."""
        with openmp_threads(threads):
            try:
                return _cut(self.search_many(matrix, max(ks)), ks)
            except Exception as exc:
                if len(ks) == 1:
                    return [exc]
        out: list[SearchHits | Exception] = []
        one_openmp_thread()
        for row, k in zip(matrix, ks, strict=True):
            try:
                out.append(self.search_many(row[None, :], k)[0])
            except Exception as exc:
                out.append(exc)
        return out

    async def _own_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)


def _cut(found: Sequence[SearchHits], ks: Sequence[int]) -> list[SearchHits | Exception]:
    """Each row's own ``k`` of the batch's hits (searched with the largest ``k``)."""
    return [hits if len(hits.ids) <= k else SearchHits(hits.ids[:k], hits.scores[:k])
            for hits, k in zip(found, ks, strict=True)]
