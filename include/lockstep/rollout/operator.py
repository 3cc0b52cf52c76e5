"""The Airflow side of a rollout's waiting phases: one look per wake-up, no worker held in between.

``RolloutPhaseOperator`` runs one look of a phase (``lockstep.rollout.steps.tick``) and, when
the phase is not done, defers itself with a ``TimeDeltaTrigger`` until the next look.
While it is deferred the triggerer holds a cheap timer and no worker slot is taken; the
phase's state lives in the rollout record (``lockstep_rollout_state``), so every look may
run on another worker. ``dag.test()`` runs the trigger in line, so tests exercise the
same path.

Kept free of heavy imports: the DAG file imports this module when it is parsed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

# The Airflow pool of every lockstep_rollout task (``lockstep up`` creates it); the same
# name as lockstep.rollout.steps.ROLLOUT_POOL, repeated here so the DAG file need not import that.
ROLLOUT_POOL = "lockstep_rollout"
# How long one look (or any other rollout task) may compute before Airflow stops it.
LOOK_TIMEOUT = timedelta(minutes=10)


class RolloutPhaseOperator(BaseOperator):
    """One waiting phase of ``lockstep_rollout`` (review, shadow, canary, ab, bandit), deferrable.

    ``plan`` is the start task's output (an XComArg, resolved at every look). A gate
    failure, a rejection, a timeout or an override fails the task without retrying:
    trying the same look again cannot change the verdict.
    """

    template_fields = ("plan",)
    ui_color = "#e8f1fb"

    def __init__(self, *, phase: str, plan: Any, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        kwargs.setdefault("execution_timeout", LOOK_TIMEOUT)
        super().__init__(**kwargs)
        self.phase = phase
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any] | None:
        return self._look(context)

    def resume(self, context: Any, event: Any = None) -> dict[str, Any] | None:
        """Called when the timer fires: the next look."""
        return self._look(context)

    def _look(self, context: Any) -> dict[str, Any] | None:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
        from airflow.sdk.exceptions import AirflowFailException

        from lockstep.rollout import steps as rollout

        external = _airflow_review(context["ti"]) if self.phase == "review" else None
        try:
            outcome = rollout.tick(self.phase, self.plan, external=external)
        except rollout.RolloutError as exc:
            raise AirflowFailException(str(exc)) from exc
        if outcome.done:
            return outcome.result
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=outcome.wait_seconds)), method_name="resume")
        return None  # unreachable: defer raises


def _airflow_review(ti: Any):
    """The answer of the Airflow approval form (task approve_in_airflow), read at each look."""

    def answer() -> str | None:
        result = ti.xcom_pull(task_ids="approve_in_airflow") or {}
        chosen = result.get("chosen_options") or []
        return {"Approve": "approved", "Reject": "rejected"}.get(chosen[0]) if chosen else None

    return answer
