"""The replica's concurrency cap and request timeout, over real HTTP.

A request is held in flight by a record write whose store call waits on a
``threading.Event`` (the endpoint runs in a worker thread, as every write does), so the
test decides when it ends; nothing depends on how fast anything runs.
"""

from __future__ import annotations

import threading

import httpx

from lockstep.core.config import ServingLimits
from lockstep.serving import ServingConfig
from lockstep.serving.runner import server_options
from lockstep.serving.runtime import waiting_room
from lockstep.store import routing
from tests.serving.harness import TOKEN, serve, wait_for

TIMEOUT = 60.0


def config(**limits) -> ServingConfig:
    return ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, replica="t",
                         limits=ServingLimits(**limits))


class HeldWrite:
    """A ``PUT /records/...`` whose store write waits until ``release()``."""

    def __init__(self, runtime, monkeypatch) -> None:
        self.entered = threading.Event()
        self._go = threading.Event()
        upsert = runtime.store.upsert

        def held_upsert(*args, **kwargs):
            self.entered.set()
            assert self._go.wait(TIMEOUT * 2), "the test never released the held write"
            return upsert(*args, **kwargs)

        monkeypatch.setattr(runtime.store, "upsert", held_upsert)
        self.result: dict[str, httpx.Response] = {}

    def send(self, url: str) -> threading.Thread:
        def put() -> None:
            self.result["r"] = httpx.put(f"{url}/records/held", json={"text": "rocket planet held"},
                                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT * 3)

        thread = threading.Thread(target=put)
        thread.start()
        assert self.entered.wait(TIMEOUT), "the held write never started"
        return thread

    def release(self) -> None:
        self._go.set()


def test_over_the_concurrency_cap_a_request_gets_503_with_a_message_at_once(deployment, monkeypatch):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    with serve(d.app(config=config(max_concurrency=1))) as s, httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        held = HeldWrite(s.runtime, monkeypatch)
        thread = held.send(s.url)
        refused = client.post("/search", json={"query": "rocket planet"})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "already working on 1 requests (LOCKSTEP_SERVING_MAX_CONCURRENCY)" in refused.json()["detail"]
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200  # never capped
        assert 'status="503"' in client.get("/metrics").text
        held.release()
        thread.join(TIMEOUT)
        assert held.result["r"].status_code == 200 and held.result["r"].json()["id"] == "held"
        wait_for(lambda: client.post("/search", json={"query": "rocket planet"}).status_code == 200, TIMEOUT,
                 "a search to be served again")


def test_a_request_not_answered_in_time_gets_504_and_holds_its_place_until_its_work_ends(deployment, monkeypatch):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    with serve(d.app(config=config(max_concurrency=1, request_timeout=0.3))) as s, \
            httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        held = HeldWrite(s.runtime, monkeypatch)
        held.send(s.url).join(TIMEOUT)  # answered 504 while its write still waits
        assert held.result["r"].status_code == 504
        assert "not answered within 0.3 s (LOCKSTEP_SERVING_REQUEST_TIMEOUT_S)" in held.result["r"].json()["detail"]
        # the write is still running in its thread: its place is still taken
        assert client.post("/search", json={"query": "rocket planet"}).status_code == 503
        held.release()
        wait_for(lambda: client.post("/search", json={"query": "rocket planet"}).status_code == 200, TIMEOUT,
                 "the place to be free once the write ended")
        assert d.store.get("held") is not None  # the late write was not torn off half-way


def test_waiting_clicks_never_take_more_than_a_quarter_of_the_places():
    assert waiting_room(ServingLimits(max_concurrency=64, feedback_waiting=16)) == 16
    assert waiting_room(ServingLimits(max_concurrency=8, feedback_waiting=16)) == 2
    assert waiting_room(ServingLimits(max_concurrency=2)) == 0  # a click then never waits


def test_the_openapi_document_lists_the_limits_answers():
    from lockstep.serving import create_app

    paths = create_app(engine="sqlite://", api_token=None).openapi()["paths"]
    for path, method in (("/search", "post"), ("/feedback", "post"), ("/records/{record_id}", "put")):
        codes = paths[path][method]["responses"]
        assert {"503", "504"} <= set(codes), (path, sorted(codes))
        assert "LOCKSTEP_SERVING_REQUEST_TIMEOUT_S" in codes["504"]["description"]


def test_uvicorn_gets_the_graceful_timeout_and_a_looser_connection_backstop():
    options = server_options(ServingLimits(max_concurrency=10, graceful_timeout=20.0))
    assert options == {"timeout_graceful_shutdown": 20.0, "limit_concurrency": 52}
    assert server_options(ServingLimits(graceful_timeout=0.0))["timeout_graceful_shutdown"] is None
