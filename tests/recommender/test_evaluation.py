"""Offline evaluation on MovieLens-100k's time split: ALS against popularity and a champion."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lockstep.recommender.evaluation import (
    compare,
    evaluate,
    metrics_at_k,
    model_scorer,
    popularity_scorer,
    time_split,
)
from lockstep.recommender.factorization import ALSRecommender
from tests.recommender import ml100k


def test_the_split_holds_out_each_users_latest_interactions():
    data, split = ml100k.interactions(), ml100k.split()
    assert len(split.train) + len(split.test) == len(data)
    assert set(split.test["user_id"]) == set(split.train["user_id"]) == set(data["user_id"])
    last_train = split.train.groupby("user_id")["timestamp"].max()
    first_test = split.test.groupby("user_id")["timestamp"].min()
    assert (last_train <= first_test.reindex(last_train.index)).all()
    held = split.test.groupby("user_id").size()
    total = data.groupby("user_id").size()
    assert (held == np.maximum(1, np.floor(total * 0.2)).astype(int)).all()
    pairs = lambda f: set(zip(f["user_id"], f["item_id"], strict=True))  # noqa: E731
    assert not pairs(split.train) & pairs(split.test)
    assert time_split(data.sample(frac=1.0, random_state=5)).test.equals(split.test)  # row order does not matter


def test_users_with_too_few_interactions_stay_in_training():
    frame = pd.DataFrame({"user_id": ["a", "b", "b", "b"], "item_id": ["x", "x", "y", "z"], "value": 1.0, "timestamp": [1, 1, 2, 3]})
    split = time_split(frame, holdout_fraction=0.5, min_train=1)
    assert split.test[["user_id", "item_id"]].values.tolist() == [["b", "z"]]
    with pytest.raises(ValueError, match=r"holdout_fraction must be in \(0, 1\)"):
        time_split(frame, holdout_fraction=1.0)
    with pytest.raises(ValueError, match=r"missing \['timestamp'\]"):
        time_split(frame.drop(columns="timestamp"))


def test_metrics_of_a_perfect_and_of_a_hopeless_scorer():
    split = ml100k.split()
    relevant = split.relevant()
    users = sorted(relevant)

    def oracle(user_ids):
        scores = np.zeros((len(user_ids), len(split.items)))
        for row, user in enumerate(user_ids):
            scores[row, relevant[user]] = 1.0
        return scores

    perfect = metrics_at_k(oracle, split)
    assert np.allclose(perfect["recall"], 1.0) and np.allclose(perfect["ndcg"], 1.0)
    hopeless = metrics_at_k(lambda ids: -oracle(ids) - np.arange(len(split.items)) * 1e-9, split)
    assert (hopeless["recall"] == 0).all() and (hopeless["ndcg"] == 0).all()
    assert list(perfect["user_id"]) == users  # one row per evaluated user, sorted


def test_als_beats_popularity_on_ndcg_at_10_with_a_seeded_paired_bootstrap():
    split = ml100k.split()
    als = metrics_at_k(model_scorer(ml100k.fitted("train"), split), split)
    pop = metrics_at_k(popularity_scorer(split), split)
    result = compare(als, pop, seed=0)
    for metric in ("recall", "ndcg"):
        row = result[metric]
        assert all(math.isfinite(v) for v in row.values())
        assert 0 <= row["candidate"] <= 1 and 0 <= row["baseline"] <= 1
        assert row["ci_low"] <= row["delta"] <= row["ci_high"]
    assert result["ndcg"]["ci_low"] > 0, result  # ALS is better, and the CI says so
    assert compare(als, pop, seed=0) == result  # seeded: the same CI every run


def test_evaluate_reports_every_figure_against_a_champion():
    split = ml100k.split()
    candidate = ml100k.fitted("train")
    champion = ALSRecommender(**ml100k.SMALL).fit(split.train.head(40_000))  # older, smaller data
    figures = evaluate(candidate, split, champion=champion, seed=0)
    expected = {
        "recall_at_10", "ndcg_at_10", "eval_users", "popularity_recall_at_10", "popularity_ndcg_at_10",
        "champion_recall_at_10", "champion_ndcg_at_10",
        "delta_recall_at_10", "delta_recall_at_10_ci_low", "delta_recall_at_10_ci_high",
        "delta_ndcg_at_10", "delta_ndcg_at_10_ci_low", "delta_ndcg_at_10_ci_high",
    }
    assert set(figures) == expected
    assert all(math.isfinite(v) for v in figures.values())
    for name in ("recall_at_10", "ndcg_at_10", "popularity_ndcg_at_10", "champion_ndcg_at_10"):
        assert 0 <= figures[name] <= 1
    assert figures["eval_users"] == 943
    assert figures["ndcg_at_10"] == pytest.approx(figures["champion_ndcg_at_10"] + figures["delta_ndcg_at_10"])
    # The champion never saw some users: they were folded in from their training history.
    assert len(set(split.train["user_id"]) - set(champion.user_ids_)) > 0


def test_compare_refuses_metrics_of_different_users():
    a = pd.DataFrame({"user_id": ["1", "2"], "recall": [0.1, 0.2], "ndcg": [0.1, 0.2]})
    with pytest.raises(ValueError, match="same users"):
        compare(a, a.iloc[::-1].reset_index(drop=True))
