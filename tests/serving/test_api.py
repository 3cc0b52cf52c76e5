"""The serving API over a real uvicorn server: routing, pinning, bad input, writes, logs, metrics."""

from __future__ import annotations

import json
import re
import time

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from lockstep.serving import ServingConfig
from lockstep.store import routing
from lockstep.store.schema import feedback_log, request_log, shadow_log
from tests.serving.conftest import FAST
from tests.serving.harness import auth, serve, wait_for


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def count(engine, table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar())


def test_sticky_users_agree_with_the_table_and_pins_override(deployment):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        table = routing.read_table(d.engine)
        served = {}
        for user in (f"user-{i}" for i in range(40)):
            versions = {
                client.post("/search", json={"query": "rocket planet", "user_id": user}).json()["model_version"]
                for _ in range(3)
            }
            assert len(versions) == 1, f"{user} moved between versions {versions} while weights held"
            served[user] = versions.pop()
            # every replica computes the same answer from the table alone
            assert served[user] == table.choose(user).model_version
        assert set(served.values()) == {"1", "2"}

        pinned = client.post("/search", json={"query": "rocket", "user_id": "user-0"}, headers={"X-Lockstep-Pin": "2"})
        assert pinned.status_code == 200 and pinned.headers["X-Lockstep-Model-Version"] == "2"
        routing.set_weights({"1": 100}, engine=d.engine)
        wait_for(lambda: client.get("/routing").json()["generation"] == routing.read_generation(d.engine))
        # a ready slot without traffic can still be pinned (reviewers compare versions this way)
        assert client.post("/search", json={"query": "rocket"}, headers={"X-Lockstep-Pin": "2"}).json()["model_version"] == "2"
        assert {client.post("/search", json={"query": "rocket"}).json()["model_version"] for _ in range(20)} == {"1"}
        unknown = client.post("/search", json={"query": "rocket"}, headers={"X-Lockstep-Pin": "7"})
        assert unknown.status_code == 404 and "'7'" in unknown.json()["detail"] and "1, 2" in unknown.json()["detail"]


def test_bad_input_gets_a_clear_4xx_and_writes_nothing(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    head = d.store.head()
    cases = [
        ("post", "/search", {"content": b'{"query": "rocket",', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ("post", "/search", {"json": {"query": "rocket", "k": 0}}, 422, "k: Input should be greater than or equal to 1"),
        ("post", "/search", {"json": {"query": "rocket", "k": 101}}, 422, "k: Input should be less than or equal to 100"),
        ("post", "/search", {"json": {"query": "rocket", "k": "5"}}, 422, "k: Input should be a valid integer"),
        ("post", "/search", {"json": {"query": "x" * 2001}}, 422, "query: String should have at most 2000 characters"),
        ("post", "/search", {"json": {"query": ""}}, 422, "query: String should have at least 1 character"),
        ("post", "/search", {"json": {"query": "rocket", "top": 3}}, 422, "top: Extra inputs are not permitted"),
        ("post", "/search", {"json": ["rocket"]}, 422, "Input should be a valid dictionary"),
        ("put", "/records/r0001", {"json": {"text": "new text"}}, 401, "missing bearer token"),
        ("put", "/records/r0001", {"json": {"text": "new text"}, "headers": auth("nope")}, 401, "wrong bearer token"),
        ("delete", "/records/r0001", {}, 401, "missing bearer token"),
        ("put", "/records/r0001", {"json": {"text": "a " * 60_000}, "headers": auth()}, 413, "limit is 100000"),
        ("put", "/records/r0001", {"json": {"text": "ok", "metadata": {"k": "v" * 20_000}}, "headers": auth()}, 413, "metadata"),
        ("put", "/records/r0001", {"json": {"text": "ok", "metadata": [1, 2]}, "headers": auth()}, 422, "metadata"),
        ("put", "/records/r0001", {"json": {"text": "   "}, "headers": auth()}, 422, "text must be a non-empty string"),
        ("put", "/records/r0001", {"content": b"{nope", "headers": {**auth(), "content-type": "application/json"}}, 400, "not valid JSON"),
        ("put", "/records/" + "x" * 300, {"json": {"text": "ok"}, "headers": auth()}, 422, "at most 256 characters"),
        ("delete", "/records/never-there", {"headers": auth()}, 404, "no live record with id 'never-there'"),
        ("put", "/records/big", {"content": b"x" * 1_000_001, "headers": {**auth(), "content-type": "application/json"}}, 413, "limit is 1000000"),
        ("post", "/feedback", {"json": {"request_id": "abc", "record_id": "r0001", "event": "purchase"}}, 422, "event"),
    ]
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        for method, path, kwargs, status, message in cases:
            response = client.request(method.upper(), path, **kwargs)
            assert response.status_code == status, (method, path, response.text)
            assert message in response.json()["detail"], (method, path, response.json())
        s.runtime.logs.flush()
        assert d.store.head() == head  # no write reached the record store
        assert count(d.engine, request_log) == 0 and count(d.engine, feedback_log) == 0
        assert d.store.get("r0001").text == d.records["r0001"]
        text = client.get("/metrics").text
        assert metric(text, "lockstep_search_errors_total", model_version="none", status="422") == 7
        assert metric(text, "lockstep_search_errors_total", model_version="none", status="400") == 1
    # a server without a configured token refuses every write, saying how to enable them
    with serve(d.app(api_token=None)) as s, httpx.Client(base_url=s.url) as client:
        for method in ("PUT", "DELETE"):
            response = client.request(method, "/records/r0001", json={"text": "x"}, headers=auth())
            assert response.status_code == 403 and "LOCKSTEP_API_TOKEN" in response.json()["detail"]
    assert d.store.head() == head


def test_live_writes_reach_every_version_before_the_answer(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    query = {"query": "rocket planet orbit comet", "k": 3}
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        put = client.put("/records/fresh", json={"text": "rocket planet orbit comet", "metadata": {"src": "api"}}, headers=auth())
        # issue 24: the answer also says how it was acknowledged and which loaded versions applied it
        assert put.status_code == 200 and put.json() == {"id": "fresh", "seq": d.store.head(), "consistency": "applied",
                                                         "applied": ["1", "2"], "pending": []}
        assert d.store.get("fresh").metadata == {"src": "api"}
        for version in ("1", "2"):  # v2 takes no traffic but is loaded, so it gets the write too
            top = client.post("/search", json=query, headers={"X-Lockstep-Pin": version}).json()["results"]
            assert top[0]["id"] == "fresh"
            expected = float(d.models[version].embed_query(query["query"]) @ d.models[version].transform([put_text()])[0])
            assert top[0]["score"] == pytest.approx(expected, abs=1e-5)
        deleted = client.delete("/records/fresh", headers=auth())
        assert deleted.status_code == 200 and deleted.json()["seq"] == put.json()["seq"] + 1
        for version in ("1", "2"):
            ids = [r["id"] for r in client.post("/search", json=query, headers={"X-Lockstep-Pin": version}).json()["results"]]
            assert "fresh" not in ids
        # a write made elsewhere (another replica, an Airflow task) arrives through the tail
        d.store.upsert("elsewhere", "rocket planet orbit comet")
        wait_for(
            lambda: all(
                "elsewhere" in s.runtime.manager.view.slots[v].index for v in ("1", "2")
            ),
            timeout=3,
            what="the change-log tail",
        )
        seqs = {row["model_version"]: row["applied_seq"] for row in client.get("/routing").json()["slots"]}
        assert seqs == {"1": d.store.head(), "2": d.store.head()}


def put_text() -> str:
    return "rocket planet orbit comet"


def test_a_corrupt_or_mismatched_slot_is_never_served_and_the_others_keep_serving(deployment):
    d = deployment
    manifest = json.loads((d.root / "indexes" / "v2" / "manifest.json").read_text())
    blob = d.root / "indexes" / "v2" / manifest["index_file"]
    intact = blob.read_bytes()
    blob.write_bytes(intact[:-64])  # truncated
    # slot 3 pairs v1's index with v2's model: a different vector space
    routing.register_slot("3", str(d.root / "model-v2.joblib"), str(d.root / "indexes" / "v1"), d.models["2"].fingerprint,
                          state="ready", engine=d.engine)
    routing.set_weights({"1": 40, "2": 30, "3": 30}, engine=d.engine)
    config = ServingConfig(poll_interval=0.05, tail_interval=0.1, load_retry_after=0.5, replica="t")
    with serve(d.app(config=config)) as s, httpx.Client(base_url=s.url) as client:
        wait_for(lambda: sum(1 for st in s.runtime.manager.status() if st.error) == 2, what="both failures")
        # each user keeps the version the table gives them: v1's users are served by v1, the
        # others are refused (503) -- the broken versions' shares never move to v1
        table = routing.read_table(d.engine)
        for i in range(60):
            expected = table.choose(f"u{i}").model_version
            response = client.post("/search", json={"query": "rocket", "user_id": f"u{i}"})
            if expected == "1":
                assert response.status_code == 200 and response.json()["model_version"] == "1"
            else:
                assert response.status_code == 503, response.text
                assert f"model version {expected} has 30 % of traffic but is not loaded" in response.json()["detail"]
                assert response.headers["Retry-After"] == "5"
        slots = {row["model_version"]: row for row in client.get("/routing").json()["slots"]}
        # the open /routing names a category only; paths and messages stay in the server log
        assert not slots["2"]["loaded"] and slots["2"]["error"] == "index_integrity"
        assert not slots["3"]["loaded"] and slots["3"]["error"] == "fingerprint_mismatch"
        assert str(d.root) not in client.get("/routing").text
        assert "fails its checksum" in next(st.error for st in s.runtime.manager.status() if st.model_version == "2")
        assert client.post("/search", json={"query": "rocket"}, headers={"X-Lockstep-Pin": "2"}).status_code == 404
        text = client.get("/metrics").text
        assert metric(text, "lockstep_slot_load_failed", model_version="2") == 1
        assert metric(text, "lockstep_slot_loaded", model_version="1") == 1
        assert metric(text, "lockstep_slot_loaded", model_version="3") == 0
        # once the index is repaired, the next retry puts the slot into service
        blob.write_bytes(intact)
        wait_for(lambda: "2" in s.runtime.manager.view.slots, timeout=5, what="the repaired slot")
        assert client.post("/search", json={"query": "rocket"}, headers={"X-Lockstep-Pin": "2"}).status_code == 200
        assert "3" not in s.runtime.manager.view.slots


def test_no_live_version_means_not_ready_and_503(deployment):
    with serve(deployment.app(), ready=False) as s, httpx.Client(base_url=s.url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/search", "/records/{record_id}", "/feedback", "/routing", "/readyz", "/metrics"} <= set(paths)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        response = client.post("/search", json={"query": "rocket"})
        assert response.status_code == 503 and "lockstep routing set" in response.json()["detail"]
        routing.set_weights({"2": 100}, engine=deployment.engine)
        wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
        assert client.post("/search", json={"query": "rocket"}).json()["model_version"] == "2"


def test_shadow_copies_are_logged_beside_live_and_drops_are_counted(deployment):
    d = deployment
    routing.set_weights({"1": 100}, shadow=["2"], engine=d.engine)
    config = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, shadow_queue_size=2, replica="t")
    with serve(d.app(config=config)) as s, httpx.Client(base_url=s.url) as client:
        rt = s.runtime
        first = client.post("/search", json={"query": "guitar piano", "k": 4}).json()
        wait_for(lambda: rt.shadow.completed == 1, what="the first shadow copy")
        with rt.shadow.paused():
            started = time.perf_counter()
            for _ in range(8):
                assert client.post("/search", json={"query": "bread cheese", "k": 4}).status_code == 200
            elapsed = time.perf_counter() - started
            dropped = rt.shadow.dropped
        assert dropped >= 5  # at most one in the worker's hand and two queued
        assert elapsed < 5  # live traffic never waited for the shadow
        wait_for(lambda: rt.shadow.completed == 9 - dropped, what="the queued shadow copies")
        rt.logs.flush()
        text = client.get("/metrics").text
        assert metric(text, "lockstep_shadow_dropped_total", model_version="2") == dropped
        assert metric(text, "lockstep_shadow_requests_total", model_version="2", outcome="ok") == 9 - dropped
        with d.engine.connect() as conn:
            rows = conn.execute(select(shadow_log).order_by(shadow_log.c.id)).all()
        assert len(rows) == 9 - dropped
        row = rows[0]
        assert (row.request_id, row.live_version, row.shadow_version, row.error) == (first["request_id"], "1", "2", None)
        assert row.live_top_ids == [r["id"] for r in first["results"]]
        pinned_v2 = client.post("/search", json={"query": "guitar piano", "k": 4}, headers={"X-Lockstep-Pin": "2"}).json()
        assert row.shadow_top_ids == [r["id"] for r in pinned_v2["results"]]


def test_requests_and_feedback_are_logged_and_metrics_have_the_series(deployment):
    d = deployment
    routing.set_weights({"1": 70, "2": 30}, engine=d.engine)
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        answers = [client.post("/search", json={"query": "football goal", "k": 5, "user_id": f"u{i}"}).json() for i in range(30)]
        clicked = answers[0]
        response = client.post("/feedback", json={"request_id": clicked["request_id"], "record_id": clicked["results"][0]["id"], "event": "click"})
        assert response.status_code == 202
        s.runtime.logs.flush()
        with d.engine.connect() as conn:
            logged = {r.request_id: r for r in conn.execute(select(request_log)).all()}
            clicks = conn.execute(select(feedback_log)).all()
        assert set(logged) == {a["request_id"] for a in answers}
        row = logged[clicked["request_id"]]
        assert (row.model_version, row.user_id, row.query, row.k, row.status) == (clicked["model_version"], "u0", "football goal", 5, 200)
        assert row.top_ids == [r["id"] for r in clicked["results"]] and row.latency_ms > 0 and row.replica == "test"
        assert [(c.request_id, c.record_id, c.event) for c in clicks] == [(clicked["request_id"], clicked["results"][0]["id"], "click")]
        text = client.get("/metrics").text
        by_version = {v: sum(1 for a in answers if a["model_version"] == v) for v in ("1", "2")}
        for version, n in by_version.items():
            assert metric(text, "lockstep_search_requests_total", model_version=version) == (n or None)
            if n:
                assert metric(text, "lockstep_search_latency_seconds_count", model_version=version) == n
        assert metric(text, "lockstep_slot_state", model_version="1", state="live") == 1
        assert metric(text, "lockstep_slot_weight", model_version="2") == 30
        assert metric(text, "lockstep_routing_generation", replica="test") == routing.read_generation(d.engine)
        assert metric(text, "lockstep_feedback_events_total", event="click") == 1
        assert metric(text, "lockstep_apply_errors_total") == 0
        assert "lockstep_shadow_dropped_total" in text or "lockstep_shadow_dropped" in text


def test_a_slot_leaving_service_drains_before_it_is_unloaded(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        manager = s.runtime.manager
        old = manager.view.slots["1"]
        assert old.acquire()  # a request in flight on v1
        routing.set_weights({"2": 100}, engine=d.engine)
        routing.set_state("1", "retired", engine=d.engine)
        wait_for(lambda: "1" not in manager.view.slots, what="v1 to leave the view")
        assert {client.post("/search", json={"query": "rocket"}).json()["model_version"] for _ in range(10)} == {"2"}
        assert old.retiring and not old.unloaded.is_set() and old.index is not None
        hits = old.search("rocket planet", 3)  # the in-flight request finishes on its own slot
        assert len(hits.ids) == 3
        assert old in manager.draining()
        old.release()
        assert old.unloaded.is_set() and old.index is None and old.embedder is None
        assert not old.acquire()
        assert manager.draining() == []


def test_version_numbers_sort_numerically_in_the_view(deployment):
    d = deployment
    routing.register_slot("10", str(d.root / "model-v2.joblib"), str(d.root / "indexes" / "v2"), d.models["2"].fingerprint,
                          state="ready", engine=d.engine)
    routing.set_weights({"2": 50, "10": 50}, engine=d.engine)
    with serve(d.app(config=FAST)) as s:
        # /readyz answers 200 once one live version is loaded; wait for both
        wait_for(lambda: len(s.runtime.manager.view.live) == 2, timeout=30, what="both live versions to load")
        assert [slot.version for slot, _ in s.runtime.manager.view.live] == ["2", "10"]
        vectors = s.runtime.manager.view.slots["10"].index.vectors_of(["r0000"])
        np.testing.assert_allclose(vectors[0], d.models["2"].transform([d.records["r0000"]])[0], atol=1e-5)


def test_a_failing_version_answers_500_and_is_counted_against_that_version(deployment, monkeypatch):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    monkeypatch.setenv("LOCKSTEP_FAULTS", "serving.search:2*")
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        broken = client.post("/search", json={"query": "rocket"}, headers={"X-Lockstep-Pin": "2"})
        assert broken.status_code == 500 and broken.headers["X-Lockstep-Model-Version"] == "2"
        assert "model version 2 failed" in broken.json()["detail"]
        fine = client.post("/search", json={"query": "rocket"}, headers={"X-Lockstep-Pin": "1"})
        assert fine.status_code == 200
        text = client.get("/metrics").text
        assert metric(text, "lockstep_search_errors_total", model_version="2", status="500") == 1
        assert metric(text, "lockstep_search_requests_total", model_version="1") == 1
        s.runtime.logs.flush()
        with d.engine.connect() as conn:
            rows = {r.request_id: (r.model_version, r.status) for r in conn.execute(select(request_log)).all()}
        assert rows == {broken.json()["request_id"]: ("2", 500), fine.json()["request_id"]: ("1", 200)}
