"""VectorIndex over real FAISS: every type, string ids, upserts and deletes, recall."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lockstep.core.errors import LockstepError
from lockstep.index.recall import measure_recall, recall_at_k
from lockstep.index.vector_index import (
    IndexSpec,
    VectorIndex,
    choose_spec,
    resolve_spec,
    spec_for,
)


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


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_each_type_supports_upsert_delete_and_exact_self_hits(kind, data):
    ids, x = data
    # ivfpq's shortlist for k=1 is refine_factor PQ candidates: a wide one makes self-hits exact here.
    index = VectorIndex.build(ids, x, IndexSpec(kind=kind, **({"refine_factor": 64} if kind == "ivfpq" else {})))
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


# --- approximate indexes at scale: exact deletes and updates, recall, type choice ---------------


def _check_no_resurrection(index: VectorIndex, current: dict[str, np.ndarray], gone: set[str], queries: np.ndarray) -> int:
    """Search every query; no gone id may appear, and every hit must score with its current vector.

    A hit served from an old (tombstoned) vector of an updated record would score the
    old vector's inner product, so comparing each score with the current vector's
    catches a resurrected old version as surely as a resurrected deleted id.
    """
    checked = 0
    for query, hits in zip(queries, index.search(queries, k=20), strict=True):
        assert len(hits.ids) == 20
        assert len(set(hits.ids)) == len(hits.ids)
        assert not gone & set(hits.ids), f"deleted records came back: {sorted(gone & set(hits.ids))}"
        for rid, score in zip(hits.ids, hits.scores, strict=True):
            assert score == pytest.approx(float(query @ current[rid]), abs=1e-4), rid
            checked += 1
    return checked


@pytest.mark.parametrize("kind", ["hnsw", "flat", "ivf", "ivfpq"])
def test_deletes_and_updates_never_resurrect_across_rebuild_and_reload(kind, data):
    ids, x = data
    rng = np.random.default_rng(7)
    spec = IndexSpec(kind=kind, max_dead_fraction=0.3)
    index = VectorIndex.build(ids, x, spec)
    current = dict(zip(ids, x, strict=True))
    old_vectors = []

    order = rng.permutation(len(ids))
    deleted = [ids[i] for i in order[:400]]
    updated = [ids[i] for i in order[400:800]]
    readded = deleted[:100]

    index.remove(deleted)
    new = clustered(len(updated), seed=11)
    old_vectors.append(np.stack([current[r] for r in updated]))
    index.upsert(updated, new)
    current.update(zip(updated, new, strict=True))
    for rid in deleted:
        old_vectors.append(current.pop(rid)[None, :])
    again = clustered(len(readded), seed=12)
    index.add(readded, again)
    current.update(zip(readded, again, strict=True))
    gone = set(deleted) - set(readded)

    assert sorted(index.ids) == sorted(current)
    if kind == "hnsw":
        assert 0 < index.dead_fraction <= 0.3  # 800 tombstones of 3500 labels: no rebuild yet
    # queries: the live vectors, the old vectors of updated and deleted records, and noise
    queries = np.vstack([x[:600], *old_vectors, clustered(200, seed=13)])
    assert _check_no_resurrection(index, current, gone, queries) > 0

    # a second wave of updates passes the dead threshold: the graph is rebuilt without them
    wave = [ids[i] for i in order[800:1300]]
    newer = clustered(len(wave), seed=14)
    old_vectors.append(np.stack([current[r] for r in wave]))
    index.upsert(wave, newer)
    current.update(zip(wave, newer, strict=True))
    if kind == "hnsw":
        assert index.dead_fraction == 0.0 and index._faiss.ntotal == len(current)
    queries = np.vstack([queries, old_vectors[-1]])
    _check_no_resurrection(index, current, gone, queries)
    np.testing.assert_allclose(index.vectors_of(wave[:5]), newer[:5], atol=1e-6)

    # one more delete after the rebuild, then save and load: still exact
    index.remove(wave[:50])
    for rid in wave[:50]:
        current.pop(rid)
    gone |= set(wave[:50])
    blob, mapping = index.to_state()
    loaded = VectorIndex.from_state(blob, mapping)
    _check_no_resurrection(loaded, current, gone, queries)
    assert sorted(loaded.ids) == sorted(current)


def test_hnsw_tombstone_bitmap_grows_with_the_labels(data):
    ids, x = data
    index = VectorIndex.build(ids[:100], x[:100], IndexSpec(kind="hnsw", max_dead_fraction=0.9))
    index.remove(["r0"])
    assert index.search(x[0], 5)[0].ids[0] != "r0"  # the bitmap is now built, sized for ~100 labels
    index.add(ids[100:], x[100:])
    index.remove(ids[2000:2200])  # labels far past the first bitmap's end
    found = {rid for h in index.search(x[1990:2300], 10) for rid in h.ids}
    assert not found & set(ids[2000:2200]) and "r0" not in found
    assert "r2200" in found


def test_compact_rebuilds_only_live_vectors(data):
    ids, x = data
    index = VectorIndex.build(ids, x, IndexSpec(kind="hnsw", max_dead_fraction=1.0))
    index.remove(ids[:1000])
    assert index.dead_fraction == pytest.approx(1000 / 3000)
    before = [h.ids for h in index.search(x[1000:1020], 5)]
    index.compact()
    assert index.dead_fraction == 0.0 and index._faiss.ntotal == 2000 and len(index) == 2000
    assert [h.ids[0] for h in index.search(x[1000:1020], 5)] == [b[0] for b in before]
    np.testing.assert_allclose(index.vectors_of(ids[2990:]), x[2990:], atol=1e-6)


def test_state_written_before_the_dead_threshold_existed_still_loads(data):
    ids, x = data
    index = VectorIndex.build(ids[:200], x[:200], IndexSpec(kind="hnsw"))
    index.remove(["r5"])
    blob, mapping = index.to_state()
    mapping["spec"].pop("max_dead_fraction")  # a manifest from before this field
    loaded = VectorIndex.from_state(blob, mapping)
    assert loaded.spec.max_dead_fraction == IndexSpec().max_dead_fraction
    assert "r5" not in {rid for h in loaded.search(x[:10], 10) for rid in h.ids}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_measure_recall_scans_the_stored_vectors_exactly(kind, data):
    ids, x = data
    index = VectorIndex.build(ids, x, IndexSpec(kind=kind))
    index.remove(ids[:100])
    exact = VectorIndex.build(ids[100:], x[100:])
    recall = measure_recall(index, x[100:400], k=10)
    assert recall == pytest.approx(recall_at_k(index, exact, x[100:400], k=10), abs=0.02)
    assert recall >= (1.0 if kind == "flat" else 0.9)


def test_measure_recall_catches_a_poor_index_and_counts_ties_as_found(data):
    ids, x = data
    poor = VectorIndex.build(ids, x, IndexSpec(kind="hnsw", hnsw_m=4, ef_construction=8, ef_search=1))
    assert measure_recall(poor, x[:300], k=10) < 0.9
    twins = VectorIndex.build(["a", "b", "c"], np.vstack([x[0], x[0], x[1]]))  # a and b tie
    assert measure_recall(twins, x[:1], k=1) == 1.0


def test_choose_spec_switches_to_hnsw_at_the_threshold(monkeypatch):
    monkeypatch.delenv("LOCKSTEP_ANN_THRESHOLD", raising=False)
    assert choose_spec(199_999, 256).kind == "flat"
    big = choose_spec(200_000, 256)
    assert big.kind == "hnsw" and big.ef_search >= 96
    monkeypatch.setenv("LOCKSTEP_ANN_THRESHOLD", "1000")
    assert choose_spec(1000, 64).kind == "hnsw" and choose_spec(999, 64).kind == "flat"
    assert spec_for("auto", 5000, 64).kind == "hnsw" and spec_for("ivf", 5000, 64).kind == "ivf"
    assert resolve_spec(None, 999, 64).kind == "flat" and resolve_spec({}, 5000, 64).kind == "hnsw"
    tuned = resolve_spec({"kind": "auto", "ef_search": 300}, 5000, 64)
    assert (tuned.kind, tuned.ef_search, tuned.hnsw_m) == ("hnsw", 300, 48)  # small: the fastest search fits the budget
    monkeypatch.setenv("LOCKSTEP_ANN_THRESHOLD", "200000")
    at_1m = choose_spec(1_000_000, 256)  # HNSW48's 433 s build is over the 300 s budget: HNSW32, efC 80
    assert (at_1m.kind, at_1m.hnsw_m, at_1m.ef_construction) == ("hnsw", 32, 80)
    monkeypatch.setenv("LOCKSTEP_INDEX_BUILD_BUDGET", "1")  # nothing fits: the fastest build
    assert choose_spec(1_000_000, 256).kind == "ivf"
    monkeypatch.setenv("LOCKSTEP_INDEX_BUILD_BUDGET", "soon")
    with pytest.raises(LockstepError, match="LOCKSTEP_INDEX_BUILD_BUDGET='soon' is not a number of seconds"):
        choose_spec(1_000_000, 256)
    monkeypatch.setenv("LOCKSTEP_INDEX_BUILD_BUDGET", "0")  # no limit: the fastest search
    assert choose_spec(1_000_000, 256).hnsw_m == 48
    monkeypatch.delenv("LOCKSTEP_INDEX_BUILD_BUDGET")
    monkeypatch.setenv("LOCKSTEP_ANN_THRESHOLD", "1000")
    assert resolve_spec({"kind": "flat"}, 10**7, 64).kind == "flat"
    monkeypatch.setenv("LOCKSTEP_ANN_THRESHOLD", "lots")
    with pytest.raises(LockstepError, match="LOCKSTEP_ANN_THRESHOLD='lots' must be a whole number"):
        choose_spec(10, 64)
    with pytest.raises(LockstepError, match="max_dead_fraction"):
        IndexSpec(kind="hnsw", max_dead_fraction=0)
