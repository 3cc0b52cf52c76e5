"""HNSW compaction builds a copy off the lock and swaps it in (issue 21).

Searches and writes of the same index go on while the new graph is built; the swap
replays what arrived meanwhile, so the result is exact: every live record with its
newest vector, no deleted or replaced vector ever back. The compaction is paused at
its stages by ``compaction_hook`` (events, no sleeps): each write below lands at a
known point of the build.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lockstep.core.errors import LockstepError
from lockstep.index.compaction import SWAP_REPLAY_MAX
from lockstep.index.vector_index import IndexSpec, VectorIndex

TIMEOUT = 30.0  # a failure guard only: nothing here should take more than a second


def clustered(n: int, dim: int = 32, clusters: int = 30, seed: int = 0) -> np.ndarray:
    """Unit vectors around cluster centres (as in test_vector_index)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Worker:
    """A thread whose result or exception ``join`` hands to the test thread."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[], Any]) -> None:
        try:
            self.result = target()
        except BaseException as exc:  # noqa: BLE001 - re-raised in join()
            self.error = exc

    def join(self) -> Any:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), f"{self.name} is still running after {TIMEOUT} s"
        if self.error is not None:
            raise self.error
        return self.result


class Pauses:
    """A compaction hook that stops the build at chosen stages until the test resumes it."""

    def __init__(self, *stages: str) -> None:
        self.reached = {stage: threading.Event() for stage in stages}
        self.resume = {stage: threading.Event() for stage in stages}
        self.seen: list[str] = []

    def __call__(self, stage: str) -> None:
        first = stage not in self.seen
        self.seen.append(stage)
        if first and stage in self.reached:
            self.reached[stage].set()
            assert self.resume[stage].wait(TIMEOUT), f"the test never resumed the compaction at {stage!r}"

    def wait(self, stage: str) -> None:
        assert self.reached[stage].wait(TIMEOUT), f"the compaction never reached {stage!r}"

    def go(self, stage: str) -> None:
        self.resume[stage].set()


def search_now(index: VectorIndex, queries: np.ndarray, k: int = 5) -> list:
    """A search that must not wait: ``try_search`` is refused whenever a writer holds or awaits the lock."""
    hits = index.try_search(queries, k)
    assert hits is not None, "the index lock is not free: a writer holds or awaits it"
    return hits


def assert_exact(index: VectorIndex, current: dict[str, np.ndarray], gone: set[str], queries: np.ndarray) -> None:
    """Ids, stored vectors and every hit's score match ``current``; nothing in ``gone`` comes back."""
    assert sorted(index.ids) == sorted(current)
    order = sorted(current)
    np.testing.assert_allclose(index.vectors_of(order), np.stack([current[r] for r in order]), atol=1e-6)
    for query, hits in zip(queries, index.search(queries, k=20), strict=True):
        assert len(hits.ids) == 20 and len(set(hits.ids)) == 20
        assert not gone & set(hits.ids), f"deleted or replaced records came back: {sorted(gone & set(hits.ids))}"
        for rid, score in zip(hits.ids, hits.scores, strict=True):
            assert score == pytest.approx(float(query @ current[rid]), abs=1e-4), rid  # the newest vector only


def test_searches_and_writes_go_on_during_a_compaction_and_the_swap_is_exact():
    x = clustered(3000)
    ids = [f"r{i}" for i in range(len(x))]
    index = VectorIndex.build(ids, x, IndexSpec(kind="hnsw", max_dead_fraction=1.0))  # compacted by hand only
    current = dict(zip(ids, x, strict=True))
    index.remove(ids[:1000])
    gone = set(ids[:1000])
    for rid in ids[:1000]:
        current.pop(rid)
    pauses = Pauses("chunk", "built")
    index.compaction_hook = pauses
    compaction = Worker(lambda: index.compact(chunk=500), "compaction")

    # mid-build (one block of the old graph copied): searches and writes of the same index go on
    pauses.wait("chunk")
    assert [h.ids[0] for h in search_now(index, x[1500:1510])] == ids[1500:1510]
    assert index.compact() is False  # one compaction at a time: a second call returns at once
    index.remove(ids[1000:1100])
    updated = clustered(100, seed=21)
    index.upsert(ids[1100:1200], updated)
    added = [f"n{i}" for i in range(SWAP_REPLAY_MAX + 476)]  # more than the swap replays: a catch-up round off the lock
    fresh = clustered(len(added), seed=22)
    index.add(added, fresh)
    index.remove(added[:50])  # added and deleted during the build
    readded = clustered(50, seed=23)
    index.upsert(added[50:100], readded)  # added and replaced during the build
    gone |= set(ids[1000:1100]) | set(added[:50])
    for rid in ids[1000:1100] + added[:50]:
        current.pop(rid, None)
    current.update(zip(ids[1100:1200], updated, strict=True))
    current.update(zip(added[50:], fresh[50:], strict=True))
    current.update(zip(added[50:100], readded, strict=True))
    pauses.go("chunk")

    # built, not yet swapped: the last writes are replayed by the swap itself
    pauses.wait("built")
    search_now(index, fresh[100:110])
    index.remove(ids[1200:1250])
    twice = clustered(10, seed=24)
    index.upsert(ids[1100:1110], twice)  # replaced again after its first replacement was copied
    late = [f"m{i}" for i in range(10)]
    late_vectors = clustered(10, seed=25)
    index.add(late, late_vectors)
    gone |= set(ids[1200:1250])
    for rid in ids[1200:1250]:
        current.pop(rid)
    current.update(zip(ids[1100:1110], twice, strict=True))
    current.update(zip(late, late_vectors, strict=True))
    pauses.go("built")

    assert compaction.join() is True
    assert pauses.seen.count("chunk") == 4  # 2000 live vectors at snapshot, 500 a block
    assert index._faiss.ntotal == index._next_label and len(index) == len(current)
    # only the records that died during the build are tombstones now, not the 1000 before it
    assert 0 < len(index._dead) < 1000 and len(index._dead) == index._next_label - len(current)
    old_vectors = np.vstack([x[1000:1200], updated[:10], fresh[50:100], x[:200]])
    queries = np.vstack([x[1200:1600], fresh[:300], late_vectors, twice, old_vectors])
    assert_exact(index, current, gone, queries)

    # a second compaction (no writes meanwhile) clears the rest; saved and loaded, still exact
    index.compaction_hook = None
    assert index.compact() is True
    assert index.dead_fraction == 0.0 and index._faiss.ntotal == len(current)
    blob, mapping = index.to_state()
    assert_exact(VectorIndex.from_state(blob, mapping), current, gone, queries)


def test_an_upsert_that_triggers_the_compaction_holds_no_lock_while_it_builds():
    x = clustered(2000, seed=3)
    ids = [f"r{i}" for i in range(len(x))]
    index = VectorIndex.build(ids, x, IndexSpec(kind="hnsw", max_dead_fraction=0.25))
    current = dict(zip(ids, x, strict=True))
    pauses = Pauses("chunk")
    index.compaction_hook = pauses
    replaced = clustered(700, seed=4)  # 700 tombstones of 2700 labels pass a quarter
    writer = Worker(lambda: index.upsert(ids[:700], replaced), "upsert")

    pauses.wait("chunk")  # the upsert's own thread is building the new graph
    assert index.dead_fraction > 0.25
    assert [h.ids[0] for h in search_now(index, x[1000:1010])] == ids[1000:1010]
    deleter = Worker(lambda: index.remove(ids[1900:]), "delete during the build")
    assert deleter.join() == 100  # a write does not wait for the build either
    pauses.go("chunk")
    writer.join()

    current.update(zip(ids[:700], replaced, strict=True))
    for rid in ids[1900:]:
        current.pop(rid)
    assert index._faiss.ntotal == 2000  # the 2000 live at the snapshot; the 100 deleted meanwhile are tombstones
    assert index.dead_fraction == pytest.approx(100 / 2000)
    assert_exact(index, current, set(ids[1900:]), np.vstack([x[:800], replaced[:100], x[1900:]]))


def test_a_failed_build_leaves_the_index_as_it_was():
    x = clustered(1500, seed=5)
    ids = [f"r{i}" for i in range(len(x))]
    index = VectorIndex.build(ids, x, IndexSpec(kind="hnsw", max_dead_fraction=1.0))
    index.remove(ids[:300])
    current = {rid: v for rid, v in zip(ids, x, strict=True) if rid not in set(ids[:300])}

    def fail(stage: str) -> None:
        if stage == "built":
            raise RuntimeError("disk full (injected)")

    index.compaction_hook = fail
    with pytest.raises(RuntimeError, match="injected"):
        index.compact()
    assert index._journal is None and index._next_label == 1500  # the old graph, untouched
    index.remove(ids[300:310])  # writes after the failure are not journalled for a dead build
    for rid in ids[300:310]:
        current.pop(rid)
    assert_exact(index, current, set(ids[:310]), x[:400])
    index.compaction_hook = None
    assert index.compact() is True and index._faiss.ntotal == len(current)
    assert_exact(index, current, set(ids[:310]), x[:400])


def test_compaction_of_other_types_is_a_no_op_and_bad_chunks_are_refused():
    x = clustered(200, seed=6)
    ids = [f"r{i}" for i in range(len(x))]
    flat = VectorIndex.build(ids, x)
    flat.remove(ids[:50])
    assert flat.compact() is False and len(flat) == 150
    with pytest.raises(LockstepError, match="compaction chunk must be at least 1"):
        flat.compact(chunk=0)
    hnsw = VectorIndex.build(ids, x, IndexSpec(kind="hnsw", max_dead_fraction=1.0))
    assert hnsw.compact() is False  # nothing dead: nothing to rebuild
