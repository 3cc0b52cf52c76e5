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

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from lockstep.core import clock, jsonio
from lockstep.core.errors import LockstepError
from lockstep.store.db import get_engine, in_chunks, is_postgres
from lockstep.store.schema import ID_LENGTH, interactions, items, sequences, users

INTERACTION_SEQUENCE = "interactions"
MESSAGE_ID_LENGTH = 128
# Event times from 1970 up to the end of year 9999, in seconds: a millisecond timestamp of
# today (13 digits) is past that limit, which is how it gets caught.
MAX_TIMESTAMP = 253_402_300_799
COLUMNS = ("seq", "user_id", "item_id", "value", "timestamp")  # of snapshots and the catch-up log
Row = tuple[str, str, float, int, "str | None"]  # a checked interaction: user, item, value, time, message id
_SHOWN = 10  # ids or rows named per problem; the rest are counted
_IN_CHUNK = 500  # ids per IN (...) list


class InvalidInteractionError(LockstepError, ValueError):
    """An interaction that cannot be stored: an empty id, a value that is not a finite number."""


class UnknownItemError(InvalidInteractionError):
    """Interactions name items that are not in the catalogue (``item_ids`` lists them)."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        named = ", ".join(repr(i) for i in self.item_ids[:_SHOWN])
        more = f" and {len(self.item_ids) - _SHOWN} more" if len(self.item_ids) > _SHOWN else ""
        super().__init__(
            f"{len(self.item_ids)} item id(s) not in the item catalogue: {named}{more}; "
            "add them to the catalogue first (an items file), or allow new items"
        )


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
        row = _checked_one(user_id, item_id, value, _now_seconds() if timestamp is None else timestamp,
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
        rows = _catalogue_rows(frame, key, title=title)
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


# --- checking input ----------------------------------------------------------------------------


def prepare_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` checked and normalised for writing, or an ``InvalidInteractionError`` that
    names every problem and the rows (index labels) it concerns.

    user_id and item_id: non-empty strings of at most 256 characters; value: a finite number
    (default 1.0 when the column is absent); timestamp: whole seconds from 0 to the year 9999
    (default now); source_message_id: optional, at most 128 characters, each id once.
    """
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise InvalidInteractionError(
            f"interactions need columns 'user_id' and 'item_id'; missing {', '.join(map(repr, missing))} "
            f"(columns found: {', '.join(map(repr, map(str, frame.columns))) or 'none'})"
        )
    problems: dict[str, list[Any]] = {}
    out = pd.DataFrame(index=frame.index)
    out["user_id"] = _checked_ids(frame["user_id"], "user_id", ID_LENGTH, problems)
    out["item_id"] = _checked_ids(frame["item_id"], "item_id", ID_LENGTH, problems)
    out["value"] = _checked_values(frame, problems)
    out["timestamp"] = _checked_timestamps(frame, problems)
    out["source_message_id"] = _checked_message_ids(frame, problems)
    if problems:
        raise InvalidInteractionError(_listing(problems, len(frame)))
    return out.reset_index(drop=True)


def _checked_one(user_id: Any, item_id: Any, value: Any, timestamp: Any, message_id: Any) -> Row:
    """One interaction checked by the rules of ``prepare_interactions`` without a DataFrame
    (the serving path writes one at a time)."""
    problems = [f"{name} must be a non-empty string of at most {ID_LENGTH} characters, got {v!r}"
                for name, v in (("user_id", user_id), ("item_id", item_id))
                if not isinstance(v, str) or not v.strip() or len(v) > ID_LENGTH]
    number = float(value) if isinstance(value, int | float | np.number) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number):
        problems.append(f"value must be a finite number, got {value!r}")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | np.integer) or not 0 <= timestamp <= MAX_TIMESTAMP:
        problems.append(f"timestamp must be whole seconds from 0 to {MAX_TIMESTAMP} (milliseconds?), got {timestamp!r}")
    if message_id is not None and (not isinstance(message_id, str) or len(message_id) > MESSAGE_ID_LENGTH):
        problems.append(f"source_message_id must be a string of at most {MESSAGE_ID_LENGTH} characters")
    if problems:
        raise InvalidInteractionError("interaction refused: " + "; ".join(problems))
    return (user_id, item_id, float(number), int(timestamp), message_id)


def content_message_ids(frame: pd.DataFrame, namespace: str) -> list[str]:
    """A message id per row from what the row says: ``namespace:<hash>#<n>``.

    The hash covers user_id, item_id, value and timestamp (a missing timestamp hashes as
    empty: call this before filling in the load time, so that time is not part of the id);
    ``n`` counts repeats of the same row, so two identical events in one source stay two.
    Loading the same source again, or a longer version of it, then writes only the rows not
    stored before.
    """
    seen: dict[str, int] = {}
    ids = []
    columns = [frame[c].tolist() if c in frame.columns else [None] * len(frame)
               for c in ("user_id", "item_id", "value", "timestamp")]
    for user, item, value, stamp in zip(*columns, strict=True):
        text = "\x1f".join((str(user), str(item), "" if _missing(value) else repr(float(value)), _seconds_text(stamp)))
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(f"{namespace}:{digest}#{seen[digest]}")
    return ids


def _seconds_text(stamp: Any) -> str:
    """A timestamp as the same text whether pandas holds it as an int or (next to a gap) a float."""
    if _missing(stamp):
        return ""
    if isinstance(stamp, float | np.floating) and float(stamp).is_integer():
        return str(int(stamp))
    return str(stamp)


def _checked_ids(column: pd.Series, name: str, limit: int, problems: dict[str, list[Any]]) -> pd.Series:
    is_text = column.map(lambda v: isinstance(v, str))
    text = column.where(is_text, "")
    _note(problems, f"{name} is missing or not a string", column.index[~is_text])
    _note(problems, f"{name} is empty", column.index[is_text & (text.str.strip() == "")])
    _note(problems, f"{name} is longer than {limit} characters", column.index[text.str.len() > limit])
    return text.astype(object)


def _checked_values(frame: pd.DataFrame, problems: dict[str, list[Any]]) -> pd.Series:
    if "value" not in frame.columns:
        return pd.Series(1.0, index=frame.index, dtype=np.float64)
    raw = frame["value"]
    numeric = pd.to_numeric(raw.where(~raw.map(lambda v: isinstance(v, bool)), None), errors="coerce")
    numeric = numeric.astype(np.float64)
    _note(problems, "value is not a finite number", frame.index[~np.isfinite(numeric.to_numpy())])
    return numeric


def _checked_timestamps(frame: pd.DataFrame, problems: dict[str, list[Any]]) -> pd.Series:
    if "timestamp" not in frame.columns:
        return pd.Series(_now_seconds(), index=frame.index, dtype=np.int64)
    raw = frame["timestamp"]
    numeric = pd.to_numeric(raw.where(~raw.map(lambda v: isinstance(v, bool)), None), errors="coerce")
    values = numeric.astype(np.float64).to_numpy()
    bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < 0) | (values > MAX_TIMESTAMP)
    _note(problems, f"timestamp is not whole seconds from 0 to {MAX_TIMESTAMP} (milliseconds?)", frame.index[bad])
    return pd.Series(np.where(bad, 0, values).astype(np.int64), index=frame.index)


def _checked_message_ids(frame: pd.DataFrame, problems: dict[str, list[Any]]) -> pd.Series:
    if "source_message_id" not in frame.columns:
        return pd.Series(None, index=frame.index, dtype=object)
    raw = frame["source_message_id"]
    given = raw.map(lambda v: isinstance(v, str))
    absent = raw.isna()
    _note(problems, "source_message_id is not a string", frame.index[~given & ~absent])
    text = raw.where(given, "")
    _note(problems, f"source_message_id is longer than {MESSAGE_ID_LENGTH} characters",
          frame.index[text.str.len() > MESSAGE_ID_LENGTH])
    _note(problems, "source_message_id is repeated", frame.index[given & text.duplicated(keep="first")])
    return raw.where(given, None).astype(object)


def _note(problems: dict[str, list[Any]], what: str, where: pd.Index) -> None:
    if len(where):
        problems.setdefault(what, []).extend(where.tolist())


def _listing(problems: dict[str, list[Any]], total: int, what: str = "interactions") -> str:
    lines = []
    for problem, rows in problems.items():
        named = ", ".join(map(str, rows[:_SHOWN]))
        more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
        lines.append(f"{problem}: index {named}{more} ({len(rows)} of {total} rows)")
    return f"{what} refused, nothing was written:\n  - " + "\n  - ".join(lines)


def _catalogue_rows(frame: pd.DataFrame, key: str, *, title: bool) -> list[tuple[Any, ...]]:
    """(id, [title,] metadata JSON) per row; the last row of a repeated id wins."""
    if key not in frame.columns:
        raise InvalidInteractionError(
            f"a catalogue needs column {key!r} (columns found: {', '.join(map(repr, map(str, frame.columns))) or 'none'})"
        )
    problems: dict[str, list[Any]] = {}
    ids = _checked_ids(frame[key], key, ID_LENGTH, problems)
    if problems:
        raise InvalidInteractionError(_listing(problems, len(frame), f"{key.split('_')[0]}s"))
    reserved = (key, "title", "metadata") if title else (key, "metadata")
    extra = [c for c in frame.columns if c not in reserved]
    rows: dict[str, tuple[Any, ...]] = {}
    for position, record in enumerate(frame.to_dict("records")):
        meta = _metadata(record, extra, ids.iloc[position])
        head = (_title(record.get("title")),) if title else ()
        rows[ids.iloc[position]] = (ids.iloc[position], *head, meta)
    return list(rows.values())


def _metadata(record: dict[str, Any], extra: list[str], item: str) -> str | None:
    merged: dict[str, Any] = {}
    given = record.get("metadata")
    if isinstance(given, str) and given.strip():
        try:
            given = json.loads(given)
        except json.JSONDecodeError as exc:
            raise InvalidInteractionError(f"{item!r}: metadata is not valid JSON ({exc.msg})") from exc
    if isinstance(given, dict):
        merged.update(given)
    merged.update({str(c): record[c] for c in extra if not _missing(record[c])})
    try:
        plain = {k: jsonio.plain(v, strict=True) for k, v in merged.items()}
    except TypeError as exc:
        raise InvalidInteractionError(f"{item!r}: metadata cannot be stored as JSON ({exc})") from exc
    return json.dumps(plain, separators=(",", ":"), allow_nan=False) if plain else None


def _title(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


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


def _now_seconds() -> int:
    return int(clock.now().timestamp())


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
