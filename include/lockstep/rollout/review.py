"""What a reviewer sees before a rollout, and how their answer is read.

The review page (Airflow's Required Actions form) shows the candidate's and the
champion's evaluation figures side by side with the latest drift check. The answer may
come from that form or from the tag ``lockstep.review`` on the version in MLflow; both
are read at every look, and a rejection from either side wins.

Every decision names who gave it: the Airflow user who answered the form
(``responded_by_user``), or the tag ``lockstep.review.by`` written with the MLflow tag.
An approval that names nobody is not taken (the review keeps waiting); a rejection
stops the rollout whoever gave it, even an expired form. ``record_decision`` writes the
reviewer onto the version (``lockstep.review.by`` / ``.at`` / ``.via``); the review step
of the rollout record carries them in its figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from lockstep.core.config import drift_experiment
from lockstep.model.registry import Review
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
    lines += ["", "Approve here, or set the tag `lockstep.review` = `approved` / `rejected` and the tag "
              "`lockstep.review.by` = your user name on the version in MLflow."]
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


log = logging.getLogger(__name__)

External = Callable[[], "Review | str | None"]


def read_review(plan: RolloutPlan | Mapping[str, Any], *, registry: Any = None,
                external: External | None = None) -> Review | None:
    """The decision that counts, with its reviewer: the Airflow form's (``external``) or the MLflow tag's.

    Both are read at every look; a rejection from either side wins over an approval. An
    approval that names no reviewer is refused (logged, and the review keeps waiting).
    ``external`` may return a bare 'approved'/'rejected' (no reviewer named).
    """
    registry = registry or default_registry()
    answers = [registry.review(as_plan(plan).model_version)]
    if external is not None:
        answers.append(_as_review(external()))
    decided = [a for a in answers if a is not None]
    rejected = [a for a in decided if a.decision == "rejected"]
    if rejected:
        return rejected[0]
    for answer in decided:
        if answer.by:
            return answer
        log.warning("approval of v%s via %s names no reviewer: not taken (set lockstep.review.by)",
                    as_plan(plan).model_version, answer.via)
    return None


def check_review(plan: RolloutPlan | Mapping[str, Any], *, registry: Any = None,
                 external: External | None = None) -> str | None:
    """'approved', 'rejected' or None: ``read_review`` without the reviewer."""
    answer = read_review(plan, registry=registry, external=external)
    return None if answer is None else answer.decision


def record_decision(plan: RolloutPlan | Mapping[str, Any], answer: Review, *, registry: Any = None) -> None:
    """Write the Airflow form's decision and its reviewer onto the version (the MLflow tags say it already)."""
    if answer.via != "airflow" or not answer.by:
        return
    registry = registry or default_registry()
    registry.set_review(as_plan(plan).model_version, answer.decision, by=answer.by, via="airflow", at=answer.at)


def reviewer_figures(answer: Review) -> dict[str, Any]:
    """The reviewer as the review step of the rollout record keeps it."""
    return {"decision": answer.decision, "reviewer": answer.by, "reviewed_at": answer.at, "review_via": answer.via}


def _as_review(value: Review | str | None) -> Review | None:
    """An external answer as a Review; a bare decision string names no reviewer."""
    if value is None or isinstance(value, Review):
        return value
    if value not in ("approved", "rejected"):
        raise ValueError(f"review answer {value!r}: expected 'approved', 'rejected' or None")
    return Review(value, None, None, "airflow")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


__all__ = ["check_review", "drift_context", "read_review", "record_decision", "review_markdown", "reviewer_figures"]
