"""The one reader of the serving logs, on a real SQLite file and a real PostgreSQL.

The rows are written as the serving replicas write them (``insert`` into the log
tables); each test states which rows count and why, so a change of definition shows
here first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from lockstep.drift.window import click_through_counts
from lockstep.store.db import dispose_engines, get_engine
from lockstep.store.log_stats import (
    ArmStats,
    ClickThrough,
    ClusterSums,
    Window,
    is_impression,
    is_server_error,
)
from lockstep.store.schema import feedback_log, request_log, shadow_log
from lockstep.store.serving_logs import CHUNK, arm_stats, click_through, queries, shadow_stats

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = Window(T0, T0 + timedelta(minutes=1))


@pytest.fixture
def engine(lockstep_home, database_url):
    engine = get_engine(database_url)
    yield engine
    dispose_engines()


def request(rid: str, seconds: float, version: str = "1", status: int = 200, *, pinned: bool = False,
            query: str | None = "q", latency: float = 5.0) -> dict:
    return {"request_id": rid, "at": T0 + timedelta(seconds=seconds), "model_version": version, "query": query, "k": 10,
            "latency_ms": latency, "status": status, "top_ids": ["a", "b"], "pinned": pinned}


def click(rid: str, seconds: float, event: str = "click") -> dict:
    return {"request_id": rid, "record_id": "a", "event": event, "at": T0 + timedelta(seconds=seconds)}


def write(engine, requests: list[dict], clicks: list[dict] = (), shadows: list[dict] = ()) -> None:
    with engine.begin() as conn:
        if requests:
            conn.execute(insert(request_log), requests)
        if clicks:
            conn.execute(insert(feedback_log), list(clicks))
        if shadows:
            conn.execute(insert(shadow_log), list(shadows))


def test_an_impression_is_an_answered_search_and_a_click_an_impression_clicked_at_least_once(engine):
    write(engine, [
        request("ok1", 1), request("ok2", 2), request("ok3", 3),
        request("fail", 4, status=500),  # server error: counts in the error rate, no impression
        request("bad", 5, status=404),  # declined: no result list, so no impression
        request("pin", 6, pinned=True),  # pinned by a client: never counts
        request("early", -1), request("late", 60),  # outside the half-open window
    ], [
        click("ok1", 10), click("ok1", 11),  # two clicks on one list: one clicked impression
        click("ok2", 12, event="view"),  # not a click
        click("fail", 13), click("bad", 14), click("pin", 15), click("early", 16),  # none of these count
    ])
    (stats,) = arm_stats(engine, WINDOW, ["1"]).values()
    assert (stats.requests, stats.errors, stats.declined, stats.impressions, stats.clicked) == (5, 1, 1, 3, 1)
    assert stats.ctr == pytest.approx(1 / 3)
    assert len(stats.latencies_ms) == 4  # every request that is not a server error
    # No user ids: every impression is a cluster of its own (issue 22 added the per-user sums).
    assert click_through(engine, "1", WINDOW) == ClickThrough(impressions=3, clicks=1, clusters=ClusterSums.per_trial(1, 3))


def test_the_drift_check_and_the_rollout_count_the_same_impressions_and_clicks(engine):
    """The two users of the logs used to differ (status 200 vs status < 500); now one definition."""
    end = T0 + timedelta(hours=2)
    current = Window(T0 + timedelta(hours=1), end)
    write(engine, [
        request("r1", 3600 + 1), request("r2", 3600 + 2), request("r3", 3600 + 3, status=404),
        request("r4", 3600 + 4, status=500), request("old", 10), request("other", 3600 + 5, version="2"),
    ], [click("r1", 3600 + 30), click("r3", 3600 + 31), click("old", 20)])
    counts = click_through_counts(engine, "1", end, window_hours=1)
    arm = arm_stats(engine, current, ["1"])["1"]
    assert (counts["current_impressions"], counts["current_clicks"]) == (arm.impressions, arm.clicked) == (2, 1)
    assert (counts["reference_impressions"], counts["reference_clicks"]) == (1, 1)


def test_clicks_count_up_to_the_moment_of_the_analysis(engine):
    write(engine, [request("a", 1), request("b", 2)], [click("a", 30), click("b", 90)])
    assert arm_stats(engine, WINDOW, ["1"], clicks_until=T0 + timedelta(seconds=60))["1"].clicked == 1
    assert arm_stats(engine, WINDOW, ["1"])["1"].clicked == 2  # b's click came after the window: still b's
    assert click_through(engine, "1", WINDOW, clicks_until=T0 + timedelta(seconds=10)).clicks == 0


def test_versions_without_traffic_get_zero_counts(engine):
    write(engine, [request("a", 1, version="1")])
    stats = arm_stats(engine, WINDOW, ["1", 2])
    assert stats["2"] == ArmStats("2")
    assert stats["2"].ctr != stats["2"].ctr  # NaN: no impressions, no rate


def test_queries_are_the_unpinned_searches_of_the_window_oldest_first(engine):
    write(engine, [
        request("c", 3, query="third"), request("a", 1, query="first"), request("b", 2, query="  "),
        request("n", 4, query=None), request("p", 5, query="pinned", pinned=True), request("x", 60, query="later"),
    ])
    assert queries(engine, WINDOW) == ["first", "third"]


def test_shadow_copies_pair_with_their_live_requests_across_chunks(engine):
    n = CHUNK + 20  # more live requests than one IN (...) list holds
    live = [request(f"r{i}", 1 + i * 0.01, status=500 if i == 0 else 200, latency=7.0) for i in range(n)]
    live[1]["pinned"] = True  # a pinned live answer is no comparison
    shadows = [
        {"request_id": f"r{i}", "at": T0 + timedelta(seconds=2), "live_version": "1", "shadow_version": "2",
         "live_top_ids": ["a", "b"], "shadow_top_ids": None if i == 2 else ["a", "c"], "latency_ms": 9.0,
         "error": "timeout" if i == 2 else None}
        for i in range(n)
    ]
    shadows.append({**shadows[3], "shadow_version": "3"})  # another version's copy
    write(engine, live, shadows=shadows)
    stats = shadow_stats(engine, WINDOW, 2)
    assert (stats.version, stats.copies, stats.errors) == ("2", n, 1)
    assert (stats.live_requests, stats.live_errors) == (n - 1, 1)
    assert len(stats.live_latencies_ms) == n - 2 and set(stats.live_latencies_ms) == {7.0}
    assert len(stats.shadow_latencies_ms) == n - 1
    assert stats.shadow_top_ids[2] is None and stats.shadow_top_ids[0] == ("a", "c")
    assert stats.live_top_ids[0] == ("a", "b")


def test_the_definitions_and_the_window():
    assert [s for s in (200, 204, 301, 404, 499, 500, 503) if is_impression(s)] == [200, 204]
    assert [s for s in (200, 404, 499, 500, 503) if is_server_error(s)] == [500, 503]
    naive = Window(datetime(2026, 5, 1, 12, 0), "2026-05-01T13:00:00Z")
    assert naive.start == T0 and naive.seconds == 3600.0
    assert naive.to_dict() == {"start": "2026-05-01T12:00:00+00:00", "end": "2026-05-01T13:00:00+00:00"}
    with pytest.raises(ValueError, match="not an ISO 8601"):
        Window("yesterday", T0)
