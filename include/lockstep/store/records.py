"""The record store: the latest state of every record plus an append-only change log.

Every write (one record or a batch) is one transaction that takes the next sequence
numbers from a counter row, updates the record (a delete leaves a tombstone) and
appends a change-log entry. Because the counter row is locked until commit, sequences
become visible in order: a reader that tails ``changes_since(n)`` never skips a write
that commits late. That is what lets every index version catch up exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, Engine, Subquery, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from lockstep.core import clock
from lockstep.core.errors import InvalidRecordError, RecordNotFoundError
from lockstep.store.db import get_engine, is_postgres
from lockstep.store.schema import ID_LENGTH, changes, records, sequences

CHANGE_SEQUENCE = "changes"
MAX_TEXT_CHARS = 1_000_000

UPSERT = "upsert"
DELETE = "delete"


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    metadata: dict[str, Any] | None = None
    seq: int = 0
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Change:
    seq: int
    record_id: str
    op: str  # UPSERT | DELETE
    text: str | None
    metadata: dict[str, Any] | None
    at: datetime


@dataclass(frozen=True)
class Snapshot:
    """All live records as of change-log sequence ``seq``."""

    seq: int
    records: list[Record] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]


@dataclass(frozen=True)
class SnapshotChunk:
    """A run of consecutive live records (ordered by id) as two parallel columns.

    Columns rather than ``Record`` objects: a bulk re-embed hands texts to the model
    and ids to the index, and a million small objects would cost more than the work.
    """

    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class SnapshotStream:
    """Live records as of sequence ``seq``, read in chunks (``RecordStore.stream_snapshot``).

    ``texts_of(ids)`` reads the texts of a few records at the same state (e.g. a sample
    picked while streaming ids only).
    """

    seq: int
    chunks: Iterator[SnapshotChunk]
    texts_of: Callable[[Iterable[str]], dict[str, str]]


def validate_record(record_id: Any, text: Any, metadata: Any = None) -> str | None:
    """Refuse a record that no index could serve, naming the field that is wrong.

    Returns the metadata serialised as JSON (None without metadata), so a bulk load
    encodes it once.
    """
    if not isinstance(record_id, str) or not record_id.strip():
        raise InvalidRecordError(f"record id must be a non-empty string, got {record_id!r}")
    if len(record_id) > ID_LENGTH:
        raise InvalidRecordError(
            f"record id {record_id[:40]!r}... is {len(record_id)} characters; the limit is {ID_LENGTH}"
        )
    if not isinstance(text, str) or not text.strip():
        raise InvalidRecordError(f"record {record_id!r}: text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRecordError(
            f"record {record_id!r}: text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
        )
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidRecordError(
                f"record {record_id!r}: metadata must be a JSON object, got {type(metadata).__name__}"
            )
        try:
            return json.dumps(metadata, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidRecordError(
                f"record {record_id!r}: metadata is not JSON-serialisable ({exc})"
            ) from exc
    return None


class RecordStore:
    """Records and their change log in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine | str | None = None) -> None:
        self.engine = engine if isinstance(engine, Engine) else get_engine(engine)

    # --- writes --------------------------------------------------------------------

    def upsert(self, record_id: str, text: str, metadata: dict[str, Any] | None = None) -> int:
        """Insert or replace one record; returns its change-log sequence."""
        return self.upsert_many([Record(record_id, text, metadata)])

    def delete(self, record_id: str) -> int:
        """Delete a live record, leaving a tombstone; returns the delete's sequence."""
        with self.engine.begin() as conn:
            # Take the sequence (and with it the write lock) before reading, so the
            # check and the write see the same state; raising rolls the sequence back.
            seq = _next_seqs(conn, 1)
            row = conn.execute(
                select(records.c.deleted).where(records.c.id == record_id)
            ).first()
            if row is None or row.deleted:
                raise RecordNotFoundError(f"no live record with id {record_id!r}")
            now = clock.now()
            conn.execute(
                update(records)
                .where(records.c.id == record_id)
                .values(text=None, metadata=None, deleted=True, seq=seq, updated_at=now)
            )
            conn.execute(
                changes.insert().values(
                    seq=seq, record_id=record_id, op=DELETE, text=None, metadata=None, at=now
                )
            )
        return seq

    def upsert_many(
        self,
        items: Iterable[Record | dict[str, Any]],
        *,
        batch_size: int = 5000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Write many records, one transaction per batch; returns the last sequence.

        Every record is validated before its batch is written, so a bad record stops
        the load with nothing of its batch half-written. Within a batch a repeated id
        keeps its last occurrence (as a stream of single upserts would).
        """
        last = self.head()
        for batch in _batched(items, batch_size):
            rows: dict[str, tuple[str, str | None]] = {}
            for item in batch:
                r = _as_record(item)
                rows.pop(r.id, None)  # a repeated id moves to its last position
                rows[r.id] = (r.text, validate_record(r.id, r.text, r.metadata))
            last = self._write_batch(rows)
            if progress is not None:
                progress(len(batch))
        return last

    def _write_batch(self, rows: dict[str, tuple[str, str | None]]) -> int:
        """One transaction: reserve sequences, upsert records, append changes.

        Goes straight to the DB-API ``executemany`` with prepared tuples: SQLAlchemy's
        per-row parameter processing cost more than the writes themselves.
        """
        pg = is_postgres(self.engine)
        upsert_sql, change_sql = _BULK_SQL["postgresql" if pg else "sqlite"]
        with self.engine.begin() as conn:
            last = _next_seqs(conn, len(rows))
            now = clock.now()
            stamp = now if pg else now.strftime("%Y-%m-%d %H:%M:%S.%f")
            first = last - len(rows) + 1
            record_rows = [
                (rid, text, meta, stamp, first + i) for i, (rid, (text, meta)) in enumerate(rows.items())
            ]
            cursor = conn.connection.driver_connection.cursor()
            try:
                cursor.executemany(upsert_sql, record_rows)
                cursor.executemany(
                    change_sql, [(seq, rid, UPSERT, text, meta, stamp) for rid, text, meta, stamp, seq in record_rows]
                )
            finally:
                cursor.close()
        return last

    # --- reads ---------------------------------------------------------------------

    def head(self) -> int:
        """The last sequence committed (0 for an empty store)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(sequences.c.value).where(sequences.c.name == CHANGE_SEQUENCE)
            ).scalar()
        return int(value or 0)

    def get(self, record_id: str) -> Record | None:
        """The live record with this id, or None (also for a tombstone)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(records).where(and_(records.c.id == record_id, ~records.c.deleted))
            ).first()
        return _row_to_record(row) if row is not None else None

    def count(self) -> int:
        """How many live records there are now."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(records).where(~records.c.deleted)).scalar()
                or 0
            )

    def snapshot(self, at_seq: int | None = None) -> Snapshot:
        """Every live record as of ``at_seq`` (default: now), ordered by id.

        "Now" is read in one transaction (repeatable read on PostgreSQL) from the
        records table; a past sequence is rebuilt from the change log, taking each
        record's last change at or before it.
        """
        if at_seq is None:
            with self._read_transaction() as conn:
                seq = int(
                    conn.execute(
                        select(sequences.c.value).where(sequences.c.name == CHANGE_SEQUENCE)
                    ).scalar()
                    or 0
                )
                rows = conn.execute(
                    select(records).where(~records.c.deleted).order_by(records.c.id)
                ).all()
            return Snapshot(seq, [_row_to_record(r) for r in rows])
        head = self.head()
        if at_seq < 0 or at_seq > head:
            raise ValueError(f"sequence {at_seq} is outside the change log (0..{head})")
        last = last_change_seqs(at_seq)
        stmt = (
            select(changes)
            .join(last, changes.c.seq == last.c.seq)
            .where(changes.c.op == UPSERT)
            .order_by(changes.c.record_id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return Snapshot(
            at_seq,
            [Record(r.record_id, r.text, _load_meta(r.metadata), r.seq, r.at) for r in rows],
        )

    @contextmanager
    def stream_snapshot(self, chunk_size: int = 10_000, *, texts: bool = True) -> Iterator[SnapshotStream]:
        """Every live record as of now, ordered by id, in chunks of ``chunk_size``.

        The bounded-memory form of ``snapshot()`` (ids and texts only; ``texts=False``:
        ids only, read from the covering index): one read transaction (repeatable read on
        PostgreSQL, a WAL read transaction on SQLite, so writers are never blocked) and a
        server-side cursor, so at most one chunk is in memory however many records there
        are. The stream is valid inside the ``with``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
        with self._read_transaction() as conn:
            seq = int(
                conn.execute(select(sequences.c.value).where(sequences.c.name == CHANGE_SEQUENCE)).scalar() or 0
            )
            cursor = _snapshot_cursor(conn, texts)
            try:
                yield SnapshotStream(seq, _chunks(cursor, chunk_size, texts), lambda ids: _texts_of(conn, ids))
            finally:
                cursor.close()

    def changes_since(self, seq: int, *, until: int | None = None, limit: int | None = None) -> list[Change]:
        """Changes with a sequence greater than ``seq`` (and at most ``until``), in order."""
        stmt = select(changes).where(changes.c.seq > seq).order_by(changes.c.seq)
        if until is not None:
            stmt = stmt.where(changes.c.seq <= until)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [Change(r.seq, r.record_id, r.op, r.text, _load_meta(r.metadata), r.at) for r in rows]

    def iter_changes_since(self, seq: int, *, until: int | None = None, page: int = 5000) -> Iterator[Change]:
        """Like ``changes_since`` but paged, for long catch-ups."""
        while True:
            batch = self.changes_since(seq, until=until, limit=page)
            yield from batch
            if len(batch) < page:
                return
            seq = batch[-1].seq

    def get_many(self, ids: Iterable[str]) -> dict[str, Record]:
        """Live records for the given ids (missing and deleted ids are left out)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Record] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(records).where(and_(records.c.id.in_(chunk), ~records.c.deleted))
                ).all()
            found.update({r.id: _row_to_record(r) for r in rows})
        return found

    @contextmanager
    def _read_transaction(self) -> Iterator[Connection]:
        """One transaction whose reads all see the same committed state."""
        with self.engine.connect() as conn:
            if is_postgres(self.engine):
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn


# --- helpers ---------------------------------------------------------------------------

_UPSERT_SQL = (
    "INSERT INTO lockstep_records (id, text, metadata, updated_at, seq, deleted) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {false}) "
    "ON CONFLICT (id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata, "
    "updated_at = excluded.updated_at, seq = excluded.seq, deleted = excluded.deleted"
)
_CHANGE_SQL = (
    "INSERT INTO lockstep_changes (seq, record_id, op, text, metadata, at) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
)
_BULK_SQL = {
    "sqlite": (_UPSERT_SQL.format(p="?", false="0"), _CHANGE_SQL.format(p="?")),
    "postgresql": (_UPSERT_SQL.format(p="%s", false="false"), _CHANGE_SQL.format(p="%s")),
}


def _next_seqs(conn: Connection, n: int) -> int:
    """Reserve ``n`` sequence numbers in this transaction; returns the last one.

    The UPDATE takes the counter row's lock, which every writer needs, so writers
    commit in sequence order.
    """
    result = conn.execute(
        update(sequences)
        .where(sequences.c.name == CHANGE_SEQUENCE)
        .values(value=sequences.c.value + n)
        .returning(sequences.c.value)
    ).scalar()
    if result is None:
        insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(sequences)
        conn.execute(insert.values(name=CHANGE_SEQUENCE, value=0).on_conflict_do_nothing())
        return _next_seqs(conn, n)
    return int(result)


def _as_record(item: Record | dict[str, Any]) -> Record:
    if isinstance(item, Record):
        return item
    if not isinstance(item, dict):
        raise InvalidRecordError(f"a record must be a mapping with 'id' and 'text', got {type(item).__name__}")
    meta = item.get("metadata")
    if isinstance(meta, float) and math.isnan(meta):
        meta = None
    return Record(item.get("id"), item.get("text"), meta)  # type: ignore[arg-type]


def _row_to_record(row: Any) -> Record:
    return Record(row.id, row.text, _load_meta(row.metadata), int(row.seq), row.updated_at)


def _load_meta(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else json.loads(raw)


def last_change_seqs(at_seq: int) -> Subquery:
    """Each record's last change at or before ``at_seq`` (record_id, seq): a past snapshot's rows."""
    return (
        select(changes.c.record_id, func.max(changes.c.seq).label("seq"))
        .where(changes.c.seq <= at_seq)
        .group_by(changes.c.record_id)
        .subquery()
    )


_SNAPSHOT_SQL = "SELECT id{text} FROM lockstep_records WHERE NOT deleted ORDER BY id"


def _snapshot_cursor(conn: Connection, texts: bool) -> Any:
    """A DB-API cursor over the live records, in the transaction of ``conn``.

    Straight to the driver (as ``_write_batch`` does): SQLAlchemy's per-row result
    processing cost more than SQLite's read itself (a third of a 1M-record snapshot). On
    PostgreSQL a named (server-side) cursor, so only one chunk crosses the wire at a time.
    """
    raw = conn.connection.dbapi_connection
    cursor = raw.cursor(name="lockstep_snapshot") if is_postgres(conn.engine) else raw.cursor()
    cursor.execute(_SNAPSHOT_SQL.format(text=", text" if texts else ""))
    return cursor


def _chunks(cursor: Any, size: int, texts: bool) -> Iterator[SnapshotChunk]:
    while rows := cursor.fetchmany(size):
        yield SnapshotChunk([r[0] for r in rows], [r[1] for r in rows] if texts else [])


def _texts_of(conn: Connection, ids: Iterable[str]) -> dict[str, str]:
    """Texts of live records by id, read on ``conn`` (so at the state of its transaction)."""
    wanted = list(dict.fromkeys(ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            select(records.c.id, records.c.text).where(
                and_(records.c.id.in_(wanted[start : start + 500]), ~records.c.deleted)
            )
        ).all()
        found.update({r.id: r.text for r in rows})
    return found


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- writes in the caller's transaction (the streaming loader, issue 13) ----------------------

_TOMBSTONE_SQL = {
    "sqlite": "UPDATE lockstep_records SET text = NULL, metadata = NULL, deleted = 1, seq = ?, updated_at = ? WHERE id = ?",
    "postgresql": "UPDATE lockstep_records SET text = NULL, metadata = NULL, deleted = true, seq = %s, updated_at = %s "
    "WHERE id = %s",
}


@dataclass(frozen=True)
class PendingWrite:
    """One checked write for ``write_changes``: metadata already JSON text (``validate_record``)."""

    op: str  # UPSERT | DELETE
    record_id: str
    text: str | None = None
    metadata_json: str | None = None


def lock_change_log(conn: Connection) -> int:
    """Take the change-log counter's lock in this transaction; returns the head sequence.

    Every writer takes this lock, so what the caller reads after it (which records are live,
    which messages were applied) stays true until its transaction commits.
    """
    return _next_seqs(conn, 0)


def write_changes(conn: Connection, writes: list[PendingWrite]) -> list[int]:
    """Write upserts and deletes in the caller's transaction, in order; one sequence each.

    The rows ``upsert_many`` and ``delete`` write (the record's state, a tombstone for a
    delete, one change-log entry per write), for a writer that must commit something else
    with its changes: the streaming loader stores each message's id in the same
    transaction. The caller validated each record and checked that a delete names a live
    record (``lock_change_log`` first, so the check holds until commit).
    """
    if not writes:
        return []
    dialect = "postgresql" if conn.dialect.name == "postgresql" else "sqlite"
    upsert_sql, change_sql = _BULK_SQL[dialect]
    last = _next_seqs(conn, len(writes))
    seqs = list(range(last - len(writes) + 1, last + 1))
    now = clock.now()
    stamp = now if dialect == "postgresql" else now.strftime("%Y-%m-%d %H:%M:%S.%f")
    cursor = conn.connection.driver_connection.cursor()
    try:
        # consecutive writes of one kind go together; the runs keep the stream's order per record
        for op, group in groupby(zip(seqs, writes, strict=True), key=lambda pair: pair[1].op):
            run = list(group)
            if op == UPSERT:
                cursor.executemany(upsert_sql, [(w.record_id, w.text, w.metadata_json, stamp, s) for s, w in run])
            else:
                cursor.executemany(_TOMBSTONE_SQL[dialect], [(s, stamp, w.record_id) for s, w in run])
        cursor.executemany(change_sql, [
            (s, w.record_id, w.op, w.text if w.op == UPSERT else None, w.metadata_json if w.op == UPSERT else None, stamp)
            for s, w in zip(seqs, writes, strict=True)
        ])
    finally:
        cursor.close()
    return seqs
