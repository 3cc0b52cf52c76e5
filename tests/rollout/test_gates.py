"""The progressive-delivery gates, checked by seeded simulation, against known values and
against statsmodels (the oracle for every two-proportion test and interval).

The error-rate claims are Monte Carlo estimates; each assertion states its sample size
and the slack allowed (about three standard errors), so a pass is not a lucky draw.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)
from statsmodels.stats.proportion import (
    test_proportions_2indep as proportions_2indep_test,  # not a pytest test
)

from lockstep.rollout.gates import (
    Action,
    GateError,
    GateResult,
    GateVerdict,
    SequentialCTRTest,
    bandit_decision,
    combine,
    error_rate_gate,
    fixed_sample_ab_test,
    latency_gate,
    overlap_gate,
)
from lockstep.rollout.policy import CanaryPolicy
from lockstep.rollout.sequential import always_valid_ci, msprt_p_value
from lockstep.rollout.statistics import (
    hodges_lehmann,
    newcombe_interval,
    prob_best,
    required_sample_size,
    thompson_weights,
    to_percent_weights,
    wilson_interval,
)

ALPHA = 0.05
LOOKS = 20
BURN_IN = 100


def simulate_ctr(rate_cand, rate_base, per_look, runs, seed):
    """Cumulative clicks of both arms at each look: arrays (runs, LOOKS), and impressions (LOOKS,)."""
    rng = np.random.default_rng(seed)
    cand = rng.binomial(per_look, rate_cand, size=(runs, LOOKS)).cumsum(axis=1)
    base = rng.binomial(per_look, rate_base, size=(runs, LOOKS)).cumsum(axis=1)
    return cand, base, per_look * np.arange(1, LOOKS + 1)


def sequential_outcomes(cand, base, n):
    """Stop each run at the first look whose always-valid p-value < alpha: (rejected, failed)."""
    p = np.where(n >= BURN_IN, msprt_p_value(cand, n, base, n), 1.0)
    crossed = np.minimum.accumulate(p, axis=1) < ALPHA
    first = crossed.argmax(axis=1)
    rows = np.arange(cand.shape[0])
    worse = cand[rows, first] < base[rows, first]
    rejected = crossed.any(axis=1)
    return rejected, rejected & worse


def naive_peeking_rejections(cand, base, n):
    """A fixed-horizon two-sided z-test looked at after every batch: reject at the first |z| > 1.96."""
    pooled = (cand + base) / (2 * n)
    z = (cand - base) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    return (np.abs(z) > stats.norm.ppf(1 - ALPHA / 2)).any(axis=1)


def slack(rate, runs):
    return 3 * math.sqrt(rate * (1 - rate) / runs)


# --------------------------------------------------------------------------- results


def test_result_drops_non_finite_figures_and_is_json():
    result = GateResult("g", "pass", "fine", {"a": 1, "b": float("nan"), "c": float("inf"), "d": np.float64(2.5)})
    assert result.verdict is GateVerdict.PASS
    assert result.figures == {"a": 1.0, "d": 2.5}
    decoded = json.loads(json.dumps(result.to_dict()))
    assert decoded == {"name": "g", "verdict": "pass", "reason": "fine", "figures": {"a": 1.0, "d": 2.5}}
    assert GateVerdict.FAIL == "fail" and json.dumps(GateVerdict.INCONCLUSIVE) == '"inconclusive"'


def test_combine_any_fail_then_any_inconclusive_then_pass():
    ok = GateResult("a", GateVerdict.PASS, "ok", {"x": 1.0})
    maybe = GateResult("b", GateVerdict.INCONCLUSIVE, "thin data")
    bad = GateResult("c", GateVerdict.FAIL, "slow")
    assert combine([ok, maybe, bad]).verdict is GateVerdict.FAIL
    assert "c: slow" in combine([ok, maybe, bad]).reason
    assert combine([ok, maybe]).verdict is GateVerdict.INCONCLUSIVE
    passed = combine([ok, ok])
    assert passed.verdict is GateVerdict.PASS and passed.figures["a.x"] == 1.0 and passed.figures["n_pass"] == 2
    assert combine([]).verdict is GateVerdict.INCONCLUSIVE


# --------------------------------------------------------------------------- error rate


def test_error_gate_passes_equal_rates_and_fails_a_real_increase():
    assert error_rate_gate(10, 1000, 10, 1000).verdict is GateVerdict.PASS
    bad = error_rate_gate(45, 1000, 10, 1000)
    assert bad.verdict is GateVerdict.FAIL and bad.figures["p_value"] < 0.05


def test_error_gate_tolerates_increase_within_the_band():
    # +0.4 points on 20k requests is significant by itself, but below the 1-point tolerance.
    result = error_rate_gate(280, 20_000, 200, 20_000, max_abs_increase=0.01)
    assert result.verdict is GateVerdict.PASS
    assert error_rate_gate(280, 20_000, 200, 20_000, max_abs_increase=0.0).verdict is GateVerdict.FAIL


def test_error_gate_absolute_ceiling_fails_even_without_baseline():
    result = error_rate_gate(80, 1000, math.nan, math.nan, max_error_rate=0.05)
    assert result.verdict is GateVerdict.FAIL and "ceiling" in result.reason


def test_error_gate_small_sample_is_inconclusive():
    assert error_rate_gate(0, 20, 0, 20, min_samples=50).verdict is GateVerdict.INCONCLUSIVE


def test_error_gate_impossible_counts_are_not_a_pass():
    assert error_rate_gate(12, 10, 0, 100).verdict is GateVerdict.INCONCLUSIVE
    assert error_rate_gate(-1, 100, 0, 100, critical=True).verdict is GateVerdict.FAIL


def test_error_gate_false_fail_rate_is_below_alpha():
    rng = np.random.default_rng(7)
    runs = 400
    fails = sum(
        error_rate_gate(rng.binomial(2000, 0.01), 2000, rng.binomial(2000, 0.01), 2000, max_abs_increase=0.0).verdict
        is GateVerdict.FAIL
        for _ in range(runs)
    )
    assert fails / runs <= ALPHA + slack(ALPHA, runs)


# --------------------------------------------------------------------------- latency


def lognormal_ms(rng, n, scale=1.0):
    return scale * rng.lognormal(mean=math.log(60), sigma=0.5, size=n)


def test_latency_same_distribution_passes():
    rng = np.random.default_rng(1)
    verdicts = [latency_gate(lognormal_ms(rng, 300), lognormal_ms(rng, 300)).verdict for _ in range(40)]
    assert verdicts.count(GateVerdict.FAIL) == 0


def test_latency_fifty_percent_slower_fails():
    rng = np.random.default_rng(2)
    result = latency_gate(lognormal_ms(rng, 300, scale=1.5), lognormal_ms(rng, 300))
    assert result.verdict is GateVerdict.FAIL
    assert result.figures["hl_shift_ms"] > result.figures["allowed_shift_ms"]
    assert result.figures["hl_ci_low_ms"] <= result.figures["hl_shift_ms"] <= result.figures["hl_ci_high_ms"]


def test_latency_slightly_slower_is_significant_but_within_tolerance():
    rng = np.random.default_rng(3)
    result = latency_gate(lognormal_ms(rng, 20_000, scale=1.05), lognormal_ms(rng, 20_000))
    assert result.figures["p_value"] < 0.02
    assert result.verdict is GateVerdict.PASS and "within tolerance" in result.reason


def test_latency_small_sample_is_inconclusive():
    rng = np.random.default_rng(4)
    result = latency_gate(lognormal_ms(rng, 20, scale=3), lognormal_ms(rng, 20))
    assert result.verdict is GateVerdict.INCONCLUSIVE


def test_latency_outlier_is_removed_and_does_not_decide():
    rng = np.random.default_rng(5)
    cand = np.append(lognormal_ms(rng, 300), [60_000.0])
    result = latency_gate(cand, lognormal_ms(rng, 300))
    assert result.figures["removed_cand"] >= 1 and result.verdict is GateVerdict.PASS


@pytest.mark.parametrize("seed", range(5))
def test_hodges_lehmann_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    cand = rng.integers(40, 90, size=rng.integers(5, 60)).astype(float)
    base = rng.integers(40, 80, size=rng.integers(5, 60)).astype(float)
    diffs = np.sort(np.subtract.outer(cand, base).ravel())
    shift, low, high = hodges_lehmann(cand, base, 0.9)
    assert shift == np.median(diffs)
    pairs = diffs.size
    k = math.floor(pairs / 2 - stats.norm.ppf(0.95) * math.sqrt(pairs * (cand.size + base.size + 1) / 12))
    k = max(k, 1)
    assert (low, high) == (diffs[k - 1], diffs[pairs - k])


def test_hodges_lehmann_on_continuous_data():
    rng = np.random.default_rng(11)
    cand, base = rng.normal(10, 3, 301), rng.normal(7, 3, 257)
    assert hodges_lehmann(cand, base)[0] == pytest.approx(np.median(np.subtract.outer(cand, base)), abs=1e-9)


# --------------------------------------------------------------------------- overlap


def test_overlap_identical_passes_disjoint_fails():
    live = [[f"q{i}-{j}" for j in range(10)] for i in range(30)]
    assert overlap_gate(live, live).figures["mean_overlap"] == 1.0
    assert overlap_gate(live, live).verdict is GateVerdict.PASS
    disjoint = [[f"x{i}-{j}" for j in range(10)] for i in range(30)]
    assert overlap_gate(live, disjoint).verdict is GateVerdict.FAIL


def test_overlap_values():
    live, shadow = [["a", "b", "c", "d"]] * 20, [["a", "b", "e", "f"]] * 20
    assert overlap_gate(live, shadow, metric="jaccard").figures["mean_overlap"] == pytest.approx(2 / 6)
    assert overlap_gate(live, shadow, metric="overlap").figures["mean_overlap"] == pytest.approx(0.5)
    assert overlap_gate(live, shadow, metric="overlap", min_overlap=0.5).verdict is GateVerdict.PASS
    assert overlap_gate(live, shadow, metric="jaccard", min_overlap=0.5).verdict is GateVerdict.FAIL


def test_overlap_missing_shadow_counts_as_disagreement():
    live = [["a", "b"]] * 30
    shadow = [["a", "b"]] * 10 + [None] * 20
    result = overlap_gate(live, shadow)
    assert result.figures["n_shadow_missing"] == 20 and result.verdict is GateVerdict.FAIL


def test_overlap_thin_or_unpaired_data_is_not_a_pass():
    assert overlap_gate([["a"]] * 5, [["a"]] * 5, min_samples=20).verdict is GateVerdict.INCONCLUSIVE
    assert overlap_gate([["a"]] * 30, [["a"]] * 29).verdict is GateVerdict.INCONCLUSIVE
    assert overlap_gate([["a"]] * 30, [["a"]] * 29, critical=True).verdict is GateVerdict.FAIL


# --------------------------------------------------------------------------- NaN never passes


@pytest.mark.parametrize("critical", [False, True])
def test_nan_inputs_never_pass(critical):
    expected = GateVerdict.FAIL if critical else GateVerdict.INCONCLUSIVE
    nan = float("nan")
    rng = np.random.default_rng(0)
    base_ms = lognormal_ms(rng, 200)
    cand_ms = lognormal_ms(rng, 200)
    cand_ms[3] = nan
    results = [
        error_rate_gate(nan, 1000, 5, 1000, critical=critical),
        error_rate_gate(5, 1000, 5, nan, critical=critical),
        error_rate_gate(None, 1000, 5, 1000, critical=critical),
        latency_gate(cand_ms, base_ms, critical=critical),
        latency_gate(base_ms, [nan] * 200, critical=critical),
        latency_gate(None, base_ms, critical=critical),
        fixed_sample_ab_test(nan, 20_000, 2000, 20_000, critical=critical),
        bandit_decision({"c": nan, "b": 10}, {"c": 500, "b": 500}, "c", "b", critical=critical),
    ]
    test = SequentialCTRTest()
    test.update(2000, 20_000, 2000, 20_000)
    test.update(nan, 1000, 100, 1000)
    results.append(test.analyse(critical=critical))
    for result in results:
        assert result.verdict is expected, result
    assert all(r.verdict is not GateVerdict.PASS for r in results)


# --------------------------------------------------------------------------- sequential CTR


def test_sequential_aa_false_fail_rate_is_at_most_alpha_while_naive_peeking_is_not():
    """A/A at CTR 0.10: 2000 runs, 20 looks of 1000 impressions per arm (20k per arm in all).

    Measured: the sequential test rejects (either direction) in about 1 % of runs and
    FAILs the candidate in about 0.5 %; the fixed-horizon z-test peeked at every look
    rejects in about 25 %. Slack: 3 Monte Carlo standard errors at alpha (0.015).
    """
    runs = 2000
    cand, base, n = simulate_ctr(0.10, 0.10, 1000, runs, seed=2024)
    rejected, failed = sequential_outcomes(cand, base, n)
    assert failed.mean() <= ALPHA + slack(ALPHA, runs)
    assert rejected.mean() <= ALPHA + slack(ALPHA, runs)
    naive = naive_peeking_rejections(cand, base, n)
    assert naive.mean() > 2 * ALPHA
    single_look = naive_peeking_rejections(cand[:, -1:], base[:, -1:], n[-1:])
    assert single_look.mean() <= ALPHA + slack(ALPHA, runs)  # one planned look is fine


def test_sequential_power_for_a_ten_percent_relative_drop():
    """CTR 0.10 vs 0.09 (-10 % relative), 20 looks of 1500 per arm (30k per arm at the end),
    1000 runs: measured power about 0.90 (about 0.72 at 20k per arm); asserted >= 0.8."""
    cand, base, n = simulate_ctr(0.09, 0.10, 1500, 1000, seed=99)
    _, failed = sequential_outcomes(cand, base, n)
    assert failed.mean() >= 0.8


def test_sequential_class_agrees_with_vectorised_simulation():
    """The stateful class, fed batch by batch, stops where the vectorised simulation does."""
    runs = 12
    cand, base, n = simulate_ctr(0.094, 0.10, 1500, runs, seed=4)
    _, failed = sequential_outcomes(cand, base, n)
    assert 0 < failed.sum() < runs  # both outcomes occur, so agreement means something
    for run in range(runs):
        test = SequentialCTRTest(burn_in=BURN_IN)
        verdict = GateVerdict.INCONCLUSIVE
        previous_p = 1.0
        for look in range(LOOKS):
            prev_c = cand[run, look - 1] if look else 0
            prev_b = base[run, look - 1] if look else 0
            test.update(cand[run, look] - prev_c, 1500, base[run, look] - prev_b, 1500)
            assert test.p_value <= previous_p
            previous_p = test.p_value
            verdict = test.analyse(alpha=ALPHA, non_inferiority_margin=0.0).verdict
            if verdict is not GateVerdict.INCONCLUSIVE:
                break
        assert (verdict is GateVerdict.FAIL) == failed[run]


def test_always_valid_ci_covers_the_true_difference_at_every_look():
    """Simultaneous coverage over 20 looks, 1000 runs at 0.10 vs 0.09: >= 1 - alpha - slack."""
    runs = 1000
    cand, base, n = simulate_ctr(0.09, 0.10, 1000, runs, seed=17)
    low, high = always_valid_ci(cand, n, base, n, alpha=ALPHA)
    covered = ((low <= -0.01) & (high >= -0.01)).all(axis=1)
    assert covered.mean() >= 1 - ALPHA - slack(ALPHA, runs)


def test_sequential_verdicts():
    worse = SequentialCTRTest()
    worse.update(1500, 20_000, 2000, 20_000)
    assert worse.analyse().verdict is GateVerdict.FAIL
    assert worse.analyse(direction="lower").verdict is GateVerdict.PASS  # e.g. a bounce rate

    same = SequentialCTRTest()
    same.update(8000, 80_000, 8000, 80_000)
    result = same.analyse(non_inferiority_margin=0.01)
    assert result.verdict is GateVerdict.PASS and "non-inferior" in result.reason
    assert same.analyse(non_inferiority_margin=0.0).verdict is GateVerdict.INCONCLUSIVE

    early = SequentialCTRTest()
    early.update(5, 50, 10, 50)
    assert early.analyse(min_samples=100).verdict is GateVerdict.INCONCLUSIVE


def test_sequential_update_with_impossible_counts_blocks_a_pass():
    test = SequentialCTRTest()
    test.update(8000, 80_000, 8000, 80_000)
    test.update(50, 10, 5, 10)
    assert test.cand_n == 80_000
    assert test.analyse(non_inferiority_margin=0.01).verdict is GateVerdict.INCONCLUSIVE
    test.update(100, 1000, 100, 1000)
    assert test.analyse(non_inferiority_margin=0.01).verdict is GateVerdict.PASS


def test_msprt_p_value_edge_cases():
    assert msprt_p_value(0, 0, 0, 0) == 1.0
    assert msprt_p_value(0, 1000, 0, 1000) == 1.0
    assert msprt_p_value(100, 1000, 100, 1000) == 1.0
    assert msprt_p_value(500, 1000, 100, 1000) < 1e-6


# --------------------------------------------------------------------------- fixed horizon


def test_fixed_test_matches_chi_squared_and_newcombe_example():
    # Newcombe (1998), example (a): 56/70 vs 48/80, method 10 interval 0.0524 to 0.3339.
    low, high = newcombe_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    result = fixed_sample_ab_test(56, 70, 48, 80, min_samples=50)
    chi2 = stats.chi2_contingency([[56, 14], [48, 32]], correction=False)
    assert result.figures["p_value"] == pytest.approx(chi2.pvalue)
    assert result.verdict is GateVerdict.PASS and "better" in result.reason
    assert fixed_sample_ab_test(48, 80, 56, 70, min_samples=50).verdict is GateVerdict.FAIL


def test_required_sample_size_gives_the_promised_power():
    n = required_sample_size(0.10, -0.10, alpha=0.05, power=0.8)
    assert 13_000 < n < 14_000
    rng = np.random.default_rng(3)
    runs = 4000
    cand, base = rng.binomial(n, 0.09, runs), rng.binomial(n, 0.10, runs)
    pooled = (cand + base) / (2 * n)
    z = (cand - base) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    power = (np.abs(z) > stats.norm.ppf(0.975)).mean()
    assert abs(power - 0.8) <= slack(0.8, runs)
    with pytest.raises(GateError):
        required_sample_size(0.5, 1.5)


# --------------------------------------------------------------------------- statsmodels as the oracle
# Lockstep computes its proportion tests and intervals itself (a few lines each, no
# statsmodels at run time); these tests hold every figure to statsmodels' on seeded cases,
# edge counts included (no clicks, all clicks, a few dozen impressions).


def proportion_cases(seed: int, count: int = 40) -> list[tuple[int, int, int, int]]:
    """(cand_clicks, cand_n, base_clicks, base_n): seeded draws across rates and sizes, plus edges."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        cand_n, base_n = (int(n) for n in rng.integers(100, 50_000, size=2))
        rate = rng.uniform(0.001, 0.6)
        cases.append((int(rng.binomial(cand_n, rate * rng.uniform(0.7, 1.3))), cand_n, int(rng.binomial(base_n, rate)), base_n))
    return cases + [(0, 150, 3, 200), (150, 150, 190, 200), (1, 100, 0, 100), (56, 70, 48, 80)]


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_wilson_interval_matches_statsmodels(alpha):
    for clicks, n, _, _ in proportion_cases(seed=11):
        expected = proportion_confint(clicks, n, alpha=alpha, method="wilson")
        assert wilson_interval(clicks, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12), (clicks, n)


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_newcombe_interval_matches_statsmodels(alpha):
    for case in proportion_cases(seed=12):
        expected = confint_proportions_2indep(*case, method="newcomb", compare="diff", alpha=alpha)
        assert newcombe_interval(*case, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12), case


def test_fixed_test_figures_match_statsmodels():
    for case in proportion_cases(seed=13):
        cand_clicks, cand_n, base_clicks, base_n = case
        figures = fixed_sample_ab_test(*case, alpha=ALPHA, min_samples=50).figures
        z, p_value = proportions_ztest([cand_clicks, base_clicks], [cand_n, base_n])
        wald = confint_proportions_2indep(*case, method="wald", compare="diff", alpha=ALPHA)
        newcombe = confint_proportions_2indep(*case, method="newcomb", compare="diff", alpha=ALPHA)
        assert (figures["z"], figures["p_value"]) == pytest.approx((z, p_value), rel=1e-9, abs=1e-12), case
        assert (figures["wald_low"], figures["wald_high"]) == pytest.approx(wald, rel=1e-9, abs=1e-12), case
        assert (figures["ci_low"], figures["ci_high"]) == pytest.approx(newcombe, rel=1e-9, abs=1e-12), case
        if min(cand_clicks, base_clicks) > 0:  # the Katz log interval of the rate ratio, as a lift
            ratio = confint_proportions_2indep(*case, method="log", compare="ratio", alpha=ALPHA)
            lift = (figures["rel_lift_low"] + 1, figures["rel_lift_high"] + 1)
            assert lift == pytest.approx(ratio, rel=1e-9), case


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # statsmodels' unused ratio at 0 errors
@pytest.mark.parametrize("max_abs_increase", [0.0, 0.01, 0.05])
def test_error_gate_figures_match_statsmodels(max_abs_increase):
    for case in proportion_cases(seed=14):
        figures = error_rate_gate(*case, max_abs_increase=max_abs_increase, alpha=ALPHA, max_error_rate=None).figures
        # H0: cand - base <= max_abs_increase, Agresti-Caffo rates (one error and one success added per arm).
        test = proportions_2indep_test(
            *case, value=max_abs_increase, method="agresti-caffo", compare="diff", alternative="larger"
        )
        # The one-sided (1 - alpha) upper bound is the upper end of the two-sided (1 - 2 alpha) interval.
        _, upper = confint_proportions_2indep(*case, method="agresti-caffo", compare="diff", alpha=2 * ALPHA)
        assert (figures["z"], figures["p_value"]) == pytest.approx((test.statistic, test.pvalue), rel=1e-9, abs=1e-12), case
        assert figures["diff_upper"] == pytest.approx(upper, rel=1e-9, abs=1e-12), case


@pytest.mark.parametrize(
    ("p_base", "mde_rel", "alpha", "power"),
    [(0.10, -0.10, 0.05, 0.8), (0.02, 0.20, 0.05, 0.9), (0.30, -0.25, 0.01, 0.8), (0.45, 0.10, 0.10, 0.95)],
)
def test_required_sample_size_matches_statsmodels(p_base, mde_rel, alpha, power):
    n = required_sample_size(p_base, mde_rel, alpha=alpha, power=power)
    diff = p_base * mde_rel
    expected = samplesize_proportions_2indep_onetail(diff, p_base, power, alpha=alpha)
    assert n == math.ceil(expected)


# --------------------------------------------------------------------------- Thompson sampling


def test_thompson_weights_respect_floor_and_sum_to_one():
    successes = {"baseline": 100, "candidate": 200, "other": 90}
    trials = {"baseline": 1000, "candidate": 1000, "other": 1000}
    weights = thompson_weights(successes, trials, floor=0.05, seed=1)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert min(weights.values()) >= 0.05
    assert weights["candidate"] > 0.85
    assert weights == thompson_weights(successes, trials, floor=0.05, seed=1)
    with pytest.raises(GateError):
        thompson_weights(successes, trials, floor=0.4)


def test_prob_best_picks_clear_winner_and_splits_a_tie():
    best = prob_best({"a": 100, "b": 200}, {"a": 1000, "b": 1000}, seed=0)
    assert best["b"] > 0.99 and sum(best.values()) == pytest.approx(1.0)
    tie = prob_best({"a": 100, "b": 100}, {"a": 1000, "b": 1000}, n_draws=20_000, seed=0)
    assert abs(tie["a"] - 0.5) < 0.02


def test_bandit_decision():
    trials = {"cand": 2000, "base": 2000}
    assert bandit_decision({"cand": 260, "base": 200}, trials, "cand", "base", seed=0).verdict is GateVerdict.PASS
    assert bandit_decision({"cand": 150, "base": 200}, trials, "cand", "base", seed=0).verdict is GateVerdict.FAIL
    assert bandit_decision({"cand": 201, "base": 200}, trials, "cand", "base", seed=0).verdict is GateVerdict.INCONCLUSIVE
    thin = bandit_decision({"cand": 50, "base": 5}, {"cand": 60, "base": 60}, "cand", "base", seed=0)
    assert thin.verdict is GateVerdict.INCONCLUSIVE


def test_to_percent_weights_sums_exactly():
    assert to_percent_weights({"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    rng = np.random.default_rng(8)
    for _ in range(200):
        raw = rng.dirichlet(np.ones(rng.integers(1, 8)))
        weights = {f"v{i}": float(w) for i, w in enumerate(raw)}
        percent = to_percent_weights(weights)
        assert sum(percent.values()) == 100
        assert all(abs(percent[k] - 100 * weights[k]) < 1 for k in weights)
    with pytest.raises(GateError):
        to_percent_weights({"a": float("nan"), "b": 1.0})


# --------------------------------------------------------------------------- canary policy


def test_canary_policy_actions():
    policy = CanaryPolicy(max_extensions=2)
    ok = GateResult("a", GateVerdict.PASS, "ok")
    maybe = GateResult("b", GateVerdict.INCONCLUSIVE, "thin")
    bad = GateResult("c", GateVerdict.FAIL, "slow")
    assert policy.next_action(0, [ok], extensions_used=0) == "promote"
    assert policy.next_action(1, [ok, bad], extensions_used=0) is Action.ROLLBACK
    assert policy.next_action(2, [ok, maybe], extensions_used=1) is Action.EXTEND
    assert policy.next_action(2, [ok, maybe], extensions_used=2) is Action.ROLLBACK
    assert policy.next_action(0, [], extensions_used=0) is Action.EXTEND
    assert policy.weight(2) == 25 and policy.is_final(4) and not policy.is_final(3)


def test_canary_policy_rejects_bad_configuration():
    for steps in [(5, 1, 100), (1, 5, 50), (0, 100), ()]:
        with pytest.raises(GateError):
            CanaryPolicy(steps=steps)
    with pytest.raises(GateError):
        CanaryPolicy().next_action(5, [], 0)


def test_sequential_test_resumes_from_its_saved_state_with_the_same_answers():
    """A rollout saves the test between looks (another process resumes it): nothing may change."""
    rng = np.random.default_rng(5)
    live = SequentialCTRTest(tau2=0.01, burn_in=50)
    for _ in range(4):
        live.update(int(rng.binomial(100, 0.3)), 100, int(rng.binomial(300, 0.32)), 300)
    saved = json.loads(json.dumps(live.to_state()))  # what the rollout record stores
    resumed = SequentialCTRTest.from_state(saved)
    assert resumed.looks == live.looks and resumed.p_value == live.p_value
    assert resumed.analyse().to_dict() == live.analyse().to_dict()
    live.update(40, 100, 90, 300)
    resumed.update(40, 100, 90, 300)
    assert resumed.analyse().to_dict() == live.analyse().to_dict()
    with pytest.raises(GateError, match="not a saved sequential CTR test"):
        SequentialCTRTest.from_state({"tau2": 0.01})
