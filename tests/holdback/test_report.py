"""The lift report counts user-days, not requests: checked against a hand computation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from sqlalchemy import insert

from lockstep.holdback.chart import lift_chart_svg
from lockstep.holdback.report import HoldbackReportError, LiftReport, lift_report, ratio_interval
from lockstep.holdback.steps import format_table, summary
from lockstep.store.db import get_engine
from lockstep.store.schema import feedback_log, request_log

DAY1 = datetime(2026, 5, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
NOW = DAY2 + timedelta(hours=20)
Z95 = 1.959963984540054
_ids = count()


def write(engine, user, version, *, at, clicks=0, n=1, holdback=False, pinned=False, status=200, click_at=None):
    """``n`` requests of ``user`` at ``at``, the first ``clicks`` of them clicked (at ``click_at``)."""
    requests, feedback = [], []
    for i in range(n):
        rid = f"q{next(_ids)}"
        requests.append({"request_id": rid, "at": at + timedelta(minutes=i), "model_version": version, "user_id": user,
                         "query": "q", "k": 10, "latency_ms": 1.0, "status": status, "top_ids": ["r1"],
                         "pinned": pinned, "holdback": holdback})
        if i < clicks:
            feedback.append({"request_id": rid, "record_id": "r1", "event": "click",
                             "at": click_at or at + timedelta(minutes=i, seconds=5)})
    with engine.begin() as conn:
        conn.execute(insert(request_log), requests)
        if feedback:
            conn.execute(insert(feedback_log), feedback)


@pytest.fixture
def logs(lockstep_home):
    engine = get_engine()
    t = DAY1 + timedelta(hours=9)
    # the holdback arm on day 1: 4 user-days, 2 of them clicked (11 requests, 3 clicked)
    write(engine, "h1", "1", at=t, n=5, clicks=1, holdback=True)
    write(engine, "h2", "1", at=t, n=1, holdback=True)
    write(engine, "h3", "1", at=t, n=2, holdback=True)
    write(engine, "h4", "1", at=t, n=3, clicks=2, holdback=True)
    # the champion (v2, most users outside the holdback): 3 user-days, 2 clicked
    write(engine, "c1", "2", at=t, n=5, clicks=5)
    write(engine, "c2", "2", at=t, n=1, clicks=1)
    write(engine, "c3", "2", at=t, n=1)
    write(engine, "c3", "2", at=t + timedelta(hours=14, minutes=59), n=1)  # still day 1 (23:59 UTC): same user-day
    # none of these count
    write(engine, None, "2", at=t, n=4, clicks=4)  # no user id
    write(engine, "c4", "2", at=t, n=2, clicks=2, pinned=True)  # pinned
    write(engine, "c5", "3", at=t, n=1, clicks=1)  # a canary's candidate: not the champion
    write(engine, "c6", "2", at=t, n=1, status=500)  # no impression
    write(engine, "h5", "1", at=t, n=1, clicks=1, holdback=True, status=503)  # refused: no impression either
    write(engine, "c7", "2", at=t, n=1, clicks=1, click_at=NOW + timedelta(hours=1))  # clicked after the report
    # day 2: the holdback has user-days but no click: a lift cannot be computed
    write(engine, "h1", "1", at=DAY2 + timedelta(hours=1), n=2, holdback=True)
    write(engine, "c1", "2", at=DAY2 + timedelta(hours=1), n=1, clicks=1)
    return engine


def test_each_user_counts_once_a_day_in_each_arm(logs):
    report = lift_report(logs, days=2, now=NOW)

    day1, day2 = report.days
    assert (day1.day, day1.champion_version, day1.holdback_versions) == (DAY1.date(), "2", ("1",))
    assert (day1.holdback_user_days, day1.holdback_clicked) == (4, 2)  # not 11 requests and 3 clicks
    # c1 c2 c3 c7: c3's two requests are one user-day; c7's click came after the report's time
    assert (day1.champion_user_days, day1.champion_clicked) == (4, 2)
    # by hand: (2/4) / (2/4) - 1 = 0; se(log r) = sqrt(1/2 - 1/4 + 1/2 - 1/4)
    se = math.sqrt(1 / 2 - 1 / 4 + 1 / 2 - 1 / 4)
    assert day1.lift == pytest.approx(0.0)
    assert day1.low == pytest.approx(math.exp(-Z95 * se) - 1) and day1.high == pytest.approx(math.exp(Z95 * se) - 1)
    assert not day1.partial

    assert (day2.holdback_user_days, day2.holdback_clicked, day2.champion_user_days, day2.champion_clicked) == (1, 0, 1, 1)
    assert day2.lift is None and day2.low is None and day2.partial  # today, and no holdback click
    assert report.latest == day1


def test_a_later_report_counts_the_late_click(logs):
    day1 = lift_report(logs, days=2, now=NOW + timedelta(hours=2)).days[0]
    assert (day1.champion_user_days, day1.champion_clicked) == (4, 3)
    # by hand: (3/4) / (2/4) - 1 = 0.5, se = sqrt(1/3 - 1/4 + 1/2 - 1/4)
    se = math.sqrt(1 / 3 - 1 / 4 + 1 / 2 - 1 / 4)
    assert day1.lift == pytest.approx(0.5)
    assert day1.low == pytest.approx(1.5 * math.exp(-Z95 * se) - 1)
    assert day1.high == pytest.approx(1.5 * math.exp(Z95 * se) - 1)


def test_the_window_is_the_last_days_up_to_now(logs):
    report = lift_report(logs, days=1, now=NOW)
    assert [d.day for d in report.days] == [DAY2.date()]
    assert lift_report(logs, days=1, now=DAY1 - timedelta(days=5)).days == ()


def test_the_interval_by_hand_and_its_edge_cases():
    lift, low, high = ratio_interval(30, 100, 20, 100, 0.9)
    se = math.sqrt(1 / 30 - 1 / 100 + 1 / 20 - 1 / 100)
    z90 = 1.6448536269514722
    assert lift == pytest.approx(0.5)
    assert (low, high) == (pytest.approx(1.5 * math.exp(-z90 * se) - 1), pytest.approx(1.5 * math.exp(z90 * se) - 1))
    assert ratio_interval(0, 10, 5, 10) == (-1.0, None, None)  # a point, no interval
    assert ratio_interval(5, 10, 0, 10) == (None, None, None)
    assert ratio_interval(5, 10, 0, 0) == (None, None, None)  # an arm without user-days
    with pytest.raises(HoldbackReportError, match="arm a: 11 clicked of 10 user-days"):
        ratio_interval(11, 10, 5, 10)


def test_bad_report_arguments_are_refused(lockstep_home):
    engine = get_engine()
    with pytest.raises(HoldbackReportError, match="days must be a whole number of days, at least 1; got 0"):
        lift_report(engine, days=0)
    with pytest.raises(HoldbackReportError, match="confidence must be between 0 and 1"):
        lift_report(engine, confidence=95)


def test_the_report_round_trips_and_renders(logs):
    report = lift_report(logs, days=2, now=NOW + timedelta(hours=2))
    again = LiftReport.from_dict(report.to_dict())
    assert again.days == report.days and again.confidence == report.confidence
    svg = lift_chart_svg(report)
    assert svg.startswith("<svg") and svg.count('class="lift"') == 1 and 'data-lift="0.500000"' in svg
    assert "champion v2" in svg
    table = format_table(report)
    assert "holdback: none set" in table and "2026-05-01" in table and "+50.0%" in table
    assert summary(report).startswith("2026-05-01: champion v2 lift +50.0% (95% CI")
    assert "no holdback set" in lift_chart_svg(LiftReport(days=(), confidence=0.95, holdback=None))
