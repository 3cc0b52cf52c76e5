"""Per-user sums from the serving logs in one query (issue 22), on a real SQLite file and a real PostgreSQL.

The sums the database returns must be exactly those of folding the rows per user in
Python (``ClusterSums.of``): the same impressions, clicks, cap and clusters.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from lockstep.store.db import dispose_engines, get_engine
from lockstep.store.log_stats import ClusterSums, Window
from lockstep.store.schema import feedback_log, request_log
from lockstep.store.serving_logs import arm_stats, click_through, user_sums

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = Window(T0, T0 + timedelta(minutes=10))


@pytest.fixture
def engine(lockstep_home, database_url):
    engine = get_engine(database_url)
    yield engine
    dispose_engines()


def traffic(seed: int = 3) -> tuple[list[dict], list[dict], dict[str, dict[str, list[int]]]]:
    """Seeded requests and clicks, and what each (version, cluster) should count: [clicked, impressions, errors, requests]."""
    rng = random.Random(seed)
    rows, clicks = [], []
    expected: dict[str, dict[str, list[int]]] = {"1": {}, "2": {}}
    users = [f"user-{i}" for i in range(12)] + ["r:collide"]  # a user id that looks like a request key
    for i in range(300):
        version = rng.choice("12")
        user = None if rng.random() < 0.2 else rng.choice(users[:3] if rng.random() < 0.5 else users)  # 3 heavy users
        status = rng.choice([200] * 8 + [500, 404])
        rid = f"q{i}"
        rows.append({"request_id": rid, "at": T0 + timedelta(seconds=i), "model_version": version, "user_id": user,
                     "query": "q", "k": 10, "latency_ms": float(i), "status": status, "top_ids": ["a"], "pinned": False})
        clicked = status == 200 and rng.random() < 0.3
        if clicked or (status != 200 and rng.random() < 0.3):  # clicks on failed or declined searches never count
            clicks += [{"request_id": rid, "record_id": "a", "event": "click", "at": T0 + timedelta(seconds=i + 5)}] * 2
        unit = expected[version].setdefault(f"u:{user}" if user else f"r:{rid}", [0, 0, 0, 0])
        unit[0] += clicked
        unit[1] += status == 200
        unit[2] += status >= 500
        unit[3] += 1
    rows.append({**rows[0], "request_id": "pinned", "pinned": True})  # pinned: never counts
    rows.append({**rows[0], "request_id": "late", "at": WINDOW.end})  # outside the half-open window
    return rows, clicks, expected


@pytest.mark.parametrize("cap", [None, 5])
def test_user_sums_in_sql_equal_the_sums_folded_per_user(engine, cap):
    rows, clicks, expected = traffic()
    with engine.begin() as conn:
        conn.execute(insert(request_log), rows)
        conn.execute(insert(feedback_log), clicks)
    sums = user_sums(engine, WINDOW, ["1", "2", "3"], cap=cap)
    for version in ("1", "2"):
        units = expected[version].values()
        ctr, errors = sums[version]
        want_ctr = ClusterSums.of(((c, n) for c, n, _, _ in units), cap=cap)
        want_errors = ClusterSums.of(((e, r) for _, _, e, r in units), cap=cap)
        for got, want in ((ctr, want_ctr), (errors, want_errors)):
            assert got.to_list() == pytest.approx(want.to_list())
        assert ctr.clusters < ctr.raw_n  # users with several impressions are one cluster each
    assert sums["3"] == (ClusterSums(), ClusterSums())
    stats = arm_stats(engine, WINDOW, ["1"], cap=cap)["1"]
    assert (stats.clusters, stats.error_clusters) == sums["1"]
    assert (stats.clusters.raw_x, stats.clusters.raw_n) == (stats.clicked, stats.impressions)
    assert click_through(engine, "1", WINDOW, cap=cap).clusters == sums["1"][0]
    if cap is not None:
        assert sums["1"][0].capped >= 1  # the heavy users were cut to the cap


def test_latencies_are_capped_per_user_and_bad_caps_are_refused(engine):
    rows = [{"request_id": f"h{i}", "at": T0 + timedelta(seconds=i), "model_version": "1", "user_id": "heavy",
             "query": "q", "k": 10, "latency_ms": 100.0 + i, "status": 200, "top_ids": []} for i in range(30)]
    rows += [{**rows[0], "request_id": f"a{i}", "user_id": None, "latency_ms": 5.0} for i in range(10)]
    with engine.begin() as conn:
        conn.execute(insert(request_log), rows)
    stats = arm_stats(engine, WINDOW, ["1"], latency_cap=4)["1"]
    assert sorted(stats.latencies_ms) == [5.0] * 10 + [100.0, 101.0, 102.0, 103.0]  # the heavy user's first four
    assert stats.requests == 40 and len(arm_stats(engine, WINDOW, ["1"], latency_cap=None)["1"].latencies_ms) == 40
    for bad in (0, 1.5, "10"):
        with pytest.raises(ValueError, match="cap must be a whole number"):
            arm_stats(engine, WINDOW, ["1"], cap=bad)
