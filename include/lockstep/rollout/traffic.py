"""How a rollout moves traffic: every change a compare-and-set, an operator's change wins.

Each traffic change of a rollout is compared against the routing generation the rollout
wrote last (kept in its state, ``lockstep_rollout_state``). If someone else changed the
traffic since (``lockstep routing set``, ``lockstep_rollback``), the rollout records and
alerts that it was overridden, raises RolloutOverridden, and writes nothing: the traffic
is theirs now. ``abort_traffic`` is the one way back to the champion (one transaction),
``retire_slot`` the one way a slot leaves (draining, then retired).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine

from lockstep.rollout import record
from lockstep.rollout.config import RolloutOverridden
from lockstep.rollout.plan import RolloutPlan
from lockstep.store import routing

log = logging.getLogger("lockstep.rollout")

ACTOR = "lockstep_rollout"


def route(plan: RolloutPlan, weights: Mapping[str, int], shadow: Sequence[str], reason: str, engine: Engine,
          *, new_salt: bool = False, check: bool = True) -> int:
    """Change traffic as the rollout, compare-and-set against the generation it wrote last.

    Anyone else's traffic change since then (``lockstep routing set``, ``lockstep_rollback``)
    makes this raise RolloutOverridden and write nothing.
    """
    rid = plan.rollout_id
    state = record.load_state(rid, engine=engine)
    expected = state.get("generation") if check else None
    try:
        generation = routing.set_weights(dict(weights), shadow=list(shadow), reason=reason[:2000], actor=ACTOR,
                                         new_salt=new_salt, expect_generation=expected, engine=engine)
    except routing.RoutingConflict as exc:
        raise overridden(plan, exc.changes, engine) from exc
    state["generation"] = generation
    record.save_state(rid, state, engine=engine)
    return generation


def stop_if_overridden(plan: RolloutPlan, state: Mapping[str, Any], engine: Engine) -> None:
    """Raise RolloutOverridden when someone else changed the traffic since the rollout's last change."""
    if (record.get(plan.rollout_id, engine=engine) or {}).get("status") == record.OVERRIDDEN:
        raise RolloutOverridden(f"rollout {plan.rollout_id} was overridden; it changes no traffic any more")
    expected = state.get("generation")
    if expected is None:
        return
    changes = routing.foreign_changes(int(expected), ACTOR, engine=engine)
    if changes:
        raise overridden(plan, changes, engine)


def overridden(plan: RolloutPlan, changes: Sequence[routing.HistoryEntry], engine: Engine) -> RolloutOverridden:
    """Record (once) and alert that the rollout stopped because someone else moved the traffic."""
    rid, cand = plan.rollout_id, plan.model_version
    last = changes[-1] if changes else None
    who = f"{last.actor or 'an unnamed writer'} at generation {last.generation} ({last.reason or 'no reason given'})" if last else "someone"
    now_serving = last.weights if last else {}
    reason = (f"overridden by {who}: traffic is now {now_serving or 'unchanged'}; the rollout of v{cand} stopped "
              "and left the traffic as set")
    current = record.get(rid, engine=engine)
    if current is not None and current["status"] != record.OVERRIDDEN:
        figures = {"generation": last.generation if last else None, "weights": now_serving}
        record.record_step(rid, "overridden", "override", "info", reason=reason, figures=figures, engine=engine)
        record.finish(rid, record.OVERRIDDEN, reason, figures, engine=engine)
        from lockstep.core.alerts import alert

        alert("overridden", f"rollout of v{cand} stopped: {reason}", {"rollout_id": rid, "candidate": cand,
                                                                       "champion": plan.baseline_version, **figures})
    log.warning("rollout %s: %s", rid, reason)
    return RolloutOverridden(reason)


def abort_traffic(plan: RolloutPlan, reason: str, engine: Engine) -> int:
    """Champion at 100 %, no shadow, in one transaction (nothing written if already so).

    Compare-and-set like every rollout change: if an operator moved the traffic, it is
    theirs and RolloutOverridden is raised instead.
    """
    champ, rid = plan.baseline_version, plan.rollout_id
    stop_if_overridden(plan, record.load_state(rid, engine=engine), engine)
    table = routing.read_table(engine)
    if table.weights == {champ: 100} and not table.shadows:
        return table.generation
    generation = route(plan, {champ: 100}, [], f"rollout {rid}: rollback: {reason}", engine)
    log.warning("rollout %s: all traffic back on v%s (generation %d): %s", rid, champ, generation, reason)
    return generation


def retire_slot(version: str, note: str, drain_seconds: float, engine: Engine) -> None:
    """draining (replicas stop new requests and unload when idle), then retired."""
    slot = routing.read_table(engine).slot(version)
    if slot is None or slot.state == routing.RETIRED:
        return
    if slot.state != routing.DRAINING:
        routing.set_state(version, routing.DRAINING, note=note[:2000], engine=engine)
    time.sleep(max(0.0, drain_seconds))
    routing.set_state(version, routing.RETIRED, note=note[:2000], engine=engine)


def default_engine() -> Engine:
    """Lockstep's database (``LOCKSTEP_DATABASE_URL``), for a step not given an engine."""
    from lockstep.store.db import get_engine

    return get_engine()


def default_registry() -> Any:
    """The MLflow registry, imported only when a step needs it (MLflow is slow to import)."""
    from lockstep.model.registry import Registry

    return Registry()


__all__ = ["ACTOR", "abort_traffic", "default_engine", "default_registry", "overridden", "retire_slot", "route", "stop_if_overridden"]
