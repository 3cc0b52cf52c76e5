"""The routing table in the database: read in one transaction, changed one transaction at a time.

Every change (a slot registered, a state changed, new weights) is one transaction that
bumps the generation and writes a history row, so a replica only has to poll one
integer to know its copy is stale, and several replicas reading the same generation
route identically. On PostgreSQL the change also sends ``NOTIFY lockstep_routing`` so
replicas can follow without waiting for their next poll.

All writers start their transaction by bumping the generation: that UPDATE takes the
routing-state row lock (PostgreSQL) or the database write lock (SQLite) before anything
is read, so two concurrent ``set_weights`` serialise and each validates against the
state the other committed.

The holdback version stays loaded (it cannot be drained, retired or registered again
while it is the holdback) even at weight 0.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from lockstep.core import clock
from lockstep.store.db import get_engine, is_postgres
from lockstep.store.routing.table import (
    HOLDBACK_MAX_PERCENT,
    LIVE,
    LOADING,
    NOTIFY_CHANNEL,
    READY,
    SERVING_STATES,
    STATES,
    WEIGHTABLE_STATES,
    HistoryEntry,
    Holdback,
    RoutingConflict,
    RoutingError,
    RoutingTable,
    SlotRow,
    version_key,
)
from lockstep.store.schema import holdback as holdback_table
from lockstep.store.schema import routing_history, routing_state, slots

_STATE_ROW = 1


# --- reading -------------------------------------------------------------------------------


def read_generation(engine: Engine | str | None = None) -> int:
    """The current generation (0 before the first change): the cheap poll replicas run."""
    with _engine(engine).connect() as conn:
        value = conn.execute(
            select(routing_state.c.generation).where(routing_state.c.id == _STATE_ROW)
        ).scalar()
    return int(value or 0)


def read_table(engine: Engine | str | None = None) -> RoutingTable:
    """The whole table, generation and slots read in one transaction."""
    eng = _engine(engine)
    with eng.connect() as conn:
        if is_postgres(eng):
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            state = conn.execute(
                select(routing_state.c.generation, routing_state.c.salt).where(routing_state.c.id == _STATE_ROW)
            ).first()
            rows = conn.execute(select(slots)).all()
            held = conn.execute(select(holdback_table)).first()
    return _table(state, rows, held)


def read_holdback(engine: Engine | str | None = None) -> Holdback | None:
    """The holdback, or None when none is set."""
    with _engine(engine).connect() as conn:
        return _holdback(conn.execute(select(holdback_table)).first())


def history(limit: int | None = None, engine: Engine | str | None = None) -> list[HistoryEntry]:
    """Routing changes, newest first (every generation has one entry)."""
    stmt = select(routing_history).order_by(routing_history.c.generation.desc(), routing_history.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    with _engine(engine).connect() as conn:
        rows = conn.execute(stmt).all()
    return [_entry(r) for r in rows]


# --- writing -------------------------------------------------------------------------------


def register_slot(
    model_version: str | int,
    model_uri: str,
    index_location: str,
    fingerprint: str,
    state: str = LOADING,
    *,
    note: str | None = None,
    engine: Engine | str | None = None,
) -> int:
    """Add a slot, or re-point an existing one that takes no traffic; returns the generation.

    The re-embed DAG registers its slot in ``loading`` before taking its snapshot, so
    replicas and writers know it exists; a rerun registers it again.
    """
    version = _version(model_version)
    if state not in STATES or state == LIVE:
        raise RoutingError(
            f"a slot is registered as one of {', '.join(s for s in STATES if s != LIVE)}, not {state!r}; "
            "it becomes live through set_weights"
        )
    for name, value in (("model_uri", model_uri), ("index_location", index_location), ("fingerprint", fingerprint)):
        if not isinstance(value, str) or not value.strip():
            raise RoutingError(f"slot {version}: {name} must be a non-empty string, got {value!r}")
    with _engine(engine).begin() as conn:
        generation = _bump(conn)
        current = _slot_rows(conn).get(version)
        if current is not None and current.weight > 0:
            raise RoutingError(
                f"slot {version} is live with weight {current.weight}; move its traffic away with "
                "set_weights before registering it again"
            )
        _refuse_if_holdback(conn, version, "registered again")
        now = clock.now()
        values = {
            "model_uri": model_uri,
            "index_location": str(index_location),
            "fingerprint": fingerprint,
            "state": state,
            "weight": 0,
            "shadow": False,
            "updated_at": now,
            "note": note,
        }
        if current is None:
            conn.execute(slots.insert().values(model_version=version, created_at=now, **values))
        else:
            conn.execute(update(slots).where(slots.c.model_version == version).values(**values))
        _record(conn, generation, reason=f"slot {version} registered ({state})", actor=None)
    return generation


def set_state(
    model_version: str | int,
    state: str,
    note: str | None = None,
    *,
    engine: Engine | str | None = None,
) -> int:
    """Move a slot that takes no traffic to another state; returns the generation.

    ``live`` is reached only through ``set_weights`` (weights must keep summing to 100),
    so a slot with weight cannot be moved out of ``live`` here either.
    """
    version = _version(model_version)
    if state not in STATES:
        raise RoutingError(f"unknown slot state {state!r}; choose one of {', '.join(STATES)}")
    if state == LIVE:
        raise RoutingError(f"slot {version} becomes live by getting weight: use set_weights, not set_state")
    with _engine(engine).begin() as conn:
        generation = _bump(conn)
        current = _slot_rows(conn).get(version)
        if current is None:
            raise RoutingError(f"no slot for model version {version}; register it first (lockstep index build)")
        if current.weight > 0:
            raise RoutingError(
                f"slot {version} is live with weight {current.weight}; move its traffic away with "
                f"set_weights before setting it {state}"
            )
        if state not in SERVING_STATES:
            _refuse_if_holdback(conn, version, f"set {state}")
        conn.execute(
            update(slots)
            .where(slots.c.model_version == version)
            .values(
                state=state,
                shadow=current.shadow and state in SERVING_STATES,
                note=note if note is not None else current.note,
                updated_at=clock.now(),
            )
        )
        _record(conn, generation, reason=f"slot {version}: {current.state} -> {state}" + (f" ({note})" if note else ""), actor=None)
    return generation


def set_weights(
    weights: Mapping[str | int, int],
    shadow: Iterable[str | int] | None = None,
    reason: str | None = None,
    actor: str | None = None,
    new_salt: bool = False,
    *,
    expect_generation: int | None = None,
    engine: Engine | str | None = None,
) -> int:
    """Set every slot's traffic weight in one transaction; returns the new generation.

    Versions not named get weight 0; a slot that was live and gets 0 becomes ``ready``
    (still loaded, so a rollback is instant). ``shadow`` lists the versions that get a
    copy of live traffic (``None`` keeps the current shadow flags, ``[]`` clears them).
    ``new_salt`` reshuffles sticky users, for the start of a new rollout.

    ``expect_generation`` makes the write a compare-and-set: it raises RoutingConflict
    (and writes nothing) when anyone other than ``actor`` changed the traffic after that
    generation; see :func:`foreign_changes`.
    """
    wanted = _validate_weights(weights)
    shadow_set = None if shadow is None else {_version(v) for v in shadow}
    with _engine(engine).begin() as conn:
        generation = _bump(conn, new_salt=new_salt)
        if expect_generation is not None:
            _require_no_foreign_changes(conn, expect_generation, generation, actor)
        current = _slot_rows(conn)
        _check_against_slots(wanted, shadow_set, current)
        now = clock.now()
        for version, row in current.items():
            weight = wanted.get(version, 0)
            if weight > 0:
                state = LIVE
            elif row.state == LIVE:
                state = READY
            else:
                state = row.state
            is_shadow = (row.shadow if shadow_set is None else version in shadow_set) and weight == 0
            is_shadow = is_shadow and state in SERVING_STATES
            if (weight, state, is_shadow) != (row.weight, row.state, row.shadow):
                conn.execute(
                    update(slots)
                    .where(slots.c.model_version == version)
                    .values(weight=weight, state=state, shadow=is_shadow, updated_at=now)
                )
        _record(conn, generation, reason=reason, actor=actor)
    return generation


def set_holdback(
    model_version: str | int,
    percent: float,
    *,
    actor: str | None = None,
    engine: Engine | str | None = None,
) -> int:
    """Freeze ``percent`` of users (0 < percent <= 50) on a serving version; returns the generation.

    The version must be a registered slot that replicas load (ready or live). Setting the
    same version again keeps its salt, so a larger percent keeps everyone already held
    back; another version draws a new population. The weights are not touched, and the
    history row has no actor, so a rollout in flight does not read it as an override.
    """
    version = _version(model_version)
    share = _validate_percent(percent)
    with _engine(engine).begin() as conn:
        generation = _bump(conn)
        rows = _slot_rows(conn)
        row = rows.get(version)
        if row is None:
            known = ", ".join(sorted(rows, key=version_key)) or "none"
            raise RoutingError(f"no slot for model version {version} (registered slots: {known}); "
                               "the holdback version must be a serving slot")
        if row.state not in SERVING_STATES:
            raise RoutingError(f"slot {version} is {row.state}; the holdback version must be ready or live "
                               "(a slot the replicas keep loaded)")
        current = _holdback(conn.execute(select(holdback_table)).first())
        salt = current.salt if current is not None and current.model_version == version else secrets.token_hex(8)
        values = {"model_version": version, "percent": share, "salt": salt, "set_at": clock.now(),
                  "set_by": actor[:128] if actor else None}
        if current is None:
            conn.execute(holdback_table.insert().values(id=_STATE_ROW, **values))
        else:
            conn.execute(update(holdback_table).where(holdback_table.c.id == _STATE_ROW).values(**values))
        who = f" by {actor}" if actor else ""
        _record(conn, generation, reason=f"holdback: {share:g} % of users on version {version}{who}", actor=None)
    return generation


def clear_holdback(*, actor: str | None = None, engine: Engine | str | None = None) -> Holdback | None:
    """End the holdback (its users go back to the weights); returns the one cleared, None if none."""
    with _engine(engine).begin() as conn:
        current = _holdback(conn.execute(select(holdback_table)).first())
        if current is None:
            return None
        generation = _bump(conn)
        conn.execute(holdback_table.delete())
        who = f" by {actor}" if actor else ""
        _record(conn, generation, reason=f"holdback on version {current.model_version} cleared{who}", actor=None)
    return current


def foreign_changes(
    since_generation: int, actor: str | None, *, engine: Engine | str | None = None
) -> list[HistoryEntry]:
    """Changes of traffic made by anyone other than ``actor`` after ``since_generation``.

    A change counts when it was written by another named actor (``lockstep routing set``,
    ``lockstep_rollback``), or when the live weights or shadows now differ from those at
    ``since_generation``. Slot bookkeeping (a slot registered or retired, actor None) that
    leaves traffic as it was does not count, so an index build during a rollout does not
    stop it. Oldest first; empty when nobody interfered.
    """
    with _engine(engine).connect() as conn:
        current = conn.execute(select(routing_state.c.generation).where(routing_state.c.id == _STATE_ROW)).scalar()
        return _foreign_changes(conn, since_generation, int(current or 0) + 1, actor)


def _require_no_foreign_changes(conn: Connection, expected: int, generation: int, actor: str | None) -> None:
    changes = _foreign_changes(conn, expected, generation, actor)
    if changes:
        last = changes[-1]
        raise RoutingConflict(
            f"the routing table changed since generation {expected}: generation {last.generation} by "
            f"{last.actor or 'an unnamed writer'} ({last.reason or 'no reason given'}) set {last.weights or 'no weights'}",
            expected=expected, current=generation - 1, changes=changes,
        )


def _foreign_changes(conn: Connection, expected: int, below: int, actor: str | None) -> list[HistoryEntry]:
    """Entries in (expected, below) written by another named actor, or (any writer but ``actor``)
    leaving the traffic different from what it was at ``expected``."""
    rows = conn.execute(
        select(routing_history)
        .where(routing_history.c.generation >= expected, routing_history.c.generation < below)
        .order_by(routing_history.c.generation, routing_history.c.id)
    ).all()
    entries = [_entry(r) for r in rows]
    base = next((e for e in entries if e.generation == expected), None)
    later = [e for e in entries if e.generation > expected]
    by_others = [e for e in later if e.actor is not None and e.actor != actor]
    if base is None:  # nothing to compare the traffic with: any later change is suspect
        return by_others or later
    moved = [e for e in later if (e.weights, e.shadow) != (base.weights, base.shadow) and e.actor != actor]
    return sorted({e.generation: e for e in (*by_others, *moved)}.values(), key=lambda e: e.generation)


def _entry(r: Any) -> HistoryEntry:
    return HistoryEntry(
        generation=int(r.generation),
        at=r.at,
        weights={str(k): int(v) for k, v in (r.weights or {}).items()},
        shadow=list(r.shadow or []),
        reason=r.reason,
        actor=r.actor,
    )


# --- internals -----------------------------------------------------------------------------


def _engine(engine: Engine | str | None) -> Engine:
    return engine if isinstance(engine, Engine) else get_engine(engine)


def _version(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RoutingError(f"a model version is a string or an integer, got {value!r}")
    version = str(value).strip()
    if not version or len(version) > 64:
        raise RoutingError(f"model version {value!r} must be 1 to 64 characters")
    return version


def _validate_percent(percent: Any) -> float:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)):
        raise RoutingError(f"the holdback percent must be a number, got {percent!r}")
    share = float(percent)
    if not 0 < share <= HOLDBACK_MAX_PERCENT or round(share * 100) != share * 100:
        raise RoutingError(
            f"the holdback percent is {percent}; it must be above 0 and at most {HOLDBACK_MAX_PERCENT:g}, "
            "in steps of 0.01"
        )
    return share


def _refuse_if_holdback(conn: Connection, version: str, what: str) -> None:
    held = _holdback(conn.execute(select(holdback_table)).first())
    if held is not None and held.model_version == version:
        raise RoutingError(
            f"slot {version} is the holdback version ({held.percent:g} % of users) and cannot be {what}; "
            "clear the holdback first (lockstep holdback clear)"
        )


def _validate_weights(weights: Mapping[str | int, int]) -> dict[str, int]:
    if not isinstance(weights, Mapping) or not weights:
        raise RoutingError("give at least one VERSION=WEIGHT; the live weights must sum to 100")
    out: dict[str, int] = {}
    for key, weight in weights.items():
        version = _version(key)
        if version in out:
            raise RoutingError(f"version {version} is given twice")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise RoutingError(f"weight of version {version} must be an integer 0..100, got {weight!r}")
        if not 0 <= weight <= 100:
            raise RoutingError(f"weight of version {version} is {weight}; weights are integers 0..100")
        out[version] = weight
    total = sum(out.values())
    if total != 100:
        listing = ", ".join(f"{v}={w}" for v, w in out.items())
        raise RoutingError(f"weights must sum to exactly 100, got {total} ({listing})")
    return out


def _check_against_slots(
    wanted: dict[str, int], shadow: set[str] | None, current: dict[str, SlotRow]
) -> None:
    known = ", ".join(sorted(current, key=version_key)) or "none"
    for version, weight in wanted.items():
        row = current.get(version)
        if row is None:
            raise RoutingError(f"no slot for model version {version} (registered slots: {known})")
        if weight > 0 and row.state not in WEIGHTABLE_STATES:
            raise RoutingError(
                f"slot {version} is {row.state} and cannot take traffic; only a ready slot "
                "(model and index built) can get weight"
            )
    for version in shadow or ():
        row = current.get(version)
        if row is None:
            raise RoutingError(f"no slot for shadow version {version} (registered slots: {known})")
        if wanted.get(version, 0) > 0:
            raise RoutingError(f"version {version} cannot be both live (weight {wanted[version]}) and shadow")
        if row.state not in SERVING_STATES:
            raise RoutingError(f"slot {version} is {row.state}; only a ready slot can receive shadow traffic")


def _bump(conn: Connection, *, new_salt: bool = False) -> int:
    """Take the routing lock by incrementing the generation (creating the row the first time)."""
    values: dict[str, Any] = {"generation": routing_state.c.generation + 1, "updated_at": clock.now()}
    if new_salt:
        values["salt"] = secrets.token_hex(8)
    generation = conn.execute(
        update(routing_state).where(routing_state.c.id == _STATE_ROW).values(**values).returning(routing_state.c.generation)
    ).scalar()
    if generation is not None:
        return int(generation)
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(routing_state)
    conn.execute(
        insert.values(id=_STATE_ROW, generation=0, salt=secrets.token_hex(8), updated_at=clock.now()).on_conflict_do_nothing()
    )
    return _bump(conn, new_salt=new_salt)


def _slot_rows(conn: Connection) -> dict[str, SlotRow]:
    return {r.model_version: _slot(r) for r in conn.execute(select(slots)).all()}


def _record(conn: Connection, generation: int, *, reason: str | None, actor: str | None) -> None:
    """Write the generation's history row and, on PostgreSQL, wake listening replicas at commit."""
    rows = _slot_rows(conn)
    conn.execute(
        routing_history.insert().values(
            generation=generation,
            at=clock.now(),
            weights={v: r.weight for v, r in rows.items() if r.weight > 0},
            shadow=sorted((v for v, r in rows.items() if r.shadow), key=version_key),
            reason=reason,
            actor=actor,
        )
    )
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": str(generation)})


def _slot(row: Any) -> SlotRow:
    return SlotRow(
        model_version=row.model_version,
        model_uri=row.model_uri,
        index_location=row.index_location,
        fingerprint=row.fingerprint,
        state=row.state,
        weight=int(row.weight or 0),
        shadow=bool(row.shadow),
        note=row.note,
        updated_at=row.updated_at,
    )


def _holdback(row: Any) -> Holdback | None:
    if row is None:
        return None
    return Holdback(model_version=row.model_version, percent=float(row.percent), salt=row.salt,
                    set_at=clock.utc_or_none(row.set_at), set_by=row.set_by)


def _table(state: Any, rows: Sequence[Any], held: Any = None) -> RoutingTable:
    ordered = sorted((_slot(r) for r in rows), key=lambda s: version_key(s.model_version))
    if state is None:
        return RoutingTable(generation=0, salt="", slots=tuple(ordered), holdback=_holdback(held))
    return RoutingTable(generation=int(state.generation), salt=state.salt, slots=tuple(ordered), holdback=_holdback(held))
