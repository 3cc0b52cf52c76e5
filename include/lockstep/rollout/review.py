"""What a reviewer sees before a rollout, and how their answer is read.

The review page (Airflow's Required Actions form) shows the candidate's and the
champion's evaluation figures side by side with the latest drift check. The answer may
come from that form or from the tag ``lockstep.review`` on the version in MLflow; both
are read at every look, and a rejection from either side wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lockstep.core.config import drift_experiment
from lockstep.rollout.plan import RolloutPlan, as_plan
from lockstep.rollout.traffic import default_registry


def review_markdown(candidate: Any, champion: Any, drift: Mapping[str, Any]) -> str:
    """What a reviewer sees (Airflow's Required Actions page): figures side by side, and drift."""
    cand_fig, champ_fig = candidate.eval_figures, champion.eval_figures
    lines = [
        f"## Roll out v{candidate.version} (champion: v{champion.version})",
        "",
        "| figure | candidate | champion |",
        "|---|---|---|",
    ]
    for key in sorted(set(cand_fig) | set(champ_fig)):
        lines.append(f"| {key} | {_fmt(cand_fig.get(key))} | {_fmt(champ_fig.get(key))} |")
    lines += ["", "### Drift context"]
    if drift.get("status"):
        lines.append(f"latest drift check: {drift.get('status')} (drifted: {drift.get('drifted')}) {drift.get('summary', '')}")
    else:
        lines.append("no drift check has run yet")
    lines += ["", "Approve here, or set the tag `lockstep.review` = `approved` / `rejected` on the version in MLflow."]
    return "\n".join(lines)


def drift_context(registry: Any) -> dict[str, Any]:
    """The latest drift check logged to MLflow (``lockstep_drift``); {} when there is none."""
    try:
        latest = registry.latest_run_tags(drift_experiment())
    except Exception as exc:  # the review must not fail because the drift record is unreadable
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if latest is None:
        return {}
    run_id, tags = latest
    return {
        "run_id": run_id,
        "status": tags.get("lockstep.drift_status"),
        "drifted": tags.get("lockstep.drifted"),
        "champion_version": tags.get("lockstep.champion_version"),
        "summary": (tags.get("mlflow.note.content") or "")[:500],
    }


def check_review(plan: RolloutPlan | Mapping[str, Any], *, registry: Any = None,
                 external: Callable[[], str | None] | None = None) -> str | None:
    """'approved', 'rejected' or None: the Airflow UI answer (``external``) or the MLflow tag.

    Both are read at every look; a rejection from either side wins over an approval.
    """
    registry = registry or default_registry()
    answers = [registry.review_decision(as_plan(plan).model_version)]
    if external is not None:
        answers.append(external())
    if "rejected" in answers:
        return "rejected"
    return "approved" if "approved" in answers else None


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


__all__ = ["check_review", "drift_context", "review_markdown"]
