"""The statistics behind the progressive-delivery gates.

A rollout moves a candidate through traffic steps (1 %, 5 %, 25 %, ...). At each step
the gates below compare the candidate with the baseline and answer PASS, FAIL or
INCONCLUSIVE. Three habits run through all of them, each learned from a known failure
of existing canary tools:

- Missing or NaN data never lets a candidate through. It makes a gate INCONCLUSIVE (the
  rollout waits or extends), or FAIL when the gate is marked ``critical``.
- Too little data is INCONCLUSIVE, not PASS: a test with no power says nothing.
- Anything looked at repeatedly while traffic accumulates (click-through rate) uses an
  always-valid p-value (mixture SPRT), because peeking at a fixed-horizon test at every
  step inflates the false-rollback rate far above alpha.

Results are frozen ``GateResult`` values with flat, finite, JSON-friendly figures, so the
rollout DAG can log them to MLflow and XCom as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from scipy import stats

from lockstep.core.errors import LockstepError
from lockstep.rollout.config import DEFAULTS

Direction = Literal["higher", "lower"]

# Mixture variance of the mSPRT prior on the difference of click-through rates: tau = 0.01
# (one percentage point). The test has the most power for effects near tau; set it to
# the size of change you care about.
DEFAULT_TAU2 = 1e-4


class GateError(LockstepError, ValueError):
    """A gate was given a parameter (or, where no verdict can be returned, data) it cannot use."""


class Verdict(StrEnum):
    """A gate's answer; a StrEnum, so it equals (and JSON-encodes as) its plain string."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Action(StrEnum):
    """What a rollout does after a step's gates: the values compare equal to plain strings."""

    PROMOTE = "promote"
    EXTEND = "extend"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class GateResult:
    """One gate's answer. Non-finite figures are dropped so the result is valid JSON."""

    name: str
    verdict: Verdict
    reason: str
    figures: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Verdict(self.verdict))
        object.__setattr__(self, "figures", _finite_figures(self.figures))

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "figures": dict(self.figures),
        }


def combine(results: Iterable[GateResult], name: str = "combined") -> GateResult:
    """Any FAIL fails; otherwise any INCONCLUSIVE (or no results at all) is INCONCLUSIVE."""
    results = list(results)
    figures: dict[str, float] = {}
    for result in results:
        figures.update({f"{result.name}.{key}": value for key, value in result.figures.items()})
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    open_ = [r for r in results if r.verdict is Verdict.INCONCLUSIVE]
    figures.update(
        n_gates=len(results), n_fail=len(failed), n_inconclusive=len(open_),
        n_pass=len(results) - len(failed) - len(open_),
    )
    if failed:
        return GateResult(name, Verdict.FAIL, _summary("failed", failed), figures)
    if open_:
        return GateResult(name, Verdict.INCONCLUSIVE, _summary("inconclusive", open_), figures)
    if not results:
        return GateResult(name, Verdict.INCONCLUSIVE, "no gate results: nothing shows the candidate is safe", figures)
    return GateResult(name, Verdict.PASS, f"all {len(results)} gates passed", figures)


# --------------------------------------------------------------------------- error rate


def error_rate_gate(
    cand_errors: float,
    cand_total: float,
    base_errors: float,
    base_total: float,
    max_abs_increase: float = 0.01,
    alpha: float = 0.05,
    min_samples: int = 50,
    max_error_rate: float | None = 0.05,
    critical: bool = False,
    name: str = "error_rate",
) -> GateResult:
    """FAIL when the candidate's error rate is significantly above baseline + tolerance.

    The one-sided test is of H0: cand - base <= max_abs_increase, with Agresti-Caffo
    adjusted rates (add one error and one success per arm) so that zero errors do not
    give a zero variance. Independently, a candidate whose own error rate exceeds
    ``max_error_rate`` fails whatever the baseline does: a baseline that is just as broken
    (or missing) must not excuse it.
    """
    _require_unit_open("alpha", alpha)
    _require_non_negative("max_abs_increase", max_abs_increase)
    _require_min_samples(min_samples)
    if max_error_rate is not None and not 0 < max_error_rate <= 1:
        raise GateError(f"max_error_rate must be in (0, 1] or None, got {max_error_rate!r}")

    figures: dict[str, float] = {"max_abs_increase": max_abs_increase, "alpha": alpha}
    problem = _count_problem("candidate", cand_errors, cand_total, "errors", "requests")
    if problem:
        return _undecidable(name, problem, critical, figures)
    figures.update(cand_total=cand_total, cand_errors=cand_errors)
    if cand_total < min_samples:
        return _too_few(name, f"{int(cand_total)} candidate requests", min_samples, figures)
    cand_rate = cand_errors / cand_total
    figures["cand_rate"] = cand_rate
    if max_error_rate is not None and cand_rate > max_error_rate:
        figures["max_error_rate"] = max_error_rate
        return GateResult(
            name, Verdict.FAIL,
            f"candidate error rate {cand_rate:.2%} is above the absolute ceiling {max_error_rate:.2%}",
            figures,
        )

    problem = _count_problem("baseline", base_errors, base_total, "errors", "requests")
    if problem:
        return _undecidable(name, problem, critical, figures)
    figures.update(base_total=base_total, base_errors=base_errors)
    if base_total < min_samples:
        return _too_few(name, f"{int(base_total)} baseline requests", min_samples, figures)
    base_rate = base_errors / base_total
    adj_cand = (cand_errors + 1) / (cand_total + 2)
    adj_base = (base_errors + 1) / (base_total + 2)
    se = math.sqrt(adj_cand * (1 - adj_cand) / (cand_total + 2) + adj_base * (1 - adj_base) / (base_total + 2))
    z = (adj_cand - adj_base - max_abs_increase) / se
    p_value = float(stats.norm.sf(z))
    upper = adj_cand - adj_base + stats.norm.ppf(1 - alpha) * se
    figures.update(base_rate=base_rate, diff=cand_rate - base_rate, diff_upper=upper, z=z, p_value=p_value)
    if p_value < alpha:
        return GateResult(
            name, Verdict.FAIL,
            f"candidate error rate {cand_rate:.2%} vs baseline {base_rate:.2%}: significantly more than "
            f"{max_abs_increase:.2%} above (p={p_value:.3g})",
            figures,
        )
    return GateResult(
        name, Verdict.PASS,
        f"candidate error rate {cand_rate:.2%} vs baseline {base_rate:.2%}: no significant increase beyond "
        f"{max_abs_increase:.2%} (p={p_value:.3g}; {1 - alpha:.0%} upper bound of the increase {upper:.2%})",
        figures,
    )


# --------------------------------------------------------------------------- latency


def latency_gate(
    cand_ms: Sequence[float] | np.ndarray,
    base_ms: Sequence[float] | np.ndarray,
    tolerance: float = 0.2,
    confidence: float = 0.98,
    min_samples: int = 50,
    iqr_factor: float = 3.0,
    critical: bool = False,
    name: str = "latency",
) -> GateResult:
    """Kayenta-style comparison of latency samples.

    Outliers are removed per group (IQR fences, widened to at least the 1st/99th
    percentiles as Kayenta does, so at most ~2 % of points go). The candidate FAILS only
    when it is significantly slower (two-sided Mann-Whitney U at ``confidence``) AND the
    Hodges-Lehmann shift exceeds ``tolerance`` x the baseline median: with lots of
    traffic a 1 ms difference is significant but not worth a rollback. NaN or infinite
    latencies are not dropped silently: timeouts recorded as NaN are exactly the requests
    that must count, so the gate refuses to decide.
    """
    _require_non_negative("tolerance", tolerance)
    _require_unit_open("confidence", confidence)
    _require_min_samples(min_samples)
    if not iqr_factor > 0:
        raise GateError(f"iqr_factor must be positive, got {iqr_factor!r}")
    alpha = 1 - confidence
    figures: dict[str, float] = {"tolerance": tolerance, "confidence": confidence}

    cand, problem = _latencies("candidate", cand_ms)
    if problem is None:
        base, problem = _latencies("baseline", base_ms)
    if problem:
        return _undecidable(name, problem, critical, figures)
    figures.update(n_cand=cand.size, n_base=base.size)
    if min(cand.size, base.size) < min_samples:
        return _too_few(name, f"{cand.size} candidate / {base.size} baseline latencies", min_samples, figures)
    figures.update(p99_cand_ms=float(np.percentile(cand, 99)), p99_base_ms=float(np.percentile(base, 99)))

    cand, base = remove_outliers(cand, iqr_factor), remove_outliers(base, iqr_factor)
    figures.update(removed_cand=figures["n_cand"] - cand.size, removed_base=figures["n_base"] - base.size)
    if min(cand.size, base.size) < min_samples:
        return _too_few(name, "latencies left after outlier removal", min_samples, figures)

    p_value = float(stats.mannwhitneyu(cand, base, alternative="two-sided").pvalue)
    shift, low, high = hodges_lehmann(cand, base, confidence)
    base_median = float(np.median(base))
    allowed = tolerance * base_median
    figures.update(
        median_cand_ms=float(np.median(cand)), median_base_ms=base_median, p_value=p_value,
        hl_shift_ms=shift, hl_ci_low_ms=low, hl_ci_high_ms=high, allowed_shift_ms=allowed,
    )
    summary = (
        f"Hodges-Lehmann shift {shift:+.1f} ms ({confidence:.0%} CI {low:+.1f}..{high:+.1f}), "
        f"allowed +{allowed:.1f} ms; Mann-Whitney p={p_value:.3g}"
    )
    slower = p_value < alpha and shift > 0
    if slower and shift > allowed:
        return GateResult(name, Verdict.FAIL, f"candidate is significantly slower: {summary}", figures)
    if slower:
        return GateResult(name, Verdict.PASS, f"candidate is slower but within tolerance: {summary}", figures)
    return GateResult(name, Verdict.PASS, f"candidate is not significantly slower: {summary}", figures)


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


# --------------------------------------------------------------------------- result overlap


def overlap_gate(
    live_top_ids: Sequence[Sequence[str] | None],
    shadow_top_ids: Sequence[Sequence[str] | None],
    min_overlap: float = 0.5,
    min_samples: int = 20,
    metric: Literal["jaccard", "overlap"] = "jaccard",
    critical: bool = False,
    name: str = "overlap",
) -> GateResult:
    """Mean agreement of the shadow's top-k with the live top-k over the same queries.

    ``jaccard`` is |L & S| / |L | S|; ``overlap`` is overlap@k, |L & S[:k]| / k with
    k = len(L). A query the shadow did not answer (None) counts as zero agreement (a
    failing shadow must not look good); a query with no live answer (None or empty) has
    nothing to compare with and is skipped.
    """
    _require_unit_closed("min_overlap", min_overlap)
    _require_min_samples(min_samples)
    if metric not in ("jaccard", "overlap"):
        raise GateError(f"metric must be 'jaccard' or 'overlap', got {metric!r}")
    figures: dict[str, float] = {"min_overlap": min_overlap}
    if live_top_ids is None or shadow_top_ids is None:
        return _undecidable(name, "live or shadow results are missing", critical, figures)
    if len(live_top_ids) != len(shadow_top_ids):
        return _undecidable(
            name,
            f"{len(live_top_ids)} live result lists but {len(shadow_top_ids)} shadow lists; "
            "pair them by request id before comparing",
            critical, figures,
        )
    scores: list[float] = []
    skipped = shadow_missing = 0
    for live, shadow in zip(live_top_ids, shadow_top_ids, strict=True):
        if not live:
            skipped += 1
            continue
        if shadow is None:
            shadow_missing += 1
            scores.append(0.0)
            continue
        live_set = set(live)
        if metric == "jaccard":
            scores.append(len(live_set & set(shadow)) / len(live_set | set(shadow)))
        else:
            scores.append(len(live_set & set(list(shadow)[: len(live)])) / len(live_set))
    figures.update(n_queries=len(scores), n_skipped=skipped, n_shadow_missing=shadow_missing)
    if len(scores) < min_samples:
        return _too_few(name, f"{len(scores)} comparable queries", min_samples, figures)
    values = np.asarray(scores)
    mean = float(values.mean())
    figures.update(
        mean_overlap=mean, median_overlap=float(np.median(values)), p10_overlap=float(np.percentile(values, 10))
    )
    summary = f"mean {metric} {mean:.3f} over {values.size} queries (minimum {min_overlap:.3f})"
    if mean < min_overlap:
        return GateResult(name, Verdict.FAIL, f"shadow disagrees with live: {summary}", figures)
    return GateResult(name, Verdict.PASS, summary, figures)


# --------------------------------------------------------------------------- sequential CTR


def msprt_p_value(
    cand_clicks: Any, cand_n: Any, base_clicks: Any, base_n: Any, tau2: float = DEFAULT_TAU2
) -> Any:
    """The mSPRT p-value 1 / Lambda of H0: equal rates, at one look (vectorised).

    Normal approximation with a N(0, tau2) mixture over the difference (Johari, Pekelis,
    Walsh 2017, "Always valid inference"): with the pooled variance s2 of the observed
    difference d, Lambda = sqrt(s2 / (s2 + tau2)) * exp(tau2 d^2 / (2 s2 (s2 + tau2))).
    The always-valid p-value is the running minimum over looks (``SequentialCTRTest``
    keeps it). Missing, NaN or degenerate inputs give 1: no evidence.
    """
    _require_positive("tau2", tau2)
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
    looks (``SequentialCTRTest.confidence_interval``) keeps simultaneous coverage. The
    variance uses Agresti-Caffo adjusted rates so that zero clicks do not collapse it;
    unusable inputs give the uninformative (-1, 1).
    """
    _require_unit_open("alpha", alpha)
    _require_positive("tau2", tau2)
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


class SequentialCTRTest:
    """A click-through comparison that may be looked at after every batch of traffic.

    ``update`` adds the counts observed since the previous update. The always-valid
    p-value is the running minimum of the per-look mSPRT p-values, so it never goes up
    and stopping at whatever look first crosses alpha keeps the false-decision rate at
    alpha. Looks start once both arms have ``burn_in`` impressions, because the normal
    approximation is poor before that and an early fluke would be locked in for good.
    """

    def __init__(self, tau2: float = DEFAULT_TAU2, burn_in: int = 100, name: str = "ctr_sequential"):
        _require_positive("tau2", tau2)
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

    def update(self, cand_clicks: float, cand_n: float, base_clicks: float, base_n: float) -> None:
        """Add new counts. Missing or impossible counts are not added; the next ``analyse``
        cannot PASS until a good update arrives (it can still FAIL on earlier evidence)."""
        problem = _count_problem("candidate", cand_clicks, cand_n, "clicks", "impressions") or _count_problem(
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

    def analyse(
        self,
        alpha: float = 0.05,
        min_samples: int = 100,
        direction: Direction = "higher",
        non_inferiority_margin: float = 0.005,
        critical: bool = False,
    ) -> GateResult:
        """FAIL when significantly worse; PASS when significantly better or when the
        always-valid CI rules out a drop larger than ``non_inferiority_margin``
        (absolute, in the better direction); else INCONCLUSIVE.

        ``direction`` says which way is better for the candidate ("higher" for CTR).
        """
        _require_unit_open("alpha", alpha)
        _require_min_samples(min_samples)
        _require_non_negative("non_inferiority_margin", non_inferiority_margin)
        sign = _direction_sign(direction)
        p_value = self.p_value
        low, high = self.confidence_interval(alpha)
        cand_rate = self.cand_clicks / self.cand_n if self.cand_n else math.nan
        base_rate = self.base_clicks / self.base_n if self.base_n else math.nan
        diff = cand_rate - base_rate
        effect_low = min(sign * low, sign * high)  # lower bound of the improvement
        figures = {
            "cand_rate": cand_rate, "base_rate": base_rate, "diff": diff,
            "rel_lift": diff / base_rate if base_rate else math.nan,
            "p_value": p_value, "ci_low": low, "ci_high": high, "alpha": alpha,
            "cand_n": self.cand_n, "base_n": self.base_n, "looks": len(self._looks),
            "non_inferiority_margin": non_inferiority_margin,
        }
        summary = (
            f"candidate {cand_rate:.4f} vs baseline {base_rate:.4f}, always-valid p={p_value:.3g}, "
            f"{1 - alpha:.0%} CI of the difference {low:+.4f}..{high:+.4f}"
        )
        worse = sign * diff < 0
        if p_value < alpha and worse and min(self.cand_n, self.base_n) >= min_samples:
            return GateResult(self.name, Verdict.FAIL, f"candidate is significantly worse: {summary}", figures)
        if self._problem:
            return _undecidable(self.name, f"last update unusable ({self._problem})", critical, figures)
        if min(self.cand_n, self.base_n) < min_samples:
            return _too_few(self.name, f"{self.cand_n} candidate / {self.base_n} baseline impressions", min_samples, figures)
        if p_value < alpha:
            return GateResult(self.name, Verdict.PASS, f"candidate is significantly better: {summary}", figures)
        if effect_low > -non_inferiority_margin:
            return GateResult(
                self.name, Verdict.PASS,
                f"candidate is non-inferior (no drop beyond {non_inferiority_margin:.4f}): {summary}", figures,
            )
        return GateResult(self.name, Verdict.INCONCLUSIVE, f"not enough evidence either way: {summary}", figures)

    def to_state(self) -> dict[str, Any]:
        """Plain JSON of everything the test has seen, so a rollout can resume it in another process."""
        return {
            "tau2": self.tau2, "burn_in": self.burn_in, "name": self.name, "problem": self._problem,
            "counts": [self.cand_clicks, self.cand_n, self.base_clicks, self.base_n],
            "looks": [[k.cand_clicks, k.cand_n, k.base_clicks, k.base_n] for k in self._looks],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SequentialCTRTest:
        """The test ``to_state`` saved, with the same looks (so the same always-valid p-value)."""
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


def fixed_sample_ab_test(
    cand_clicks: float,
    cand_n: float,
    base_clicks: float,
    base_n: float,
    alpha: float = 0.05,
    min_samples: int = 100,
    direction: Direction = "higher",
    non_inferiority_margin: float = 0.005,
    critical: bool = False,
    name: str = "ctr_fixed",
) -> GateResult:
    """Two-proportion z-test, for ONE look at a sample size fixed in advance.

    Use ``required_sample_size`` to fix it; looking repeatedly inflates false decisions
    (use ``SequentialCTRTest`` then). Verdicts mirror the sequential test: FAIL when
    significantly worse, PASS when significantly better or when the Newcombe interval
    rules out a drop beyond ``non_inferiority_margin``. Figures also carry the Wald
    interval and the relative lift with its (Katz log) interval.
    """
    _require_unit_open("alpha", alpha)
    _require_min_samples(min_samples)
    _require_non_negative("non_inferiority_margin", non_inferiority_margin)
    sign = _direction_sign(direction)
    figures: dict[str, float] = {"alpha": alpha, "non_inferiority_margin": non_inferiority_margin}
    problem = _count_problem("candidate", cand_clicks, cand_n, "clicks", "impressions") or _count_problem(
        "baseline", base_clicks, base_n, "clicks", "impressions"
    )
    if problem:
        return _undecidable(name, problem, critical, figures)
    figures.update(cand_n=cand_n, base_n=base_n)
    if min(cand_n, base_n) < min_samples:
        return _too_few(name, f"{int(cand_n)} candidate / {int(base_n)} baseline impressions", min_samples, figures)

    pc, pb = cand_clicks / cand_n, base_clicks / base_n
    diff = pc - pb
    pooled = (cand_clicks + base_clicks) / (cand_n + base_n)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / cand_n + 1 / base_n))
    z = diff / se_pooled if se_pooled > 0 else 0.0
    p_value = float(2 * stats.norm.sf(abs(z)))
    zq = float(stats.norm.ppf(1 - alpha / 2))
    se = math.sqrt(pc * (1 - pc) / cand_n + pb * (1 - pb) / base_n)
    low, high = newcombe_interval(cand_clicks, cand_n, base_clicks, base_n, alpha)
    figures.update(
        cand_rate=pc, base_rate=pb, diff=diff, z=z, p_value=p_value,
        wald_low=diff - zq * se, wald_high=diff + zq * se, ci_low=low, ci_high=high,
    )
    if pb > 0:
        figures["rel_lift"] = pc / pb - 1
    if min(cand_clicks, base_clicks) > 0:
        se_log = math.sqrt(1 / cand_clicks - 1 / cand_n + 1 / base_clicks - 1 / base_n)
        log_rr = math.log(pc / pb)
        figures.update(
            rel_lift_low=math.exp(log_rr - zq * se_log) - 1, rel_lift_high=math.exp(log_rr + zq * se_log) - 1
        )
    summary = (
        f"candidate {pc:.4f} vs baseline {pb:.4f}, z={z:+.2f}, p={p_value:.3g}, "
        f"{1 - alpha:.0%} Newcombe CI {low:+.4f}..{high:+.4f}"
    )
    effect_low = min(sign * low, sign * high)
    if p_value < alpha and sign * diff < 0:
        return GateResult(name, Verdict.FAIL, f"candidate is significantly worse: {summary}", figures)
    if p_value < alpha:
        return GateResult(name, Verdict.PASS, f"candidate is significantly better: {summary}", figures)
    if effect_low > -non_inferiority_margin:
        return GateResult(name, Verdict.PASS, f"candidate is non-inferior: {summary}", figures)
    return GateResult(name, Verdict.INCONCLUSIVE, f"not enough evidence either way: {summary}", figures)


def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
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
    _require_unit_open("p_base", p_base)
    _require_unit_open("alpha", alpha)
    _require_unit_open("power", power)
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
    arms, s, t = _arm_counts(successes, trials)
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
    arms, _, _ = _arm_counts(successes, trials)
    if not (floor >= 0 and floor * len(arms) <= 1):
        raise GateError(f"floor={floor!r} with {len(arms)} arms: need 0 <= floor <= 1/{len(arms)}")
    best = prob_best(successes, trials, n_draws=n_draws, seed=seed, prior=prior)
    spare = 1 - floor * len(arms)
    return {arm: floor + spare * best[arm] for arm in arms}


def bandit_decision(
    successes: Mapping[str, float],
    trials: Mapping[str, float],
    candidate: str,
    baseline: str,
    threshold: float = 0.95,
    min_exposures: int = 100,
    n_draws: int = 10_000,
    seed: int | np.random.Generator | None = None,
    prior: tuple[float, float] = (1.0, 1.0),
    critical: bool = False,
    name: str = "bandit",
) -> GateResult:
    """PASS when the candidate is best with probability >= threshold, FAIL when the baseline is."""
    _require_unit_open("threshold", threshold)
    _require_min_samples(min_exposures)
    for role, arm in (("candidate", candidate), ("baseline", baseline)):
        if arm not in trials:
            raise GateError(f"{role} arm {arm!r} is not among the arms {sorted(trials)}")
    figures: dict[str, float] = {"threshold": threshold}
    try:
        arms, _, t = _arm_counts(successes, trials)
    except GateError as exc:
        return _undecidable(name, str(exc), critical, figures)
    if t.min() < min_exposures:
        short = [arm for arm, n in zip(arms, t, strict=True) if n < min_exposures]
        return _too_few(name, f"arms {short} below {min_exposures} exposures", min_exposures, figures)
    best = prob_best(successes, trials, n_draws=n_draws, seed=seed, prior=prior)
    figures.update({f"prob_best.{arm}": p for arm, p in best.items()})
    summary = f"P(best): candidate {best[candidate]:.3f}, baseline {best[baseline]:.3f} (threshold {threshold})"
    if best[candidate] >= threshold:
        return GateResult(name, Verdict.PASS, f"candidate is best: {summary}", figures)
    if best[baseline] >= threshold:
        return GateResult(name, Verdict.FAIL, f"baseline is best: {summary}", figures)
    return GateResult(name, Verdict.INCONCLUSIVE, f"no clear winner yet: {summary}", figures)


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


# --------------------------------------------------------------------------- canary policy


@dataclass(frozen=True)
class GateThresholds:
    """The per-gate thresholds a rollout passes to the gate functions.

    The defaults are RolloutConfig's (``lockstep.rollout.config``), the one place a
    rollout's defaults are written.
    """

    max_abs_error_increase: float = DEFAULTS["max_error_increase"]
    max_error_rate: float = DEFAULTS["max_error_rate"]
    latency_tolerance: float = DEFAULTS["latency_tolerance"]
    latency_confidence: float = DEFAULTS["latency_confidence"]
    min_overlap: float = DEFAULTS["min_overlap"]
    non_inferiority_margin: float = DEFAULTS["ctr_margin"]


@dataclass(frozen=True)
class CanaryPolicy:
    """Traffic steps (percent), how long each bakes, and what to do with the gates' verdicts.

    INCONCLUSIVE extends the bake of the current step up to ``max_extensions`` times, then
    rolls back: a rollout that cannot show the candidate is safe does not go on for ever.
    The defaults are RolloutConfig's.
    """

    steps: tuple[int, ...] = DEFAULTS["canary_steps"]
    bake_seconds: float = DEFAULTS["bake_seconds"]
    min_samples: int = DEFAULTS["min_samples"]
    max_extensions: int = DEFAULTS["max_extensions"]
    alpha: float = DEFAULTS["alpha"]
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps):
            raise GateError(f"steps must be traffic percentages in (0, 100] ending at 100, got {steps!r}")
        if any(a >= b for a, b in zip(steps, steps[1:], strict=False)):
            raise GateError(f"steps must increase strictly, got {steps!r}")
        _require_non_negative("bake_seconds", self.bake_seconds)
        _require_min_samples(self.min_samples)
        if self.max_extensions < 0:
            raise GateError(f"max_extensions must be 0 or more, got {self.max_extensions!r}")
        _require_unit_open("alpha", self.alpha)

    def weight(self, step_index: int) -> int:
        self._check_step(step_index)
        return self.steps[step_index]

    def is_final(self, step_index: int) -> bool:
        self._check_step(step_index)
        return step_index == len(self.steps) - 1

    def next_action(self, step_index: int, results: Iterable[GateResult], extensions_used: int) -> Action:
        """PROMOTE to the next step (at the final step: the rollout is complete), EXTEND the
        bake, or ROLLBACK. No results at all count as inconclusive, never as a pass."""
        self._check_step(step_index)
        if extensions_used < 0:
            raise GateError(f"extensions_used must be 0 or more, got {extensions_used!r}")
        verdict = combine(results).verdict
        if verdict is Verdict.FAIL:
            return Action.ROLLBACK
        if verdict is Verdict.INCONCLUSIVE:
            return Action.EXTEND if extensions_used < self.max_extensions else Action.ROLLBACK
        return Action.PROMOTE

    def _check_step(self, step_index: int) -> None:
        if not 0 <= step_index < len(self.steps):
            raise GateError(f"step_index {step_index!r} is outside the {len(self.steps)} steps {self.steps!r}")


# --------------------------------------------------------------------------- helpers


def _finite_figures(figures: Mapping[str, Any]) -> dict[str, float]:
    clean: dict[str, float] = {}
    for key, value in figures.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            clean[str(key)] = number
    return clean


def _summary(what: str, results: Sequence[GateResult]) -> str:
    return f"{len(results)} gate(s) {what}: " + "; ".join(f"{r.name}: {r.reason}" for r in results)


def _undecidable(name: str, problem: str, critical: bool, figures: Mapping[str, Any]) -> GateResult:
    """Missing or unusable data: never a pass; a critical gate fails outright."""
    if critical:
        return GateResult(name, Verdict.FAIL, f"{problem}; the gate is critical, so missing data fails it", dict(figures))
    return GateResult(name, Verdict.INCONCLUSIVE, f"{problem}; cannot decide", dict(figures))


def _too_few(name: str, what: str, min_samples: int, figures: Mapping[str, Any]) -> GateResult:
    return GateResult(
        name, Verdict.INCONCLUSIVE, f"too little data: {what}, need at least {min_samples}", dict(figures)
    )


def _count_problem(arm: str, count: Any, total: Any, count_word: str, total_word: str) -> str | None:
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


def _latencies(arm: str, values: Any) -> tuple[np.ndarray, str | None]:
    if values is None:
        return np.empty(0), f"{arm} latencies are missing"
    try:
        array = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return np.empty(0), f"{arm} latencies are not numbers"
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        return array, f"{arm} latencies contain {bad} NaN/infinite values (record timeouts as their duration)"
    if array.size and array.min() < 0:
        return array, f"{arm} latencies contain negative values"
    return array, None


def _arm_counts(successes: Mapping[str, float], trials: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    if set(successes) != set(trials) or not trials:
        raise GateError(f"successes and trials must name the same, non-empty arms: {sorted(successes)} vs {sorted(trials)}")
    arms = list(trials)
    for arm in arms:
        problem = _count_problem(f"arm {arm!r}", successes[arm], trials[arm], "successes", "trials")
        if problem:
            raise GateError(problem)
    s = np.array([float(successes[a]) for a in arms])
    t = np.array([float(trials[a]) for a in arms])
    return arms, s, t


def _direction_sign(direction: str) -> int:
    if direction == "higher":
        return 1
    if direction == "lower":
        return -1
    raise GateError(f"direction must be 'higher' (higher is better) or 'lower', got {direction!r}")


def _require_unit_open(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0 < value < 1):
        raise GateError(f"{label} must be strictly between 0 and 1, got {value!r}")


def _require_unit_closed(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0 <= value <= 1):
        raise GateError(f"{label} must be between 0 and 1, got {value!r}")


def _require_non_negative(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and value >= 0):
        raise GateError(f"{label} must be 0 or more, got {value!r}")


def _require_positive(label: str, value: float) -> None:
    if not (isinstance(value, int | float) and value > 0):
        raise GateError(f"{label} must be positive, got {value!r}")


def _require_min_samples(value: int) -> None:
    if not (isinstance(value, int | np.integer) and value >= 1):
        raise GateError(f"min_samples must be a whole number of at least 1, got {value!r}")
