"""The Airflow side of a rollout: its trigger form, and its waiting phases without a worker held.

``rollout_params`` builds the Params of ``lockstep_rollout`` from ``RolloutConfig``: one
Param per field, with the field's default, title, section, description and schema, so
the form and the library can never disagree.

``RolloutPhaseOperator`` runs one look of a phase (``lockstep.rollout.steps.tick``) and, when
the phase is not done, defers itself with a ``TimeDeltaTrigger`` until the next look.
While it is deferred the triggerer holds a cheap timer and no worker slot is taken; the
phase's state lives in the rollout record (``lockstep_rollout_state``), so every look may
run on another worker. ``dag.test()`` runs the trigger in line, so tests exercise the
same path.

Kept free of heavy imports: the DAG file imports this module when it is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Param

from lockstep.rollout.config import (
    APPROVAL_TIMEOUT_MAX_SECONDS,
    ROLLOUT_POOL,
    STRATEGY,
    RolloutConfig,
    RolloutError,
    overrides_from_json,
)

# How long one look (or any other rollout task) may compute before Airflow stops it.
LOOK_TIMEOUT = timedelta(minutes=10)
# An Airflow review form nobody answered resolves as Reject after this long (the review has ended by then).
REVIEW_FORM_EXPIRES = timedelta(seconds=APPROVAL_TIMEOUT_MAX_SECONDS)
DEFAULTS_VARIABLE = "LOCKSTEP_ROLLOUT_DEFAULTS"


def configured_defaults() -> dict[str, Any]:
    """Defaults a deployment sets for runs started by the index-ready asset (which take defaults).

    ``LOCKSTEP_ROLLOUT_DEFAULTS`` is a JSON object of RolloutConfig fields, e.g.
    ``{"bake_seconds": 15}``; read when the DAG file is parsed, so the trigger form shows
    the same defaults. A field it does not know or a bad value fails the parse, naming it.
    """
    from lockstep.core.config import rollout_defaults_json

    return overrides_from_json(rollout_defaults_json(), source=DEFAULTS_VARIABLE)


def rollout_params(defaults: Mapping[str, Any] | None = None) -> dict[str, Param]:
    """The trigger form of ``lockstep_rollout``: Param ``model_version``, then one Param per RolloutConfig field.

    ``defaults`` replaces field defaults (the deployment's, ``configured_defaults``); each
    is checked against its field's schema here, so a bad one fails the parse, naming the
    field (RolloutConfig checks the combination when a rollout starts).
    """
    chosen = dict(defaults or {})
    unknown = sorted(set(chosen) - {f.name for f in fields(RolloutConfig)})
    if unknown:
        raise RolloutError(f"rollout defaults name no rollout setting: {', '.join(unknown)}")
    params = {
        "model_version": Param(
            None, type=["null", "string"], title="Model version", section=STRATEGY,
            description="Version to roll out. Empty: the version of the index-ready event, else alias 'challenger'.",
        ),
    }
    for f in fields(RolloutConfig):
        meta = f.metadata
        param = Param(_json(chosen.get(f.name, f.default)), description=meta["description"], title=meta["title"],
                      section=meta["section"], **meta["schema"])
        if f.name in chosen:
            _check(f.name, param)
        params[f.name] = param
    return params


def _check(name: str, param: Param) -> None:
    """A deployment's default must fit the Param's schema (the form would refuse it otherwise)."""
    from airflow.sdk.definitions.param import ParamValidationError

    try:
        param.resolve()
    except ParamValidationError as exc:
        raise RolloutError(f"rollout default {name}={param.value!r} does not fit the Param: {exc}") from exc


def _json(value: Any) -> Any:
    """A field default as a Param value (JSON: tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value


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

    def answer() -> Any:
        return form_review(ti.xcom_pull(task_ids="approve_in_airflow"))

    return answer


def form_review(result: Mapping[str, Any] | None) -> Any:
    """The review form's result (the HITL operator's return value) as a ``Review``, or None while open.

    Airflow records who answered (``responded_by_user``: id and name) and when
    (``responded_at``). A form that expired resolves as Reject with no user: a rejection
    that names nobody, which still stops the rollout.
    """
    from lockstep.model.registry import Review

    result = result or {}
    chosen = result.get("chosen_options") or []
    decision = {"Approve": "approved", "Reject": "rejected"}.get(chosen[0]) if chosen else None
    if decision is None:
        return None
    user = result.get("responded_by_user") or {}
    by = str(user.get("name") or user.get("id") or "").strip() or None
    at = result.get("responded_at")
    return Review(decision, by, at.isoformat() if hasattr(at, "isoformat") else (str(at) if at else None), "airflow")


__all__ = ["LOOK_TIMEOUT", "REVIEW_FORM_EXPIRES", "ROLLOUT_POOL", "RolloutPhaseOperator", "configured_defaults", "form_review", "rollout_params"]
