"""The waiting phases of a rollout, one look at a time: read the logs, ask the strategy, apply.

The phases that wait for traffic or for a person (review, shadow, canary, A/B, bandit)
run one look at a time: ``tick`` reads the phase's saved state, looks at the logs
(``lockstep.store.serving_logs``), hands state and counts to the phase's pure strategy
(``lockstep.rollout.strategies``), applies the decision (record the look, move traffic)
and saves the state again. The DAG calls it from a deferrable task, so between two looks
no worker slot is held; the blocking ``run_phase`` loop is for library use and tests.

A failed gate returns all traffic to the champion in one transaction *before*
GateFailed is raised, and every look first checks that nobody else changed the traffic
since the rollout's last change (else RolloutOverridden).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from lockstep.core.clock import from_timestamp, now
from lockstep.rollout import record, strategies
from lockstep.rollout.analysis import summary_figures
from lockstep.rollout.config import (
    GateFailed,
    ReviewRejected,
    ReviewTimeout,
    RolloutConfig,
    RolloutError,
)
from lockstep.rollout.gates import Action, GateVerdict
from lockstep.rollout.plan import RolloutPlan, as_plan
from lockstep.rollout.review import read_review, record_decision, reviewer_figures
from lockstep.rollout.strategies import Decision, Move
from lockstep.rollout.traffic import (
    abort_traffic,
    default_engine,
    default_registry,
    route,
    stop_if_overridden,
)
from lockstep.store.serving_logs import Window, arm_stats, shadow_stats

WAITING_PHASES = ("review", "shadow", "canary", "ab", "bandit")
TAG_AB_DECISION = "lockstep.ab_decision"


@dataclass(frozen=True)
class Tick:
    """One look's outcome: the phase is done (with its result), or look again after ``wait_seconds``."""

    done: bool
    result: dict[str, Any] | None = None
    wait_seconds: float = 0.0


def tick(
    phase: str,
    plan: RolloutPlan | Mapping[str, Any],
    *,
    engine: Engine | None = None,
    registry: Any = None,
    external: Callable[[], str | None] | None = None,
) -> Tick:
    """One look of a waiting phase; never sleeps.

    First checks that nobody else changed the traffic since the rollout's last change
    (else RolloutOverridden: recorded, alerted, traffic left alone). A failed gate
    returns all traffic to the champion in one transaction before GateFailed is raised.
    """
    if phase not in WAITING_PHASES:
        raise RolloutError(f"phase {phase!r} is not one of {', '.join(WAITING_PHASES)}")
    plan, engine = as_plan(plan), engine or default_engine()
    state = record.load_state(plan.rollout_id, engine=engine)
    stop_if_overridden(plan, state, engine)
    look = _LOOKS[phase]
    outcome, phase_state = look(plan, plan.config, state.get(phase), engine=engine, registry=registry, external=external)
    state = record.load_state(plan.rollout_id, engine=engine)  # a traffic change in the look saved its generation
    state[phase] = phase_state
    record.save_state(plan.rollout_id, state, engine=engine)
    return outcome


def run_phase(
    phase: str,
    plan: RolloutPlan | Mapping[str, Any],
    *,
    engine: Engine | None = None,
    registry: Any = None,
    external: Callable[[], str | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Look after look until the phase is done (blocking: for library use and tests, not for a DAG task)."""
    while True:
        outcome = tick(phase, plan, engine=engine, registry=registry, external=external)
        if outcome.done:
            return outcome.result or {}
        sleep(outcome.wait_seconds)


def wait_for_review(plan: RolloutPlan | Mapping[str, Any], *, registry: Any = None,
                    external: Callable[[], str | None] | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """Wait for a reviewer; raise ReviewRejected or ReviewTimeout (both lead to rollback)."""
    return run_phase("review", plan, engine=engine, registry=registry, external=external)


def run_shadow(plan: RolloutPlan | Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    return run_phase("shadow", plan, engine=engine)


def run_canary(plan: RolloutPlan | Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    return run_phase("canary", plan, engine=engine)


def run_ab(plan: RolloutPlan | Mapping[str, Any], *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    return run_phase("ab", plan, engine=engine, registry=registry)


def run_bandit(plan: RolloutPlan | Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    return run_phase("bandit", plan, engine=engine)


# --- review --------------------------------------------------------------------------------------


def _review_look(plan: RolloutPlan, config: RolloutConfig, ps: dict | None, *, engine: Engine, registry: Any,
                 external: Callable[[], str | None] | None, **_: Any) -> tuple[Tick, dict]:
    """Whichever answer comes first: the Airflow form (``external``) or the MLflow tag; or the timeout."""
    rid = plan.rollout_id
    if not config.require_approval:
        step = record.record_step(rid, "review", "review", "info", reason="no approval required (require_approval is false)", engine=engine)
        return Tick(True, step), {}
    registry = registry or default_registry()
    if ps is None:
        record.record_step(rid, "review", "review", "info", engine=engine, reason=(
            f"waiting up to {config.approval_timeout_seconds:.0f} s for a reviewer: Airflow Required Actions, "
            f"or tag lockstep.review on v{plan.model_version} in MLflow"))
        ps = {"started": _clock()}
    answer = read_review(plan, registry=registry, external=external)  # who decided, too (issue 21)
    decision = answer.decision if answer else None
    waited = _clock() - ps["started"]
    figures = {"waited_seconds": waited, **(reviewer_figures(answer) if answer else {})}
    by = f" by {answer.by or 'nobody (the form expired)'} via {answer.via}" if answer else ""
    if answer:
        record_decision(plan, answer, registry=registry)
    if decision == "approved":
        return Tick(True, record.record_step(rid, "review", "review", "pass", reason=f"approved{by} after {waited:.0f} s",
                                             figures=figures, engine=engine)), ps
    if decision == "rejected" or waited >= config.approval_timeout_seconds:
        error = ReviewRejected if decision == "rejected" else ReviewTimeout
        reason = (f"v{plan.model_version} was rejected in review{by}" if decision == "rejected"
                  else f"no review decision within {config.approval_timeout_seconds:.0f} s")
        record.record_step(rid, "review", "review", "fail", reason=reason, figures=figures, action=Action.ROLLBACK, engine=engine)
        raise error(reason, phase="review", figures=figures)
    return Tick(False, wait_seconds=config.poll_seconds), ps


# --- shadow --------------------------------------------------------------------------------------


def _shadow_look(plan: RolloutPlan, config: RolloutConfig, ps: dict | None, *, engine: Engine, **_: Any) -> tuple[Tick, dict]:
    """Mirror live traffic to the candidate; users never see its answers."""
    rid, cand, champ = plan.rollout_id, plan.model_version, plan.baseline_version
    if ps is None:
        route(plan, {champ: 100}, [cand], f"rollout {rid}: shadow v{cand}", engine)
        ps = _fresh({"look": 1})
    window = Window(_at(ps["started"]), _window_end(config))
    stats = shadow_stats(engine, window, cand)
    decision = strategies.shadow(ps, stats, _clock() - ps["look_started"], config)
    figures = {**summary_figures(decision.results), "copies": stats.copies, "shadow_errors": stats.errors}
    outcome, ps = _apply(plan, "shadow", "shadow", decision, ps, figures, 0, window, engine)
    if decision.move is Move.PASS:
        route(plan, {champ: 100}, [], f"rollout {rid}: shadow passed", engine)
    return outcome, ps


# --- canary --------------------------------------------------------------------------------------


def _canary_look(plan: RolloutPlan, config: RolloutConfig, ps: dict | None, *, engine: Engine, **_: Any) -> tuple[Tick, dict]:
    """The traffic steps below 100 %: each bakes until both arms have their counts, then is judged.

    Errors and latency are judged on the step's own window, click-through on all canary
    traffic so far with a sequential test valid however many looks it gets. Both per
    user: the logs are read as per-user sums, each user capped at ``user_cap``. The final
    100 % is ``finalize``'s (no baseline is left to compare with at 100 %).
    """
    rid, cand, champ = plan.rollout_id, plan.model_version, plan.baseline_version
    steps = config.canary_steps
    if ps is None:
        if steps[0] >= 100:
            step = record.record_step(rid, "canary", "canary", "pass", weight=100, action=Action.PROMOTE,
                                      reason="canary_steps has no step below 100 %: straight to finalize", engine=engine)
            return Tick(True, step), {}
        route(plan, {champ: 100 - steps[0], cand: steps[0]}, [], f"rollout {rid}: canary {steps[0]}%", engine)
        ps = _fresh({"index": 0, "look": 1})
        ps["step_started"] = ps["started"]
    weight = steps[int(ps["index"])]
    end = _window_end(config)
    window = Window(_at(ps["step_started"]), end)
    arms = arm_stats(engine, window, [cand, champ], cap=config.user_cap)
    total = arm_stats(engine, Window(_at(ps["started"]), end), [cand, champ], clicks_until=now(), cap=config.user_cap)
    decision = strategies.canary(ps, (arms[cand], arms[champ]), (total[cand], total[champ]), _clock() - ps["look_started"], config)
    figures = summary_figures(decision.results, arms[cand], arms[champ])
    outcome, new = _apply(plan, f"canary {weight}%", "canary", decision, ps, figures, weight, window, engine)
    if decision.move is Move.ADVANCE:
        new["step_started"] = new["look_started"]
    return outcome, new


# --- A/B -----------------------------------------------------------------------------------------


def _ab_look(plan: RolloutPlan, config: RolloutConfig, ps: dict | None, *, engine: Engine, registry: Any, **_: Any) -> tuple[Tick, dict]:
    """A frozen split with sticky users until each arm has its planned sample; one test at the end.

    The decision is the rule (pass promotes; fail or inconclusive keeps the champion) or,
    with ``ab_decision='reviewer'``, a reviewer's tag ``lockstep.ab_decision`` on the
    version, given the figures written beside it.
    """
    rid, cand, champ = plan.rollout_id, plan.model_version, plan.baseline_version
    if ps is None:
        route(plan, {champ: 100 - config.ab_split, cand: config.ab_split}, [], f"rollout {rid}: A/B {config.ab_split}%", engine)
        ps = _fresh({})
    if ps.get("reviewer_since") is not None:
        return _ab_reviewer_look(plan, config, ps, engine, registry or default_registry())
    window = Window(_at(ps["started"]), _window_end(config))
    arms = arm_stats(engine, window, [cand, champ], clicks_until=now(), cap=config.user_cap)
    decision = strategies.ab(ps, (arms[cand], arms[champ]), _clock() - ps["started"], config)
    figures = summary_figures(decision.results, arms[cand], arms[champ])
    if config.ab_decision == "reviewer" and decision.results and decision.verdict is not GateVerdict.FAIL:
        registry = registry or default_registry()
        registry.set_tags(cand, {f"lockstep.ab.{k}": v for k, v in list(figures.items())[:40]})
        record.record_step(rid, "A/B", "ab", decision.verdict, weight=config.ab_split, reason=f"waiting for tag {TAG_AB_DECISION}: {decision.reason}",
                           gates=decision.results, figures=figures, window=(window.start, window.end), engine=engine)
        return Tick(False, wait_seconds=config.poll_seconds), {**ps, "reviewer_since": _clock(), "figures": figures}
    return _apply(plan, "A/B", "ab", decision, ps, figures, config.ab_split, window, engine)


def _ab_reviewer_look(plan: RolloutPlan, config: RolloutConfig, ps: dict, engine: Engine, registry: Any) -> tuple[Tick, dict]:
    rid, cand = plan.rollout_id, plan.model_version
    raw = (registry.get_version(cand).tags.get(TAG_AB_DECISION) or "").strip().lower()
    if raw in ("approved", "approve", "promote"):
        step = record.record_step(rid, "A/B decision", "ab", "pass", action=Action.PROMOTE, reason="the reviewer chose the candidate", engine=engine)
        return Tick(True, step), ps
    timed_out = _clock() - ps["reviewer_since"] >= config.approval_timeout_seconds
    if raw in ("rejected", "reject", "rollback") or timed_out:
        reason = "no A/B decision in time" if timed_out and not raw else "the reviewer kept the champion"
        abort_traffic(plan, f"A/B: {reason}", engine)
        record.record_step(rid, "A/B decision", "ab", "fail", action=Action.ROLLBACK, reason=reason, engine=engine)
        error = ReviewTimeout if reason.startswith("no A/B") else ReviewRejected
        raise error(f"{reason} after the A/B test", phase="ab", figures=ps.get("figures"))
    return Tick(False, wait_seconds=config.poll_seconds), ps


# --- bandit --------------------------------------------------------------------------------------


def _bandit_look(plan: RolloutPlan, config: RolloutConfig, ps: dict | None, *, engine: Engine, **_: Any) -> tuple[Tick, dict]:
    """Thompson sampling over click-through, with the canary's guard gates (error rate, latency).

    Weights start even; each look moves traffic in proportion to the probability of being
    best (never below the floor). It ends when either version is best with probability >=
    threshold and the guards pass, when a guard gate fails, or at ``bandit_max_seconds``.
    """
    rid, cand, champ = plan.rollout_id, plan.model_version, plan.baseline_version
    if ps is None:
        weights = {champ: 50, cand: 50}
        route(plan, weights, [], f"rollout {rid}: bandit start", engine)
        ps = _fresh({"look": 1, "weights": weights, "last_look_at": 0.0})
    window = Window(_at(ps["started"]), _window_end(config))
    arms = arm_stats(engine, window, [cand, champ], clicks_until=now(), cap=config.user_cap)
    decision = strategies.bandit(ps, (arms[cand], arms[champ]), _clock() - ps["started"], config)
    weight = int(ps["weights"][cand])
    figures = {**summary_figures(decision.results, arms[cand], arms[champ]), "weight_candidate": weight}
    return _apply(plan, "bandit", "bandit", decision, ps, figures, weight, window, engine)


# --- applying a decision -------------------------------------------------------------------------


def _apply(plan: RolloutPlan, step: str, phase: str, decision: Decision, ps: dict, figures: dict, weight: int,
           window: Window, engine: Engine) -> tuple[Tick, dict]:
    """Record a judged look, move traffic as decided, and say when to look again."""
    config, rid = plan.config, plan.rollout_id
    if decision.move is Move.WAIT:
        return Tick(False, wait_seconds=config.poll_seconds), decision.state
    action = {Move.PASS: Action.PROMOTE, Move.FAIL: Action.ROLLBACK, Move.EXTEND: Action.EXTEND,
              Move.ADVANCE: Action.PROMOTE if phase == "canary" else Action.EXTEND}[decision.move]
    verdict = GateVerdict.FAIL if decision.move is Move.FAIL else decision.verdict
    row = record.record_step(rid, step, phase, verdict, look=int(ps.get("look", 1)), weight=weight, action=action,
                             reason=decision.reason, gates=decision.results, figures=figures,
                             window=(window.start, window.end), engine=engine)
    if decision.move is Move.FAIL:
        abort_traffic(plan, f"{step}: {decision.reason}", engine)
        raise GateFailed(f"v{plan.model_version} failed the {step} phase: {decision.reason}", phase=phase, figures=figures)
    if decision.move is Move.PASS:
        return Tick(True, row), decision.state
    if decision.move is Move.ADVANCE and decision.weights:
        cand_weight = decision.weights.get(plan.model_version, 0)
        label = f"canary {cand_weight}%" if phase == "canary" else f"{phase} look {ps.get('look', 1)}: {decision.weights}"
        route(plan, decision.weights, [], f"rollout {rid}: {label}", engine)
    return Tick(False, wait_seconds=config.poll_seconds), {**decision.state, "look_started": _clock()}


_LOOKS: dict[str, Callable[..., tuple[Tick, dict]]] = {
    "review": _review_look, "shadow": _shadow_look, "canary": _canary_look, "ab": _ab_look, "bandit": _bandit_look,
}


# --- time ----------------------------------------------------------------------------------------


def _fresh(values: dict[str, Any]) -> dict[str, Any]:
    moment = _clock()
    return {**values, "started": moment, "look_started": moment}


def _clock() -> float:
    """Wall-clock seconds: the state is read back by another process, so no monotonic clock."""
    return time.time()


def _at(seconds: float) -> datetime:
    return from_timestamp(float(seconds))


def _window_end(config: RolloutConfig) -> datetime:
    """Analyse up to ``log_flush_seconds`` ago: the replicas' log writers have flushed that far."""
    return _at(_clock() - config.log_flush_seconds)


__all__ = ["TAG_AB_DECISION", "WAITING_PHASES", "Tick", "run_ab", "run_bandit", "run_canary", "run_phase", "run_shadow",
           "tick", "wait_for_review"]
