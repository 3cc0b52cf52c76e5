"""The drift check's click-through signal judges users, not searches (issue 22)."""

from __future__ import annotations

import pytest

from lockstep.drift.click_through import click_through_drift
from lockstep.drift.verdict import DriftThresholds, assess
from lockstep.store.log_stats import ClusterSums


def test_one_heavy_users_bad_day_is_not_drift_per_user():
    """Per search the drop is significant; per user it is one user having a bad day."""
    reference = ClusterSums.of([(2, 10)] * 200, cap=None)  # CTR 0.20 over 2000 searches
    current = ClusterSums.of([(2, 10)] * 150 + [(0, 600)], cap=None)  # one heavy user who clicks nothing
    counts = (reference.raw_x, reference.raw_n, current.raw_x, current.raw_n)
    per_search = click_through_drift(*counts)
    per_user = click_through_drift(*counts, reference_users=reference, current_users=current)
    assert per_search.p_value < 0.001 and not per_search.user_level
    assert per_user.user_level and per_user.design_effect > 3
    assert per_user.p_value > 10 * per_search.p_value
    assert per_user.relative_drop == pytest.approx(per_search.relative_drop)  # no cap: the same rates


def test_per_user_without_user_ids_is_close_to_the_pooled_test_and_empty_sums_fall_back():
    reference, current = ClusterSums.per_trial(200, 1000), ClusterSums.per_trial(140, 1000)
    pooled = click_through_drift(200, 1000, 140, 1000)
    per_user = click_through_drift(200, 1000, 140, 1000, reference_users=reference, current_users=current)
    assert per_user.z == pytest.approx(pooled.z, rel=0.05)  # every search its own user: the binomial case
    fallback = click_through_drift(200, 1000, 140, 1000, reference_users=ClusterSums(), current_users=current)
    assert fallback == pooled


def test_the_report_says_the_click_through_was_judged_per_user():
    reference, current = ClusterSums.per_trial(200, 1000), ClusterSums.per_trial(100, 1000)
    ctr = click_through_drift(200, 1000, 100, 1000, reference_users=reference, current_users=current)
    report = assess(None, None, ctr, DriftThresholds())
    assert report.figures["ctr_user_level"] == 1.0 and report.figures["ctr_design_effect"] >= 1.0
    assert report.drifted and "ctr_p_value" in report.figures  # a halving of the CTR is drift, per user too
