"""The one clock: every timestamp Lockstep writes or compares is an aware UTC datetime.

The stores keep UTC, but SQLite hands timezone columns back naive, Airflow passes ISO
strings (with ``Z`` or ``+00:00``), and a person types either. ``utc`` turns all of those
into one kind of value, so comparisons never mix naive and aware times and a naive time
is never read as local time. ``now`` is the wall clock in that form; ``monotonic`` is
for measuring how long something took inside one process (it never jumps back when the
wall clock is set).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> datetime:
    """The current time, aware and in UTC."""
    return datetime.now(UTC)


def now_iso(timespec: str = "seconds") -> str:
    """The current time as ISO 8601 text (``2026-01-01T12:00:00+00:00``), for tags and files."""
    return now().isoformat(timespec=timespec)


def utc(value: datetime | str) -> datetime:
    """``value`` as an aware UTC datetime; a naive time, or a string without offset, is UTC.

    Raises ValueError naming the value when a string is not an ISO 8601 date and time.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not an ISO 8601 date and time (e.g. 2026-01-01T12:00:00Z)") from exc
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or an ISO 8601 string, got a {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_or_none(value: object) -> datetime | None:
    """Like ``utc`` for values read back from storage: None or unreadable text gives None."""
    if value is None:
        return None
    try:
        return utc(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def from_timestamp(seconds: float) -> datetime:
    """A POSIX timestamp (seconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def monotonic() -> float:
    """Seconds on a clock that only moves forward: for durations and deadlines within one process."""
    return time.monotonic()
