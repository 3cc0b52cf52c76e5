"""LiveVersion: what serving holds per version (user-vector store + item index), and fold-in."""

from __future__ import annotations

import numpy as np
import pytest

from lockstep.recommender.fold_in import UnknownIdError
from lockstep.recommender.item_index import exact_score
from lockstep.recommender.live_version import LiveVersion, single_thread_blas
from tests.recommender import ml100k


@pytest.fixture
def live():
    return LiveVersion(ml100k.fitted("small"), model_version="7")


def test_recommend_pairs_the_users_vector_with_the_same_versions_items(live):
    model = live.model
    hits = live.recommend("196", k=10)
    assert len(hits) == 10 and live.model_version == "7" and live.fingerprint == model.fingerprint
    user = model.user_vectors(["196"])[0]
    for item_id, score in hits:
        assert score == exact_score(user, model.item_vectors([item_id])[0])
    with pytest.raises(UnknownIdError, match=r"unknown user id: 'ghost'; version 7 has no vector for it"):
        live.recommend("ghost")


def test_a_new_user_is_folded_in_and_recommended_to(live):
    data = ml100k.interactions()
    history = data[data["user_id"] == "196"]
    result = live.fold_in_user("newcomer", [*history["item_id"], "not-in-this-fit"], [*history["value"], 4.0])
    assert result.skipped == ["not-in-this-fit"]  # joined after the fit: left out, and said so
    np.testing.assert_allclose(live.user_vector("newcomer"), live.user_vector("196"), atol=1e-5 * np.abs(result.vector).max())
    seen = set(history["item_id"])
    assert [i for i, _ in live.recommend("newcomer", 10, exclude=seen)] == [i for i, _ in live.recommend("196", 10, exclude=seen)]


def test_a_changed_user_moves_and_only_in_its_own_version(live):
    other = LiveVersion(ml100k.fitted("small"), model_version="8")
    before = live.user_vector("1").copy()
    data = ml100k.interactions()
    history = data[data["user_id"] == "1"]
    live.fold_in_user("1", [*history["item_id"], "1682"], [*history["value"], 5.0])
    assert not np.allclose(live.user_vector("1"), before, atol=1e-4)
    assert np.array_equal(other.user_vector("1"), before)
    assert np.array_equal(live.model.user_vectors(["1"])[0], before)  # the fit itself is untouched


def test_a_new_item_joins_after_its_first_interactions(live):
    # A new item that Star Wars' (item 50) raters interact with, as they rated Star Wars,
    # lands where Star Wars is: the item step given the same user factors.
    data = ml100k.interactions()
    raters = data[data["item_id"] == "50"]
    result = live.fold_in_item("sequel", [*raters["user_id"], "not-a-user-of-this-fit"], [*raters["value"], 5.0])
    assert result.skipped == ["not-a-user-of-this-fit"] and "sequel" in live.index
    assert len(live.index) == 1683
    star_wars = live.model.item_vectors(["50"])[0]
    sequel = live.index.vectors_of(["sequel"])[0]
    cosine = float(sequel @ star_wars / np.linalg.norm(sequel) / np.linalg.norm(star_wars))
    assert cosine > 0.99, cosine
    # Recommendable at once, with its exact score; a second fold-in moves it in place.
    scores = dict(live.recommend("1", k=1683))
    assert scores["sequel"] == exact_score(live.user_vector("1"), sequel)
    live.fold_in_item("sequel", ["1", "2"], [1.0, 1.0])
    assert len(live.index) == 1683 and not np.allclose(live.index.vectors_of(["sequel"])[0], sequel)


def test_serving_can_limit_blas_to_one_thread_and_undo_it():
    from threadpoolctl import threadpool_info

    before = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    limiter = single_thread_blas()
    try:
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
    finally:
        limiter.restore_original_limits()
    assert [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"] == before
