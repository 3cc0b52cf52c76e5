"""The statistics under the rollout gates: tests and intervals, figures in, figures out.

Nothing here decides anything. ``lockstep.rollout.gates`` turns these figures into
verdicts (PASS, FAIL, INCONCLUSIVE) and the verdicts into actions; keeping the maths
apart lets it be checked against textbook values and statsmodels on its own
(``tests/rollout/test_statistics.py``), and lets the benchmarks simulate thousands of
rollouts with the vectorised functions.

- Click-through rate, looked at repeatedly: the mixture SPRT p-value and its
  always-valid interval (``msprt_p_value``, ``always_valid_ci``) and ``SequentialCTR``,
  which keeps the looks of one rollout (peeking at a fixed-horizon test at every step
  inflates the false-rollback rate far above alpha). The user is the unit (issue 22):
  ``SequentialCTR.update_users`` takes per-user sums (``ClusterSums``) and feeds the
  mSPRT the difference of the ratios with its delta-method variance
  (``msprt_p_value_moments``, ``always_valid_ci_moments``); the per-impression
  ``update`` is kept for saved tests of old rollouts and for benchmarks of the old test.
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
from lockstep.store.log_stats import ClusterSums, difference_design_effect

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
    p = msprt_p_value_moments(diff, s2, tau2)
    p = np.where((nc > 0) & (nb > 0), p, 1.0)
    return float(p) if p.ndim == 0 else p


def msprt_p_value_moments(diff: Any, variance: Any, tau2: float = DEFAULT_TAU2) -> Any:
    """The mSPRT p-value of H0: no difference, from an observed difference and its variance (vectorised).

    ``msprt_p_value`` passes the pooled binomial variance; the user-level test passes the
    delta-method variance of two per-user ratios, which is the whole change of issue 22:
    the same always-valid statistic with the variance of the unit that was randomised.
    NaN, zero or infinite variances give 1: no evidence.
    """
    require_positive("tau2", tau2)
    d, v = np.asarray(diff, dtype=float), np.asarray(variance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))
        p = np.minimum(1.0, np.exp(-log_lr))
    p = np.where((v > 0) & np.isfinite(v) & np.isfinite(p), p, 1.0)
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
        diff = xc / nc - xb / nb
    diff = np.where((nc > 0) & (nb > 0), diff, np.nan)
    return always_valid_ci_moments(diff, v, alpha, tau2)


def always_valid_ci_moments(diff: Any, variance: Any, alpha: float = 0.05, tau2: float = DEFAULT_TAU2) -> tuple[Any, Any]:
    """The always-valid (1 - alpha) interval of a difference from its estimate and variance (vectorised).

    Unusable inputs (NaN, zero variance) give the uninformative (-1, 1).
    """
    require_unit_open("alpha", alpha)
    require_positive("tau2", tau2)
    d, v = np.asarray(diff, dtype=float), np.asarray(variance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((v + tau2) / v)))
    usable = np.isfinite(d) & np.isfinite(half) & (v > 0)
    low = np.where(usable, np.clip(d - half, -1, 1), -1.0)
    high = np.where(usable, np.clip(d + half, -1, 1), 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def ratio_moments(cand: ClusterSums, base: ClusterSums) -> tuple[float, float]:
    """(Rc - Rb, Var(Rc) + Var(Rb)): the difference of two per-user ratios and its delta-method variance.

    The arms are independent (disjoint users, as sticky routing makes them), so the
    variances add. NaN when either arm has fewer than two users or no trials.
    """
    return cand.ratio - base.ratio, cand.variance + base.variance


@dataclass(frozen=True)
class SequentialLook:
    """Cumulative counts at one look (of a per-impression test)."""

    cand_clicks: int
    cand_n: int
    base_clicks: int
    base_n: int


@dataclass(frozen=True)
class UserLook:
    """Cumulative per-user sums of both arms at one look (of a per-user test)."""

    cand: ClusterSums
    base: ClusterSums


UNITS = ("user", "impression")


class SequentialCTR:
    """A click-through comparison that may be looked at after every batch of traffic.

    Two units, fixed by the first update and kept in the saved state:

    - ``update_users`` (the rollout's): each look is the cumulative per-user sums of both
      arms since the rollout's start (``ClusterSums``; a user spans looks, so sums are
      never added across looks), and the mSPRT is fed the difference of the ratios with
      its delta-method variance. This is the test's unit since issue 22.
    - ``update`` (per impression): adds the counts observed since the previous update
      and uses the pooled binomial variance. It is what saved tests of rollouts begun
      before issue 22 hold, so they resume with the same p-value; and what the
      benchmarks compare against.

    The always-valid p-value is the running minimum of the per-look mSPRT p-values, so it
    never goes up and stopping at whatever look first crosses alpha keeps the
    false-decision rate at alpha. Looks start once both arms have ``burn_in``
    impressions (and, per user, two users each), because the normal approximation is
    poor before that and an early fluke would be locked in for good. The verdict on these
    figures is ``lockstep.rollout.gates.SequentialCTRTest.analyse``.
    """

    def __init__(self, tau2: float = DEFAULT_TAU2, burn_in: int = 100, name: str = "ctr_sequential",
                 unit: str | None = None):
        require_positive("tau2", tau2)
        if burn_in < 1:
            raise GateError(f"burn_in must be at least 1, got {burn_in!r}")
        if unit is not None and unit not in UNITS:
            raise GateError(f"unit must be one of {UNITS} (or None: set by the first update), got {unit!r}")
        self.tau2 = tau2
        self.burn_in = burn_in
        self.name = name
        self.unit = unit
        self.cand_clicks = self.cand_n = self.base_clicks = self.base_n = 0
        self.cand_sums = self.base_sums = ClusterSums()
        self._looks: list[SequentialLook] = []
        self._user_looks: list[UserLook] = []
        self._problem: str | None = None

    @property
    def looks(self) -> tuple[SequentialLook, ...] | tuple[UserLook, ...]:
        return tuple(self._user_looks) if self.unit == "user" else tuple(self._looks)

    @property
    def problem(self) -> str | None:
        """Why the last update was refused, or None when it was added."""
        return self._problem

    @property
    def cand_rate(self) -> float:
        """The candidate's rate as tested (per user: capped clicks over capped impressions)."""
        if self.unit == "user":
            return self.cand_sums.ratio
        return self.cand_clicks / self.cand_n if self.cand_n else math.nan

    @property
    def base_rate(self) -> float:
        if self.unit == "user":
            return self.base_sums.ratio
        return self.base_clicks / self.base_n if self.base_n else math.nan

    def update(self, cand_clicks: float, cand_n: float, base_clicks: float, base_n: float) -> None:
        """Add new per-impression counts. Missing or impossible counts are not added; the gate on
        this test cannot PASS until a good update arrives (it can still FAIL on earlier evidence)."""
        self._set_unit("impression")
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

    def update_users(self, cand: ClusterSums, base: ClusterSums) -> None:
        """Take the cumulative per-user sums of both arms since the start: one look once burnt in."""
        self._set_unit("user")
        for arm, sums in (("candidate", cand), ("baseline", base)):
            if not isinstance(sums, ClusterSums):
                self._problem = f"{arm} per-user sums are missing"
                return
            if sums.x > sums.n or sums.raw_x > sums.raw_n:
                self._problem = f"{arm} has {sums.raw_x} clicks out of only {sums.raw_n} impressions"
                return
        self._problem = None
        self.cand_sums, self.base_sums = cand, base
        self.cand_clicks, self.cand_n, self.base_clicks, self.base_n = cand.raw_x, cand.raw_n, base.raw_x, base.raw_n
        if min(cand.raw_n, base.raw_n) >= self.burn_in and min(cand.clusters, base.clusters) >= 2:
            self._user_looks.append(UserLook(cand, base))

    @property
    def p_value(self) -> float:
        if not self.looks:
            return 1.0
        return float(np.min(msprt_p_value_moments(*self._moments(), tau2=self.tau2)))

    def confidence_interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """The running intersection of the per-look always-valid intervals."""
        if not self.looks:
            return -1.0, 1.0
        if self.unit == "user":
            lows, highs = always_valid_ci_moments(*self._moments(), alpha=alpha, tau2=self.tau2)
        else:
            lows, highs = always_valid_ci(*self._columns(), alpha=alpha, tau2=self.tau2)
        low, high = float(np.max(lows)), float(np.min(highs))
        if low > high:  # possible only with probability <= alpha; fall back to the latest look
            low, high = float(lows[-1]), float(highs[-1])
        return low, high

    @property
    def design_effect(self) -> float:
        """How much the per-user variance of the latest look exceeds the binomial one (1 per impression)."""
        if self.unit != "user" or not self._user_looks:
            return 1.0
        last = self._user_looks[-1]
        return difference_design_effect(last.cand, last.base)

    def to_state(self) -> dict[str, Any]:
        """Plain JSON of everything the test has seen, so a rollout can resume it in another process.

        A per-user test saves the sums of every look (nine numbers per arm), so a resumed
        rollout computes the very same p-value.
        """
        state: dict[str, Any] = {
            "tau2": self.tau2, "burn_in": self.burn_in, "name": self.name, "problem": self._problem,
            "unit": self.unit,
            "counts": [self.cand_clicks, self.cand_n, self.base_clicks, self.base_n],
            "looks": [[k.cand_clicks, k.cand_n, k.base_clicks, k.base_n] for k in self._looks],
        }
        if self.unit == "user":
            state["sums"] = [self.cand_sums.to_list(), self.base_sums.to_list()]
            state["user_looks"] = [[k.cand.to_list(), k.base.to_list()] for k in self._user_looks]
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """The test ``to_state`` saved (of this class), with the same looks, so the same always-valid p-value.

        A state saved before issue 22 has no ``unit``: it is a per-impression test and
        resumes as one (its p-value must not change mid-rollout), fed per impression.
        """
        try:
            unit = state.get("unit") or ("impression" if state.get("looks") or any(state["counts"]) else None)
            test = cls(tau2=float(state["tau2"]), burn_in=int(state["burn_in"]), name=str(state["name"]), unit=unit)
            test.cand_clicks, test.cand_n, test.base_clicks, test.base_n = (int(v) for v in state["counts"])
            test._looks = [SequentialLook(*(int(v) for v in look)) for look in state["looks"]]
            if unit == "user":
                test.cand_sums, test.base_sums = (ClusterSums.from_list(v) for v in state["sums"])
                test._user_looks = [UserLook(ClusterSums.from_list(c), ClusterSums.from_list(b)) for c, b in state["user_looks"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GateError(f"not a saved sequential CTR test ({type(exc).__name__}: {exc}): {dict(state)!r}"[:500]) from exc
        test._problem = state.get("problem")
        return test

    def _set_unit(self, unit: str) -> None:
        if self.unit is None:
            self.unit = unit
        elif self.unit != unit:
            raise GateError(
                f"this sequential test counts per {self.unit}; it cannot take per-{unit} counts "
                f"({'update_users' if self.unit == 'user' else 'update'} feeds it)"
            )

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per look: the difference of the rates and its variance (delta-method per user, pooled per impression)."""
        if self.unit == "user":
            pairs = np.array([ratio_moments(k.cand, k.base) for k in self._user_looks], dtype=float)
            return pairs[:, 0], pairs[:, 1]
        xc, nc, xb, nb = self._columns()
        pooled = (xc + xb) / (nc + nb)
        return xc / nc - xb / nb, pooled * (1 - pooled) * (1 / nc + 1 / nb)

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
