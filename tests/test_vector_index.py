"""VectorIndex over real FAISS: every type, string ids, upserts and deletes, recall."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lockstep.errors import LockstepError
from lockstep.vector_index import IndexSpec, VectorIndex, recall_at_k


def clustered(n: int = 3000, dim: int = 32, clusters: int = 30, seed: int = 0) -> np.ndarray:
    """Unit vectors around cluster centres: structured like real embeddings, unlike pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    x = clustered()
    return [f"r{i}" for i in range(len(x))], x


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_type_supports_upsert_delete_and_exact_self_hits(kind, data):
    ids, x = data
    index = VectorIndex.build(ids, x, IndexSpec(kind=kind))
    assert len(index) == len(ids)
    hits = index.search(x[:5], k=1)
    assert [h.ids[0] for h in hits] == ids[:5]
    assert hits[0].scores[0] == pytest.approx(1.0, abs=1e-4)

    index.remove(["r0", "r1", "missing"])
    index.upsert(["r2"], x[3:4])  # r2 now has r3's vector
    assert len(index) == len(ids) - 2
    assert "r0" not in index and "r2" in index
    found = {rid for h in index.search(x[:4], k=5) for rid in h.ids}
    assert "r0" not in found and "r1" not in found
    np.testing.assert_allclose(index.vectors_of(["r2"])[0], x[3], atol=1e-6)

    blob, mapping = index.to_state()
    again = VectorIndex.from_state(blob, mapping)
    assert sorted(again.ids) == sorted(index.ids)
    assert [h.ids for h in again.search(x[10:13], 5)] == [h.ids for h in index.search(x[10:13], 5)]
    np.testing.assert_allclose(again.vectors_of(["r2"])[0], x[3], atol=1e-6)


def test_flat_scores_are_exact_inner_products(data):
    ids, x = data
    index = VectorIndex.build(ids, x)
    hits = index.search(x[7], k=10)[0]
    expected = np.sort(x @ x[7])[::-1][:10]
    np.testing.assert_allclose(hits.scores, expected, atol=1e-5)


@pytest.mark.parametrize("kind,floor", [("ivf", 0.9), ("hnsw", 0.95)])
def test_approximate_types_reach_their_recall_against_exact(kind, floor, data):
    ids, x = data
    exact = VectorIndex.build(ids, x)
    approx = VectorIndex.build(ids, x, IndexSpec(kind=kind))
    assert recall_at_k(approx, exact, x[:300], k=10) >= floor


def test_add_refuses_duplicates_and_wrong_dimensions(data):
    ids, x = data
    index = VectorIndex.build(ids[:10], x[:10])
    with pytest.raises(LockstepError, match="already in the index"):
        index.add(["r1"], x[1:2])
    with pytest.raises(LockstepError, match="dimension 5"):
        index.upsert(["new"], np.ones((1, 5), np.float32))
    with pytest.raises(LockstepError, match="unknown index type"):
        IndexSpec(kind="annoy")


def test_searches_and_writes_can_run_together(data):
    ids, x = data
    index = VectorIndex.build(ids, x)
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                for hits in index.search(x[:8], 5):
                    assert len(hits.ids) == 5
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        index.upsert([f"r{i}"], x[i + 1 : i + 2])
        index.remove([f"r{i + 1000}"])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == len(ids) - 200
