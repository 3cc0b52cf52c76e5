"""Drift of the recommender's interactions on MovieLens-100k: new items and popularity shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lockstep.drift.interactions import InteractionLimits, assess_interactions
from lockstep.drift.verdict import DriftThresholds
from tests.recommender.ml100k import interactions

LEVEL = DriftThresholds(false_alarm_rate=0.01, checks_per_day=24)


@pytest.fixture(scope="module")
def halves():
    """Two random halves of the ratings (seeded): the same distribution on both sides."""
    data = interactions()
    order = np.random.default_rng(0).permutation(len(data))
    return data.iloc[order[:5000]], data.iloc[order[5000:10000]], set(data["item_id"])


def test_two_samples_of_the_same_interactions_are_not_drift(halves):
    reference, recent, known = halves
    report = assess_interactions(reference, recent, known, LEVEL, InteractionLimits())
    assert not report.drifted, report.reasons
    assert report.figures["new_item_share"] == 0.0
    assert report.figures["popularity_tv_distance"] < 0.25  # below the floor: not judged


def test_a_catalogue_that_turns_over_is_drift(halves):
    reference, recent, known = halves
    turned = recent.copy()
    turned.iloc[:1000, turned.columns.get_loc("item_id")] = [f"new-{i % 40}" for i in range(1000)]  # 20 % on new items
    report = assess_interactions(reference, turned, known, LEVEL, InteractionLimits())
    assert report.drifted and report.figures["new_item_share"] == pytest.approx(0.2)
    assert any("items it does not know" in r for r in report.reasons)


def test_a_few_new_items_within_the_tolerance_are_not_drift(halves):
    reference, recent, known = halves
    some = recent.copy()
    some.iloc[:100, some.columns.get_loc("item_id")] = "new-release"  # 2 %, under the 5 % tolerated
    report = assess_interactions(reference, some, known, LEVEL, InteractionLimits())
    assert not report.drifted and report.figures["new_item_share"] == pytest.approx(0.02)


def test_people_turning_to_other_items_is_drift(halves):
    reference, _, known = halves
    data = interactions()
    popular = set(reference["item_id"].value_counts().index[:200])
    niche = data[~data["item_id"].isin(popular)].sample(5000, random_state=1)
    report = assess_interactions(reference, niche, known, LEVEL, InteractionLimits())
    assert report.drifted and report.figures["popularity_tv_distance"] > 0.25
    assert any("item popularity moved" in r for r in report.reasons)


def test_the_figures_reach_the_report_for_mlflow(halves):
    reference, recent, known = halves
    report = assess_interactions(reference, recent, known, LEVEL, InteractionLimits()).to_dict()
    for key in ("new_item_share", "popularity_tv_distance", "new_items_p_value", "popularity_shift_p_value", "false_alarm_level"):
        assert np.isfinite(report["figures"][key])
    assert isinstance(pd.Series(report["figures"]).sum(), float)
