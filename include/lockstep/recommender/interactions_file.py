"""A user's interactions file (CSV, JSONL or Parquet) read for the interaction store.

Columns: ``user_id`` and ``item_id`` (required; read as strings, so ``007`` stays
``007``), ``value`` (optional, default 1.0: a rating, a count, a click) and ``timestamp``
(optional, default the load time: whole seconds since the epoch, or ISO 8601 text; a time
without an offset is UTC). Other columns are ignored. An optional items file has
``item_id`` and ``title``; its other columns become the item's metadata.

The whole file is checked before anything is loaded: one error names the file and lists
every problem with the rows (lines) it concerns, so nothing is half-loaded and the user
fixes the file in one pass. Each row gets a message id from its content
(``content_message_ids``): loading the same file again, or a longer version of it, loads
only the rows that are new.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.store.interactions import MAX_TIMESTAMP, content_message_ids
from lockstep.store.schema import ID_LENGTH

FILE_NAMESPACE = "file"
_READERS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_SHOWN = 10  # rows named per problem; the rest are counted
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INTEGER = re.compile(r"[+-]?\d+")

Rows = list[tuple[int, dict[str, Any]]]


class InteractionsFileError(LockstepError, ValueError):
    """An interactions or items file cannot be loaded; the message names the file and rows."""


def read_interactions_file(path: str | Path) -> pd.DataFrame:
    """The file's interactions, in file order, ready for ``InteractionStore.add_many``.

    Columns user_id, item_id (str), value (float64), timestamp (int64) and
    source_message_id (from the row's content). Refuses the whole file if any row is bad.
    """
    path, rows, columns, unit = _read(path)
    _require(path, columns, ("user_id", "item_id"), "an interactions file needs 'user_id' and 'item_id'")
    problems = _Problems(path, unit)
    parsed = {"user_id": [], "item_id": [], "value": [], "timestamp": []}
    for row_no, row in rows:
        fields = (_id(row.get("user_id"), "user_id", row_no, problems),
                  _id(row.get("item_id"), "item_id", row_no, problems),
                  _value(row.get("value"), row_no, problems),
                  _timestamp(row.get("timestamp"), row_no, problems))
        for key, field in zip(parsed, fields, strict=True):
            parsed[key].append(field)
    problems.raise_if_any()
    frame = pd.DataFrame(parsed)
    frame["source_message_id"] = content_message_ids(frame, FILE_NAMESPACE)
    now = int(clock.now().timestamp())
    frame["timestamp"] = np.array([now if t is None else t for t in parsed["timestamp"]], dtype=np.int64)
    frame["value"] = frame["value"].astype(np.float64)
    return frame


def read_items_file(path: str | Path) -> pd.DataFrame:
    """The file's items for ``InteractionStore.upsert_items``: item_id (str), title (str or
    None) and the other columns as they are (they become metadata). Ids must be unique."""
    path, rows, columns, unit = _read(path)
    _require(path, columns, ("item_id",), "an items file needs 'item_id' (and usually 'title')")
    problems = _Problems(path, unit)
    first_row: dict[str, int] = {}
    records = []
    for row_no, row in rows:
        item_id = _id(row.get("item_id"), "item_id", row_no, problems)
        title = row.get("title")
        if not _absent(title) and not isinstance(title, str):
            problems.add("title is not text", row_no, title)
        if item_id is not None and first_row.setdefault(item_id, row_no) != row_no:
            problems.add(f"item_id is repeated (first on {unit} {first_row[item_id]})", row_no, item_id)
        records.append({k: None if _absent(v) else v for k, v in {**row, "item_id": item_id}.items()})
    problems.raise_if_any()
    names = list(dict.fromkeys(["item_id", "title", *columns]))
    # object columns: an absent title stays None (a text column would make it NaN)
    return pd.DataFrame({name: pd.Series([r.get(name) for r in records], dtype=object) for name in names})


# --- reading the file ------------------------------------------------------------------------------


def _read(path: str | Path) -> tuple[Path, Rows, list[str], str]:
    """(path, numbered rows, columns, "line" or "row"), or an error naming what is wrong."""
    path = Path(path).expanduser()
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise InteractionsFileError(
            f"{path}: unknown file type {path.suffix or '(no extension)'!r}; use one of {', '.join(_READERS)}"
        )
    if not path.is_file():
        raise InteractionsFileError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}")
    if kind == "jsonl":
        rows, columns = _read_jsonl(path)
        unit = "line"
    else:
        rows, columns = _read_csv(path) if kind == "csv" else _read_parquet(path)
        unit = "row"
    if not rows:
        raise InteractionsFileError(f"{path}: no rows; the file is blank or has only a header")
    return path, rows, columns, unit


def _read_jsonl(path: Path) -> tuple[Rows, list[str]]:
    rows: Rows = []
    columns: dict[str, None] = {}
    problems = _Problems(path, "line")
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(f"not JSON ({exc.msg})", line_no)
            continue
        if not isinstance(value, dict):
            problems.add("not a JSON object", line_no)
            continue
        rows.append((line_no, value))
        columns.update(dict.fromkeys(value))
    problems.raise_if_any()
    return rows, list(columns)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Decoded lines, numbered from 1; a decoding error names its line."""
    try:
        with path.open("rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                try:
                    yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise InteractionsFileError(
                        f"{path}: not UTF-8 text (line {line_no}: {exc.reason}); save it as UTF-8"
                    ) from exc
    except OSError as exc:
        raise InteractionsFileError(f"{path}: cannot read the file ({exc})") from exc


def _read_csv(path: Path) -> tuple[Rows, list[str]]:
    try:
        # Every cell as the file spells it ("" when empty): "NaN" in a value column is then
        # a NaN the user wrote, not an empty cell.
        frame = pd.read_csv(path, dtype=str, na_filter=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as exc:
        raise InteractionsFileError(f"{path}: the file is empty; a CSV needs a header row") from exc
    except UnicodeDecodeError as exc:
        raise InteractionsFileError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise InteractionsFileError(f"{path}: cannot read it as CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return list(enumerate(frame.to_dict("records"), start=1)), list(frame.columns)


def _read_parquet(path: Path) -> tuple[Rows, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InteractionsFileError(f"{path}: cannot read it as Parquet ({exc})") from exc
    return list(enumerate(table.to_pylist(), start=1)), list(table.column_names)


def _require(path: Path, columns: list[str], required: tuple[str, ...], why: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        found = ", ".join(map(repr, columns)) or "none"
        raise InteractionsFileError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(columns found: {found}); {why}"
        )


# --- checking each field ------------------------------------------------------------------------------


class _Problems:
    """Every problem with the rows it concerns (and the first bad value), for one error."""

    def __init__(self, path: Path, unit: str) -> None:
        self.path, self.unit = path, unit
        self.rows: dict[str, list[int]] = {}
        self.examples: dict[str, Any] = {}

    def add(self, what: str, row_no: int, example: Any = None) -> None:
        self.rows.setdefault(what, []).append(row_no)
        if example is not None:
            self.examples.setdefault(what, example)

    def raise_if_any(self) -> None:
        if not self.rows:
            return
        lines = []
        for what, rows in self.rows.items():
            named = ", ".join(map(str, rows[:_SHOWN]))
            more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
            example = f" (e.g. {_shown(self.examples[what])})" if what in self.examples else ""
            plural = "s" if len(rows) > 1 else ""
            lines.append(f"{what}{example}: {self.unit}{plural} {named}{more} ({len(rows)} in all)")
        where = "" if self.unit == "line" else f" ({self.unit}s counted from 1, header not counted)"
        raise InteractionsFileError(
            f"{self.path} cannot be loaded, nothing was loaded{where}:\n  - " + "\n  - ".join(lines)
            + "\nFix these and load the file again."
        )


def _id(value: Any, name: str, row_no: int, problems: _Problems) -> str | None:
    if hasattr(value, "item") and not isinstance(value, str):  # a numpy scalar
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if _absent(value):
        problems.add(f"{name} is missing or empty", row_no)
        return None
    if not isinstance(value, str):
        problems.add(f"{name} is not text or a whole number", row_no, value)
        return None
    if len(value) > ID_LENGTH:
        problems.add(f"{name} is longer than {ID_LENGTH} characters", row_no)
        return None
    if _CONTROL.search(value):
        problems.add(f"{name} contains a control character", row_no, value)
        return None
    return value


def _value(value: Any, row_no: int, problems: _Problems) -> float | None:
    if _absent(value):
        return 1.0
    if isinstance(value, bool) or not isinstance(value, str | int | float | np.number):
        problems.add("value is not a number", row_no, value)
        return None
    try:
        number = float(value)
    except ValueError:
        problems.add("value is not a number", row_no, value)
        return None
    if not math.isfinite(number):
        problems.add("value is NaN or infinite", row_no, value)
        return None
    return number


def _timestamp(value: Any, row_no: int, problems: _Problems) -> int | None:
    """Whole seconds since the epoch; None when the row gives none (the load time is used)."""
    if _absent(value):
        return None
    try:
        seconds = _seconds(value)
    except ValueError as exc:
        problems.add(f"timestamp {exc}", row_no, value)
        return None
    if not 0 <= seconds <= MAX_TIMESTAMP:
        problems.add(
            "timestamp is outside 1970-01-01 .. 9999-12-31 in seconds (milliseconds?)", row_no, value
        )
        return None
    return seconds


def _seconds(value: Any) -> int:
    """``value`` (whole seconds, or ISO 8601 text, or a datetime) as int seconds, else ValueError."""
    if isinstance(value, bool):
        raise ValueError("is not a time")
    if isinstance(value, datetime):
        return math.floor(clock.utc(value).timestamp())
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("is NaN or infinite")
        if not value.is_integer():
            raise ValueError("is not whole seconds")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        try:
            return math.floor(clock.utc(text).timestamp())
        except ValueError:
            raise ValueError("is neither whole seconds nor an ISO 8601 time") from None
    raise ValueError("is not a time")


def _absent(value: Any) -> bool:
    """No value given: a null, a missing key, an empty cell. (A NaN is a value, and a bad one.)"""
    return value is None or value is pd.NA or (isinstance(value, str) and not value.strip())


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
