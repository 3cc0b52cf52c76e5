"""The one clock: every time comes out aware and in UTC, whatever form it came in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lockstep.core import clock

NOON = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", [
    NOON,
    datetime(2026, 5, 1, 12, 0),  # naive: SQLite hands timezone columns back like this
    datetime(2026, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
    "2026-05-01T12:00:00Z",
    "2026-05-01T12:00:00z",
    " 2026-05-01T12:00:00+00:00 ",
    "2026-05-01T08:00:00-04:00",
    "2026-05-01 12:00:00",
])
def test_utc_normalises_every_form_to_aware_utc(value):
    moment = clock.utc(value)
    assert moment == NOON and moment.tzinfo is UTC


def test_bad_values_say_what_is_wrong():
    with pytest.raises(ValueError, match="'yesterday' is not an ISO 8601 date and time"):
        clock.utc("yesterday")
    with pytest.raises(TypeError, match="got a int"):
        clock.utc(12)  # type: ignore[arg-type]
    assert clock.utc_or_none(None) is None and clock.utc_or_none("garbage") is None
    assert clock.utc_or_none("2026-05-01T12:00:00Z") == NOON


def test_now_is_aware_utc_and_from_timestamp_round_trips():
    assert clock.now().tzinfo is UTC
    assert clock.from_timestamp(NOON.timestamp()) == NOON
    assert clock.utc(clock.now_iso()).tzinfo is UTC
    assert len(clock.now_iso()) == len("2026-05-01T12:00:00+00:00")  # seconds precision by default


def test_monotonic_never_goes_back():
    readings = [clock.monotonic() for _ in range(1000)]
    assert readings == sorted(readings)
