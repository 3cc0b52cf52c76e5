"""The statistics under the rollout gates: tests and intervals, figures in, figures out.

Nothing here decides anything. ``lockstep.rollout.gates`` turns these figures into
verdicts (PASS, FAIL, INCONCLUSIVE) and the verdicts into actions; keeping the maths
apart lets it be checked against textbook values and statsmodels on its own
(``tests/rollout/test_statistics.py``), and lets the benchmarks simulate thousands of
rollouts with the vectorised functions.

- Click-through rate, looked at repeatedly: the mixture SPRT p-value and its
  always-valid interval (``msprt_p_value``, ``always_valid_ci``) and ``SequentialCTR``,
  which keeps the looks of one rollout (peeking at a fixed-horizon test at every step
  inflates the false-rollback rate far above alpha).
- Click-through rate, looked at once: the two-proportion z-test with Wilson, Newcombe,
  Wald and relative-lift intervals (``two_proportion_test``) and its sample size
  (``required_sample_size``).
- Error rate: the one-sided Agresti-Caffo test of an increase beyond a tolerance.
- Latency: outlier removal (``remove_outliers``), Mann-Whitney and the Hodges-Lehmann
  shift with its distribution-free interval (``compare_latencies``).
- Bandits: Monte Carlo P(best) under Beta posteriors, Thompson weights with a floor, and
  whole-percent weights.

Bad parameters raise ``GateError`` (the one error of the gates and their statistics);
``count_problem`` and the ``require_*`` checks are shared with the gates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
from scipy import stats

from lockstep.core.errors import LockstepError

Direction = Literal["higher", "lower"]

# Mixture variance of the mSPRT prior on the difference of click-through rates: tau = 0.01
# (one percentage point). The test has the most power for effects near tau; set it to
# the size of change you care about.
DEFAULT_TAU2 = 1e-4


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


# --------------------------------------------------------------------------- sequential CTR


def msprt_p_value(
    cand_clicks: Any, cand_n: Any, base_clicks: Any, base_n: Any, tau2: float = DEFAULT_TAU2
) -> Any:
    """The mSPRT p-value 1 / Lambda of H0: equal rates, at one look (vectorised).

    Normal approximation with a N(0, tau2) mixture over the difference (Johari, Pekelis,
    Walsh 2017, "Always valid inference"): with the pooled variance s2 of the observed
    difference d, Lambda = sqrt(s2 / (s2 + tau2)) * exp(tau2 d^2 / (2 s2 (s2 + tau2))).
    The always-valid p-value is the running minimum over looks (``SequentialCTR``
    keeps it). Missing, NaN or degenerate inputs give 1: no evidence.
    """
    require_positive("tau2", tau2)
    xc, nc, xb, nb = (np.asarray(v, dtype=float) for v in (cand_clicks, cand_n, base_clicks, base_n))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pooled = (xc + xb) / (nc + nb)
        s2 = pooled * (1 - pooled) * (1 / nc + 1 / nb)
        diff = xc / nc - xb / nb
        log_lr = 0.5 * np.log(s2 / (s2 + tau2)) + tau2 * diff**2 / (2 * s2 * (s2 + tau2))
        p = np.minimum(1.0, np.exp(-log_lr))
    usable = (nc > 0) & (nb > 0) & (s2 > 0) & np.isfinite(p)
    p = np.where(usable, p, 1.0)
    return float(p) if p.ndim == 0 else p


def always_valid_ci(
    cand_clicks: Any,
    cand_n: Any,
    base_clicks: Any,
    base_n: Any,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
) -> tuple[Any, Any]:
    """The always-valid (1 - alpha) interval for cand_rate - base_rate at one look (vectorised).

    It is the set of differences theta0 the mSPRT would not reject; intersecting it over
    looks (``SequentialCTR.confidence_interval``) keeps simultaneous coverage. The
    variance uses Agresti-Caffo adjusted rates so that zero clicks do not collapse it;
    unusable inputs give the uninformative (-1, 1).
    """
    require_unit_open("alpha", alpha)
    require_positive("tau2", tau2)
    xc, nc, xb, nb = (np.asarray(v, dtype=float) for v in (cand_clicks, cand_n, base_clicks, base_n))
    with np.errstate(divide="ignore", invalid="ignore"):
        adj_c = (xc + 1) / (nc + 2)
        adj_b = (xb + 1) / (nb + 2)
        v = adj_c * (1 - adj_c) / (nc + 2) + adj_b * (1 - adj_b) / (nb + 2)
        half = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((v + tau2) / v)))
        diff = xc / nc - xb / nb
    usable = (nc > 0) & (nb > 0) & np.isfinite(diff) & np.isfinite(half)
    low = np.where(usable, np.clip(diff - half, -1, 1), -1.0)
    high = np.where(usable, np.clip(diff + half, -1, 1), 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


@dataclass(frozen=True)
class SequentialLook:
    """Cumulative counts at one look."""

    cand_clicks: int
    cand_n: int
    base_clicks: int
    base_n: int


class SequentialCTR:
    """A click-through comparison that may be looked at after every batch of traffic.

    ``update`` adds the counts observed since the previous update. The always-valid
    p-value is the running minimum of the per-look mSPRT p-values, so it never goes up
    and stopping at whatever look first crosses alpha keeps the false-decision rate at
    alpha. Looks start once both arms have ``burn_in`` impressions, because the normal
    approximation is poor before that and an early fluke would be locked in for good.
    The verdict on these figures is ``lockstep.rollout.gates.SequentialCTRTest.analyse``.
    """

    def __init__(self, tau2: float = DEFAULT_TAU2, burn_in: int = 100, name: str = "ctr_sequential"):
        require_positive("tau2", tau2)
        if burn_in < 1:
            raise GateError(f"burn_in must be at least 1, got {burn_in!r}")
        self.tau2 = tau2
        self.burn_in = burn_in
        self.name = name
        self.cand_clicks = self.cand_n = self.base_clicks = self.base_n = 0
        self._looks: list[SequentialLook] = []
        self._problem: str | None = None

    @property
    def looks(self) -> tuple[SequentialLook, ...]:
        return tuple(self._looks)

    @property
    def problem(self) -> str | None:
        """Why the last update was refused, or None when it was added."""
        return self._problem

    def update(self, cand_clicks: float, cand_n: float, base_clicks: float, base_n: float) -> None:
        """Add new counts. Missing or impossible counts are not added; the gate on this
        test cannot PASS until a good update arrives (it can still FAIL on earlier evidence)."""
        problem = count_problem("candidate", cand_clicks, cand_n, "clicks", "impressions") or count_problem(
            "baseline", base_clicks, base_n, "clicks", "impressions"
        )
        if problem:
            self._problem = problem
            return
        self._problem = None
        self.cand_clicks += int(cand_clicks)
        self.cand_n += int(cand_n)
        self.base_clicks += int(base_clicks)
        self.base_n += int(base_n)
        if min(self.cand_n, self.base_n) >= self.burn_in:
            self._looks.append(SequentialLook(self.cand_clicks, self.cand_n, self.base_clicks, self.base_n))

    @property
    def p_value(self) -> float:
        if not self._looks:
            return 1.0
        return float(np.min(msprt_p_value(*self._columns(), tau2=self.tau2)))

    def confidence_interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """The running intersection of the per-look always-valid intervals."""
        if not self._looks:
            return -1.0, 1.0
        lows, highs = always_valid_ci(*self._columns(), alpha=alpha, tau2=self.tau2)
        low, high = float(np.max(lows)), float(np.min(highs))
        if low > high:  # possible only with probability <= alpha; fall back to the latest look
            low, high = float(lows[-1]), float(highs[-1])
        return low, high

    def to_state(self) -> dict[str, Any]:
        """Plain JSON of everything the test has seen, so a rollout can resume it in another process."""
        return {
            "tau2": self.tau2, "burn_in": self.burn_in, "name": self.name, "problem": self._problem,
            "counts": [self.cand_clicks, self.cand_n, self.base_clicks, self.base_n],
            "looks": [[k.cand_clicks, k.cand_n, k.base_clicks, k.base_n] for k in self._looks],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """The test ``to_state`` saved (of this class), with the same looks, so the same always-valid p-value."""
        try:
            test = cls(tau2=float(state["tau2"]), burn_in=int(state["burn_in"]), name=str(state["name"]))
            test.cand_clicks, test.cand_n, test.base_clicks, test.base_n = (int(v) for v in state["counts"])
            test._looks = [SequentialLook(*(int(v) for v in look)) for look in state["looks"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise GateError(f"not a saved sequential CTR test ({type(exc).__name__}: {exc}): {dict(state)!r}"[:500]) from exc
        test._problem = state.get("problem")
        return test

    def _columns(self) -> tuple[np.ndarray, ...]:
        data = np.array([(k.cand_clicks, k.cand_n, k.base_clicks, k.base_n) for k in self._looks], dtype=float)
        return data[:, 0], data[:, 1], data[:, 2], data[:, 3]


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
