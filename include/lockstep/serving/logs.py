"""Request, shadow and feedback logs, written in batches off the request path.

A search must not wait for a database write, nor even wake a thread: rows are appended
to an in-memory buffer (a deque append, no lock, no wake-up) and one writer thread
swaps the buffer out and inserts its rows, a table at a time in one transaction, every
``flush_interval`` seconds, or as soon as ``batch_size`` rows wait. When ``max_pending``
rows wait (the database is down or slow) new rows are dropped and counted rather than
slowing traffic; the rollout gates read these tables and treat missing data as
inconclusive, never as a pass.

One bad row never costs the batch: when an insert fails for a reason other than the
connection (a value the database refuses), the batch is split in halves and retried,
down to the single rows at fault, which are rejected, logged and counted. When the
database cannot be reached, the rows go back to the buffer (up to ``max_pending``) and
the writer backs off, logging once when the outage starts and once when it ends.

Nothing buffered is lost on a stop: the app's shutdown (after uvicorn's graceful
timeout on SIGTERM) calls ``stop``, which writes every row, and a process that exits
without that shutdown (a second Ctrl-C, an error while starting) still writes its rows
at interpreter exit. Only SIGKILL loses them, which is why the graceful timeout stays
under compose's ``stop_grace_period``.
"""

from __future__ import annotations

import atexit
import json
import logging
import sqlite3
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, Table
from sqlalchemy import exc as sa_exc

from lockstep.core import clock
from lockstep.serving.outage import Outage, summary
from lockstep.store.schema import feedback_log, request_log, shadow_log

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
        on_reject: Callable[[str, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.on_drop = on_drop
        self.on_reject = on_reject
        self.max_pending = max_pending
        self.written: dict[str, int] = defaultdict(int)
        self.dropped: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        self.health = Outage("request/shadow/feedback log writer", flush_interval)
        self._delay = flush_interval  # grows while the database cannot be reached
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
        pinned: bool = False,
        holdback: bool = False,
    ) -> None:
        self._put(
            request_log,
            {
                "request_id": request_id,
                "at": at or clock.now(),
                "model_version": model_version,
                "user_id": user_id,
                "query": query,
                "k": k,
                "latency_ms": latency_ms,
                "status": status,
                "top_ids": top_ids,
                "replica": replica,
                "pinned": pinned,
                "holdback": holdback,
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
                "at": at or clock.now(),
                "live_version": live_version,
                "shadow_version": shadow_version,
                "live_top_ids": live_top_ids,
                "shadow_top_ids": shadow_top_ids,
                "latency_ms": latency_ms,
                "error": error,
            },
        )

    def feedback(self, *, request_id: str, record_id: str, event: str, at: datetime | None = None) -> None:
        self._put(feedback_log, {"request_id": request_id, "record_id": record_id, "event": event, "at": at or clock.now()})

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
            atexit.register(self._flush_at_exit)

    def flush(self) -> int:
        """Write every row buffered before this call, in the caller's thread; returns how many."""
        with self._write_lock:
            batch = self._take()
            self._write(batch)
        return len(batch)

    def stop(self, timeout: float = 10.0) -> None:
        """End the writer thread, then write what is buffered, including rows that requests
        still finishing add meanwhile (a few rounds; an unreachable database keeps them)."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None
            atexit.unregister(self._flush_at_exit)
        for _ in range(3):
            if not self.flush() or not self._buffer or self.health.down:
                break

    def _flush_at_exit(self) -> None:
        """The last chance for rows of a process that exits without the app's shutdown."""
        try:
            written = self.flush()
        except Exception as exc:  # exiting anyway: say what is lost, do not raise at exit
            log.error("writing the last %d log rows at exit failed: %s", self.pending, summary(exc))
            return
        if written:
            log.info("wrote %d buffered log rows at exit", written)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._delay)
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
                self._insert_or_split(table, rows)
            except _Unreachable as exc:
                self._delay = self.health.failed(exc.__cause__ or exc)
                self._requeue(table, rows)
            else:
                self._delay = self.health.ok()

    def _insert_or_split(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; on a refused value, bisect down to the rows at fault and reject them."""
        try:
            _insert_many(self.engine, table, rows)
        except Exception as exc:
            if is_connection_error(exc):
                raise _Unreachable() from exc
            if len(rows) == 1:
                self._reject(table, rows[0], exc)
                return
            middle = len(rows) // 2
            self._insert_or_split(table, rows[:middle])
            self._insert_or_split(table, rows[middle:])
            return
        self.written[table.name] += len(rows)

    def _requeue(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Put rows back at the front of the buffer (oldest first) as far as room allows."""
        room = max(0, self.max_pending - len(self._buffer))
        kept = rows[:room]
        for row in reversed(kept):
            self._buffer.appendleft((table, row))
        if len(rows) > len(kept):
            self._drop(table.name, len(rows) - len(kept))

    def _reject(self, table: Table, row: dict[str, Any], exc: Exception) -> None:
        self.rejected[table.name] += 1
        if self.on_reject is not None:
            self.on_reject(table.name, 1)
        log.error("the database refused one row of %s (request_id %s): %s; the rest of its batch is written",
                  table.name, row.get("request_id"), summary(exc))

    def _drop(self, table: str, count: int) -> None:
        self.dropped[table] += count
        if self.on_drop is not None:
            self.on_drop(table, count)


class _Unreachable(Exception):
    """The database could not be reached; the rows are kept for the next attempt."""


def is_connection_error(exc: BaseException) -> bool:
    """An error of the connection, not of the rows (retrying the same rows later may work).

    SQLAlchemy wraps errors raised while connecting; the raw driver cursor used for the
    inserts raises the driver's own classes.
    """
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sqlite3.OperationalError, sqlite3.InterfaceError)):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


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
