"""SearchBatcher: concurrent searches of one slot go to FAISS as one batched call (issue 26, item 2).

Every test controls the order with events: an index wrapper whose first batched call waits
until the test releases it, so the queries that queue meanwhile are known exactly. Nothing
depends on timing; the waits only guard against hangs.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from lockstep.core.faults import InjectedFault
from lockstep.index.vector_index import IndexSpec, SearchHits, VectorIndex
from lockstep.serving.bodies import PIN_HEADER
from lockstep.serving.search_batches import SearchBatcher, openmp_threads
from lockstep.store import routing
from tests.serving.harness import serve

GUARD = 30.0  # seconds: a hang guard only, everything answers in milliseconds
DIM = 8


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def index() -> VectorIndex:
    return VectorIndex.build([f"r{i:03d}" for i in range(200)], unit_rows(200, 0), IndexSpec(kind="flat"))


class GatedIndex:
    """The slot's ``search_vectors`` over a real index; the first call blocks until ``release``.

    ``calls`` records (rows, k, wait, OpenMP threads, thread name) of every call.
    ``poison``: a query row (its first value) whose presence makes a call fail.
    """

    def __init__(self, index: VectorIndex, *, gate: bool = True, poison: float | None = None) -> None:
        self.index = index
        self.calls: list[tuple[int, int, bool, int, str]] = []
        self.inside = threading.Event()
        self.release = threading.Event()
        if not gate:
            self.release.set()
        self.poison = poison

    def search_vectors(self, queries, k, *, wait=True):
        import faiss

        queries = np.atleast_2d(queries)
        self.calls.append((len(queries), k, wait, faiss.omp_get_max_threads(), threading.current_thread().name))
        if len(self.calls) == 1:
            self.inside.set()
            assert self.release.wait(GUARD)
        if self.poison is not None and np.any(np.isclose(queries[:, 0], self.poison)):
            raise RuntimeError("this query breaks the index")
        return self.index.search(queries, k) if wait else self.index.try_search(queries, k)


def alone(index: VectorIndex, vector: np.ndarray, k: int) -> SearchHits:
    return index.search(vector, k)[0]


async def first_then_queued(batcher: SearchBatcher, gated: GatedIndex, first, later):
    """``first`` (vector, k) enters the index and blocks; ``later`` queue meanwhile; then all run."""
    head = asyncio.create_task(batcher.search(*first))
    await asyncio.to_thread(gated.inside.wait, GUARD)
    rest = [asyncio.create_task(batcher.search(v, k)) for v, k in later]
    while len(batcher._pending) < len(later):  # every later query has queued
        await asyncio.sleep(0)
    gated.release.set()
    return await asyncio.gather(head, *rest, return_exceptions=True)


def test_queries_waiting_while_a_batch_runs_go_in_one_call_with_the_answers_of_one_at_a_time(index):
    gated = GatedIndex(index)
    batcher = SearchBatcher(gated.search_vectors, version="1", inline=False, threads=1)
    queries = unit_rows(6, 1)
    out = asyncio.run(first_then_queued(batcher, gated, (queries[0], 5), [(q, 5) for q in queries[1:]]))
    assert [c[:2] for c in gated.calls] == [(1, 5), (5, 5)]  # the five that waited: one FAISS call
    assert batcher.batches == 2 and batcher.queries == 6 and batcher.largest == 5
    assert out == [alone(index, q, 5) for q in queries]


def test_each_query_gets_its_own_k_from_a_batch_searched_with_the_largest(index):
    gated = GatedIndex(index)
    batcher = SearchBatcher(gated.search_vectors, version="1", inline=False, threads=1)
    queries, ks = unit_rows(5, 2), [3, 1, 10, 4, 7]
    out = asyncio.run(first_then_queued(batcher, gated, (queries[0], ks[0]), list(zip(queries[1:], ks[1:], strict=True))))
    assert [c[:2] for c in gated.calls] == [(1, 3), (4, 10)]
    assert [len(h.ids) for h in out] == ks
    assert out == [alone(index, q, k) for q, k in zip(queries, ks, strict=True)]


def test_a_batch_is_at_most_max_batch_queries(index):
    gated = GatedIndex(index)
    batcher = SearchBatcher(gated.search_vectors, version="1", inline=False, max_batch=2, threads=1)
    queries = unit_rows(6, 3)
    out = asyncio.run(first_then_queued(batcher, gated, (queries[0], 4), [(q, 4) for q in queries[1:]]))
    assert [c[0] for c in gated.calls] == [1, 2, 2, 1]
    assert out == [alone(index, q, 4) for q in queries]


def test_a_lone_query_is_searched_on_the_event_loop_at_once(index):
    gated = GatedIndex(index, gate=False)
    batcher = SearchBatcher(gated.search_vectors, version="1", inline=True, threads=2)
    queries = unit_rows(3, 4)

    async def one_by_one():
        return [await batcher.search(q, 3) for q in queries], threading.current_thread().name

    out, loop_thread = asyncio.run(one_by_one())
    assert [(rows, wait, threads, name) for rows, _, wait, threads, name in gated.calls] == [(1, False, 1, loop_thread)] * 3
    assert out == [alone(index, q, 3) for q in queries]


def test_large_batches_use_the_openmp_threads_and_small_ones_one(index):
    gated = GatedIndex(index)
    batcher = SearchBatcher(gated.search_vectors, version="1", inline=False, parallel_from=4, threads=2)
    queries = unit_rows(10, 5)

    async def main():
        first = await first_then_queued(batcher, gated, (queries[0], 2), [(q, 2) for q in queries[1:4]])  # then 3
        gated.calls.clear()
        gated.inside.clear()
        gated.release.clear()
        second = await first_then_queued(batcher, gated, (queries[4], 2), [(q, 2) for q in queries[5:]])  # then 5
        return first + second

    out = asyncio.run(main())
    assert [(rows, threads) for rows, _, _, threads, _ in gated.calls] == [(1, 1), (5, 2)]
    assert out == [alone(index, q, 2) for q in queries]



def test_openmp_threads_are_one_again_after_a_large_batch():
    import faiss

    def inside_and_after() -> tuple[int, int]:
        with openmp_threads(2):
            inside = faiss.omp_get_max_threads()
        return inside, faiss.omp_get_max_threads()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(inside_and_after).result(GUARD) == (2, 1)


def test_a_writer_holding_the_lock_never_stalls_the_loop_and_the_waiting_queries_batch(index):
    gated = GatedIndex(index, gate=False)
    batcher = SearchBatcher(gated.search_vectors, version="1", inline=True, threads=1)
    queries = unit_rows(4, 6)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with index._lock.write():
            held.set()
            release.wait(GUARD)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            writing = pool.submit(writer)
            assert await asyncio.to_thread(held.wait, GUARD)
            head = asyncio.create_task(batcher.search(queries[0], 3))
            while len(gated.calls) < 2:  # refused on the loop, then waiting in a thread
                await asyncio.sleep(0)
            ticks = 0
            for _ in range(50):  # the loop runs on while the query waits for the writer
                await asyncio.sleep(0)
                ticks += 1
            rest = [asyncio.create_task(batcher.search(q, 3)) for q in queries[1:]]
            while len(batcher._pending) < 3:
                await asyncio.sleep(0)
            assert not head.done()
            release.set()
            writing.result(GUARD)
            return ticks, await asyncio.gather(head, *rest)

    ticks, out = asyncio.run(main())
    assert ticks == 50
    assert [(rows, wait) for rows, _, wait, _, _ in gated.calls] == [(1, False), (1, True), (3, True)]
    assert out == [alone(index, q, 3) for q in queries]


def test_a_failing_batch_is_retried_query_by_query_so_only_the_bad_query_fails(index):
    queries = unit_rows(4, 7)
    gated = GatedIndex(index, poison=float(queries[2][0]))
    batcher = SearchBatcher(gated.search_vectors, version="1", inline=False, threads=1)
    out = asyncio.run(first_then_queued(batcher, gated, (queries[0], 3), [(q, 3) for q in queries[1:]]))
    assert isinstance(out[2], RuntimeError)
    assert [out[0], out[1], out[3]] == [alone(index, queries[i], 3) for i in (0, 1, 3)]
    assert [c[0] for c in gated.calls] == [1, 3, 1, 1, 1]  # the failed batch of 3, then each alone
    assert not batcher._draining


def test_an_empty_vector_answers_no_hits_without_a_faiss_call(index):
    gated = GatedIndex(index, gate=False)
    batcher = SearchBatcher(gated.search_vectors, version="1", threads=1)
    assert asyncio.run(batcher.search(np.zeros(DIM, dtype=np.float32), 5)) == SearchHits()
    assert gated.calls == [] and batcher.batches == 0


def test_an_injected_fault_fails_its_own_request_only(index, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_FAULTS", "serving.search:2*")
    good = SearchBatcher(GatedIndex(index, gate=False).search_vectors, version="1", threads=1)
    bad = SearchBatcher(GatedIndex(index, gate=False).search_vectors, version="2", threads=1)
    q = unit_rows(1, 8)[0]
    with pytest.raises(InjectedFault):
        asyncio.run(bad.search(q, 3))
    assert asyncio.run(good.search(q, 3)) == alone(index, q, 3)


def test_batch_sizes_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        SearchBatcher(lambda *a, **k: [], version="1", max_batch=0)


def test_concurrent_http_searches_of_one_version_answer_as_sequential_ones(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    texts = ["rocket planet", "bread cheese", "guitar piano", "zzzz-unknown", "goal match", "river forest"] * 3
    with serve(d.app()) as s, httpx.Client(base_url=s.url, timeout=GUARD) as client:
        def ask(i: int) -> list[str]:
            r = client.post("/search", json={"query": texts[i], "k": 1 + i % 5}, headers={PIN_HEADER: "1"})
            assert r.status_code == 200, r.text
            return [hit["id"] for hit in r.json()["results"]]

        sequential = [ask(i) for i in range(len(texts))]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(ask, range(len(texts))))
        assert concurrent == sequential
        assert sequential[3] == []  # no known term: no hits
        batcher = s.runtime.manager.view.slots["1"].searches
        assert batcher.queries == 2 * sum(1 for ids in sequential if ids)  # every search but the empty ones
