"""The written record of every rollout: its outcome, and each gate's figures and verdict.

A rollout is judged by numbers that exist for a few minutes in the serving logs; once
the rollout is over, these rows are what remains to show why a version was promoted
or rolled back. The Airflow UI page reads them, and the rollback reads the last failed
step to tag the rejected version with the reason and figures that decided it.

A rollback is a record, not a guess: both ways back (a failed rollout's ``rollback``
task and an operator's ``lockstep_rollback``) finish a rollout record with status
``rolled_back``, the operator's under strategy ``rollback``, and write a ``rollback``
step with the routing generation that moved the traffic. ``rollbacks`` reads them as
``Rollback`` values: which version lost its traffic, to which, why, and when.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, insert, select, update

from lockstep.core import clock, jsonio
from lockstep.store.db import get_engine
from lockstep.store.schema import rollout_state, rollout_steps, rollouts

if TYPE_CHECKING:  # only the shape: the UI page reads records without loading the statistics
    from lockstep.rollout.gates import GateResult

RUNNING, PROMOTED, ROLLED_BACK, SHADOW_ONLY, SKIPPED = "running", "promoted", "rolled_back", "shadow_only", "skipped"
# Someone else (an operator, lockstep_rollback) changed the traffic during the rollout; it stopped
# and left the traffic as that person set it.
OVERRIDDEN = "overridden"
# The strategy of the record ``lockstep_rollback`` writes: the version it returns to is the
# record's model_version, the one it takes traffic from its baseline_version.
MANUAL_ROLLBACK = "rollback"
ROLLBACK_PHASE = "rollback"


@dataclass(frozen=True)
class Rollback:
    """One rollback as recorded: what lost its traffic, what serves again, why and when."""

    rollout_id: str
    at: datetime | None
    version: str | None  # the version that lost its traffic
    to_version: str | None  # the version that serves again
    reason: str
    manual: bool  # an operator's lockstep_rollback, not a failed rollout
    generation: int | None  # the routing change that moved the traffic back, when recorded


def begin(
    rollout_id: str,
    model_version: str,
    baseline_version: str | None,
    strategy: str,
    config: Mapping[str, Any],
    *,
    engine: Engine | None = None,
) -> None:
    """Start the record of a rollout; a rerun with the same id starts it afresh."""
    eng = engine or get_engine()
    with eng.begin() as conn:
        conn.execute(delete(rollout_steps).where(rollout_steps.c.rollout_id == rollout_id))
        conn.execute(delete(rollout_state).where(rollout_state.c.rollout_id == rollout_id))
        conn.execute(delete(rollouts).where(rollouts.c.rollout_id == rollout_id))
        conn.execute(
            insert(rollouts).values(
                rollout_id=rollout_id, model_version=str(model_version),
                baseline_version=None if baseline_version is None else str(baseline_version),
                strategy=strategy, status=RUNNING, started_at=clock.now(), config=jsonio.plain(dict(config)),
            )
        )


def record_step(
    rollout_id: str,
    step: str,
    phase: str,
    verdict: str,
    *,
    reason: str = "",
    gates: Sequence[GateResult] = (),
    figures: Mapping[str, Any] | None = None,
    look: int = 1,
    weight: int | None = None,
    action: str | None = None,
    window: tuple[datetime, datetime] | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Write one analysis or decision; returns the row as a dict (what XCom carries)."""
    row = {
        "rollout_id": rollout_id,
        "step": step,
        "phase": phase,
        "look": look,
        "weight": weight,
        "verdict": str(verdict),
        "action": None if action is None else str(action),
        "reason": reason,
        "gates": [g.to_dict() for g in gates],
        "figures": jsonio.plain(dict(figures or {})),
        "window_start": window[0] if window else None,
        "window_end": window[1] if window else None,
        "at": clock.now(),
    }
    with (engine or get_engine()).begin() as conn:
        conn.execute(insert(rollout_steps).values(**row))
    return _as_json(row)


def finish(
    rollout_id: str,
    status: str,
    reason: str,
    figures: Mapping[str, Any] | None = None,
    *,
    engine: Engine | None = None,
) -> None:
    with (engine or get_engine()).begin() as conn:
        conn.execute(
            update(rollouts)
            .where(rollouts.c.rollout_id == rollout_id)
            .values(status=status, reason=reason, ended_at=clock.now(), figures=jsonio.plain(dict(figures or {})))
        )


def get(rollout_id: str, *, engine: Engine | None = None) -> dict[str, Any] | None:
    with (engine or get_engine()).connect() as conn:
        row = conn.execute(select(rollouts).where(rollouts.c.rollout_id == rollout_id)).mappings().first()
    return None if row is None else _as_json(dict(row))


def steps(rollout_id: str, *, engine: Engine | None = None) -> list[dict[str, Any]]:
    """The rollout's steps in the order they were written."""
    with (engine or get_engine()).connect() as conn:
        rows = conn.execute(
            select(rollout_steps).where(rollout_steps.c.rollout_id == rollout_id).order_by(rollout_steps.c.id)
        ).mappings().all()
    return [_as_json(dict(r)) for r in rows]


def recent(limit: int = 20, *, engine: Engine | None = None) -> list[dict[str, Any]]:
    """The newest rollouts first (for the UI page and ``lockstep`` commands)."""
    with (engine or get_engine()).connect() as conn:
        rows = conn.execute(select(rollouts).order_by(rollouts.c.started_at.desc()).limit(limit)).mappings().all()
    return [_as_json(dict(r)) for r in rows]


def last_failure(rollout_id: str, *, engine: Engine | None = None) -> dict[str, Any] | None:
    """The newest step that failed or decided to roll back: what the rollback names as its reason."""
    failed = [s for s in steps(rollout_id, engine=engine) if s["verdict"] == "fail" or s["action"] == "rollback"]
    return failed[-1] if failed else None


def load_state(rollout_id: str, *, engine: Engine | None = None) -> dict[str, Any]:
    """The executor's saved place in a rollout ({} before its first save)."""
    with (engine or get_engine()).connect() as conn:
        state = conn.execute(select(rollout_state.c.state).where(rollout_state.c.rollout_id == rollout_id)).scalar()
    return dict(state or {})


def save_state(rollout_id: str, state: Mapping[str, Any], *, engine: Engine | None = None) -> None:
    """Replace the executor's saved place (one transaction: a crash leaves the old one whole)."""
    values = {"state": jsonio.plain(dict(state)), "updated_at": clock.now()}
    with (engine or get_engine()).begin() as conn:
        done = conn.execute(update(rollout_state).where(rollout_state.c.rollout_id == rollout_id).values(**values)).rowcount
        if not done:
            conn.execute(insert(rollout_state).values(rollout_id=rollout_id, **values))


def _as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def rollbacks(limit: int = 20, *, engine: Engine | None = None) -> list[Rollback]:
    """The newest rollbacks first, from the rollout records (see the module docstring)."""
    with (engine or get_engine()).connect() as conn:
        rows = conn.execute(
            select(rollouts).where(rollouts.c.status == ROLLED_BACK).order_by(rollouts.c.started_at.desc()).limit(limit)
        ).mappings().all()
        ids = [r["rollout_id"] for r in rows]
        generations: dict[str, int] = {}
        if ids:
            for rid, figures in conn.execute(
                select(rollout_steps.c.rollout_id, rollout_steps.c.figures)
                .where(rollout_steps.c.rollout_id.in_(ids), rollout_steps.c.phase == ROLLBACK_PHASE)
                .order_by(rollout_steps.c.id)
            ):
                generation = (figures or {}).get("generation")
                if isinstance(generation, int):
                    generations[rid] = generation
    return [_rollback(dict(r), generations.get(r["rollout_id"])) for r in rows]


def _rollback(row: dict[str, Any], generation: int | None) -> Rollback:
    manual = row.get("strategy") == MANUAL_ROLLBACK
    model, baseline = _version(row.get("model_version")), _version(row.get("baseline_version"))
    return Rollback(
        rollout_id=row["rollout_id"],
        at=clock.utc_or_none(row.get("ended_at")) or clock.utc_or_none(row.get("started_at")),
        version=baseline if manual else model,
        to_version=model if manual else baseline,
        reason=row.get("reason") or "rolled back",
        manual=manual,
        generation=generation,
    )


def _version(value: Any) -> str | None:
    return None if value is None else str(value)
