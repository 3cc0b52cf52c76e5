"""Request, shadow and feedback logs, written in batches off the request path.

A search must not wait for a database write, nor even wake a thread: rows are appended
to an in-memory buffer (a deque append, no lock, no wake-up) and one writer thread
swaps the buffer out and inserts its rows, a table at a time in one transaction, every
``flush_interval`` seconds, or as soon as ``batch_size`` rows wait. When ``max_pending``
rows wait (the database is down or slow) new rows are dropped and counted rather than
slowing traffic; the rollout gates read these tables and treat missing data as
inconclusive, never as a pass.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, Table

from ..schema import feedback_log, request_log, shadow_log

log = logging.getLogger("lockstep.serving")


class LogWriter:
    """Batches rows for the log tables and writes them from one background thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        flush_interval: float = 0.5,
        batch_size: int = 500,
        max_pending: int = 50_000,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.on_drop = on_drop
        self.max_pending = max_pending
        self.written: dict[str, int] = defaultdict(int)
        self.dropped: dict[str, int] = defaultdict(int)
        self._buffer: deque[tuple[Table, dict[str, Any]]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- producers (request threads) -------------------------------------------------------

    def request(
        self,
        *,
        request_id: str,
        model_version: str,
        query: str,
        k: int,
        latency_ms: float,
        status: int,
        top_ids: list[str],
        user_id: str | None = None,
        replica: str | None = None,
        at: datetime | None = None,
    ) -> None:
        self._put(
            request_log,
            {
                "request_id": request_id,
                "at": at or _now(),
                "model_version": model_version,
                "user_id": user_id,
                "query": query,
                "k": k,
                "latency_ms": latency_ms,
                "status": status,
                "top_ids": top_ids,
                "replica": replica,
            },
        )

    def shadow(
        self,
        *,
        request_id: str,
        live_version: str,
        shadow_version: str,
        live_top_ids: list[str],
        shadow_top_ids: list[str] | None,
        latency_ms: float | None,
        error: str | None = None,
        at: datetime | None = None,
    ) -> None:
        self._put(
            shadow_log,
            {
                "request_id": request_id,
                "at": at or _now(),
                "live_version": live_version,
                "shadow_version": shadow_version,
                "live_top_ids": live_top_ids,
                "shadow_top_ids": shadow_top_ids,
                "latency_ms": latency_ms,
                "error": error,
            },
        )

    def feedback(self, *, request_id: str, record_id: str, event: str, at: datetime | None = None) -> None:
        self._put(feedback_log, {"request_id": request_id, "record_id": record_id, "event": event, "at": at or _now()})

    def _put(self, table: Table, row: dict[str, Any]) -> None:
        pending = len(self._buffer)
        if pending >= self.max_pending:
            self._drop(table.name, 1)
            return
        self._buffer.append((table, row))
        if pending + 1 == self.batch_size:
            self._wake.set()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="lockstep-log-writer", daemon=True)
            self._thread.start()

    def flush(self) -> int:
        """Write every row buffered before this call, in the caller's thread; returns how many."""
        with self._write_lock:
            batch = self._take()
            self._write(batch)
        return len(batch)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is buffered, then end the writer thread."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()

    def _take(self) -> list[tuple[Table, dict[str, Any]]]:
        batch = []
        for _ in range(len(self._buffer)):
            batch.append(self._buffer.popleft())
        return batch

    def _write(self, batch: list[tuple[Table, dict[str, Any]]]) -> None:
        by_table: dict[Table, list[dict[str, Any]]] = defaultdict(list)
        for table, row in batch:
            by_table[table].append(row)
        for table, rows in by_table.items():
            try:
                _insert_many(self.engine, table, rows)
                self.written[table.name] += len(rows)
            except Exception:
                log.exception("writing %d rows to %s failed; they are dropped", len(rows), table.name)
                self._drop(table.name, len(rows))

    def _drop(self, table: str, count: int) -> None:
        self.dropped[table] += count
        if self.on_drop is not None:
            self.on_drop(table, count)


def _insert_many(engine: Engine, table: Table, rows: list[dict[str, Any]]) -> None:
    """One transaction of DB-API ``executemany``: SQLAlchemy's per-row processing cost
    several times the insert itself, and the serving process pays it in GIL time.
    """
    pg = engine.dialect.name == "postgresql"
    columns = [c for c in table.columns if c.name in rows[0]]
    names = [c.name for c in columns]
    marker = "%s" if pg else "?"
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([marker] * len(names))})"
    converters = [_converter(c, pg) for c in columns]
    params = [
        tuple(v if f is None or v is None else f(v) for f, v in zip(converters, map(row.get, names), strict=True))
        for row in rows
    ]
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.executemany(sql, params)
        finally:
            cursor.close()


def _converter(column: Any, pg: bool) -> Callable[[Any], Any] | None:
    if isinstance(column.type, JSON):
        return _dump_json
    if isinstance(column.type, DateTime) and not pg:
        return _sqlite_stamp
    return None


def _dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _sqlite_stamp(value: datetime) -> str:
    """The text form SQLAlchemy's SQLite ``DateTime`` stores and parses back (UTC)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _now() -> datetime:
    return datetime.now(UTC)
