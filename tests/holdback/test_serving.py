"""The holdback through the real serving app: routed, flagged in the log, left out of the gates, kept."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from lockstep.core import clock
from lockstep.holdback.report import lift_report
from lockstep.store import routing
from lockstep.store.schema import request_log, shadow_log
from lockstep.store.serving_logs import Window, arm_stats, click_through
from tests.serving.conftest import deploy
from tests.serving.harness import serve, wait_for

USERS = [f"user-{i}" for i in range(60)]


@pytest.fixture
def deployment(lockstep_home, tmp_path):
    """Slots v1 and v2 with real models and indexes; v2 takes all traffic (mirrored to v1 as a shadow),
    30 % of users held back on v1."""
    d = deploy(f"sqlite:///{tmp_path / 'lockstep.db'}", tmp_path)
    routing.set_weights({"2": 100}, shadow=["1"], engine=d.engine)
    routing.set_holdback("1", 30, actor="test", engine=d.engine)
    return d


def logged(engine, table=request_log) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar())


def test_holdback_users_are_served_by_the_holdback_version_and_left_out_of_the_gates(deployment):
    d = deployment
    table = routing.read_table(d.engine)
    group = {u for u in USERS if table.held_back(u)}
    assert 5 < len(group) < 35
    start = clock.now() - timedelta(seconds=1)
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        shown = client.get("/routing").json()
        assert shown["holdback"] == {"model_version": "1", "percent": 30.0, "set_at": shown["holdback"]["set_at"],
                                     "set_by": "test"}
        assert {slot["model_version"]: slot["loaded"] for slot in shown["slots"]} == {"1": True, "2": True}
        served = {}
        for user in USERS:
            answers = [client.post("/search", json={"query": "rocket planet orbit", "user_id": user}) for _ in range(2)]
            assert {a.status_code for a in answers} == {200}
            versions = {a.json()["model_version"] for a in answers}
            assert len(versions) == 1 and versions == {a.json()["index_version"] for a in answers}
            served[user] = versions.pop()
            first = answers[0].json()
            clicked = client.post("/feedback", json={"request_id": first["request_id"],
                                                     "record_id": first["results"][0]["id"], "event": "click"})
            assert clicked.status_code == 202 and clicked.json() == {"accepted": True, "counted": True}
        assert {u for u, v in served.items() if v == "1"} == group
        assert {served[u] for u in USERS if u not in group} == {"2"}
        anonymous = {client.post("/search", json={"query": "rocket"}).json()["model_version"] for _ in range(20)}
        assert anonymous == {"2"}
        holdback_user = sorted(group)[0]
        pinned = client.post("/search", json={"query": "rocket", "user_id": holdback_user}, headers={"X-Lockstep-Pin": "2"})
        assert pinned.json()["model_version"] == "2"
        total = 2 * len(USERS) + 20 + 1
        wait_for(lambda: logged(d.engine) == total, 15, "every request in the log")
        # live traffic is mirrored to the shadow; holdback answers (and the pinned one) are not
        mirrored = 2 * (len(USERS) - len(group)) + 20
        wait_for(lambda: logged(d.engine, shadow_log) == mirrored, 15, "every shadow copy in the log")
    window = Window(start, clock.now() + timedelta(seconds=1))
    with d.engine.connect() as conn:  # the app has stopped: nothing is still on its way to the logs
        copied = set(conn.execute(select(shadow_log.c.request_id)).scalars())
        held_ids = set(conn.execute(select(request_log.c.request_id).where(request_log.c.holdback.is_(True))).scalars())
    assert len(copied) == mirrored and not copied & held_ids

    with d.engine.connect() as conn:
        flags = conn.execute(select(request_log.c.model_version, request_log.c.holdback, request_log.c.pinned,
                                    func.count()).group_by(request_log.c.model_version, request_log.c.holdback,
                                                           request_log.c.pinned)).all()
    assert sorted(tuple(f) for f in flags) == [
        ("1", True, False, 2 * len(group)), ("2", False, False, 2 * (len(USERS) - len(group)) + 20), ("2", False, True, 1),
    ]
    # the gates: version 1 has no counted traffic at all, version 2 only the users outside the holdback
    stats = arm_stats(d.engine, window, ["1", "2"], clicks_until=clock.now())
    assert stats["1"].requests == 0 and stats["1"].clicked == 0
    assert stats["2"].requests == 2 * (len(USERS) - len(group)) + 20 and stats["2"].clicked == len(USERS) - len(group)
    assert click_through(d.engine, "1", window).impressions == 0
    # the lift report reads exactly those rows: one user-day per user (two if the searches straddled
    # midnight UTC), clicked once; anonymous and pinned searches are in neither arm
    with d.engine.connect() as conn:
        rows = conn.execute(select(request_log.c.user_id, request_log.c.at).where(request_log.c.pinned.is_(False),
                                                                                 request_log.c.user_id.is_not(None))).all()
    user_days = {(u, clock.utc(at).date()) for u, at in rows}
    report = lift_report(d.engine, days=2)
    assert sum(day.holdback_user_days for day in report.days) == sum(u in group for u, _ in user_days)
    assert sum(day.champion_user_days for day in report.days) == sum(u not in group for u, _ in user_days)
    assert sum(day.holdback_clicked for day in report.days) == len(group)
    assert {day.champion_version for day in report.days} == {"2"}
    if len(report.days) == 1:
        assert report.days[0].lift == pytest.approx(0.0)


def test_retention_keeps_the_holdback_version_served_and_in_the_compaction_floor(deployment):
    from lockstep.ops import retention

    d = deployment
    d.store.upsert("r0001", "rewritten after the snapshot")
    done = {c["model_version"]: c for c in retention.checkpoint_indexes(d.store)}
    assert set(done) == {"1", "2"} and done["1"]["applied_seq"] == d.store.head()
    floor = retention.compaction_floor(d.store, retention_days=0, snapshot_seqs={})
    assert "slot v1 applied" in floor.bounds
    with pytest.raises(routing.RoutingError, match="holdback version"):
        routing.set_state("1", "retired", engine=d.engine)
    assert routing.read_table(d.engine).slot("1").state == "ready"
