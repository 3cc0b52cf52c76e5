"""The recommender's training run on MovieLens-100k: the verdict against the champion."""

from __future__ import annotations

import math

import pytest

from lockstep.recommender.config import RecommenderTrainConfig
from lockstep.recommender.steps import train

pytestmark = pytest.mark.timeout(600, method="thread")


@pytest.fixture
def store(lockstep_home, monkeypatch):
    from lockstep.recommender import movielens
    from lockstep.store.interactions import InteractionStore
    from tests.conftest import DEMO_CACHE

    monkeypatch.setenv("LOCKSTEP_SYSTEM", "recommender")
    store = InteractionStore()
    store.upsert_items(movielens.items(DEMO_CACHE))
    store.add_many(movielens.interactions(DEMO_CACHE))
    return store


def test_a_retrain_with_the_champions_parameters_is_equal_offline_and_left_to_the_online_gates(store):
    from lockstep.model.registry import Registry

    first = train(RecommenderTrainConfig(factors=8, iterations=3), store=store)
    Registry().promote_champion(first.version, reason="test: first champion")
    again = train(RecommenderTrainConfig(factors=8, iterations=3), store=store)
    assert again.accepted and "judged online" in again.reason
    for metric in ("ndcg", "recall"):
        assert again.figures[f"delta_{metric}_at_10"] == 0.0
        assert again.figures[f"delta_{metric}_at_10_ci_low"] == again.figures[f"delta_{metric}_at_10_ci_high"] == 0.0
    assert all(math.isfinite(v) for v in again.figures.values())


def test_a_candidate_worse_than_the_champion_beyond_the_margin_is_not_the_challenger(store):
    from lockstep.model.registry import Registry

    registry = Registry()
    strong = train(RecommenderTrainConfig(factors=32, iterations=10), store=store)
    registry.promote_champion(strong.version, reason="test: a strong champion")
    weak = train(RecommenderTrainConfig(factors=1, iterations=2), store=store)
    assert not weak.accepted and weak.reason.startswith("worse than the champion")
    assert weak.figures["delta_ndcg_at_10_ci_high"] < 0
    assert registry.version_for_alias("challenger") is None  # promoting the champion took the alias; the weak fit did not
    assert registry.get_version(weak.version).tags["lockstep.accepted"] == "false"
