"""The interaction store: the recommender's change log, its item catalogue and its users.

An interaction (user, item, value, event time) is appended, never updated: the table is
the recommender's change log, as ``lockstep_changes`` is the search system's. Every write
is one transaction that takes its sequence numbers from the counter row "interactions" of
``lockstep_sequences``; the row stays locked until commit, so sequences become visible in
order and a fold-in tailing ``changes_since(n)`` never skips a write that commits late
(an autoincrement column could not promise that on PostgreSQL). It also makes any
``seq <= S`` read a consistent snapshot once ``S`` has been read from the counter.

Items form a catalogue that interactions must name (an unknown item is refused with
``UnknownItemError`` unless the caller allows new items); users join with their first
interaction. Both remember the sequence of their first interaction, which is when a new
user or item joins the model by fold-in.

An interaction may carry a ``source_message_id`` (a message's id, a file row's content
hash): a second write with the same id is the same event and is skipped, so a retried
message or a reloaded file is never counted twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from lockstep.core import clock
from lockstep.store.db import get_engine, in_chunks, is_postgres
from lockstep.store.interactions.checks import (
    Row,
    UnknownItemError,
    catalogue_rows,
    checked_one,
    now_seconds,
    prepare_interactions,
)
from lockstep.store.schema import interactions, items, sequences, users

INTERACTION_SEQUENCE = "interactions"
COLUMNS = ("seq", "user_id", "item_id", "value", "timestamp")  # of snapshots and the catch-up log
_IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class LoadResult:
    """What ``add_many`` did: rows written, rows skipped as already stored, their sequences."""

    added: int
    skipped: int
    first_seq: int | None
    last_seq: int | None

    def describe(self) -> str:
        if not self.added:
            return f"nothing new: all {self.skipped:,} interactions were stored before"
        again = f"; {self.skipped:,} stored before were skipped" if self.skipped else ""
        return f"{self.added:,} interactions at sequences {self.first_seq}..{self.last_seq}{again}"


class InteractionStore:
    """Interactions, items and users in the Lockstep database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine | str | None = None) -> None:
        self.engine = engine if isinstance(engine, Engine) else get_engine(engine)

    # --- writes --------------------------------------------------------------------------

    def add(
        self,
        user_id: str,
        item_id: str,
        value: float = 1.0,
        timestamp: int | None = None,
        *,
        allow_new_item: bool = False,
        source_message_id: str | None = None,
    ) -> int:
        """Append one interaction in one transaction; returns its sequence.

        ``timestamp`` is the event time in seconds (default: now). A ``source_message_id``
        already stored returns that interaction's sequence and writes nothing.
        """
        row = checked_one(user_id, item_id, value, now_seconds() if timestamp is None else timestamp,
                           source_message_id)
        if not allow_new_item:
            self._refuse_unknown([item_id])
        if source_message_id is None:  # nothing to read first: the insert takes the lock itself
            with self.engine.begin() as conn:
                return _insert_batch(conn, [row])
        with self._write() as conn:
            stored = conn.execute(
                select(interactions.c.seq).where(interactions.c.source_message_id == source_message_id)
            ).scalar()
            return int(stored) if stored is not None else _insert_batch(conn, [row])

    def add_many(
        self,
        frame: pd.DataFrame,
        *,
        allow_new_items: bool = False,
        batch_size: int = 20_000,
        progress: Callable[[int], None] | None = None,
    ) -> LoadResult:
        """Append many interactions (columns user_id, item_id, optional value, timestamp,
        source_message_id), one transaction per batch, in the frame's order.

        The whole frame is checked before the first batch is written (bad rows and unknown
        items are refused with nothing written). A crash mid-load leaves whole batches; with
        message ids, loading the same frame again writes only what is missing.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        rows = prepare_interactions(frame)
        if not allow_new_items:
            self._refuse_unknown(rows["item_id"].unique())
        added = skipped = 0
        first = last = None
        as_tuples = list(zip(rows["user_id"].tolist(), rows["item_id"].tolist(), rows["value"].tolist(),
                             rows["timestamp"].tolist(), _message_ids(rows), strict=True))
        for start in range(0, len(as_tuples), batch_size):
            batch = as_tuples[start : start + batch_size]
            with self._write() as conn:
                fresh = _without_stored(conn, batch)
                if fresh:
                    last = _insert_batch(conn, fresh)
                    first = first if first is not None else last - len(fresh) + 1
            added, skipped = added + len(fresh), skipped + len(batch) - len(fresh)
            if progress is not None:
                progress(len(batch))
        return LoadResult(added, skipped, first, last)

    def upsert_items(self, frame: pd.DataFrame) -> int:
        """Add or update catalogue items (item_id; optional title, metadata; any other column
        goes into metadata); returns how many were new. First-seen sequences are kept."""
        return self._upsert_catalogue(frame, "item_id", _ITEM_UPSERT, title=True)

    def upsert_users(self, frame: pd.DataFrame) -> int:
        """Add or update users (user_id; optional metadata; other columns go into metadata);
        returns how many were new. Users also join by their first interaction."""
        return self._upsert_catalogue(frame, "user_id", _USER_UPSERT, title=False)

    # --- reads ---------------------------------------------------------------------------

    def max_seq(self) -> int:
        """The last sequence committed (0 for an empty store)."""
        with self.engine.connect() as conn:
            return _counter(conn)

    def count(self) -> int:
        """How many interactions are stored."""
        return self._scalar(select(func.count()).select_from(interactions))

    def item_count(self) -> int:
        return self._scalar(select(func.count()).select_from(items))

    def user_count(self) -> int:
        return self._scalar(select(func.count()).select_from(users))

    def unknown_items(self, item_ids: Iterable[str]) -> list[str]:
        """The given ids that are not in the catalogue, in the order given (each once)."""
        wanted = list(dict.fromkeys(item_ids))
        with self.engine.connect() as conn:
            known = _existing(conn, "lockstep_items", "item_id", wanted)
        return [i for i in wanted if i not in known]

    def items(self) -> pd.DataFrame:
        """The catalogue: item_id, title, metadata (dict or None), first_seen_seq, by item_id."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items.c.item_id, items.c.title, items.c.metadata, items.c.first_seen_seq).order_by(items.c.item_id)
            ).all()
        return pd.DataFrame({
            "item_id": pd.Series([r.item_id for r in rows], dtype="str"),
            "title": pd.Series([r.title for r in rows], dtype=object),  # None stays None
            "metadata": pd.Series([None if r.metadata is None else json.loads(r.metadata) for r in rows], dtype=object),
            "first_seen_seq": pd.array([r.first_seen_seq for r in rows], dtype="Int64"),
        })

    def snapshot(self, at_seq: int | None = None, *, page: int = 50_000) -> pd.DataFrame:
        """Every interaction up to ``at_seq`` (default: now) in sequence order, read in pages.

        Columns seq (int64), user_id, item_id (pandas str), value (float32), timestamp (int64);
        ``frame.attrs["seq"]`` is the sequence it stands at.
        """
        frames = list(self.iter_snapshot(at_seq, page=page))
        frame = pd.concat(frames, ignore_index=True) if frames else _frame([])
        frame.attrs["seq"] = frames[0].attrs["seq"] if frames else self._checked_seq(at_seq)
        return frame

    def iter_snapshot(self, at_seq: int | None = None, *, page: int = 50_000) -> Iterator[pd.DataFrame]:
        """``snapshot`` as frames of at most ``page`` rows (each with ``attrs["seq"]``), so a
        large log never has to be in memory at once."""
        seq = self._checked_seq(at_seq)
        for chunk in self._pages(0, seq, page):
            chunk.attrs["seq"] = seq
            yield chunk

    def changes_since(self, seq: int, *, until: int | None = None, limit: int | None = None) -> pd.DataFrame:
        """Interactions with a sequence greater than ``seq`` (and at most ``until``), in
        order: the catch-up log of a fold-in that has applied everything up to ``seq``."""
        stmt = _select_rows().where(interactions.c.seq > seq).order_by(interactions.c.seq)
        if until is not None:
            stmt = stmt.where(interactions.c.seq <= until)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return _frame(conn.execute(stmt).all())

    def interactions_of(self, user_id: str, *, until: int | None = None) -> tuple[list[str], np.ndarray]:
        """One user's interactions in sequence order: (item ids, values as float32).

        Repeated (user, item) pairs come back as they were stored; summing or keeping the
        last is the model's choice.
        """
        return self._one_side(interactions.c.user_id, user_id, interactions.c.item_id, until)

    def users_of(self, item_id: str, *, until: int | None = None) -> tuple[list[str], np.ndarray]:
        """One item's interactions in sequence order: (user ids, values as float32)."""
        return self._one_side(interactions.c.item_id, item_id, interactions.c.user_id, until)

    def users_changed_since(self, seq: int, *, until: int | None = None) -> list[str]:
        """Users with an interaction after ``seq`` (sorted): whose vectors a fold-in redoes."""
        return self._changed_since(interactions.c.user_id, seq, until)

    def items_changed_since(self, seq: int, *, until: int | None = None) -> list[str]:
        """Items with an interaction after ``seq`` (sorted)."""
        return self._changed_since(interactions.c.item_id, seq, until)

    def items_first_seen_since(self, seq: int, *, until: int | None = None) -> list[str]:
        """Items whose first interaction came after ``seq`` (sorted): the catalogue's new
        items that join an item index by fold-in."""
        stmt = select(items.c.item_id).where(items.c.first_seen_seq > seq).order_by(items.c.item_id)
        if until is not None:
            stmt = stmt.where(items.c.first_seen_seq <= until)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    # --- internals -----------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction holding the counter row's lock from its first statement.

        Taken before any read (SQLite cannot turn a read transaction into a write one once
        another writer committed), so what the transaction reads stays true until commit.
        """
        with self.engine.begin() as conn:
            _reserve(conn, 0)
            yield conn

    def _refuse_unknown(self, item_ids: Iterable[str]) -> None:
        unknown = self.unknown_items(item_ids)
        if unknown:
            raise UnknownItemError(unknown)

    def _upsert_catalogue(self, frame: pd.DataFrame, key: str, sql: dict[str, str], *, title: bool) -> int:
        rows = catalogue_rows(frame, key, title=title)
        stamp = _stamp(self.engine, clock.now())
        ids = [r[0] for r in rows]
        table = "lockstep_items" if key == "item_id" else "lockstep_users"
        with self._write() as conn:
            known = _existing(conn, table, key, ids)
            _executemany(conn, sql, [(*r, stamp) for r in rows])
        return len(set(ids) - known)

    def _checked_seq(self, at_seq: int | None) -> int:
        head = self.max_seq()
        if at_seq is None:
            return head
        if at_seq < 0 or at_seq > head:
            raise ValueError(f"sequence {at_seq} is outside the interaction log (0..{head})")
        return at_seq

    def _pages(self, after: int, until: int, page: int) -> Iterator[pd.DataFrame]:
        """Rows after ``after`` up to ``until``, by keyset pages (each its own short read):
        sequences up to a committed counter value never change, so the pages agree."""
        if page < 1:
            raise ValueError(f"page size must be at least 1, got {page}")
        while after < until:
            stmt = (_select_rows().where(interactions.c.seq > after, interactions.c.seq <= until)
                    .order_by(interactions.c.seq).limit(page))
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
            if not rows:
                return
            yield _frame(rows)
            after = int(rows[-1][0])

    def _one_side(self, column, key: str, other, until: int | None) -> tuple[list[str], np.ndarray]:
        stmt = select(other, interactions.c.value).where(column == key).order_by(interactions.c.seq)
        if until is not None:
            stmt = stmt.where(interactions.c.seq <= until)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float32)

    def _changed_since(self, column, seq: int, until: int | None) -> list[str]:
        stmt = select(column).distinct().where(interactions.c.seq > seq).order_by(column)
        if until is not None:
            stmt = stmt.where(interactions.c.seq <= until)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def _scalar(self, stmt) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)


# --- writing -------------------------------------------------------------------------------------


_INSERT = (
    "INSERT INTO lockstep_interactions (seq, user_id, item_id, value, timestamp, recorded_at, source_message_id) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})"
)
# A user or item's first interaction: set once, never moved later.
_FIRST_SEEN = (
    "INSERT INTO lockstep_{table}s ({key}, first_seen_seq, added_at) VALUES ({p}, {p}, {p}) "
    "ON CONFLICT ({key}) DO UPDATE SET first_seen_seq = excluded.first_seen_seq "
    "WHERE lockstep_{table}s.first_seen_seq IS NULL"
)
_CATALOGUE = (
    "INSERT INTO lockstep_{table}s ({key}, {fields}, added_at) VALUES ({p}, {values}, {p}) "
    "ON CONFLICT ({key}) DO UPDATE SET {updates}"
)


def _sql(template: str, **names: str) -> dict[str, str]:
    return {"sqlite": template.format(p="?", **names).replace("%s", "?"),
            "postgresql": template.format(p="%s", **names)}


_INSERT_SQL = _sql(_INSERT)
_USER_FIRST_SEEN = _sql(_FIRST_SEEN, table="user", key="user_id")
_ITEM_FIRST_SEEN = _sql(_FIRST_SEEN, table="item", key="item_id")
_ITEM_UPSERT = _sql(_CATALOGUE, table="item", key="item_id", fields="title, metadata", values="%s, %s",
                    updates="title = excluded.title, metadata = excluded.metadata")
_USER_UPSERT = _sql(_CATALOGUE, table="user", key="user_id", fields="metadata", values="%s",
                    updates="metadata = excluded.metadata")


def _insert_batch(conn: Connection, rows: list[Row]) -> int:
    """Append ``rows`` (checked) at the next sequences; returns the last one. Users and items
    seen for the first time get their first-seen sequence (new items join the catalogue)."""
    last = _reserve(conn, len(rows))
    first = last - len(rows) + 1
    stamp = _stamp(conn.engine, clock.now())
    _executemany(conn, _INSERT_SQL, [(first + n, *row[:4], stamp, row[4]) for n, row in enumerate(rows)])
    for position, sql in ((0, _USER_FIRST_SEEN), (1, _ITEM_FIRST_SEEN)):
        first_seen: dict[str, int] = {}
        for n, row in enumerate(rows):
            first_seen.setdefault(row[position], first + n)
        _executemany(conn, sql, [(key, seq, stamp) for key, seq in first_seen.items()])
    return last


def _without_stored(conn: Connection, batch: list[Row]) -> list[Row]:
    """``batch`` without the rows whose source_message_id is already stored."""
    ids = [row[4] for row in batch if row[4] is not None]
    stored = _existing(conn, "lockstep_interactions", "source_message_id", ids) if ids else set()
    return [row for row in batch if row[4] not in stored] if stored else batch


def _existing(conn: Connection, table: str, column: str, values: list[str]) -> set[str]:
    """Which of ``values`` are in ``table.column`` (an indexed column), in few round trips.

    PostgreSQL gets one array parameter (``= ANY``): a long ``IN`` list of parameters is
    planned as a scan of the table, 100x slower on a freshly loaded one. SQLite gets ``IN``
    lists of at most 500 (its parameter limit).
    """
    found: set[str] = set()
    cursor = conn.connection.driver_connection.cursor()
    try:
        if is_postgres(conn.engine):
            cursor.execute(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", (values,))
            found.update(r[0] for r in cursor.fetchall())
        else:
            for chunk in in_chunks(values, _IN_CHUNK):
                marks = ", ".join("?" * len(chunk))
                cursor.execute(f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", chunk)
                found.update(r[0] for r in cursor.fetchall())
    finally:
        cursor.close()
    return found


def _message_ids(rows: pd.DataFrame) -> list[str | None]:
    """The message ids as Python values: pandas may hold "none" as NaN in a text column."""
    return [m if isinstance(m, str) else None for m in rows["source_message_id"].tolist()]


def _executemany(conn: Connection, sql: dict[str, str], rows: list[tuple[Any, ...]]) -> None:
    """Straight to the DB-API ``executemany`` (as the record store's bulk load does):
    SQLAlchemy's per-row parameter processing would cost more than the writes."""
    if not rows:
        return
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(sql["postgresql" if is_postgres(conn.engine) else "sqlite"], rows)
    finally:
        cursor.close()


def _reserve(conn: Connection, n: int) -> int:
    """Reserve ``n`` sequences in this transaction (0: just take the lock); returns the last.

    The UPDATE locks the counter row until commit, which every writer needs, so writers
    commit in sequence order.
    """
    value = conn.execute(
        update(sequences)
        .where(sequences.c.name == INTERACTION_SEQUENCE)
        .values(value=sequences.c.value + n)
        .returning(sequences.c.value)
    ).scalar()
    if value is None:
        insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(sequences)
        conn.execute(insert.values(name=INTERACTION_SEQUENCE, value=0).on_conflict_do_nothing())
        return _reserve(conn, n)
    return int(value)


def _counter(conn: Connection) -> int:
    value = conn.execute(select(sequences.c.value).where(sequences.c.name == INTERACTION_SEQUENCE)).scalar()
    return int(value or 0)


def _stamp(engine: Engine, now: datetime) -> Any:
    """A timestamp as the driver takes it (SQLAlchemy's SQLite text form on SQLite)."""
    return now if is_postgres(engine) else now.strftime("%Y-%m-%d %H:%M:%S.%f")


def _select_rows():
    c = interactions.c
    return select(c.seq, c.user_id, c.item_id, c.value, c.timestamp)


def _frame(rows: Sequence[Any]) -> pd.DataFrame:
    """Interaction rows as a frame with the store's column types (also when empty)."""
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return pd.DataFrame({
        "seq": np.array(columns[0], dtype=np.int64),
        "user_id": pd.Series(columns[1], dtype="str"),
        "item_id": pd.Series(columns[2], dtype="str"),
        "value": np.array(columns[3], dtype=np.float32),
        "timestamp": np.array(columns[4], dtype=np.int64),
    }, columns=list(COLUMNS))
