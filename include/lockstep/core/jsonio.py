"""The one JSON helper: what Lockstep writes as JSON is strict JSON any reader can parse.

Values reach JSON from numpy (scalars and arrays), pandas and pyarrow (dates, Decimals),
the clock (datetimes), the file system (Paths) and the statistics (NaN when a figure
cannot be computed). The policy, everywhere:

- NaN and infinities become ``null``: strict JSON has no NaN, and Airflow's XComs and
  asset extras, PostgreSQL's JSON columns and browsers all reject it;
- numpy scalars and arrays become numbers and lists, datetimes, dates and times ISO 8601
  text, Paths their string, Decimals floats, sets and tuples lists, mapping keys strings;
- anything else becomes its ``str()`` (so a record of what happened is never lost to an
  odd value), or, with ``strict=True``, a TypeError naming its type (for input that must
  be JSON, like record metadata).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any


def plain(value: Any, *, strict: bool = False) -> Any:
    """``value`` as plain JSON values (dict, list, str, int, float, bool, None); see the policy above."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v, strict=strict) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, strict=strict) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return plain(float(value), strict=strict)
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return plain(value.tolist(), strict=strict)
    if strict:
        raise TypeError(f"a {type(value).__name__} value is not JSON")
    return str(value)


def dumps(value: Any, *, indent: int | None = None, sort_keys: bool = False, strict: bool = False) -> str:
    """``value`` as strict JSON text (never ``NaN``); see ``plain`` for how values convert."""
    return json.dumps(plain(value, strict=strict), indent=indent, sort_keys=sort_keys, allow_nan=False)


def loads(text: str | bytes, *, what: str = "JSON text") -> Any:
    """Parse JSON; a ValueError says what could not be read and where."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc
