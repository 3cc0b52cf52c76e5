"""The batched log writer on both back ends: rows round-trip, drops are counted, stop flushes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import select

from lockstep.serving.logs import LogWriter
from lockstep.store.db import get_engine
from lockstep.store.schema import feedback_log, request_log, shadow_log


def test_rows_round_trip_through_the_batched_writer(database_url):
    engine = get_engine(database_url)
    dropped = []
    writer = LogWriter(engine, flush_interval=0.05, batch_size=3, max_pending=5, on_drop=lambda t, n: dropped.append((t, n)))
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    writer.request(request_id="r1", model_version="2", query="rocket", k=5, latency_ms=1.5, status=200,
                   top_ids=["a", "b"], user_id="u1", replica="x", at=at)
    writer.shadow(request_id="r1", live_version="2", shadow_version="3", live_top_ids=["a", "b"],
                  shadow_top_ids=None, latency_ms=None, error="boom", at=at)
    writer.feedback(request_id="r1", record_id="a", event="click", at=at)
    assert writer.pending == 3 and writer.flush() == 3 and writer.pending == 0
    with engine.connect() as conn:
        req = conn.execute(select(request_log)).one()
        shadow = conn.execute(select(shadow_log)).one()
        click = conn.execute(select(feedback_log)).one()
    assert (req.request_id, req.model_version, req.query, req.k, req.status, req.top_ids, req.user_id) == (
        "r1", "2", "rocket", 5, 200, ["a", "b"], "u1"
    )
    assert req.at.replace(tzinfo=None) == at.replace(tzinfo=None) and req.latency_ms == 1.5
    assert (shadow.shadow_top_ids, shadow.error, shadow.live_top_ids) == (None, "boom", ["a", "b"])
    assert (click.request_id, click.record_id, click.event) == ("r1", "a", "click")

    # a full buffer drops and counts instead of blocking
    for i in range(7):
        writer.feedback(request_id=f"q{i}", record_id="a", event="click")
    assert writer.pending == 5 and writer.dropped["lockstep_feedback_log"] == 2 and dropped == [("lockstep_feedback_log", 1)] * 2
    # the writer thread flushes on its own, and stop writes the rest
    writer.start()
    deadline = time.monotonic() + 5
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.pending == 0
    writer.feedback(request_id="last", record_id="a", event="click")
    writer.stop()
    with engine.connect() as conn:
        ids = {r.request_id for r in conn.execute(select(feedback_log)).all()}
    assert ids == {"r1", "last", *(f"q{i}" for i in range(5))}
    assert writer.written["lockstep_feedback_log"] == 7


def test_a_database_made_before_the_pinned_column_gets_it(database_url):
    """A request log made before migrations gains ``pinned`` on first use (adopted by the migrations)."""
    from sqlalchemy import Column, MetaData, Table, create_engine, insert

    from lockstep.store.db import _normalise
    from lockstep.store.migrations import upgrade_database

    old = MetaData()
    Table("lockstep_request_log", old, *[Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                                         for c in request_log.columns if c.name not in ("pinned", "holdback")])
    raw = create_engine(_normalise(database_url))
    old.create_all(raw)
    with raw.begin() as conn:
        conn.execute(insert(old.tables["lockstep_request_log"]), [{
            "request_id": "before", "at": datetime.now(UTC), "model_version": "1", "k": 5, "latency_ms": 1.0,
            "status": 200, "top_ids": ["a"],
        }])
    raw.dispose()
    engine = get_engine(database_url)  # creates the other tables and adds the column
    with engine.connect() as conn:
        assert conn.execute(select(request_log.c.request_id, request_log.c.pinned)).all() == [("before", False)]
    assert not upgrade_database(engine).changed  # idempotent
    writer = LogWriter(engine)
    writer.request(request_id="after", model_version="1", query="q", k=5, latency_ms=1.0, status=200, top_ids=[], pinned=True)
    writer.flush()
    with engine.connect() as conn:
        assert dict(conn.execute(select(request_log.c.request_id, request_log.c.pinned)).all()) == {"before": False, "after": True}
