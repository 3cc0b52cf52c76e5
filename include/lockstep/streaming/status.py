"""The loader's progress per (source, consumer group), in ``lockstep_stream_consumers``.

Counts and the last applied message are written inside each batch's transaction (so they
never disagree with the store); the broker's pending and lag figures are written after
the batch is acknowledged. The serving app's ``/metrics`` (``lockstep_stream_lag``) and
the Lockstep UI page read the table, so the figures outlive the consumer process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from lockstep.core import clock
from lockstep.store.db import get_engine
from lockstep.store.schema import stream_consumers


def stream_status(engine: Engine | None = None) -> list[dict[str, Any]]:
    """Every (source, group) the loader has run for: counts, last message and sequence, pending, lag.

    Times are ISO 8601 text, so the list goes to JSON as it is (the UI page's API).
    """
    with (engine or get_engine()).connect() as conn:
        rows = conn.execute(
            select(stream_consumers).order_by(stream_consumers.c.source, stream_consumers.c.group_name)
        ).all()
    return [_as_dict(row) for row in rows]


def _as_dict(row: Any) -> dict[str, Any]:
    return {
        "source": row.source,
        "group": row.group_name,
        "consumer": row.consumer,
        "applied": int(row.applied),
        "duplicates": int(row.duplicates),
        "dead_lettered": int(row.dead_lettered),
        "last_message_id": row.last_message_id,
        "last_seq": row.last_seq,
        "last_applied_at": _iso(row.last_applied_at),
        "pending": row.pending,
        "lag": row.lag,
        "updated_at": _iso(row.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else clock.utc(value).isoformat(timespec="seconds")


def record_batch(
    conn: Connection, *, source: str, group: str, consumer: str, applied: int, duplicates: int, dead: int,
    last_message_id: str | None, last_seq: int | None,
) -> None:
    """Add one batch's counts to its (source, group) row, in the batch's own transaction."""
    now = clock.now()
    values = {"source": source, "group_name": group, "consumer": consumer, "applied": applied,
              "duplicates": duplicates, "dead_lettered": dead, "updated_at": now}
    changed: dict[str, Any] = {
        "consumer": consumer, "updated_at": now,
        "applied": stream_consumers.c.applied + applied,
        "duplicates": stream_consumers.c.duplicates + duplicates,
        "dead_lettered": stream_consumers.c.dead_lettered + dead,
    }
    if last_seq is not None:
        last = {"last_message_id": last_message_id, "last_seq": last_seq, "last_applied_at": now}
        values |= last
        changed |= last
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(stream_consumers)
    conn.execute(insert.values(**values).on_conflict_do_update(index_elements=["source", "group_name"], set_=changed))


def record_backlog(
    engine: Engine, *, source: str, group: str, consumer: str, pending: int | None, lag: int | None
) -> None:
    """The broker's figures after a batch was acknowledged (or an idle read; the row is made if new)."""
    with engine.begin() as conn:
        record_batch(conn, source=source, group=group, consumer=consumer, applied=0, duplicates=0, dead=0,
                     last_message_id=None, last_seq=None)
        conn.execute(
            update(stream_consumers)
            .where(stream_consumers.c.source == source, stream_consumers.c.group_name == group)
            .values(pending=pending, lag=lag, updated_at=clock.now())
        )
