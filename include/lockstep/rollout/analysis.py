"""What the serving logs say about a candidate over a time window, as gate results.

The serving replicas log every answered search (``lockstep_request_log``), every shadow
copy (``lockstep_shadow_log``) and every click (``lockstep_feedback_log``). A rollout
step reads the rows of one window, candidate and champion side by side, and hands the
counts to the gates of ``lockstep.rollout.gates``. Two rules keep the comparison fair:

- Both versions are read over the *same* window, so a quiet hour or a slow database
  affects both arms alike.
- An impression is one answered request; a click-through is a request with at least
  one click (a Bernoulli outcome per request, which is what the CTR tests assume).
  Clicks arrive after their request, so they are counted up to the moment of the
  analysis, not just up to the window's end.

Everything here reads the database and computes; nothing changes traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, distinct, false, func, select

from lockstep.rollout.gates import (
    GateResult,
    GateThresholds,
    SequentialCTRTest,
    Verdict,
    error_rate_gate,
    fixed_sample_ab_test,
    latency_gate,
    overlap_gate,
)
from lockstep.store.schema import feedback_log, request_log, shadow_log

ERROR_STATUS = 500  # a logged status at or above this is a server error


@dataclass(frozen=True)
class ArmStats:
    """One version's traffic in a window."""

    version: str
    requests: int = 0
    errors: int = 0
    clicked: int = 0  # requests with at least one click
    latencies_ms: tuple[float, ...] = ()

    @property
    def answered(self) -> int:
        return self.requests - self.errors

    @property
    def ctr(self) -> float:
        return self.clicked / self.answered if self.answered else float("nan")

    def figures(self) -> dict[str, float]:
        return {"requests": self.requests, "errors": self.errors, "clicked": self.clicked, "ctr": self.ctr}


@dataclass(frozen=True)
class ShadowStats:
    """The shadow copies of one version in a window, paired with the live answers."""

    version: str
    copies: int = 0
    errors: int = 0
    live_top_ids: tuple[tuple[str, ...], ...] = ()
    shadow_top_ids: tuple[tuple[str, ...] | None, ...] = ()
    shadow_latencies_ms: tuple[float, ...] = ()
    live_latencies_ms: tuple[float, ...] = ()
    live_requests: int = 0
    live_errors: int = 0


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", utc(self.start))
        object.__setattr__(self, "end", utc(self.end))

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class GateSettings:
    """The thresholds of one rollout's gates (all DAG Params)."""

    min_samples: int = 50
    alpha: float = 0.05
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    ctr_tau: float = 0.02  # the CTR difference the sequential test is tuned to detect
    overlap_metric: str = "overlap"


# --- reading the logs -------------------------------------------------------------------------


def arm_stats(engine: Engine, window: Window, versions: Iterable[str], *, clicks_until: datetime | None = None) -> dict[str, ArmStats]:
    """Requests, server errors, clicked requests and latencies per version in the window."""
    wanted = [str(v) for v in versions]
    in_window = and_(
        request_log.c.at >= window.start,
        request_log.c.at < window.end,
        request_log.c.model_version.in_(wanted),
        unpinned(),
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(request_log.c.model_version, request_log.c.status, request_log.c.latency_ms).where(in_window)
        ).all()
        click_filter = [feedback_log.c.event == "click"]
        if clicks_until is not None:
            click_filter.append(feedback_log.c.at <= utc(clicks_until))
        clicked = dict(
            conn.execute(
                select(request_log.c.model_version, func.count(distinct(request_log.c.request_id)))
                .select_from(
                    request_log.join(
                        feedback_log, and_(feedback_log.c.request_id == request_log.c.request_id, *click_filter)
                    )
                )
                .where(in_window, request_log.c.status < ERROR_STATUS)
                .group_by(request_log.c.model_version)
            ).all()
        )
    requests: dict[str, int] = dict.fromkeys(wanted, 0)
    errors: dict[str, int] = dict.fromkeys(wanted, 0)
    latencies: dict[str, list[float]] = {v: [] for v in wanted}
    for version, status, latency in rows:
        requests[version] += 1
        if status >= ERROR_STATUS:
            errors[version] += 1
        else:
            latencies[version].append(float(latency))
    return {
        v: ArmStats(v, requests[v], errors[v], int(clicked.get(v, 0)), tuple(latencies[v])) for v in wanted
    }


def shadow_stats(engine: Engine, window: Window, version: str) -> ShadowStats:
    """The shadow copies of ``version`` in the window, each paired with its live request."""
    version = str(version)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                shadow_log.c.request_id, shadow_log.c.live_top_ids, shadow_log.c.shadow_top_ids,
                shadow_log.c.latency_ms, shadow_log.c.error,
            ).where(
                shadow_log.c.shadow_version == version,
                shadow_log.c.at >= window.start,
                shadow_log.c.at < window.end,
            ).order_by(shadow_log.c.id)
        ).all()
        ids = [r.request_id for r in rows]
        live: dict[str, tuple[int, float]] = {}
        for chunk in _chunks(ids, 500):
            live.update(
                (rid, (int(status), float(latency)))
                for rid, status, latency in conn.execute(
                    select(request_log.c.request_id, request_log.c.status, request_log.c.latency_ms).where(
                        request_log.c.request_id.in_(chunk), unpinned()
                    )
                )
            )
    live_ids: list[tuple[str, ...]] = []
    shadow_ids: list[tuple[str, ...] | None] = []
    shadow_ms: list[float] = []
    live_ms: list[float] = []
    errors = live_errors = 0
    for row in rows:
        failed = row.error is not None or row.shadow_top_ids is None
        errors += failed
        live_ids.append(tuple(row.live_top_ids or ()))
        shadow_ids.append(None if failed else tuple(row.shadow_top_ids))
        if not failed and row.latency_ms is not None:
            shadow_ms.append(float(row.latency_ms))
        status_latency = live.get(row.request_id)
        if status_latency is not None:
            status, latency = status_latency
            if status >= ERROR_STATUS:
                live_errors += 1
            else:
                live_ms.append(latency)
    return ShadowStats(
        version=version, copies=len(rows), errors=errors,
        live_top_ids=tuple(live_ids), shadow_top_ids=tuple(shadow_ids),
        shadow_latencies_ms=tuple(shadow_ms), live_latencies_ms=tuple(live_ms),
        live_requests=len(live), live_errors=live_errors,
    )


def unpinned() -> ColumnElement[bool]:
    """The request-log rows that may count in statistics: not pinned by the client."""
    return request_log.c.pinned == false()


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
    """Feed the counts since the previous look (``seen`` holds the cumulative counts so far)."""
    counts = {"cand_clicks": cand.clicked, "cand_n": cand.answered, "base_clicks": base.clicked, "base_n": base.answered}
    delta = {k: max(0, v - seen.get(k, 0)) for k, v in counts.items()}
    # Clicks can never outnumber impressions in an increment: late clicks of earlier
    # requests stay with the look they arrived in.
    delta["cand_clicks"] = min(delta["cand_clicks"], delta["cand_n"])
    delta["base_clicks"] = min(delta["base_clicks"], delta["base_n"])
    test.update(delta["cand_clicks"], delta["cand_n"], delta["base_clicks"], delta["base_n"])
    seen.update(counts)
    return test.analyse(
        alpha=settings.alpha, min_samples=settings.min_samples,
        non_inferiority_margin=settings.thresholds.non_inferiority_margin,
    )


def ab_gate(cand: ArmStats, base: ArmStats, settings: GateSettings, min_samples: int) -> GateResult:
    """The one look of a fixed-horizon A/B test."""
    return fixed_sample_ab_test(
        cand.clicked, cand.answered, base.clicked, base.answered, alpha=settings.alpha,
        min_samples=min_samples, non_inferiority_margin=settings.thresholds.non_inferiority_margin,
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
    return [r for r in results if r.verdict is Verdict.FAIL]


def utc(moment: datetime | str) -> datetime:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
