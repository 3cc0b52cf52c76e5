"""What ``lockstep_holdback`` and ``lockstep holdback`` run: the daily lift report, logged and printed.

``report`` computes the lift of each day's champion over the holdback (see ``report``);
``log_report`` records it as one MLflow run in the experiment ``lockstep-holdback`` (the
newest complete day's figures as metrics; every day in ``holdback/lift.json``; the chart
as ``holdback/chart/lift.svg``), once per report date, so a retried task does not log twice;
``format_table`` is what ``lockstep holdback show`` prints.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from lockstep.core import jsonio
from lockstep.core.config import settings
from lockstep.holdback.chart import lift_chart_svg
from lockstep.holdback.report import DEFAULT_DAYS, LiftReport, lift_report

HOLDBACK_EXPERIMENT = "lockstep-holdback"
TAG_REPORT_DATE = "lockstep.holdback_report_date"


def holdback_experiment() -> str:
    """The holdback experiment of this deployment's system (the recommender keeps its own)."""
    system = settings().system
    return HOLDBACK_EXPERIMENT if system == "search" else f"{HOLDBACK_EXPERIMENT}-{system}"


def report(*, days: int = DEFAULT_DAYS, engine: Engine | None = None) -> LiftReport:
    """The lift report over the last ``days`` days from this deployment's serving logs."""
    from lockstep.store.db import get_engine

    return lift_report(engine or get_engine(), days=days)


def report_for_run(
    *, days: int = DEFAULT_DAYS, confidence: float = 0.95, now: str | None = None, engine: Engine | None = None
) -> dict[str, Any]:
    """The report as of ``now`` (the DAG run's time, ISO 8601), as JSON for the next task."""
    from lockstep.store.db import get_engine

    lift = lift_report(engine or get_engine(), days=days, confidence=confidence, now=now)
    return {**lift.to_dict(), "summary": summary(lift)}


def log_report(
    lift: LiftReport | dict[str, Any], *, report_date: str, tracking_uri: str | None = None, experiment: str | None = None
) -> dict[str, Any]:
    """One MLflow run per ``report_date`` (a retry returns the run already logged)."""
    from lockstep.model.registry import Registry

    if isinstance(lift, dict):
        lift = LiftReport.from_dict(lift)
    latest = lift.latest
    metrics: dict[str, float] = {}
    if latest is not None:
        figures = {"lift": latest.lift, "lift_low": latest.low, "lift_high": latest.high,
                   "ctr_champion": latest.ctr_champion, "ctr_holdback": latest.ctr_holdback,
                   "champion_user_days": latest.champion_user_days, "holdback_user_days": latest.holdback_user_days}
        metrics = {k: float(v) for k, v in figures.items() if v is not None}
    held = lift.holdback
    tags = {
        "lockstep.holdback_version": held.model_version if held else "none",
        "lockstep.champion_version": (latest.champion_version or "none") if latest else "none",
        "mlflow.note.content": summary(lift),
    }
    params = {"days": len(lift.days), "confidence": lift.confidence,
              "holdback_percent": held.percent if held else 0, "latest_day": latest.day.isoformat() if latest else "none"}
    with tempfile.TemporaryDirectory(prefix="lockstep-holdback-") as tmp:
        table = Path(tmp) / "lift.json"
        table.write_text(jsonio.dumps(lift.to_dict(), indent=2, sort_keys=True))
        chart = Path(tmp) / "lift.svg"
        chart.write_text(lift_chart_svg(lift))
        run_id, experiment_id, reused = Registry(tracking_uri=tracking_uri or settings().mlflow_tracking_uri).log_run(
            experiment or holdback_experiment(), f"holdback lift {report_date}",
            tags=tags, metrics=metrics, params=params, files={"holdback": table, "holdback/chart": chart},
            once_per=(TAG_REPORT_DATE, report_date),
        )
    return {"run_id": run_id, "experiment_id": experiment_id, "reused": reused, "summary": summary(lift)}


def summary(lift: LiftReport) -> str:
    """One line: the newest day's lift and interval, or why there is none."""
    if lift.holdback is None and not lift.days:
        return "no holdback is set (lockstep holdback set VERSION PERCENT)"
    latest = lift.latest
    if latest is None:
        return "no day has clicked user-days in both the champion's and the holdback's arm yet"
    interval = (f" ({lift.confidence:.0%} CI {latest.low:+.1%} to {latest.high:+.1%})"
                if latest.low is not None and latest.high is not None else " (no interval: an arm has no click)")
    return (f"{latest.day.isoformat()}{' (partial)' if latest.partial else ''}: champion v{latest.champion_version} "
            f"lift {latest.lift:+.1%}{interval} over the holdback on v{', v'.join(latest.holdback_versions)}")


def format_table(lift: LiftReport) -> str:
    """The report as ``lockstep holdback show`` prints it: the holdback, then one line per day."""
    held = lift.holdback
    lines = [f"holdback: {held.percent:g} % of users on version {held.model_version} (set {held.set_at:%Y-%m-%d %H:%M} UTC"
             f"{' by ' + held.set_by if held.set_by else ''})" if held else "holdback: none set"]
    if not lift.days:
        lines.append("no user-days in the serving logs of the report's window")
        return "\n".join(lines)
    ci = f"{lift.confidence:.0%} CI"
    lines.append(f"{'day':<12} {'champion':>8} {'CTR':>6} {'user-days':>9}   {'holdback':>8} {'CTR':>6} {'user-days':>9}"
                 f"   {'lift':>7}   {ci}")
    for d in lift.days:
        lines.append(
            f"{d.day.isoformat() + ('*' if d.partial else ''):<12} {'v' + (d.champion_version or '-'):>8} "
            f"{_ratio(d.ctr_champion):>6} {d.champion_user_days:>9}   {'v' + ('/'.join(d.holdback_versions) or '-'):>8} "
            f"{_ratio(d.ctr_holdback):>6} {d.holdback_user_days:>9}   {_pct(d.lift):>7}   "
            + (f"{_pct(d.low)} .. {_pct(d.high)}" if d.low is not None and d.high is not None else "-")
        )
    lines.append("user-day: one user's searches on one UTC day, clicked if any was; * today, not over yet")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"
