"""The Lockstep page's data, chart and HTML, from a real temporary Lockstep database.

The real-server and real-browser checks are in tests/ui/; these run without Airflow.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from lockstep.core import alerts
from lockstep.core.config import DEFAULT_MLFLOW_UI_URL
from lockstep.core.errors import ConfigurationError
from lockstep.ops.dashboard import mlflow_version_url, short_fingerprint
from lockstep.ops.weight_chart import WeightPoint, weight_chart_svg
from lockstep.rollout import record
from lockstep.store import routing, schema
from lockstep.systems import load_dashboard
from tests.ui.scenario import FINGERPRINTS, ROLLBACK_REASON, seed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))
from lockstep_ui import create_app, render_page  # noqa: E402
from lockstep_ui.auth import LoginRequired  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def test_an_empty_store_says_so(lockstep_home):
    d = load_dashboard()
    assert (d.generation, d.slots, d.rollouts, d.rollbacks, d.history, d.problems) == (0, (), (), (), (), ())
    assert d.mlflow_ui_url == DEFAULT_MLFLOW_UI_URL
    page = render_page(d)
    assert "No serving slots yet" in page and "No rollouts yet." in page and "No rollbacks." in page
    assert "No routing changes yet." in page


def test_the_page_names_the_system_of_the_deployment(lockstep_home, monkeypatch):
    assert load_dashboard().system == "search"
    assert '<span id="system">search system</span>' in render_page(load_dashboard())
    monkeypatch.setenv("LOCKSTEP_SYSTEM", "recommender")  # the recommender's own database, empty here
    d = load_dashboard()
    assert d.system == "recommender" and d.model_name == "lockstep-recommender" and d.to_dict()["system"] == "recommender"
    assert '<span id="system">recommender system</span>' in render_page(d)


def test_slots_show_state_weight_shadow_fingerprint_index_and_mlflow_link(lockstep_home, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_MLFLOW_UI_URL", "https://mlflow.example.com/")
    routing.register_slot(1, "models:/my-embedder/1", "/idx/v1", "sha256:" + "a" * 64, routing.READY)
    routing.register_slot(2, "models:/my-embedder/2", "/idx/v2", "sha256:" + "b" * 64, routing.READY)
    routing.register_slot(3, "models:/my-embedder/3", "/idx/v3", "sha256:" + "c" * 64, routing.READY)
    routing.set_weights({1: 90, 2: 10}, shadow=[3], reason="canary 10%")

    d = load_dashboard()
    by_version = {s.model_version: s for s in d.slots}
    assert [(s.model_version, s.state, s.weight, s.shadow) for s in d.slots] == [
        ("1", "live", 90, False), ("2", "live", 10, False), ("3", "ready", 0, True),
    ]
    assert by_version["2"].fingerprint_short == "b" * 12
    assert by_version["2"].index_location == "/idx/v2"
    # The model name comes from the slot's model URI, the base from LOCKSTEP_MLFLOW_UI_URL.
    assert by_version["2"].mlflow_url == "https://mlflow.example.com/#/models/my-embedder/versions/2"
    assert d.generation == 4
    assert json.loads(json.dumps(d.to_dict()))["slots"][2]["shadow"] is True


def test_rollouts_steps_gates_and_history_windows(lockstep_home):
    seed()
    d = load_dashboard()

    rolled_back, promoted = d.rollouts  # newest first
    assert (rolled_back.model_version, rolled_back.baseline_version, rolled_back.status) == ("3", "2", "rolled_back")
    assert (promoted.model_version, promoted.status) == ("2", "promoted")
    assert [s.step for s in promoted.steps] == ["shadow", "canary 5%", "canary 25%", "finalize"]

    failing = rolled_back.steps[-1]
    assert (failing.step, failing.weight, failing.verdict, failing.action) == ("canary 25%", 25, "fail", "rollback")
    latency = next(g for g in failing.gates if g.name == "latency")
    assert latency.verdict == "fail" and latency.figures["p95_ms_candidate"] == pytest.approx(38.2)

    # A rollout's chart starts from the traffic before it and ends with its last change.
    assert [p.weights for p in rolled_back.history][0] == {"2": 100}
    assert [p.weights.get("3", 0) for p in rolled_back.history] == [0, 0, 5, 25, 0]
    assert rolled_back.history[1].shadow == ("3",)
    assert promoted.history[-1].weights == {"2": 100}

    assert promoted.mlflow_url.endswith("/#/models/lockstep-embedder/versions/2")
    assert rolled_back.baseline_mlflow_url.endswith("/versions/2")


def test_a_rollback_recorded_in_three_places_is_listed_once(lockstep_home):
    seed()
    (rollback,) = load_dashboard().rollbacks
    assert rollback.model_version == "3"
    assert rollback.reason == ROLLBACK_REASON
    assert sorted(rollback.sources) == ["alert", "rollout", "routing"]


def test_separate_rollbacks_stay_separate(lockstep_home):
    for v in ("1", "2", "3"):
        routing.register_slot(v, f"models:/m/{v}", f"/i/{v}", FINGERPRINTS[v], routing.READY)
    routing.set_weights({"1": 100})
    _failed_rollout("r2", "2", "1", "canary 5%: errors")
    _failed_rollout("r3", "3", "1", "canary 5%: latency")
    rollbacks = load_dashboard().rollbacks
    assert [(r.model_version, r.reason, r.sources) for r in rollbacks] == [
        ("3", "canary 5%: latency", ("rollout", "routing")), ("2", "canary 5%: errors", ("rollout", "routing")),
    ]


def test_rollbacks_are_read_from_records_not_guessed_from_reasons(lockstep_home):
    """A traffic change whose reason mentions a rollback is only a routing change; a
    manual rollback names the version it took traffic from, not the one it returned to."""
    for v in ("1", "2"):
        routing.register_slot(v, f"models:/m/{v}", f"/i/{v}", FINGERPRINTS[v], routing.READY)
    routing.set_weights({"1": 100})
    routing.set_weights({"1": 95, "2": 5}, reason="canary 5%")
    routing.set_weights({"1": 100}, reason="rollback: aborted by hand")  # routing set, no record
    assert load_dashboard().rollbacks == ()

    routing.set_weights({"2": 100}, reason="promote version 2")
    generation = routing.set_weights({"1": 100}, reason="manual rollback to v1: bad answers", actor="lockstep_rollback")
    record.begin("rollback-1", "1", "2", record.MANUAL_ROLLBACK, {"reason": "bad answers", "to_version": "1"})
    record.record_step("rollback-1", "rollback", "rollback", "info", weight=100, reason="bad answers",
                       figures={"generation": generation, "commit_seconds": 0.01})
    record.finish("rollback-1", record.ROLLED_BACK, "bad answers")
    alerts.alert("rollback", "manual rollback from v2 to v1: bad answers", {"rollback_id": "rollback-1", "to_version": "1"})

    (rollback,) = load_dashboard().rollbacks
    assert (rollback.model_version, rollback.reason, rollback.sources) == ("2", "bad answers", ("rollout", "routing", "alert"))
    (recorded,) = record.rollbacks()
    assert (recorded.version, recorded.to_version, recorded.manual, recorded.generation) == ("2", "1", True, generation)


def _failed_rollout(rollout_id: str, cand: str, base: str, reason: str) -> None:
    """What a rollout's rollback task records: the traffic back, then the record's outcome."""
    record.begin(rollout_id, cand, base, "canary", {})
    routing.set_weights({base: 95, cand: 5}, reason="canary 5%", actor="lockstep_rollout")
    generation = routing.set_weights({base: 100}, reason=f"abort: {reason}", actor="lockstep_rollout")
    record.record_step(rollout_id, "rollback", "rollback", "info", weight=0, reason=reason, figures={"generation": generation})
    record.finish(rollout_id, record.ROLLED_BACK, reason)


def test_missing_rollout_tables_mean_no_rollouts_yet(lockstep_home, monkeypatch):
    routing.register_slot(1, "models:/m/1", "/i/1", FINGERPRINTS["1"], routing.READY)
    routing.set_weights({1: 100}, reason="first")
    monkeypatch.delattr(schema, "rollouts")
    monkeypatch.delattr(schema, "rollout_steps")
    d = load_dashboard()
    assert d.rollouts == () and d.problems == ()
    page = render_page(d)
    assert "No rollouts yet." in page
    assert 'data-version="1"' in page  # the overall weight chart stands in for the rollouts' charts


def test_an_unreadable_alert_log_is_a_problem_not_an_error(lockstep_home):
    routing.register_slot(1, "models:/m/1", "/i/1", FINGERPRINTS["1"], routing.READY)
    (lockstep_home / "alerts.jsonl").write_text("{not json\n")
    d = load_dashboard()
    assert len(d.slots) == 1
    assert d.alerts == () and "alert log" in d.problems[0]
    assert d.problems[0] in render_page(d)


def test_chart_is_valid_svg_with_one_series_per_version():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    points = [
        WeightPoint(1, t0, {"1": 100}, (), "first", None),
        WeightPoint(2, t0 + timedelta(minutes=1), {"1": 100}, ("2",), "shadow <2>", None),
        WeightPoint(3, t0 + timedelta(minutes=2), {"1": 100}, ("2",), "slot 3 registered", None),  # no traffic change
        WeightPoint(4, t0 + timedelta(hours=1), {"1": 75, "2": 25}, (), "canary 25%", None),
        WeightPoint(5, t0 + timedelta(hours=2), {"2": 100}, (), "promote", None),
    ]
    svg = weight_chart_svg(points, width=500, height=200)
    root = ET.fromstring(svg)  # well-formed, reason text escaped
    series = {p.get("data-version"): p.get("data-weights") for p in root.iter(f"{SVG}path")}
    assert series == {"1": "100,100,75,0", "2": "0,0,25,100"}  # the no-change column is dropped
    tips = [t.text for t in root.iter(f"{SVG}title")]
    assert any("shadow <2>" in t and "(shadow)" in t for t in tips)
    # 100 % is at the top of the plot, 0 % at its bottom, and version 2 keeps one colour.
    d1 = next(p for p in root.iter(f"{SVG}path") if p.get("data-version") == "1").get("d")
    assert d1.startswith("M44.0,28.0")
    assert "V154.0" in d1  # 0 % at top + plot height (200 - 28 - 46 + 28)


def test_empty_chart_says_no_changes():
    svg = weight_chart_svg([])
    assert "No routing changes yet." in ET.tostring(ET.fromstring(svg), encoding="unicode")


def test_html_escapes_what_operators_typed(lockstep_home):
    routing.register_slot(1, "models:/m/1", "/i/1", FINGERPRINTS["1"], routing.READY, note="<script>alert(1)</script>")
    page = render_page(load_dashboard(), user="admin")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "logged in as admin" in page


def test_links_and_fingerprints():
    assert mlflow_version_url("http://h:5000/", "a b", "7") == "http://h:5000/#/models/a%20b/versions/7"
    assert short_fingerprint("sha256:0123456789abcdef") == "0123456789ab"
    assert short_fingerprint("plain") == "plain"


def test_app_answers_html_json_and_refuses_without_login(lockstep_home):
    seed()

    def user(request: Request):  # stands in for Airflow's JWT check, which tests/ui/ runs for real
        if request.headers.get("x-user") != "admin":
            raise LoginRequired("not logged in", "/auth/login?next=%2Flockstep%2F")
        return "admin"

    client = TestClient(create_app(user_dependency=user), root_path="")
    assert client.get("/api/state").status_code == 401
    refused = client.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert (refused.status_code, refused.headers["location"]) == (303, "/auth/login?next=%2Flockstep%2F")

    state = client.get("/api/state", headers={"x-user": "admin"})
    assert state.status_code == 200 and state.json()["generation"] > 0
    page = client.get("/", headers={"x-user": "admin"})
    assert page.status_code == 200 and 'data-rollout="asset_triggered__2026-01-12T09:30:00"' in page.text
    assert client.get("/static/lockstep.css").status_code == 200  # assets need no login

    def broken():
        raise ConfigurationError("cannot reach the Lockstep database at 'postgresql://x'")

    down = TestClient(create_app(load=broken, user_dependency=user))
    reply = down.get("/", headers={"x-user": "admin"})
    assert reply.status_code == 503 and "cannot reach the Lockstep database" in reply.text
    assert down.get("/api/state", headers={"x-user": "admin"}).json()["detail"].startswith("cannot reach")


def _answered(conn, request_id: str, version: str, user: str, at: datetime, *, holdback: bool) -> None:
    conn.execute(schema.request_log.insert().values(
        request_id=request_id, at=at, model_version=version, user_id=user, query="q", k=10, latency_ms=1.0,
        status=200, top_ids=["r1", "r2"], replica="test", pinned=False, holdback=holdback))


def test_the_holdback_lift_and_the_streaming_loader_are_on_the_page(lockstep_home):
    from lockstep.store.db import get_engine
    from lockstep.streaming.status import record_backlog, record_batch

    routing.register_slot(1, "models:/e/1", "/idx/v1", "sha256:" + "a" * 64, routing.READY)
    routing.register_slot(2, "models:/e/2", "/idx/v2", "sha256:" + "b" * 64, routing.READY)
    routing.set_weights({2: 100}, reason="version 2 is champion")
    routing.set_holdback(1, 10.0)
    engine = get_engine()
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    with engine.begin() as conn:
        # champion: 4 user-days, 3 clicked (one user with 3 requests and 2 clicks counts once);
        # holdback: 4 user-days, 1 clicked.
        for n, (user, clicks) in enumerate([("c1", 2), ("c1", 0), ("c1", 0), ("c2", 1), ("c3", 1), ("c4", 0)]):
            _answered(conn, f"c-{n}", "2", user, day + timedelta(hours=1, minutes=n), holdback=False)
            for _ in range(clicks):
                conn.execute(schema.feedback_log.insert().values(request_id=f"c-{n}", record_id="r1", event="click",
                                                                 at=day + timedelta(hours=2)))
        for n, (user, clicks) in enumerate([("h1", 1), ("h2", 0), ("h3", 0), ("h4", 0)]):
            _answered(conn, f"h-{n}", "1", user, day + timedelta(hours=1, minutes=n), holdback=True)
            for _ in range(clicks):
                conn.execute(schema.feedback_log.insert().values(request_id=f"h-{n}", record_id="r1", event="click",
                                                                 at=day + timedelta(hours=2)))
        record_batch(conn, source="redis://127.0.0.1:6379/changes", group="lockstep", consumer="c-1", applied=120,
                     duplicates=3, dead=2, last_message_id="1700000000000-7", last_seq=120)
    record_backlog(engine, source="redis://127.0.0.1:6379/changes", group="lockstep", consumer="c-1", pending=4, lag=37)

    d = load_dashboard()
    assert d.holdback["holdback"]["model_version"] == "1" and d.holdback["holdback"]["percent"] == 10.0
    assert "salt" not in json.dumps(d.to_dict())
    (past,) = [x for x in d.holdback["days"] if x["day"] == day.date().isoformat()]
    assert (past["champion_version"], past["champion_user_days"], past["champion_clicked"]) == ("2", 4, 3)
    assert (past["holdback_user_days"], past["holdback_clicked"]) == (4, 1)
    assert past["lift"] == pytest.approx((3 / 4) / (1 / 4) - 1)
    (stream,) = d.streams
    assert (stream["applied"], stream["duplicates"], stream["dead_lettered"], stream["lag"], stream["pending"]) == (120, 3, 2, 37, 4)

    page = render_page(d)
    assert "10% of users frozen on <strong>v1</strong>" in page
    assert f'data-day="{day.date().isoformat()}" data-lift="{past["lift"]}"' in page and "+200.0%" in page
    ET.fromstring(d.holdback_chart)  # the chart is well-formed SVG
    assert 'data-source="redis://127.0.0.1:6379/changes" data-lag="37"' in page


def test_without_holdback_or_loader_the_page_says_how_to_start_them(lockstep_home):
    d = load_dashboard()
    assert d.holdback["holdback"] is None and d.streams == ()
    page = render_page(d)
    assert "No holdback group" in page and "No streaming loader has run" in page


def test_batch_freshness_shows_complete_and_computing_versions_and_how_far_behind(lockstep_home):
    from lockstep.store.batch_results import BatchResultStore
    from lockstep.store.records import RecordStore

    records = RecordStore()
    records.upsert("a", "first text")
    records.upsert("b", "second text")
    head = records.head()
    batch = BatchResultStore()
    batch.start_full("related", "1", fingerprint="sha256:" + "a" * 64, k=2, through_seq=head)
    batch.write_rows("related", "1", [("a", [("b", 0.5)]), ("b", [("a", 0.5)])], input_seq=head)
    batch.finish("related", "1", fingerprint="sha256:" + "a" * 64, k=2, through_seq=head)
    batch.start_full("related", "2", fingerprint="sha256:" + "b" * 64, k=2, through_seq=head)
    records.upsert("c", "a third text")  # one change since both versions' rows
    records.delete("a")  # and a second

    d = load_dashboard()
    assert [(b["model_version"], b["complete"], b["rows"], b["behind"]) for b in d.batch] == [("2", False, 0, 2), ("1", True, 2, 2)]
    page = render_page(d)
    assert 'data-version="1" data-kind="related" data-complete="true" data-behind="2"' in page
    assert 'data-version="2" data-kind="related" data-complete="false"' in page and "takes no batch traffic" in page


def test_a_load_in_progress_shows_records_rate_eta_and_shard_states(lockstep_home):
    """A load has no slot until it is published: the page still shows it, from its files."""
    from lockstep.core.config import settings
    from lockstep.index.load_progress import DONE, ShardProgress, start_load
    from lockstep.index.storage import index_location

    location = index_location(settings().model_name, 7)
    clock = iter([100.0, 100.0, 100.0, 110.0, 110.0, 120.0, 120.0, 130.0, 130.0])
    now = lambda: next(clock, 130.0)  # noqa: E731 - a fake wall clock for the files' times
    start_load(location, model_version="7", seq=40, counts=[100, 100], file="snapshot.parquet", now=now)
    first = ShardProgress(location, 0, 100, now=now, every=0.0)
    first.start(done=0, unique=100, checkpointed=0)
    first.advance(done=100, embedded=100)
    first.set_state(DONE)
    second = ShardProgress(location, 1, 100, now=now, every=0.0)
    second.start(done=0, unique=100, checkpointed=0)
    second.advance(done=20, embedded=20)

    d = load_dashboard()
    (load,) = d.loads
    assert (load["model_version"], load["records"], load["done"], load["state"]) == ("7", 200, 120, "running")
    assert load["shard_states"]["done"] == 1 and load["shard_states"]["running"] == 1
    assert load["rate_per_s"] > 0 and load["eta_s"] > 0
    page = render_page(d)
    assert 'class="load" data-version="7" data-state="running"' in page
    assert "120 of 200 (60.0 %)" in page


def test_a_slot_shows_the_search_setting_and_recall_bound_validation_chose(tmp_path):
    """Issue 26: the page shows what validation chose and how sure it is, from the manifest."""
    import numpy as np

    from lockstep.index.storage import save_index
    from lockstep.index.vector_index import IndexSpec, VectorIndex
    from lockstep.ops.dashboard import index_search_summary

    vectors = np.eye(8, dtype=np.float32)
    index = VectorIndex.build([f"r{i}" for i in range(8)], vectors, IndexSpec(kind="hnsw", ef_search=192))
    figures = {"ef_search": 192.0, "recall_at_10": 0.957, "recall_at_10_lower_95": 0.951,
               "recall_at_10_fragments": 0.957, "recall_at_10_fragments_lower_95": 0.951, "queries_fragments": 1000.0,
               "recall_at_10_records": 0.996, "recall_at_10_records_lower_95": 0.993, "queries_records": 500.0}
    save_index(index, tmp_path / "v1", model_name="m", model_version=1, fingerprint="f", applied_seq=0,
               extra={"validation": figures})
    summary = index_search_summary(str(tmp_path / "v1"))
    assert summary == "hnsw, ef_search 192: recall@10 0.957, 95 % lower bound 0.951 (1,000 fragments)"
    flat = VectorIndex.build(["a"], vectors[:1])
    save_index(flat, tmp_path / "v2", model_name="m", model_version=2, fingerprint="f", applied_seq=0)
    assert index_search_summary(str(tmp_path / "v2")) == "flat: exact"
    assert index_search_summary(str(tmp_path / "missing")) == "" and index_search_summary(None) == ""
