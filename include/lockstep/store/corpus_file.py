"""A user's corpus file (JSONL, CSV or Parquet) read as records for the record store.

The file is checked as a whole before anything is loaded: one error lists every problem
(missing columns, duplicate ids, empty text, malformed lines) with the rows it concerns,
so a user fixes the file in one pass instead of one error at a time.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from lockstep.core import jsonio
from lockstep.core.errors import CorpusError
from lockstep.store.records import MAX_TEXT_CHARS, Record
from lockstep.store.schema import ID_LENGTH

_READERS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_REQUIRED = ("id", "text")
_SHOWN = 10  # row numbers named per problem; the rest are counted


def load_corpus_file(path: str | Path) -> list[Record]:
    """A user's corpus as records, in file order; refuses the whole file if any row is bad.

    JSONL/NDJSON (one object per line), CSV (header row) and Parquet are read. Columns
    ``id`` and ``text`` are required; every other column goes into the metadata, and a
    ``metadata`` column (objects, or JSON strings of objects) is merged in, the other
    columns winning on a clash. Integer ids become strings; missing metadata values are
    left out. CSV values are read as the file spells them (ids and text as strings).
    """
    path = Path(path).expanduser()
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise CorpusError(
            f"{path}: unknown corpus file type {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(_READERS)}"
        )
    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    if path.is_dir():
        raise CorpusError(f"{path} is a folder; give the path of a {', '.join(_READERS)} file")
    if kind == "jsonl":
        rows, columns = _read_jsonl(path)
        unit = "line"
    elif kind == "csv":
        rows, columns = _read_csv(path)
        unit = "row"
    else:
        rows, columns = _read_parquet(path)
        unit = "row"
    return _build_records(path, rows, columns, unit)


def _read_jsonl(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    columns: dict[str, None] = {}
    malformed: list[str] = []
    try:
        # Bytes in, decoded line by line: a decoding error then names its true line.
        with path.open("rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(
                        f"{path}: not UTF-8 text (line {line_no}: {exc.reason}); save it as UTF-8"
                    ) from exc
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    malformed.append(f"line {line_no}: {exc.msg} (column {exc.colno})")
                    continue
                if not isinstance(value, dict):
                    malformed.append(f"line {line_no}: a JSON {_json_kind(value)}, not an object")
                    continue
                rows.append((line_no, value))
                columns.update(dict.fromkeys(value))
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read the file ({exc})") from exc
    if malformed:
        shown = "\n  - ".join(malformed[:_SHOWN])
        more = f"\n  ... and {len(malformed) - _SHOWN} more" if len(malformed) > _SHOWN else ""
        raise CorpusError(
            f"{path}: {len(malformed)} line(s) are not JSON objects; every line must be one "
            f'object like {{"id": "...", "text": "..."}}:\n  - {shown}{more}'
        )
    return rows, list(columns)


def _read_csv(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    import pandas as pd

    try:
        frame = pd.read_csv(
            path,
            dtype={"id": str, "text": str, "metadata": str},
            keep_default_na=False,  # a text that reads "NA" is a text
            na_values=[""],
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as exc:
        raise CorpusError(f"{path}: the file is empty; a corpus CSV needs a header row with id and text") from exc
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise CorpusError(f"{path}: cannot read it as CSV ({exc})") from exc
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    return list(enumerate(frame.to_dict("records"), start=1)), columns


def _read_parquet(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: cannot read it as Parquet ({exc})") from exc
    return list(enumerate(table.to_pylist(), start=1)), list(table.column_names)


class _Problems:
    """Collects the rows with each kind of problem, so one error can name them all."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.rows: dict[str, list[int]] = {}

    def add(self, what: str, row: int) -> None:
        self.rows.setdefault(what, []).append(row)

    def lines(self) -> list[str]:
        out = []
        for what, rows in self.rows.items():
            named = ", ".join(map(str, rows[:_SHOWN]))
            more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
            out.append(f"{what}: {self.unit}{'s' if len(rows) > 1 else ''} {named}{more} ({len(rows)} in all)")
        return out


def _build_records(
    path: Path, rows: list[tuple[int, dict[str, Any]]], columns: list[str], unit: str
) -> list[Record]:
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        found = ", ".join(map(repr, columns)) if columns else "none"
        raise CorpusError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(columns found: {found}); a corpus needs 'id' and 'text', other columns become metadata"
        )
    if not rows:
        raise CorpusError(f"{path}: no records; the file has a header or is blank but holds no rows")
    problems = _Problems(unit)
    records: list[Record] = []
    for row_no, row in rows:
        record_id = _record_id(row.get("id"), row_no, problems)
        text = _record_text(row.get("text"), row_no, problems)
        metadata = _record_metadata(row, row_no, problems)
        if record_id is not None and text is not None:
            records.append(Record(record_id, text, metadata))
    messages = problems.lines()
    duplicates = Counter(r.id for r in records)
    repeated = [(rid, count) for rid, count in duplicates.items() if count > 1]
    if repeated:
        named = ", ".join(f"{rid!r} ({count}x)" for rid, count in repeated[:_SHOWN])
        more = f" and {len(repeated) - _SHOWN} more" if len(repeated) > _SHOWN else ""
        messages.append(f"duplicate ids: {len(repeated)} id(s) occur more than once: {named}{more}")
    if messages:
        listing = "\n  - ".join(messages)
        where = "" if unit == "line" else f" ({unit}s counted from 1, header not counted)"
        raise CorpusError(
            f"{path} cannot be loaded, nothing was loaded{where}:\n  - {listing}\n"
            "Fix these and load the file again."
        )
    return records


def _record_id(value: Any, row_no: int, problems: _Problems) -> str | None:
    if _is_missing(value):
        problems.add("id is missing or empty", row_no)
        return None
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        problems.add(f"id is not a string or an integer (e.g. {type(value).__name__})", row_no)
        return None
    if not value.strip():
        problems.add("id is missing or empty", row_no)
        return None
    if len(value) > ID_LENGTH:
        problems.add(f"id is longer than {ID_LENGTH} characters", row_no)
        return None
    return value


def _record_text(value: Any, row_no: int, problems: _Problems) -> str | None:
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        problems.add("text is missing or empty", row_no)
        return None
    if not isinstance(value, str):
        problems.add("text is not a string", row_no)
        return None
    if len(value) > MAX_TEXT_CHARS:
        problems.add(f"text is longer than {MAX_TEXT_CHARS} characters", row_no)
        return None
    return value


def _record_metadata(row: dict[str, Any], row_no: int, problems: _Problems) -> dict[str, Any] | None:
    merged: dict[str, Any] = {}
    given = row.get("metadata")
    if isinstance(given, str):
        if given.strip():
            try:
                given = json.loads(given)
            except json.JSONDecodeError:
                problems.add("metadata is not valid JSON", row_no)
                given = None
        else:
            given = None
    if isinstance(given, dict):
        merged.update(given)
    elif not _is_missing(given):
        problems.add("metadata is not a JSON object", row_no)
    for key, value in row.items():
        if key not in ("id", "text", "metadata") and not _is_missing(value):
            merged[str(key)] = value
    try:
        merged = {str(k): jsonio.plain(v, strict=True) for k, v in merged.items()}
    except TypeError as exc:
        problems.add(f"metadata cannot be stored as JSON ({exc})", row_no)
        return None
    return merged or None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"
