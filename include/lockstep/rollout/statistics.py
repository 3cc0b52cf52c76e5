"""The statistics under the rollout gates: tests and intervals, figures in, figures out.

Nothing here decides anything. ``lockstep.rollout.gates`` turns these figures into
verdicts (PASS, FAIL, INCONCLUSIVE) and the verdicts into actions; keeping the maths
apart lets it be checked against textbook values and statsmodels on its own
(``tests/rollout/test_statistics.py``), and lets the benchmarks simulate thousands of
rollouts with the vectorised functions.

- Click-through rate, looked at repeatedly: the mixture SPRT and ``SequentialCTR`` are
  in ``lockstep.rollout.sequential``, on the per-user moments of ``ratio_moments`` here.
- Click-through rate, looked at once: the two-proportion z-test with Wilson, Newcombe,
  Wald and relative-lift intervals (``two_proportion_test``) and its sample size
  (``required_sample_size``).
- Click-through rate, looked at once: ``ratio_difference_test``, the z-test of two
  per-user ratios with the delta-method variance.
- Error rate: the one-sided Agresti-Caffo test of an increase beyond a tolerance (fed
  design-effect-adjusted counts when per-user sums are known).
- Latency: outlier removal (``remove_outliers``), Mann-Whitney and the Hodges-Lehmann
  shift with its distribution-free interval (``compare_latencies``).
- Bandits: Monte Carlo P(best) under Beta posteriors, Thompson weights with a floor, and
  whole-percent weights.

Bad parameters raise ``GateError`` (the one error of the gates and their statistics);
``count_problem`` and the ``require_*`` checks are shared with the gates, and
``check_canary_policy`` with the rollout's config and its canary policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

from lockstep.core.errors import LockstepError
from lockstep.store.log_stats import ClusterSums, difference_design_effect

Direction = Literal["higher", "lower"]


class GateError(LockstepError, ValueError):
    """A gate was given a parameter (or, where no verdict can be returned, data) it cannot use.

    Defined here, under the gates, so that a statistic and the gate built on it raise the
    same error; ``lockstep.rollout.gates`` uses it too.
    """


# --------------------------------------------------------------------------- error rate


def error_increase_test(
    cand_errors: float, cand_total: float, base_errors: float, base_total: float,
    max_abs_increase: float, alpha: float,
) -> dict[str, float]:
    """One-sided test of H0: cand_rate - base_rate <= max_abs_increase.

    Agresti-Caffo adjusted rates (add one error and one success per arm) keep zero
    errors from giving a zero variance. Returns ``z``, ``p_value`` and ``diff_upper``,
    the (1 - alpha) upper bound of the increase.
    """
    adj_cand = (cand_errors + 1) / (cand_total + 2)
    adj_base = (base_errors + 1) / (base_total + 2)
    se = math.sqrt(adj_cand * (1 - adj_cand) / (cand_total + 2) + adj_base * (1 - adj_base) / (base_total + 2))
    z = (adj_cand - adj_base - max_abs_increase) / se
    upper = adj_cand - adj_base + stats.norm.ppf(1 - alpha) * se
    return {"diff_upper": upper, "z": z, "p_value": float(stats.norm.sf(z))}


# --------------------------------------------------------------------------- latency


def compare_latencies(
    cand: np.ndarray, base: np.ndarray, confidence: float = 0.98
) -> dict[str, float]:
    """Medians, the two-sided Mann-Whitney p-value and the Hodges-Lehmann shift with its CI (ms)."""
    p_value = float(stats.mannwhitneyu(cand, base, alternative="two-sided").pvalue)
    shift, low, high = hodges_lehmann(cand, base, confidence)
    return {
        "median_cand_ms": float(np.median(cand)), "median_base_ms": float(np.median(base)), "p_value": p_value,
        "hl_shift_ms": shift, "hl_ci_low_ms": low, "hl_ci_high_ms": high,
    }


def remove_outliers(values: np.ndarray, factor: float = 3.0) -> np.ndarray:
    """Drop points outside Q1 - factor*IQR .. Q3 + factor*IQR, fences never inside p1..p99."""
    q1, q3, p1, p99 = np.percentile(values, [25, 75, 1, 99])
    low = min(p1, q1 - factor * (q3 - q1))
    high = max(p99, q3 + factor * (q3 - q1))
    return values[(values >= low) & (values <= high)]


def hodges_lehmann(
    cand: Sequence[float] | np.ndarray, base: Sequence[float] | np.ndarray, confidence: float = 0.98
) -> tuple[float, float, float]:
    """The Hodges-Lehmann shift (median of all cand_i - base_j) and its distribution-free CI.

    The n*m differences are never materialised (10k x 10k would be 800 MB): order
    statistics of the differences are found by bisection on the value, counting pairs
    with a sorted search. The CI is the Moses interval from the normal approximation to
    the Mann-Whitney statistic.
    """
    c = np.sort(np.asarray(cand, dtype=float))
    b = np.sort(np.asarray(base, dtype=float))
    n, m = c.size, b.size
    if n == 0 or m == 0:
        raise GateError("hodges_lehmann needs at least one value in each sample")
    pairs = n * m
    half = pairs // 2
    if pairs % 2:
        shift = _kth_difference(c, b, half + 1)
    else:
        shift = (_kth_difference(c, b, half) + _kth_difference(c, b, half + 1)) / 2
    z = stats.norm.ppf(0.5 + confidence / 2)
    k = int(math.floor(pairs / 2 - z * math.sqrt(pairs * (n + m + 1) / 12)))
    k = min(max(k, 1), pairs)
    return shift, _kth_difference(c, b, k), _kth_difference(c, b, pairs + 1 - k)


def _kth_difference(c: np.ndarray, b: np.ndarray, k: int) -> float:
    """The k-th smallest (1-based) of c_i - b_j for sorted c and b."""

    def count_at_most(t: float) -> int:  # pairs with c_i - b_j <= t, i.e. b_j >= c_i - t
        return int(b.size * c.size - np.searchsorted(b, c - t, side="left").sum())

    lo, hi = float(c[0] - b[-1]), float(c[-1] - b[0])
    if count_at_most(lo) >= k:
        return lo
    tol = 1e-12 * max(1.0, hi - lo, abs(lo), abs(hi))
    while hi - lo > tol:  # invariant: count(lo) < k <= count(hi)
        mid = lo + (hi - lo) / 2
        if mid <= lo or mid >= hi:
            break
        if count_at_most(mid) >= k:
            hi = mid
        else:
            lo = mid
    # Snap to the smallest actual difference above lo, so tied data gives exact values.
    j = np.searchsorted(b, c - lo, side="left") - 1
    rows = j >= 0
    if not rows.any():
        return hi
    return float(np.min(c[rows] - b[j[rows]]))


# --------------------------------------------------------------------------- fixed-horizon A/B


def two_proportion_test(
    cand_clicks: float, cand_n: float, base_clicks: float, base_n: float, alpha: float = 0.05
) -> dict[str, float]:
    """Two-proportion z-test of cand_rate - base_rate, for ONE look at a sample size fixed in advance.

    Figures: the rates, ``diff``, the pooled ``z`` and its two-sided ``p_value``, the
    Wald interval (``wald_low``/``wald_high``), the Newcombe interval (``ci_low``/
    ``ci_high``), and, when defined, the relative lift with its Katz log interval.
    """
    pc, pb = cand_clicks / cand_n, base_clicks / base_n
    diff = pc - pb
    pooled = (cand_clicks + base_clicks) / (cand_n + base_n)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / cand_n + 1 / base_n))
    z = diff / se_pooled if se_pooled > 0 else 0.0
    p_value = float(2 * stats.norm.sf(abs(z)))
    zq = float(stats.norm.ppf(1 - alpha / 2))
    se = math.sqrt(pc * (1 - pc) / cand_n + pb * (1 - pb) / base_n)
    low, high = newcombe_interval(cand_clicks, cand_n, base_clicks, base_n, alpha)
    figures = {
        "cand_rate": pc, "base_rate": pb, "diff": diff, "z": z, "p_value": p_value,
        "wald_low": diff - zq * se, "wald_high": diff + zq * se, "ci_low": low, "ci_high": high,
    }
    if pb > 0:
        figures["rel_lift"] = pc / pb - 1
    if min(cand_clicks, base_clicks) > 0:
        se_log = math.sqrt(1 / cand_clicks - 1 / cand_n + 1 / base_clicks - 1 / base_n)
        log_rr = math.log(pc / pb)
        figures.update(
            rel_lift_low=math.exp(log_rr - zq * se_log) - 1, rel_lift_high=math.exp(log_rr + zq * se_log) - 1
        )
    return figures


def ratio_moments(cand: ClusterSums, base: ClusterSums) -> tuple[float, float]:
    """(Rc - Rb, Var(Rc) + Var(Rb)): the difference of two per-user ratios and its delta-method variance.

    The arms are independent (disjoint users, as sticky routing makes them), so the
    variances add. NaN when either arm has fewer than two users or no trials.
    """
    return cand.ratio - base.ratio, cand.variance + base.variance


def ratio_difference_test(cand: ClusterSums, base: ClusterSums, alpha: float = 0.05) -> dict[str, float]:
    """z-test of Rc - Rb for two per-user ratios, for ONE look: the delta-method variance, not the binomial.

    Figures: the (capped) rates, ``diff``, ``z`` and its two-sided ``p_value``, the Wald
    interval of the difference (``ci_low``/``ci_high``), the relative lift, and
    ``design_effect`` (how many times the binomial variance the per-user one is). An
    arm with fewer than two users gives z = 0 and p = 1: nothing to judge the spread by.
    """
    require_unit_open("alpha", alpha)
    diff, variance = ratio_moments(cand, base)
    usable = math.isfinite(diff) and math.isfinite(variance) and variance > 0
    se = math.sqrt(variance) if usable else math.nan
    z = diff / se if usable else 0.0
    zq = float(stats.norm.ppf(1 - alpha / 2))
    figures = {
        "cand_rate": cand.ratio, "base_rate": base.ratio, "diff": diff, "z": z,
        "p_value": float(2 * stats.norm.sf(abs(z))) if usable else 1.0,
        "ci_low": diff - zq * se if usable else -1.0, "ci_high": diff + zq * se if usable else 1.0,
        "design_effect": difference_design_effect(cand, base),
    }
    if base.ratio > 0:
        figures["rel_lift"] = cand.ratio / base.ratio - 1
    return figures


def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's score interval for one proportion: sensible even with no successes."""
    z = stats.norm.ppf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(
    cand_clicks: float, cand_n: float, base_clicks: float, base_n: float, alpha: float = 0.05
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) for cand_rate - base_rate.

    Better than Wald near 0 or 1 and with few clicks, where Wald's interval collapses.
    """
    pc, pb = cand_clicks / cand_n, base_clicks / base_n
    lc, uc = wilson_interval(cand_clicks, cand_n, alpha)
    lb, ub = wilson_interval(base_clicks, base_n, alpha)
    diff = pc - pb
    return diff - math.sqrt((pc - lc) ** 2 + (ub - pb) ** 2), diff + math.sqrt((uc - pc) ** 2 + (pb - lb) ** 2)


def required_sample_size(p_base: float, mde_rel: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Impressions per arm for a two-sided two-proportion z-test to detect a relative change."""
    require_unit_open("p_base", p_base)
    require_unit_open("alpha", alpha)
    require_unit_open("power", power)
    p_new = p_base * (1 + mde_rel)
    if mde_rel == 0 or not 0 < p_new < 1:
        raise GateError(
            f"mde_rel={mde_rel!r} gives a candidate rate of {p_new!r}; it must be non-zero and keep the rate in (0, 1)"
        )
    pooled = (p_base + p_new) / 2
    z_alpha = stats.norm.ppf(1 - alpha / 2)
    z_power = stats.norm.ppf(power)
    numerator = z_alpha * math.sqrt(2 * pooled * (1 - pooled)) + z_power * math.sqrt(
        p_base * (1 - p_base) + p_new * (1 - p_new)
    )
    return math.ceil(numerator**2 / (p_new - p_base) ** 2)


# --------------------------------------------------------------------------- Thompson sampling


def prob_best(
    successes: Mapping[str, float],
    trials: Mapping[str, float],
    n_draws: int = 10_000,
    seed: int | np.random.Generator | None = None,
    prior: tuple[float, float] = (1.0, 1.0),
) -> dict[str, float]:
    """Monte Carlo probability that each arm has the highest rate under Beta posteriors."""
    arms, s, t = arm_counts(successes, trials)
    if n_draws < 1:
        raise GateError(f"n_draws must be at least 1, got {n_draws!r}")
    if not (prior[0] > 0 and prior[1] > 0):
        raise GateError(f"prior must be two positive Beta parameters, got {prior!r}")
    rng = np.random.default_rng(seed)
    draws = rng.beta(prior[0] + s, prior[1] + t - s, size=(n_draws, len(arms)))
    wins = np.bincount(draws.argmax(axis=1), minlength=len(arms))
    return {arm: float(w / n_draws) for arm, w in zip(arms, wins, strict=True)}


def thompson_weights(
    successes: Mapping[str, float],
    trials: Mapping[str, float],
    floor: float = 0.05,
    n_draws: int = 10_000,
    seed: int | np.random.Generator | None = None,
    prior: tuple[float, float] = (1.0, 1.0),
) -> dict[str, float]:
    """Traffic weights proportional to P(best), every arm kept at ``floor`` or more.

    The floor keeps each arm learning (and the baseline warm for a rollback); the rest of
    the traffic is split by P(best), so weights sum to 1.
    """
    arms, _, _ = arm_counts(successes, trials)
    if not (floor >= 0 and floor * len(arms) <= 1):
        raise GateError(f"floor={floor!r} with {len(arms)} arms: need 0 <= floor <= 1/{len(arms)}")
    best = prob_best(successes, trials, n_draws=n_draws, seed=seed, prior=prior)
    spare = 1 - floor * len(arms)
    return {arm: floor + spare * best[arm] for arm in arms}


def effective_arm_counts(sums: Mapping[str, ClusterSums]) -> tuple[dict[str, int], dict[str, int]]:
    """Per arm, (successes, trials) divided by its design effect and rounded: Beta-posterior counts per user.

    A Beta(1 + x, 1 + n - x) posterior on raw impression counts is as sure as n
    independent trials make it; with clustered users it is far too sure. Dividing both
    counts by the design effect (>= 1) gives the posterior the per-user variance (the
    "effective sample size"), so P(best) and the Thompson weights do not run ahead of
    the evidence.
    """
    successes: dict[str, int] = {}
    trials: dict[str, int] = {}
    for arm, arm_sums in sums.items():
        x, n = arm_sums.effective_counts()
        trials[arm] = round(n)
        successes[arm] = min(round(x), trials[arm])
    return successes, trials


def to_percent_weights(weights: Mapping[str, float], total: int = 100) -> dict[str, int]:
    """Whole-number weights summing exactly to ``total`` (largest-remainder rounding).

    Ties in the remainders go to the arm listed first, so the result is deterministic.
    """
    if total < 0 or int(total) != total:
        raise GateError(f"total must be a non-negative whole number, got {total!r}")
    arms = list(weights)
    values = np.array([weights[a] for a in arms], dtype=float)
    if not arms or not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise GateError(f"weights must be finite, non-negative and not all zero, got {dict(weights)!r}")
    exact = values / values.sum() * total
    whole = np.floor(exact).astype(int)
    remainder = exact - whole
    order = sorted(range(len(arms)), key=lambda i: (-remainder[i], i))
    for i in order[: int(total) - int(whole.sum())]:
        whole[i] += 1
    return {arm: int(w) for arm, w in zip(arms, whole, strict=True)}


def arm_counts(successes: Mapping[str, float], trials: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The arms and their successes and trials as arrays; GateError when a count is unusable."""
    if set(successes) != set(trials) or not trials:
        raise GateError(f"successes and trials must name the same, non-empty arms: {sorted(successes)} vs {sorted(trials)}")
    arms = list(trials)
    for arm in arms:
        problem = count_problem(f"arm {arm!r}", successes[arm], trials[arm], "successes", "trials")
        if problem:
            raise GateError(problem)
    s = np.array([float(successes[a]) for a in arms])
    t = np.array([float(trials[a]) for a in arms])
    return arms, s, t


# --------------------------------------------------------------------------- checks


def count_problem(arm: str, count: Any, total: Any, count_word: str, total_word: str) -> str | None:
    """Why a (count, total) pair is unusable, or None when it is fine."""
    for word, value in ((count_word, count), (total_word, total)):
        if value is None:
            return f"{arm} {word} are missing"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"{arm} {word} {value!r} is not a number"
        if not math.isfinite(number):
            return f"{arm} {word} is {number} (missing data)"
        if number < 0 or number != math.floor(number):
            return f"{arm} {word} {value!r} is not a non-negative whole number"
    if float(count) > float(total):
        return f"{arm} has {count} {count_word} out of only {total} {total_word}"
    return None


def direction_sign(direction: str) -> int:
    """+1 when higher is better, -1 when lower is better."""
    if direction == "higher":
        return 1
    if direction == "lower":
        return -1
    raise GateError(f"direction must be 'higher' (higher is better) or 'lower', got {direction!r}")


def require_unit_open(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0 < value < 1):
        raise GateError(f"{label} must be strictly between 0 and 1, got {value!r}")


def require_unit_closed(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0 <= value <= 1):
        raise GateError(f"{label} must be between 0 and 1, got {value!r}")


def require_non_negative(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and value >= 0):
        raise GateError(f"{label} must be 0 or more, got {value!r}")


def require_positive(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and value > 0):
        raise GateError(f"{label} must be positive, got {value!r}")


def require_min_samples(value: int) -> None:
    if not (isinstance(value, int | np.integer) and value >= 1):
        raise GateError(f"min_samples must be a whole number of at least 1, got {value!r}")


def check_canary_policy(steps: Sequence[int], bake_seconds: float, min_samples: int, max_extensions: int,
                        alpha: float) -> None:
    """Refuse traffic steps that do not increase to 100, a negative bake, too few samples, a bad alpha.

    The check of ``lockstep.rollout.policy.CanaryPolicy``, here with the other checks so
    that ``RolloutConfig`` (which the policy is built from, and which must refuse bad
    steps when it is made) can run it without importing the gates above it.
    """
    steps = tuple(steps)
    if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps):
        raise GateError(f"steps must be traffic percentages in (0, 100] ending at 100, got {steps!r}")
    if any(a >= b for a, b in zip(steps, steps[1:], strict=False)):
        raise GateError(f"steps must increase strictly, got {steps!r}")
    require_non_negative("bake_seconds", bake_seconds)
    require_min_samples(min_samples)
    if max_extensions < 0:
        raise GateError(f"max_extensions must be 0 or more, got {max_extensions!r}")
    require_unit_open("alpha", alpha)
