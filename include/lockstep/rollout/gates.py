"""The progressive-delivery gates: the statistics' figures judged as verdicts, and what to do next.

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
- The unit is the user (issue 22): routing is sticky per user, so the click gates (the
  sequential and fixed-horizon CTR tests, the bandit) and the error-rate gate take
  per-user sums (``ClusterSums``) and the delta-method variance; counting impressions as
  independent trials made the A/A false-rollback rate 22 % instead of 5 %. Counts
  without per-user sums are still accepted (judged per impression, as before).

Results are frozen ``GateResult`` values with flat, finite, JSON-friendly figures, so the
rollout DAG can log them to MLflow and XCom as they are. The tests and intervals behind
the figures are in ``lockstep.rollout.statistics`` and ``lockstep.rollout.sequential``;
this module only decides. What a step's verdicts lead to (promote, extend, roll back) is
the canary policy's (``lockstep.rollout.policy``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from lockstep.rollout.sequential import SequentialCTR
from lockstep.rollout.statistics import (
    Direction,
    GateError,
    arm_counts,
    compare_latencies,
    count_problem,
    direction_sign,
    error_increase_test,
    prob_best,
    ratio_difference_test,
    remove_outliers,
    require_min_samples,
    require_non_negative,
    require_unit_closed,
    require_unit_open,
    two_proportion_test,
)
from lockstep.store.log_stats import ClusterSums


class GateVerdict(StrEnum):
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
    verdict: GateVerdict
    reason: str
    figures: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", GateVerdict(self.verdict))
        object.__setattr__(self, "figures", _finite_figures(self.figures))

    @property
    def passed(self) -> bool:
        return self.verdict is GateVerdict.PASS

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
    failed = [r for r in results if r.verdict is GateVerdict.FAIL]
    open_ = [r for r in results if r.verdict is GateVerdict.INCONCLUSIVE]
    figures.update(
        n_gates=len(results), n_fail=len(failed), n_inconclusive=len(open_),
        n_pass=len(results) - len(failed) - len(open_),
    )
    if failed:
        return GateResult(name, GateVerdict.FAIL, _summary("failed", failed), figures)
    if open_:
        return GateResult(name, GateVerdict.INCONCLUSIVE, _summary("inconclusive", open_), figures)
    if not results:
        return GateResult(name, GateVerdict.INCONCLUSIVE, "no gate results: nothing shows the candidate is safe", figures)
    return GateResult(name, GateVerdict.PASS, f"all {len(results)} gates passed", figures)


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
    cand_clusters: ClusterSums | None = None,
    base_clusters: ClusterSums | None = None,
) -> GateResult:
    """FAIL when the candidate's error rate is significantly above baseline + tolerance.

    The one-sided test is of H0: cand - base <= max_abs_increase, with Agresti-Caffo
    adjusted rates (``statistics.error_increase_test``) so that zero errors do not give a
    zero variance. Independently, a candidate whose own error rate exceeds
    ``max_error_rate`` fails whatever the baseline does: a baseline that is just as broken
    (or missing) must not excuse it.

    Errors cluster by user (a query pattern that fails, fails for whoever sends it), so
    with per-user sums of (errors, requests) (``cand_clusters``/``base_clusters``) the
    test takes the design-effect-adjusted counts (``ClusterSums.effective_counts``):
    each arm's binomial variance widened to its per-user one, never narrowed.
    """
    require_unit_open("alpha", alpha)
    require_non_negative("max_abs_increase", max_abs_increase)
    require_min_samples(min_samples)
    if max_error_rate is not None and not 0 < max_error_rate <= 1:
        raise GateError(f"max_error_rate must be in (0, 1] or None, got {max_error_rate!r}")

    figures: dict[str, float] = {"max_abs_increase": max_abs_increase, "alpha": alpha}
    problem = count_problem("candidate", cand_errors, cand_total, "errors", "requests")
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
            name, GateVerdict.FAIL,
            f"candidate error rate {cand_rate:.2%} is above the absolute ceiling {max_error_rate:.2%}",
            figures,
        )

    problem = count_problem("baseline", base_errors, base_total, "errors", "requests")
    if problem:
        return _undecidable(name, problem, critical, figures)
    figures.update(base_total=base_total, base_errors=base_errors)
    if base_total < min_samples:
        return _too_few(name, f"{int(base_total)} baseline requests", min_samples, figures)
    base_rate = base_errors / base_total
    figures.update(base_rate=base_rate, diff=cand_rate - base_rate)
    counts: tuple[float, float, float, float] = (cand_errors, cand_total, base_errors, base_total)
    if _have_users(cand_clusters, base_clusters):
        counts = (*cand_clusters.effective_counts(), *base_clusters.effective_counts())
        figures.update(user_level=1.0, cand_design_effect=cand_clusters.design_effect,
                       base_design_effect=base_clusters.design_effect, cand_users=cand_clusters.clusters,
                       base_users=base_clusters.clusters)
    figures.update(error_increase_test(*counts, max_abs_increase, alpha))
    p_value, upper = figures["p_value"], figures["diff_upper"]
    if p_value < alpha:
        return GateResult(
            name, GateVerdict.FAIL,
            f"candidate error rate {cand_rate:.2%} vs baseline {base_rate:.2%}: significantly more than "
            f"{max_abs_increase:.2%} above (p={p_value:.3g})",
            figures,
        )
    return GateResult(
        name, GateVerdict.PASS,
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
    require_non_negative("tolerance", tolerance)
    require_unit_open("confidence", confidence)
    require_min_samples(min_samples)
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

    figures.update(compare_latencies(cand, base, confidence))
    allowed = tolerance * figures["median_base_ms"]
    figures["allowed_shift_ms"] = allowed
    p_value, shift = figures["p_value"], figures["hl_shift_ms"]
    low, high = figures["hl_ci_low_ms"], figures["hl_ci_high_ms"]
    summary = (
        f"Hodges-Lehmann shift {shift:+.1f} ms ({confidence:.0%} CI {low:+.1f}..{high:+.1f}), "
        f"allowed +{allowed:.1f} ms; Mann-Whitney p={p_value:.3g}"
    )
    slower = p_value < alpha and shift > 0
    if slower and shift > allowed:
        return GateResult(name, GateVerdict.FAIL, f"candidate is significantly slower: {summary}", figures)
    if slower:
        return GateResult(name, GateVerdict.PASS, f"candidate is slower but within tolerance: {summary}", figures)
    return GateResult(name, GateVerdict.PASS, f"candidate is not significantly slower: {summary}", figures)


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
    require_unit_closed("min_overlap", min_overlap)
    require_min_samples(min_samples)
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
        return GateResult(name, GateVerdict.FAIL, f"shadow disagrees with live: {summary}", figures)
    return GateResult(name, GateVerdict.PASS, summary, figures)


# --------------------------------------------------------------------------- sequential CTR


class SequentialCTRTest(SequentialCTR):
    """The sequential click-through test of a rollout, judged: ``analyse`` gives the verdict.

    The counts, looks, always-valid p-value and interval (and the saved state) are
    ``lockstep.rollout.sequential.SequentialCTR``'s; this class only decides on them.
    """

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
        require_unit_open("alpha", alpha)
        require_min_samples(min_samples)
        require_non_negative("non_inferiority_margin", non_inferiority_margin)
        sign = direction_sign(direction)
        p_value = self.p_value
        low, high = self.confidence_interval(alpha)
        cand_rate, base_rate = self.cand_rate, self.base_rate
        diff = cand_rate - base_rate
        effect_low = min(sign * low, sign * high)  # lower bound of the improvement
        figures = {
            "cand_rate": cand_rate, "base_rate": base_rate, "diff": diff,
            "rel_lift": diff / base_rate if base_rate else math.nan,
            "p_value": p_value, "ci_low": low, "ci_high": high, "alpha": alpha,
            "cand_n": self.cand_n, "base_n": self.base_n, "looks": len(self.looks),
            "non_inferiority_margin": non_inferiority_margin,
        }
        if self.unit == "user":
            figures.update(user_level=1.0, design_effect=self.design_effect, cand_users=self.cand_sums.clusters,
                           base_users=self.base_sums.clusters, cand_capped_users=self.cand_sums.capped,
                           base_capped_users=self.base_sums.capped)
        summary = (
            f"candidate {cand_rate:.4f} vs baseline {base_rate:.4f}, always-valid p={p_value:.3g}, "
            f"{1 - alpha:.0%} CI of the difference {low:+.4f}..{high:+.4f}"
        )
        worse = sign * diff < 0
        if p_value < alpha and worse and min(self.cand_n, self.base_n) >= min_samples:
            return GateResult(self.name, GateVerdict.FAIL, f"candidate is significantly worse: {summary}", figures)
        if self.problem:
            return _undecidable(self.name, f"last update unusable ({self.problem})", critical, figures)
        if min(self.cand_n, self.base_n) < min_samples:
            return _too_few(self.name, f"{self.cand_n} candidate / {self.base_n} baseline impressions", min_samples, figures)
        if p_value < alpha:
            return GateResult(self.name, GateVerdict.PASS, f"candidate is significantly better: {summary}", figures)
        if effect_low > -non_inferiority_margin:
            return GateResult(
                self.name, GateVerdict.PASS,
                f"candidate is non-inferior (no drop beyond {non_inferiority_margin:.4f}): {summary}", figures,
            )
        return GateResult(self.name, GateVerdict.INCONCLUSIVE, f"not enough evidence either way: {summary}", figures)


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
    cand_clusters: ClusterSums | None = None,
    base_clusters: ClusterSums | None = None,
) -> GateResult:
    """The verdict of a two-proportion z-test (``statistics.two_proportion_test``), for ONE
    look at a sample size fixed in advance.

    Use ``statistics.required_sample_size`` to fix it; looking repeatedly inflates false decisions
    (use ``SequentialCTRTest`` then). Verdicts mirror the sequential test: FAIL when
    significantly worse, PASS when significantly better or when the Newcombe interval
    rules out a drop beyond ``non_inferiority_margin``. Figures also carry the Wald
    interval and the relative lift with its (Katz log) interval.

    With per-user sums (``cand_clusters``/``base_clusters``) the test is of the per-user
    ratios (``statistics.ratio_difference_test``): z and its interval use the
    delta-method variance, and the interval judged is that Wald interval.
    """
    require_unit_open("alpha", alpha)
    require_min_samples(min_samples)
    require_non_negative("non_inferiority_margin", non_inferiority_margin)
    sign = direction_sign(direction)
    figures: dict[str, float] = {"alpha": alpha, "non_inferiority_margin": non_inferiority_margin}
    problem = count_problem("candidate", cand_clicks, cand_n, "clicks", "impressions") or count_problem(
        "baseline", base_clicks, base_n, "clicks", "impressions"
    )
    if problem:
        return _undecidable(name, problem, critical, figures)
    figures.update(cand_n=cand_n, base_n=base_n)
    if min(cand_n, base_n) < min_samples:
        return _too_few(name, f"{int(cand_n)} candidate / {int(base_n)} baseline impressions", min_samples, figures)

    per_user = _have_users(cand_clusters, base_clusters)
    if per_user:
        figures.update(ratio_difference_test(cand_clusters, base_clusters, alpha), user_level=1.0,
                       cand_users=cand_clusters.clusters, base_users=base_clusters.clusters)
    else:
        figures.update(two_proportion_test(cand_clicks, cand_n, base_clicks, base_n, alpha))
    pc, pb, diff, z, p_value = (figures[k] for k in ("cand_rate", "base_rate", "diff", "z", "p_value"))
    low, high = figures["ci_low"], figures["ci_high"]
    interval = "per-user (delta-method)" if per_user else "Newcombe"
    summary = (
        f"candidate {pc:.4f} vs baseline {pb:.4f}, z={z:+.2f}, p={p_value:.3g}, "
        f"{1 - alpha:.0%} {interval} CI {low:+.4f}..{high:+.4f}"
    )
    effect_low = min(sign * low, sign * high)
    if p_value < alpha and sign * diff < 0:
        return GateResult(name, GateVerdict.FAIL, f"candidate is significantly worse: {summary}", figures)
    if p_value < alpha:
        return GateResult(name, GateVerdict.PASS, f"candidate is significantly better: {summary}", figures)
    if effect_low > -non_inferiority_margin:
        return GateResult(name, GateVerdict.PASS, f"candidate is non-inferior: {summary}", figures)
    return GateResult(name, GateVerdict.INCONCLUSIVE, f"not enough evidence either way: {summary}", figures)


# --------------------------------------------------------------------------- bandit


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
    exposures: Mapping[str, float] | None = None,
) -> GateResult:
    """PASS when the candidate is best with probability >= threshold, FAIL when the baseline is.

    ``successes``/``trials`` are the posterior's counts: per user, the effective counts
    (``statistics.effective_arm_counts``). ``exposures`` are the raw impressions the
    ``min_exposures`` rule is about (default: ``trials``).
    """
    require_unit_open("threshold", threshold)
    require_min_samples(min_exposures)
    for role, arm in (("candidate", candidate), ("baseline", baseline)):
        if arm not in trials:
            raise GateError(f"{role} arm {arm!r} is not among the arms {sorted(trials)}")
    figures: dict[str, float] = {"threshold": threshold}
    try:
        arms, _, t = arm_counts(successes, trials)
    except GateError as exc:
        return _undecidable(name, str(exc), critical, figures)
    shown = np.array([float((exposures or trials).get(arm, 0)) for arm in arms])
    if shown.min() < min_exposures:
        short = [arm for arm, n in zip(arms, shown, strict=True) if n < min_exposures]
        return _too_few(name, f"arms {short} below {min_exposures} exposures", min_exposures, figures)
    best = prob_best(successes, trials, n_draws=n_draws, seed=seed, prior=prior)
    figures.update({f"prob_best.{arm}": p for arm, p in best.items()})
    summary = f"P(best): candidate {best[candidate]:.3f}, baseline {best[baseline]:.3f} (threshold {threshold})"
    if best[candidate] >= threshold:
        return GateResult(name, GateVerdict.PASS, f"candidate is best: {summary}", figures)
    if best[baseline] >= threshold:
        return GateResult(name, GateVerdict.FAIL, f"baseline is best: {summary}", figures)
    return GateResult(name, GateVerdict.INCONCLUSIVE, f"no clear winner yet: {summary}", figures)


# --------------------------------------------------------------------------- helpers


def _have_users(cand: ClusterSums | None, base: ClusterSums | None) -> bool:
    """Both arms came with per-user sums (counts built by hand come without: judged per trial)."""
    return cand is not None and base is not None and not cand.empty and not base.empty


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
        return GateResult(name, GateVerdict.FAIL, f"{problem}; the gate is critical, so missing data fails it", dict(figures))
    return GateResult(name, GateVerdict.INCONCLUSIVE, f"{problem}; cannot decide", dict(figures))


def _too_few(name: str, what: str, min_samples: int, figures: Mapping[str, Any]) -> GateResult:
    return GateResult(
        name, GateVerdict.INCONCLUSIVE, f"too little data: {what}, need at least {min_samples}", dict(figures)
    )


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
