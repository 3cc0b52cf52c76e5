"""What the serving logs say about a candidate, judged: arm statistics in, gate results out.

A rollout step reads the logs of one window (``lockstep.store.serving_logs``, which also
defines what an impression and a click are), candidate and champion side by side, and
hands the counts to the functions here, which turn them into the gates of
``lockstep.rollout.gates``. Both versions are read over the *same* window, so a quiet
hour or a slow database affects both arms alike.

The click and error gates judge users, not requests (issue 22): arm statistics read from
the logs carry per-user sums (``ArmStats.clusters``, ``ArmStats.error_clusters``) and the
gates use them; counts built without them (by hand, in tests) are judged per impression.

Nothing here reads a database or a clock: the strategies (``lockstep.rollout.strategies``)
build on these functions and must stay pure, which ``.importlinter`` checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lockstep.rollout.config import DEFAULTS
from lockstep.rollout.gates import (
    GateResult,
    GateVerdict,
    SequentialCTRTest,
    error_rate_gate,
    fixed_sample_ab_test,
    latency_gate,
    overlap_gate,
)
from lockstep.rollout.policy import GateThresholds
from lockstep.store.log_stats import ArmStats, ShadowStats, Window

if TYPE_CHECKING:
    from lockstep.rollout.config import RolloutConfig

__all__ = [
    "ArmStats", "GateSettings", "ShadowStats", "Window",
    "ab_gate", "ctr_look", "failed", "guard_gates", "sequential_ctr", "shadow_gates", "summary_figures",
]


@dataclass(frozen=True)
class GateSettings:
    """The thresholds of one rollout's gates (all DAG Params).

    The defaults are RolloutConfig's (``lockstep.rollout.config``), the one place a
    rollout's defaults are written; ``GateSettings.of(config)`` fills them in.
    """

    min_samples: int = DEFAULTS["min_samples"]
    alpha: float = DEFAULTS["alpha"]
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    ctr_tau: float = DEFAULTS["ctr_tau"]  # the CTR difference the sequential test is tuned to detect
    overlap_metric: str = "overlap"

    @classmethod
    def of(cls, config: RolloutConfig) -> GateSettings:
        """The gate settings of one rollout's config."""
        return cls(min_samples=config.min_samples, alpha=config.alpha, thresholds=GateThresholds.of(config),
                   ctr_tau=config.ctr_tau)


# --- gates ------------------------------------------------------------------------------------


def shadow_gates(stats: ShadowStats, settings: GateSettings) -> list[GateResult]:
    """Error rate of the copies, their latency against the live answers, top-k overlap.

    Error rate is critical here: a shadow that answers nothing (every copy failed) has
    no latencies and no overlap to judge, and must fail rather than wait.
    """
    t = settings.thresholds
    return [
        error_rate_gate(
            stats.errors, stats.copies, stats.live_errors, stats.live_requests,
            max_abs_increase=t.max_abs_error_increase, alpha=settings.alpha,
            min_samples=settings.min_samples, max_error_rate=t.max_error_rate, critical=stats.copies == 0,
            name="shadow_error_rate",
        ),
        latency_gate(
            stats.shadow_latencies_ms, stats.live_latencies_ms, tolerance=t.latency_tolerance,
            confidence=t.latency_confidence, min_samples=settings.min_samples, name="shadow_latency",
        ),
        overlap_gate(
            stats.live_top_ids, stats.shadow_top_ids, min_overlap=t.min_overlap,
            min_samples=settings.min_samples, metric=settings.overlap_metric, name="shadow_overlap",
        ),
    ]


def guard_gates(cand: ArmStats, base: ArmStats, settings: GateSettings, prefix: str = "") -> list[GateResult]:
    """The safety gates of every live step: error rate and latency against the champion."""
    t = settings.thresholds
    return [
        error_rate_gate(
            cand.errors, cand.requests, base.errors, base.requests,
            max_abs_increase=t.max_abs_error_increase, alpha=settings.alpha,
            min_samples=settings.min_samples, max_error_rate=t.max_error_rate, name=f"{prefix}error_rate",
            cand_clusters=cand.error_clusters, base_clusters=base.error_clusters,
        ),
        latency_gate(
            cand.latencies_ms, base.latencies_ms, tolerance=t.latency_tolerance,
            confidence=t.latency_confidence, min_samples=settings.min_samples, name=f"{prefix}latency",
        ),
    ]


def sequential_ctr(settings: GateSettings) -> SequentialCTRTest:
    """The CTR test of one rollout: fed at every look, valid however often it is read."""
    return SequentialCTRTest(tau2=settings.ctr_tau**2, burn_in=settings.min_samples, name="ctr_sequential")


def ctr_look(test: SequentialCTRTest, cand: ArmStats, base: ArmStats, seen: dict[str, int], settings: GateSettings) -> GateResult:
    """Feed one look: the cumulative per-user sums since the start, or (per impression) the counts since the last look.

    ``cand`` and ``base`` are all the rollout's traffic so far. Per user, the sums replace
    the previous look's (a late click simply joins its user's sums). A test saved per
    impression (a rollout begun before issue 22), or counts that come without per-user
    sums, are fed per impression: ``seen`` holds the cumulative counts so far.
    """
    per_impression = _no_users(cand) and _no_users(base)
    if test.unit == "user" or (test.unit is None and not per_impression):
        if not per_impression:
            test.update_users(cand.clusters, base.clusters)
        return _analyse(test, settings)
    counts = {"cand_clicks": cand.clicked, "cand_n": cand.answered, "base_clicks": base.clicked, "base_n": base.answered}
    delta = {k: max(0, v - seen.get(k, 0)) for k, v in counts.items()}
    # Clicks can never outnumber impressions in an increment: late clicks of earlier
    # requests stay with the look they arrived in.
    delta["cand_clicks"] = min(delta["cand_clicks"], delta["cand_n"])
    delta["base_clicks"] = min(delta["base_clicks"], delta["base_n"])
    test.update(delta["cand_clicks"], delta["cand_n"], delta["base_clicks"], delta["base_n"])
    seen.update(counts)
    return _analyse(test, settings)


def _analyse(test: SequentialCTRTest, settings: GateSettings) -> GateResult:
    return test.analyse(
        alpha=settings.alpha, min_samples=settings.min_samples,
        non_inferiority_margin=settings.thresholds.non_inferiority_margin,
    )


def _no_users(arm: ArmStats) -> bool:
    """Impressions without per-user sums: counts not read from the logs."""
    return arm.clusters.empty and arm.answered > 0


def ab_gate(cand: ArmStats, base: ArmStats, settings: GateSettings, min_samples: int) -> GateResult:
    """The one look of a fixed-horizon A/B test."""
    return fixed_sample_ab_test(
        cand.clicked, cand.answered, base.clicked, base.answered, alpha=settings.alpha,
        min_samples=min_samples, non_inferiority_margin=settings.thresholds.non_inferiority_margin,
        cand_clusters=cand.clusters, base_clusters=base.clusters,
    )


def summary_figures(results: Sequence[GateResult], *arms: ArmStats) -> dict[str, float]:
    """Flat figures of a step: each gate's figures and each arm's counts."""
    figures: dict[str, float] = {}
    for result in results:
        figures.update({f"{result.name}.{k}": v for k, v in result.figures.items()})
    for arm in arms:
        figures.update({f"v{arm.version}.{k}": v for k, v in arm.figures().items()})
    return {k: v for k, v in figures.items() if v == v}  # NaN is not JSON


def failed(results: Sequence[GateResult]) -> list[GateResult]:
    return [r for r in results if r.verdict is GateVerdict.FAIL]
