"""The statistics under the rollout gates (``lockstep.rollout.statistics``), on their own.

The gates' verdicts and the statsmodels oracle for the proportion tests are in
``test_gates.py``; here the figures themselves are checked against scipy and brute force,
and the module is checked to stay below the gates (figures in, figures out, no verdicts).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from lockstep.rollout.gates import SequentialCTRTest
from lockstep.rollout.sequential import SequentialCTR, msprt_p_value
from lockstep.rollout.statistics import (
    GateError,
    arm_counts,
    compare_latencies,
    count_problem,
    direction_sign,
    error_increase_test,
    hodges_lehmann,
    remove_outliers,
    two_proportion_test,
)


def test_statistics_import_no_gate_and_give_no_verdicts():
    """The maths sits under the gates: importing it loads neither the gates nor a verdict."""
    code = (
        "import json, sys, lockstep.rollout.statistics; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lockstep.rollout'))))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded == ["lockstep.rollout", "lockstep.rollout.statistics"]
    assert not hasattr(SequentialCTR, "analyse")


def test_compare_latencies_matches_scipy_and_brute_force():
    rng = np.random.default_rng(7)
    cand = rng.gamma(4.0, 12.0, size=60).round(1)
    base = rng.gamma(4.0, 10.0, size=50).round(1)
    figures = compare_latencies(cand, base, confidence=0.95)
    assert figures["p_value"] == pytest.approx(stats.mannwhitneyu(cand, base, alternative="two-sided").pvalue)
    assert figures["hl_shift_ms"] == pytest.approx(float(np.median(np.subtract.outer(cand, base))))
    assert figures["median_cand_ms"] == pytest.approx(float(np.median(cand)))
    assert figures["median_base_ms"] == pytest.approx(float(np.median(base)))
    assert figures["hl_ci_low_ms"] <= figures["hl_shift_ms"] <= figures["hl_ci_high_ms"]


def test_hodges_lehmann_refuses_an_empty_sample():
    with pytest.raises(GateError, match="at least one value in each sample"):
        hodges_lehmann([], [1.0])


def test_remove_outliers_drops_only_far_points_and_never_inside_p1_p99():
    rng = np.random.default_rng(3)
    values = np.append(rng.normal(100.0, 5.0, size=999), 10_000.0)
    kept = remove_outliers(values, factor=3.0)
    assert 10_000.0 not in kept
    p1, p99 = np.percentile(values, [1, 99])
    inside = values[(values >= p1) & (values <= p99)]
    assert np.isin(inside, kept).all()
    assert values.size - kept.size <= 0.02 * values.size


def test_error_increase_test_agrees_with_a_hand_computed_agresti_caffo_z():
    # 12 of 400 against 5 of 500, tolerance 1 point: adjusted rates 13/402 and 6/502.
    figures = error_increase_test(12, 400, 5, 500, max_abs_increase=0.01, alpha=0.05)
    a, b = 13 / 402, 6 / 502
    se = math.sqrt(a * (1 - a) / 402 + b * (1 - b) / 502)
    assert figures["z"] == pytest.approx((a - b - 0.01) / se)
    assert figures["p_value"] == pytest.approx(stats.norm.sf((a - b - 0.01) / se))
    assert figures["diff_upper"] == pytest.approx(a - b + stats.norm.ppf(0.95) * se)


def test_two_proportion_test_figures():
    figures = two_proportion_test(56, 70, 48, 80, alpha=0.05)
    chi2, p, _, _ = stats.chi2_contingency([[56, 14], [48, 32]], correction=False)
    assert figures["p_value"] == pytest.approx(p)
    assert figures["z"] ** 2 == pytest.approx(chi2)
    assert figures["diff"] == pytest.approx(56 / 70 - 48 / 80)
    assert figures["ci_low"] < figures["diff"] < figures["ci_high"]
    assert figures["rel_lift"] == pytest.approx((56 / 70) / (48 / 80) - 1)
    assert figures["rel_lift_low"] < figures["rel_lift"] < figures["rel_lift_high"]
    no_clicks = two_proportion_test(0, 100, 0, 100)
    assert no_clicks["z"] == 0.0 and no_clicks["p_value"] == 1.0
    assert "rel_lift" not in no_clicks and "rel_lift_low" not in no_clicks


def test_sequential_ctr_p_value_never_rises_and_looks_start_after_burn_in():
    test = SequentialCTR(tau2=1e-3, burn_in=200)
    test.update(10, 100, 30, 100)
    assert test.looks == () and test.p_value == 1.0 and test.confidence_interval() == (-1.0, 1.0)
    rng = np.random.default_rng(11)
    previous = 1.0
    for _ in range(15):
        test.update(rng.binomial(100, 0.10), 100, rng.binomial(100, 0.14), 100)
        assert test.p_value <= previous
        previous = test.p_value
    assert len(test.looks) == 15
    assert previous == pytest.approx(float(np.min(msprt_p_value(
        [k.cand_clicks for k in test.looks], [k.cand_n for k in test.looks],
        [k.base_clicks for k in test.looks], [k.base_n for k in test.looks], tau2=1e-3,
    ))))


def test_sequential_ctr_refuses_impossible_counts_and_says_why():
    test = SequentialCTR()
    test.update(5, 100, 4, 100)
    test.update(50, 10, 4, 100)
    assert test.problem == "candidate has 50 clicks out of only 10 impressions"
    assert (test.cand_clicks, test.cand_n) == (5, 100)
    test.update(1, 10, 1, 10)
    assert test.problem is None and test.cand_n == 110


def test_saved_state_resumes_as_the_class_that_saved_it():
    test = SequentialCTRTest(tau2=0.01, burn_in=50, name="ctr")
    test.update(30, 300, 20, 300)
    state = json.loads(json.dumps(test.to_state()))
    assert type(SequentialCTRTest.from_state(state)) is SequentialCTRTest
    plain = SequentialCTR.from_state(state)
    assert type(plain) is SequentialCTR
    assert (plain.p_value, plain.confidence_interval(), plain.looks) == (
        test.p_value, test.confidence_interval(), test.looks
    )


@pytest.mark.parametrize(
    ("count", "total", "problem"),
    [
        (None, 10, "arm clicks are missing"),
        ("x", 10, "arm clicks 'x' is not a number"),
        (math.nan, 10, "arm clicks is nan (missing data)"),
        (1.5, 10, "arm clicks 1.5 is not a non-negative whole number"),
        (-1, 10, "arm clicks -1 is not a non-negative whole number"),
        (11, 10, "arm has 11 clicks out of only 10 impressions"),
        (3, 10, None),
    ],
)
def test_count_problem_names_what_is_wrong(count, total, problem):
    assert count_problem("arm", count, total, "clicks", "impressions") == problem


def test_arm_counts_and_direction_refuse_bad_input():
    arms, s, t = arm_counts({"a": 1, "b": 2}, {"b": 20, "a": 10})
    assert arms == ["b", "a"] and s.tolist() == [2.0, 1.0] and t.tolist() == [20.0, 10.0]
    with pytest.raises(GateError, match="same, non-empty arms"):
        arm_counts({"a": 1}, {"b": 10})
    with pytest.raises(GateError, match="arm 'a' has 11 successes"):
        arm_counts({"a": 11}, {"a": 10})
    assert (direction_sign("higher"), direction_sign("lower")) == (1, -1)
    with pytest.raises(GateError, match="direction must be"):
        direction_sign("up")
