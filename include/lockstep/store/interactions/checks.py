"""Interactions and catalogue rows checked before anything is written.

Every way in (``POST /interactions``, a file, a stream, the CLI) passes the same rules:
``prepare_interactions`` for a frame, ``checked_one`` for the serving path's single
interaction. A refusal is an ``InvalidInteractionError`` that names every problem and
the rows it concerns. ``content_message_ids`` gives a file's rows the message ids that
make loading the same file again write nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lockstep.core import clock, jsonio
from lockstep.core.errors import LockstepError
from lockstep.store.schema import ID_LENGTH

MESSAGE_ID_LENGTH = 128
# Event times from 1970 up to the end of year 9999, in seconds: a millisecond timestamp of
# today (13 digits) is past that limit, which is how it gets caught.
MAX_TIMESTAMP = 253_402_300_799
Row = tuple[str, str, float, int, "str | None"]  # a checked interaction: user, item, value, time, message id
_SHOWN = 10  # ids or rows named per problem; the rest are counted


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


def checked_one(user_id: Any, item_id: Any, value: Any, timestamp: Any, message_id: Any) -> Row:
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
        return pd.Series(now_seconds(), index=frame.index, dtype=np.int64)
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


def catalogue_rows(frame: pd.DataFrame, key: str, *, title: bool) -> list[tuple[Any, ...]]:
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


def now_seconds() -> int:
    """Now as an event time: whole seconds (the default timestamp of an interaction)."""
    return int(clock.now().timestamp())
