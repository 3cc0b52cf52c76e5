"""Progressive delivery of a model version: the steps of ``lockstep_rollout`` as library calls.

A rollout takes a candidate whose index is built (slot ``ready``) from 0 to 100 % of
traffic, or back. Each function here is one Airflow task; the waiting phases (review,
shadow, canary, A/B, bandit) are run look by look by ``tick`` (``lockstep.rollout.looks``),
which this module re-exports with the rest of what the DAG calls. Every step takes the
plan ``start`` made (a ``RolloutPlan``, or its dict from XCom), changes traffic only
through the routing table (one transaction per change, ``lockstep.rollout.traffic``), and
writes every analysis to ``lockstep_rollout_steps`` so the figures and verdicts outlive
the serving logs.

The order is: ``start`` -> review -> shadow -> one strategy (canary, ab, bandit — each
run look by look with ``tick`` —, ``run_blue_green`` or ``shadow_only``) -> ``finalize``
-> ``verify`` -> ``retire_previous`` after the rollback window. Any failure goes to
``rollback``. Only canary, ab, bandit and blue_green lead to ``finalize``; ``shadow``
never promotes.

Where the parts live: ``config`` (RolloutConfig, the errors), ``plan`` (RolloutPlan),
``strategies`` (pure decisions), ``looks`` (one look: logs -> strategy -> traffic and
record), ``traffic`` (compare-and-set changes, overrides), ``review`` and ``verify``.

Three habits make a bad candidate cheap and keep operators in charge:

- A step that sees a gate fail returns all traffic to the champion itself, in one
  transaction, *before* it raises: the time from a failed gate to 100 % on the champion
  does not include the scheduler's reaction time. The rollback task then does the
  bookkeeping (reject tag with reason and figures, drain and retire the slot, alert).
- At every look the error rate is checked, so a candidate that starts failing is stopped
  at once rather than at the end of the bake.
- Every traffic change is a compare-and-set against the routing generation the rollout
  wrote last. If someone else changed the traffic (``lockstep routing set``,
  ``lockstep_rollback``), the rollout stops as overridden and leaves the traffic alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine

from lockstep.core.clock import from_timestamp, now
from lockstep.rollout import record
from lockstep.rollout.config import (
    PROMOTING_STRATEGIES,
    ROLLOUT_POOL,
    STRATEGIES,
    GateFailed,
    ReviewRejected,
    ReviewTimeout,
    RolloutConfig,
    RolloutError,
    RolloutOverridden,
    VerificationFailed,
)
from lockstep.rollout.gates import Action
from lockstep.rollout.looks import (
    WAITING_PHASES,
    Tick,
    run_ab,
    run_bandit,
    run_canary,
    run_phase,
    run_shadow,
    tick,
    wait_for_review,
)
from lockstep.rollout.plan import RolloutPlan, as_plan
from lockstep.rollout.review import check_review, drift_context, review_markdown
from lockstep.rollout.traffic import (
    abort_traffic,
    default_engine,
    default_registry,
    retire_slot,
    route,
    stop_if_overridden,
)
from lockstep.rollout.verify import verify_serving
from lockstep.store import routing

log = logging.getLogger("lockstep.rollout")

TAG_RETIRED_AT = "lockstep.retired_at"
TAG_ROLLED_BACK = "lockstep.rolled_back_reason"
MAX_REJECT_FIGURES = 30

Plan = RolloutPlan | Mapping[str, Any]


# --- start ---------------------------------------------------------------------------------------


def start(
    rollout_id: str,
    requested_version: str | int | None = None,
    asset_extra: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    registry: Any = None,
    engine: Engine | None = None,
) -> RolloutPlan:
    """Check the candidate is ready and the champion live; record the rollout; reshuffle sticky users.

    Returns the plan every later step takes (``to_dict`` for XCom). A candidate that
    already is the champion gives ``noop=True`` (the DAG skips the rest): the first
    version becomes champion when its index is built, and its index-ready event still
    starts a rollout.
    """
    registry = registry or default_registry()
    engine = engine or default_engine()
    config = RolloutConfig.from_params(params)
    from lockstep.model.registry import requested_version as resolve_requested

    candidate = resolve_requested(requested_version, asset_extra, registry, purpose="roll out")
    registry.get_version(candidate)  # a clear error if it does not exist
    champion_info = registry.version_for_alias("champion")
    if champion_info is None:
        raise RolloutError(
            "there is no champion to compare with: the first version becomes champion when its index is built "
            "(lockstep_reembed with promote_if_first), or set it with Registry.promote_champion"
        )
    champion = champion_info.version
    plan = RolloutPlan(rollout_id, candidate, champion, config, started_at=now().isoformat())
    table = routing.read_table(engine)
    if candidate == champion:
        reason = f"v{candidate} already is the champion; nothing to roll out"
        record.begin(rollout_id, candidate, champion, config.strategy, config.to_dict(), engine=engine)
        record.finish(rollout_id, record.SKIPPED, reason, engine=engine)
        return RolloutPlan(rollout_id, candidate, champion, config, started_at=plan.started_at, noop=True, reason=reason)
    _require_slot(table, candidate, "candidate", ("ready", "live"), "build its index first (lockstep_reembed)")
    _require_slot(table, champion, "champion", ("ready", "live"), "return traffic to a loaded version first")
    _require_alias_and_routing_agree(champion, table, engine)

    record.begin(rollout_id, candidate, champion, config.strategy, config.to_dict(), engine=engine)
    generation = route(plan, {champion: 100}, [], f"rollout {rollout_id} of v{candidate}: start (new sticky salt)",
                       engine, new_salt=True, check=False)
    cand_info = registry.get_version(candidate)
    drift = drift_context(registry)
    review = review_markdown(cand_info, champion_info, drift)
    record.record_step(
        rollout_id, "start", "start", "info",
        reason=f"v{candidate} against champion v{champion}, strategy {config.strategy}",
        figures={**{f"candidate.{k}": v for k, v in cand_info.eval_figures.items()},
                 **{f"champion.{k}": v for k, v in champion_info.eval_figures.items()}},
        engine=engine,
    )
    return RolloutPlan(rollout_id, candidate, champion, config, started_at=plan.started_at, generation=generation,
                       review_markdown=review, drift=drift)


def _require_slot(table: routing.RoutingTable, version: str, role: str, states: Sequence[str], advice: str) -> None:
    slot = table.slot(version)
    if slot is None:
        raise RolloutError(f"the {role} v{version} has no serving slot; {advice}")
    if slot.state not in states:
        raise RolloutError(f"the {role} v{version}'s slot is {slot.state}, not {' or '.join(states)}; {advice}")


def _require_alias_and_routing_agree(champion: str, table: routing.RoutingTable, engine: Engine) -> None:
    """Refuse to start when alias champion and the routing table tell different stories.

    That happens after a failed rollback or a manual change; a rollout would otherwise
    force the alias's version to 100 % and undo whatever the operator did.
    """
    if table.weights == {champion: 100}:
        return
    last = next(iter(routing.history(limit=1, engine=engine)), None)
    changed = f"; last change: generation {last.generation} by {last.actor or 'an unnamed writer'} ({last.reason})" if last else ""
    raise RolloutError(
        f"alias champion is v{champion} but the routing table sends {table.weights or 'no traffic'} "
        f"(generation {table.generation}{changed}). Settle which version serves before a rollout: "
        f"`lockstep routing set {champion}=100` to follow the alias, or lockstep_rollback / "
        "Registry.promote_champion to make the alias follow the traffic"
    )


# --- the strategies that do not wait -------------------------------------------------------------


def shadow_only(plan: Plan, *, engine: Engine | None = None) -> dict[str, Any]:
    """Strategy ``shadow``: the candidate was judged on mirrored traffic only and stays ready."""
    plan, engine = as_plan(plan), engine or default_engine()
    reason = f"v{plan.model_version} passed the shadow phase; strategy 'shadow' moves no live traffic"
    record.finish(plan.rollout_id, record.SHADOW_ONLY, reason, engine=engine)
    return record.record_step(plan.rollout_id, "shadow only", "shadow", "info", reason=reason, engine=engine)


def run_blue_green(plan: Plan, *, engine: Engine | None = None) -> dict[str, Any]:
    """One atomic switch from 0 to 100 %; the champion stays loaded for the rollback window."""
    plan, engine = as_plan(plan), engine or default_engine()
    rid, cand = plan.rollout_id, plan.model_version
    stop_if_overridden(plan, record.load_state(rid, engine=engine), engine)
    generation = route(plan, {cand: 100}, [], f"rollout {rid}: blue-green switch to v{cand}", engine)
    return record.record_step(rid, "blue-green switch", "blue_green", "info", weight=100, action=Action.PROMOTE,
                              reason=f"all traffic to v{cand} in one transaction", figures={"generation": generation}, engine=engine)


# --- finalize and verify -------------------------------------------------------------------------


def finalize(plan: Plan, *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    """100 % to the candidate; alias ``champion`` moves to it (the old one is tagged replaced)."""
    plan, engine, registry = as_plan(plan), engine or default_engine(), registry or default_registry()
    config, rid, cand = plan.config, plan.rollout_id, plan.model_version
    stop_if_overridden(plan, record.load_state(rid, engine=engine), engine)
    _require_strategy_passed(plan, engine)
    table = routing.read_table(engine)
    if table.weights == {cand: 100} and not table.shadows:
        generation = table.generation
    else:
        generation = route(plan, {cand: 100}, [], f"rollout {rid}: final traffic update to v{cand}", engine)
    previous = registry.promote_champion(cand, reason=f"rollout {rid} ({config.strategy})")
    log.info("rollout %s: v%s at 100 %% and champion (generation %d)", rid, cand, generation)
    previous_version = previous.version if previous is not None else plan.baseline_version
    retire_after = now().timestamp() + config.rollback_window_seconds
    out = {
        "generation": generation,
        "previous_champion": previous_version,
        "retire_after": from_timestamp(retire_after).isoformat(),
    }
    record.record_step(rid, "finalize", "finalize", "info", weight=100, reason=f"v{cand} at 100 % and champion; v{previous_version} kept warm",
                       figures={"generation": generation}, engine=engine)
    from lockstep.core.alerts import alert

    alert("promoted", f"v{cand} is the champion at 100 % (rollout {rid})", {"rollout_id": rid, "previous": previous_version})
    return out


def _require_strategy_passed(plan: RolloutPlan, engine: Engine) -> None:
    """Finalize only after a promoting strategy recorded a pass as its last word (defence in depth).

    The DAG already runs finalize only downstream of the promoting strategies; this
    check makes a wiring mistake fail loudly instead of promoting the candidate.
    """
    strategy = plan.strategy
    if strategy not in PROMOTING_STRATEGIES:
        raise RolloutError(f"strategy {strategy!r} never promotes: finalize must not run for it")
    status = (record.get(plan.rollout_id, engine=engine) or {}).get("status")
    if status != record.RUNNING:
        raise RolloutError(f"rollout {plan.rollout_id} is {status or 'not recorded'}, not running: nothing to finalize")
    steps = [s for s in record.steps(plan.rollout_id, engine=engine) if s["phase"] == strategy]
    if not steps or steps[-1]["action"] != Action.PROMOTE or steps[-1]["verdict"] not in ("pass", "info"):
        last = f"{steps[-1]['step']}: {steps[-1]['verdict']}/{steps[-1]['action']}" if steps else "no step recorded"
        raise RolloutError(f"the {strategy} phase has not passed ({last}); finalize refuses to promote v{plan.model_version}")


def verify(plan: Plan, final: Mapping[str, Any], *, engine: Engine | None = None, urls: Sequence[str] | None = None,
           probe: Any = None) -> dict[str, Any]:
    """Read the routing table back, then probe every serving replica until it answers with the candidate.

    ``probe`` is the deployment system's request (``lockstep.systems.steps.verify_probe``).

    Anything else by ``verify_timeout_seconds`` raises VerificationFailed, and the
    rollback runs.
    """
    plan, engine = as_plan(plan), engine or default_engine()
    config, rid, cand = plan.config, plan.rollout_id, plan.model_version
    serving = ",".join(config.serving_urls if urls is None else urls)
    try:
        seconds = verify_serving(cand, int(final.get("generation") or 0), serving, config.verify_timeout_seconds,
                                 poll=config.poll_seconds, engine=engine, probe=probe)
    except VerificationFailed as exc:
        record.record_step(rid, "verify", "verify", "fail", action=Action.ROLLBACK, reason=str(exc), engine=engine)
        raise
    figures = {f"seconds.{u}": t for u, t in seconds.items()}
    record.finish(rid, record.PROMOTED, f"v{cand} serves 100 % and answers on {len(seconds)} replica(s)", figures, engine=engine)
    return record.record_step(rid, "verify", "verify", "pass", weight=100, reason=f"routing table and {len(seconds)} replica(s) serve v{cand}",
                              figures=figures, engine=engine)


# --- rollback and retention -------------------------------------------------------------------


def rollback(
    plan: Plan | None,
    reason: str | None = None,
    figures: Mapping[str, Any] | None = None,
    *,
    failed_tasks: Sequence[str] = (),
    engine: Engine | None = None,
    registry: Any = None,
) -> dict[str, Any]:
    """All traffic back to the champion in one transaction, then the bookkeeping.

    The candidate is tagged rejected with the reason and the failed gates' figures
    (read from the rollout record when not given), its slot drains and retires, and an
    alert goes out. Safe to run twice (a retried task): each part checks first.
    """
    plan = as_plan(plan) if plan else None
    if plan is None or plan.noop:
        return {"rolled_back": False, "reason": "the rollout changed nothing; nothing to roll back"}
    engine, registry = engine or default_engine(), registry or default_registry()
    rid, cand, champ = plan.rollout_id, plan.model_version, plan.baseline_version
    current = record.get(rid, engine=engine) or {}
    if current.get("status") == record.OVERRIDDEN:
        return {"rolled_back": False, "overridden": True, "reason": current.get("reason") or "overridden"}
    failure = record.last_failure(rid, engine=engine)
    if reason is None and failure:
        reason = f"{failure['step']}: {failure['reason']}"
    if reason is None:
        reason = f"task(s) {', '.join(failed_tasks)} failed" if failed_tasks else "a rollout task failed"
    if figures is None:
        figures = _failed_gate_figures(failure)
    started = time.perf_counter()
    try:
        generation = abort_traffic(plan, reason, engine)
    except RolloutOverridden as exc:  # an operator moved the traffic: theirs to decide now
        return {"rolled_back": False, "overridden": True, "reason": str(exc)}
    commit_seconds = time.perf_counter() - started

    champion_now = registry.version_for_alias("champion")
    if champion_now is not None and champion_now.version == cand:
        registry.promote_champion(champ, reason=f"rollback of v{cand}: {reason}"[:200])
    registry.reject(cand, reason[:5000], dict(list(figures.items())[:MAX_REJECT_FIGURES]))
    retire_slot(cand, f"rolled back: {reason}", plan.config.drain_seconds, engine)

    from lockstep.core.alerts import alert

    alert("rollback", f"v{cand} rolled back to v{champ}: {reason}", {"rollout_id": rid, "candidate": cand, "champion": champ,
                                                                       "failed_tasks": list(failed_tasks), "figures": dict(figures)})
    summary = {"generation": generation, "commit_seconds": commit_seconds, "failed_tasks": ", ".join(failed_tasks)}
    record.record_step(rid, "rollback", "rollback", "info", weight=0, reason=reason, figures=summary, engine=engine)
    record.finish(rid, record.ROLLED_BACK, reason, figures, engine=engine)
    return {"rolled_back": True, "reason": reason, "champion": champ, "candidate": cand, **summary}


def _failed_gate_figures(failure: Mapping[str, Any] | None) -> dict[str, Any]:
    if not failure:
        return {}
    figures: dict[str, Any] = {}
    for gate in failure.get("gates") or []:
        if gate.get("verdict") != "pass":
            figures.update({f"{gate['name']}.{k}": v for k, v in (gate.get("figures") or {}).items()})
    return figures or dict(failure.get("figures") or {})


def retire_previous(plan: Plan, final: Mapping[str, Any], *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    """After the rollback window: retire the previous champion's slot and delete its index.

    Nothing is retired when the previous champion serves again (someone rolled back
    during the window) or the slot is already gone.
    """
    plan, engine, registry = as_plan(plan), engine or default_engine(), registry or default_registry()
    rid, previous = plan.rollout_id, final.get("previous_champion")
    if not previous or previous == plan.model_version:
        return {"retired": None, "reason": "no previous champion"}
    champion = registry.version_for_alias("champion")
    table = routing.read_table(engine)
    slot = table.slot(previous)
    if (champion is not None and champion.version == previous) or (slot is not None and slot.weight > 0):
        reason = f"v{previous} serves again (rolled back during the window); kept"
        record.record_step(rid, "retention", "retention", "info", reason=reason, engine=engine)
        return {"retired": None, "reason": reason}
    if table.holdback is not None and table.holdback.model_version == previous:  # issue 13: never retired
        reason = f"v{previous} serves the holdback group ({table.holdback.percent:g} % of users); kept"
        record.record_step(rid, "retention", "retention", "info", reason=reason, engine=engine)
        return {"retired": None, "reason": reason}
    if slot is None or slot.state == routing.RETIRED:
        return {"retired": None, "reason": f"v{previous} has no loaded slot"}
    retire_slot(previous, f"replaced by v{plan.model_version}; rollback window over", plan.config.drain_seconds, engine)
    deleted, why_kept = _delete_index(slot.index_location)
    registry.set_tags(previous, {TAG_RETIRED_AT: now().isoformat(timespec="seconds"), "lockstep.index_deleted": str(deleted).lower()})
    reason = f"v{previous} retired" + (f"; index {slot.index_location} deleted" if deleted else f"; index kept ({why_kept})")
    record.record_step(rid, "retention", "retention", "info", reason=reason, engine=engine)
    return {"retired": previous, "index_deleted": deleted, "reason": reason}


def _delete_index(location: str) -> tuple[bool, str]:
    """Delete a retired index version, only inside LOCKSTEP_INDEX_STORE; (deleted, why kept)."""
    from lockstep.index.storage import UnsafeIndexPathError, delete_index_version

    try:
        return delete_index_version(location), "it was already gone"
    except UnsafeIndexPathError as exc:
        log.warning("retention keeps %s: %s", location, exc)
        return False, str(exc)


# --- manual rollback (lockstep_rollback) ---------------------------------------------------------


def rollback_to_previous(
    reason: str,
    to_version: str | int | None = None,
    *,
    actor: str = "lockstep_rollback",
    rollback_id: str | None = None,
    engine: Engine | None = None,
    registry: Any = None,
) -> dict[str, Any]:
    """What ``lockstep_rollback`` does: all traffic to the previous (or a named) version at once.

    The previous champion comes from the registry's champion history; its slot must
    still be loaded (it is, for the rollback window after a rollout). The routing
    change is one transaction, then alias ``champion`` moves back and the reason is
    recorded in the routing history, the champion history, a version tag and the
    rollout record.
    """
    if not reason or not str(reason).strip():
        raise RolloutError("say why you roll back (Param reason): it is recorded with the change")
    engine, registry = engine or default_engine(), registry or default_registry()
    current = registry.version_for_alias("champion")
    table = routing.read_table(engine)
    target = str(to_version).strip() if to_version not in (None, "") else _previous_champion(registry, current, table)
    slot = table.slot(target)
    if slot is None or slot.state not in routing.WEIGHTABLE_STATES:
        state = "no slot" if slot is None else f"slot state {slot.state}"
        ready = [s.model_version for s in table.slots if s.state in routing.WEIGHTABLE_STATES]
        raise RolloutError(
            f"cannot roll back to v{target}: {state} (its index was retired after the rollback window, or never built). "
            f"Versions that can take traffic now: {', '.join(ready) or 'none'}; rebuild v{target}'s index with lockstep_reembed first"
        )
    started = time.perf_counter()
    generation = routing.set_weights({target: 100}, shadow=[], reason=f"manual rollback to v{target}: {reason}", actor=actor, engine=engine)
    commit_seconds = time.perf_counter() - started
    registry.promote_champion(target, reason=f"rollback: {reason}"[:200])
    if current is not None and current.version != target:
        registry.set_tags(current.version, {TAG_ROLLED_BACK: str(reason)[:5000]})
    rid = rollback_id or f"rollback-{now().strftime('%Y%m%dT%H%M%S')}"
    record.begin(rid, target, current.version if current else None, "rollback", {"reason": reason, "to_version": target}, engine=engine)
    record.record_step(rid, "rollback", "rollback", "info", weight=100, reason=reason,
                       figures={"generation": generation, "commit_seconds": commit_seconds}, engine=engine)
    record.finish(rid, record.ROLLED_BACK, reason, {"commit_seconds": commit_seconds}, engine=engine)
    from lockstep.core.alerts import alert

    alert("rollback", f"manual rollback from v{current.version if current else '?'} to v{target}: {reason}", {"rollback_id": rid, "to_version": target})
    return {"rollback_id": rid, "to_version": target, "from_version": current.version if current else None,
            "generation": generation, "commit_seconds": commit_seconds}


def _previous_champion(registry: Any, current: Any, table: routing.RoutingTable) -> str:
    """The newest champion before the current one, from the registry's champion history."""
    history = [str(e.get("version")) for e in registry.champion_history() if e.get("version")]
    now_version = current.version if current is not None else None
    for version in reversed(history):
        if version != now_version:
            return version
    raise RolloutError(
        f"the champion history has no version before v{now_version}; name one with Param to_version "
        f"(slots: {', '.join(f'v{s.model_version} {s.state}' for s in table.slots) or 'none'})"
    )


__all__ = [
    "PROMOTING_STRATEGIES", "ROLLOUT_POOL", "STRATEGIES", "WAITING_PHASES", "GateFailed", "ReviewRejected", "ReviewTimeout",
    "RolloutConfig", "RolloutError", "RolloutOverridden", "RolloutPlan", "Tick", "VerificationFailed",
    "check_review", "finalize", "retire_previous", "rollback", "rollback_to_previous",
    "run_ab", "run_bandit", "run_blue_green", "run_canary", "run_phase", "run_shadow", "shadow_only", "start", "tick", "verify",
    "verify_serving", "wait_for_review",
]
