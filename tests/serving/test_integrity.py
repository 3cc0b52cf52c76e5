"""Issue 9's reproductions against the serving app: gates no client can steer, poison
input, a slot that cannot load, all over a real uvicorn server and a real database."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from lockstep.serving import ServingConfig
from lockstep.serving.logs import LogWriter
from lockstep.store import routing
from lockstep.store.schema import feedback_log, request_log
from lockstep.store.serving_logs import Window, arm_stats, shadow_stats
from tests.serving.conftest import deploy
from tests.serving.harness import auth, serve, wait_for
from tests.serving.test_api import metric


def window_around_now() -> Window:
    now = datetime.now(UTC)
    return Window(now - timedelta(hours=1), now + timedelta(hours=1))


def rows(engine, table) -> list:
    with engine.connect() as conn:
        return conn.execute(select(table)).all()


# --- A: gates no client can steer -------------------------------------------------------------


def test_pinned_searches_and_forged_clicks_cannot_make_a_0_weight_candidate_look_good(deployment):
    """The issue's reproduction: 30 pinned searches + 30 clicks used to show v2 a CTR of 1.0."""
    d = deployment
    routing.set_weights({"1": 100}, shadow=["2"], engine=d.engine)  # v2: 0 weight, shadowed
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        for i in range(30):
            answer = client.post("/search", json={"query": "rocket planet", "k": 5, "user_id": f"attacker-{i}"},
                                 headers={"X-Lockstep-Pin": "2"}).json()
            assert answer["model_version"] == "2"
            click = client.post("/feedback", json={"request_id": answer["request_id"],
                                                   "record_id": answer["results"][0]["id"], "event": "click"})
            assert click.status_code == 202 and click.json() == {"accepted": True, "counted": False}
        # 30 ordinary searches on the champion, 3 of them clicked
        honest = [client.post("/search", json={"query": "guitar piano", "k": 5, "user_id": f"u{i}"}).json() for i in range(30)]
        for answer in honest[:3]:
            assert client.post("/feedback", json={"request_id": answer["request_id"], "record_id": answer["results"][0]["id"],
                                                   "event": "click"}).status_code == 202
        wait_for(lambda: s.runtime.shadow.completed == 30, what="the shadow copies of the honest searches")
        s.runtime.logs.flush()
    logged = rows(d.engine, request_log)
    assert sum(r.pinned for r in logged) == 30 and sum(not r.pinned for r in logged) == 30
    stats = arm_stats(d.engine, window_around_now(), ["1", "2"])
    assert (stats["2"].requests, stats["2"].clicked) == (0, 0)  # was 30 and 30: CTR 1.0
    assert (stats["1"].requests, stats["1"].clicked) == (30, 3)
    # the shadow comparison pairs only unpinned live requests (pinned ones get no copy at all)
    shadow = shadow_stats(d.engine, window_around_now(), "2")
    assert shadow.copies == 30 and shadow.live_requests == 30


def test_a_click_counts_only_for_a_result_of_its_request_and_only_once(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    config = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, feedback_wait=0.0, replica="t")
    with serve(d.app(config=config)) as s, httpx.Client(base_url=s.url) as client:
        answer = client.post("/search", json={"query": "rocket planet", "k": 3}).json()
        rid, top = answer["request_id"], [r["id"] for r in answer["results"]]
        outsider = next(r for r in d.records if r not in top)

        def click(record_id: str, request_id: str = rid) -> httpx.Response:
            return client.post("/feedback", json={"request_id": request_id, "record_id": record_id, "event": "click"})

        assert click(top[1]).json() == {"accepted": True, "counted": True}
        refused = {
            "not a result": (click(outsider), f"record_id '{outsider}' was not among the results of request_id '{rid}'"),
            "twice": (click(top[1]), "already recorded"),
            "unknown request": (click(top[0], "f" * 32), f"request_id '{'f' * 32}' names no search this service answered"),
        }
        for case, (response, message) in refused.items():
            assert response.status_code == 422, case
            assert message in response.json()["detail"], (case, response.json())
        assert click(top[0]).status_code == 202  # another result of the same request is a new click
        s.runtime.logs.flush()
        text = client.get("/metrics").text
        assert metric(text, "lockstep_feedback_rejected_total", reason="not_a_result") == 1
        assert metric(text, "lockstep_feedback_rejected_total", reason="duplicate") == 1
        assert metric(text, "lockstep_feedback_rejected_total", reason="unknown_request") == 1
    assert sorted((c.request_id, c.record_id) for c in rows(d.engine, feedback_log)) == sorted([(rid, top[1]), (rid, top[0])])


def test_a_click_reaching_another_replica_before_the_search_is_logged_waits_for_it(deployment):
    """Replica A answered the search but has not flushed its log; replica B gets the click."""
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    slow_flush = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=3600, replica="a")
    patient = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, feedback_wait=60, replica="b")
    with serve(d.app(config=slow_flush)) as a, serve(d.app(config=patient)) as b, httpx.Client() as client:
        answer = client.post(f"{a.url}/search", json={"query": "rocket planet", "k": 3}).json()
        body = {"request_id": answer["request_id"], "record_id": answer["results"][0]["id"], "event": "click"}
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: result.update(r=client.post(f"{b.url}/feedback", json=body, timeout=90)))
        thread.start()
        wait_for(lambda: b.runtime.clicks.misses >= 1, timeout=30, what="replica B to miss the request in the database")
        a.runtime.logs.flush()  # A's batch arrives while B waits
        thread.join(90)
        assert result["r"].status_code == 202 and result["r"].json()["counted"] is True
        # B now knows the request: a second click on the same record is refused at once
        again = client.post(f"{b.url}/feedback", json=body)
        assert again.status_code == 422 and "already recorded" in again.json()["detail"]



def test_clicks_on_answers_no_longer_in_memory_are_judged_from_the_database(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    tiny = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, recent_answers=2, replica="t")
    with serve(d.app(config=tiny)) as s, httpx.Client(base_url=s.url) as client:
        answers = [client.post("/search", json={"query": q, "k": 3}).json() for q in ("rocket", "guitar", "bread")]
        assert len(s.runtime.answers) == 2  # the first answer left memory
        s.runtime.logs.flush()
        first = answers[0]
        body = {"request_id": first["request_id"], "record_id": first["results"][0]["id"], "event": "click"}
        assert client.post("/feedback", json=body).status_code == 202
        s.runtime.logs.flush()
    # a restarted replica knows nothing in memory: the logged click makes a second one a duplicate
    with serve(d.app(config=tiny)) as s, httpx.Client(base_url=s.url) as client:
        again = client.post("/feedback", json=body)
        assert again.status_code == 422 and "already recorded" in again.json()["detail"]
        other = {**body, "record_id": next(r for r in d.records if r not in {x["id"] for x in first["results"]})}
        assert "was not among the results" in client.post("/feedback", json=other).json()["detail"]

# --- B: poison input --------------------------------------------------------------------------


POISON = [
    ("post", "/search", {"json": {"query": "rocket\x00planet"}}, "query", "U+0000"),
    ("post", "/search", {"json": {"query": "rocket", "user_id": "u\x01"}}, "user_id", "U+0001"),
    ("post", "/search", {"content": b'{"query": "rocket \\ud800"}'}, "query", "unicode"),
    ("put", "/records/a%00b", {"json": {"text": "fine"}}, "record_id", "U+0000"),
    ("put", "/records/ok", {"json": {"text": "bad\x00text"}}, "text", "U+0000"),
    ("put", "/records/ok", {"json": {"text": "fine", "metadata": {"k\x00": "v"}}}, "metadata", "key"),
    ("put", "/records/ok", {"json": {"text": "fine", "metadata": {"a": {"b": ["x\x1b"]}}}}, "metadata.a.b[0]", "U+001B"),
    ("delete", "/records/a%00b", {}, "record_id", "U+0000"),
    ("put", "/records/a%0Ab", {"json": {"text": "fine"}}, "record_id", "U+000A"),  # was a bare 404
    ("post", "/feedback", {"json": {"request_id": "a\x00", "record_id": "r0001", "event": "click"}}, "request_id", "U+0000"),
    ("post", "/feedback", {"json": {"request_id": "abc", "record_id": "r\x7f", "event": "click"}}, "record_id", "U+007F"),
]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_control_characters_are_refused_with_a_422_naming_the_field(backend, request, lockstep_home, tmp_path):
    url = f"sqlite:///{tmp_path / 'lockstep.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    d = deploy(url, tmp_path)
    routing.set_weights({"1": 100}, engine=d.engine)
    head = d.store.head()
    with serve(d.app()) as s, httpx.Client(base_url=s.url, headers={**auth(), "content-type": "application/json"}) as client:
        for method, path, kwargs, field, what in POISON:
            response = client.request(method.upper(), path, **kwargs)
            assert response.status_code == 422, (path, kwargs, response.text)
            detail = response.json()["detail"]
            assert field in detail and what in detail, (path, detail)
        # tab and line breaks are text, not poison
        ok = client.post("/search", json={"query": "rocket\tplanet\r\nmoon"})
        assert ok.status_code == 200
        put = client.put("/records/multi-line", json={"text": "line one\nline two\tend", "metadata": {"note": "a\nb"}})
        assert put.status_code == 200
        s.runtime.logs.flush()
    assert d.store.head() == head + 1  # only the clean write
    assert [r.query for r in rows(d.engine, request_log)] == ["rocket\tplanet\r\nmoon"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_one_row_the_database_refuses_never_costs_its_batch(backend, request, lockstep_home, tmp_path):
    """A NUL reaches PostgreSQL's text column (the issue's case), a lone surrogate any database."""
    url = f"sqlite:///{tmp_path / 'lockstep.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    d = deploy(url, tmp_path)
    rejected: list[tuple[str, int]] = []
    writer = LogWriter(d.engine, on_reject=lambda table, n: rejected.append((table, n)))
    queries = [f"query {i}" for i in range(40)]
    queries[7] = "nul \x00 inside"
    queries[23] = "surrogate \ud800 inside"
    for i, query in enumerate(queries):
        writer.request(request_id=f"r{i}", model_version="1", query=query, k=5, latency_ms=1.0, status=200, top_ids=["a"])
    assert writer.flush() == 40
    bad = {23} | ({7} if backend == "postgres" else set())  # SQLite stores a NUL in TEXT
    written = {r.request_id for r in rows(d.engine, request_log)}
    assert written == {f"r{i}" for i in range(40) if i not in bad}
    assert writer.rejected["lockstep_request_log"] == len(bad) and rejected == [("lockstep_request_log", 1)] * len(bad)
    assert writer.dropped == {}


def test_refused_log_rows_are_counted_in_the_metrics(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        s.runtime.logs.request(request_id="bad", model_version="1", query="\ud800", k=1, latency_ms=1.0, status=200, top_ids=[])
        good = client.post("/search", json={"query": "rocket"}).json()
        s.runtime.logs.flush()
        assert metric(client.get("/metrics").text, "lockstep_log_rows_rejected_total", table="lockstep_request_log") == 1
    assert [r.request_id for r in rows(d.engine, request_log)] == [good["request_id"]]


def test_a_streamed_body_over_the_limit_is_413_and_one_under_it_is_served(deployment):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    head = d.store.head()

    def chunked(payload: bytes, size: int = 65_536):
        for i in range(0, len(payload), size):
            yield payload[i : i + size]

    big = json.dumps({"text": "word " * 240_000}).encode()  # 1.2 MB, no Content-Length
    small = json.dumps({"text": "rocket planet orbit"}).encode()
    with serve(d.app()) as s, httpx.Client(base_url=s.url, headers={**auth(), "content-type": "application/json"}) as client:
        response = client.put("/records/huge", content=chunked(big))
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.status_code == 413 and "limit of 1000000 bytes" in response.json()["detail"]
        response = client.put("/records/streamed", content=chunked(small))
        assert response.status_code == 200 and response.json()["id"] == "streamed"
        response = client.post("/search", content=chunked(json.dumps({"query": "rocket"}).encode()))
        assert response.status_code == 200
    assert d.store.head() == head + 1 and d.store.get("huge") is None


def test_a_500_names_a_request_id_and_no_internals(deployment, monkeypatch, caplog):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    secret = f"{d.root}/secret-path/lockstep.db is on fire"

    def broken(*args, **kwargs):
        raise RuntimeError(secret)

    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client, caplog.at_level(logging.ERROR, "lockstep.serving"):
        monkeypatch.setattr(s.runtime.store, "upsert", broken)
        response = client.put("/records/r0001", json={"text": "new"}, headers=auth())
        assert response.status_code == 500
        body = response.json()
        assert body["request_id"] == response.headers["X-Request-Id"] and len(body["request_id"]) == 32
        assert secret not in response.text and "RuntimeError" not in response.text
        assert body["request_id"] in body["detail"]
        # a search failing inside a version: same rule
        monkeypatch.setattr(s.runtime.manager.view.slots["1"], "search_vectors", broken)  # the batched search
        failed = client.post("/search", json={"query": "rocket"})
        assert failed.status_code == 500 and secret not in failed.text
        assert failed.json()["request_id"] == failed.headers["X-Request-Id"]
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert body["request_id"] in logged and failed.json()["request_id"] in logged and secret in logged


# --- C: a slot that cannot load keeps its share ------------------------------------------------


def test_a_champion_that_cannot_load_never_hands_its_share_to_the_canary(deployment):
    d = deployment
    manifest = json.loads((d.root / "indexes" / "v1" / "manifest.json").read_text())
    (d.root / "indexes" / "v1" / manifest["index_file"]).write_bytes(b"corrupt")
    routing.set_weights({"1": 95, "2": 5}, engine=d.engine)  # v1 champion, v2 a 5 % canary
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        wait_for(lambda: any(st.error for st in s.runtime.manager.status()), what="v1's load failure")
        table = routing.read_table(d.engine)
        users = [f"u{i}" for i in range(200)]
        canary_users = {u for u in users if table.choose(u).model_version == "2"}
        served: dict[str, int] = {}
        for user in users:
            response = client.post("/search", json={"query": "rocket", "user_id": user})
            served[user] = response.status_code
            if user in canary_users:
                assert response.status_code == 200 and response.json()["model_version"] == "2"
            else:
                assert response.status_code == 503 and "model version 1 has 95 %" in response.json()["detail"]
        assert 0 < len(canary_users) < 25  # about 5 % of 200, not 100 %
        ready = client.get("/readyz").json()
        assert ready["live"] == ["2"] and ready["unloaded"] == ["1"]
        text = client.get("/metrics").text
        assert metric(text, "lockstep_search_errors_total", model_version="1", status="503") == 200 - len(canary_users)
        assert metric(text, "lockstep_search_requests_total", model_version="2") == len(canary_users)
        s.runtime.logs.flush()
    with d.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(request_log)).scalar() == len(canary_users)

