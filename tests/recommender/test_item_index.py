"""ItemIndex: exact flat recommendations with exact scores, HNSW for large catalogues."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lockstep.recommender.fold_in import UnknownIdError
from lockstep.recommender.item_index import HNSW_THRESHOLD, ItemIndex, exact_score
from tests.recommender import ml100k


def _brute_force(user: np.ndarray, ids: list[str], vectors: np.ndarray, k: int, exclude: set[str]) -> list[str]:
    scored = [(-Fraction(exact_score(user, v)), i) for i, v in zip(ids, vectors, strict=True) if i not in exclude]
    return [i for _, i in sorted(scored)[:k]]


def test_flat_recommendations_are_the_exact_top_k_with_exact_scores():
    model = ml100k.fitted("full")
    index = ItemIndex.build(model.item_ids_, model.item_factors_)
    assert index.kind == "flat" and len(index) == 1682
    data = ml100k.interactions()
    for user_id in ["1", "196", "500"]:
        user = model.user_vectors([user_id])[0]
        seen = set(data.loc[data["user_id"] == user_id, "item_id"])
        hits = index.recommend(user, k=10, exclude=seen)
        assert [i for i, _ in hits] == _brute_force(user, model.item_ids_, model.item_factors_, 10, seen)
        assert not seen & {i for i, _ in hits}
        for item_id, score in hits:
            item = model.item_vectors([item_id])[0]
            # Exact: the real-number inner product of the stored float32 vectors, rounded once.
            exact = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(user, item, strict=True))
            assert score == float(exact)
            assert score == pytest.approx(float(user @ item), rel=1e-5)


def test_exact_score_is_order_free():
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(2, 64)).astype(np.float32)
    perm = rng.permutation(64)
    assert exact_score(u, v) == exact_score(u[perm], v[perm]) == math.fsum((u.astype(float) * v.astype(float)).tolist())


def test_exclusions_k_and_running_out():
    vectors = np.eye(4, dtype=np.float32)
    index = ItemIndex.build(["a", "b", "c", "d"], vectors)
    user = np.array([4, 3, 2, 1], dtype=np.float32)
    assert index.recommend(user, k=2) == [("a", 4.0), ("b", 3.0)]
    assert index.recommend(user, k=2, exclude={"a", "unknown-is-ignored"}) == [("b", 3.0), ("c", 2.0)]
    assert index.recommend(user, k=10, exclude={"a"}) == [("b", 3.0), ("c", 2.0), ("d", 1.0)]
    assert index.recommend(user, k=3, exclude={"a", "b", "c", "d"}) == []
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        index.recommend(user, k=0)
    with pytest.raises(ValueError, match=r"expected vectors of shape \(1, 4\), got \(3,\)"):
        index.recommend(np.ones(3), k=1)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_new_items_join_and_changed_items_move(kind):
    vectors = np.eye(4, dtype=np.float32)
    index = ItemIndex.build(["a", "b", "c", "d"], vectors, kind=kind)
    user = np.array([1, 0, 0, 0], dtype=np.float32)
    index.add(["new"], np.array([[2, 0, 0, 0]], dtype=np.float32))
    assert index.recommend(user, k=1) == [("new", 2.0)]
    index.update(["a"], np.array([[3, 0, 0, 0]], dtype=np.float32))
    assert index.recommend(user, k=2) == [("a", 3.0), ("new", 2.0)]
    assert len(index) == 5 and np.array_equal(index.vectors_of(["a"]), [[3, 0, 0, 0]])
    # The old vector of "a" never comes back, even when everything else is excluded.
    assert index.recommend(-user, k=5) == [("b", 0.0), ("c", 0.0), ("d", 0.0), ("new", -2.0), ("a", -3.0)]
    assert [i for i, _ in index.recommend(user, k=10)].count("a") == 1
    with pytest.raises(ValueError, match=r"items already in the index \(use update\): 'a'"):
        index.add(["a"], np.ones((1, 4)))
    with pytest.raises(UnknownIdError, match="unknown item id: 'zz'"):
        index.update(["zz"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN or infinity"):
        index.add(["x"], np.full((1, 4), np.nan))


def test_hnsw_finds_nearly_what_flat_finds():
    rng = np.random.default_rng(0)
    ids = [f"i{i}" for i in range(20_000)]
    vectors = rng.normal(size=(20_000, 32)).astype(np.float32)
    flat = ItemIndex.build(ids, vectors, kind="flat")
    hnsw = ItemIndex.build(ids, vectors, kind="hnsw")
    users = rng.normal(size=(50, 32)).astype(np.float32)
    found = sum(len({i for i, _ in flat.recommend(u, 10)} & {i for i, _ in hnsw.recommend(u, 10)}) for u in users)
    assert found / 500 >= 0.9
    # HNSW scores are exact too (rescored from the stored vectors).
    for item_id, score in hnsw.recommend(users[0], 5):
        assert score == exact_score(users[0], hnsw.vectors_of([item_id])[0])


def test_auto_picks_flat_below_the_threshold():
    assert ItemIndex.build(["a"], np.ones((1, 2)), kind="auto").kind == "flat"
    assert HNSW_THRESHOLD >= 100_000
    with pytest.raises(ValueError, match="unknown item index kind 'ivf'"):
        ItemIndex.build(["a"], np.ones((1, 2)), kind="ivf")
