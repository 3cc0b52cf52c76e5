"""Writes that do not wait for every model, read-your-write, readiness, a slow version's pool (issue 24).

Version 2 is made slow on purpose: its model's ``transform`` blocks while a gate the test
holds is closed, so no sleep decides an outcome. Version 1 is the fast built-in model.
Bounded waits only guard against hangs.
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from lockstep.core.config import ServingLimits
from lockstep.serving import ServingConfig
from lockstep.serving import slots as slots_module
from lockstep.store import routing
from tests.serving.harness import auth, serve, wait_for
from tests.serving.test_api import metric

HANG = 30.0  # seconds: only ever reached when something hangs


class Gated:
    """A slow model: its ``transform`` blocks while ``gate`` is clear, and records every call."""

    COST = "slow"

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[str, list[str]]] = []  # (thread name, texts)
        self.applying = threading.Event()  # an apply thread is inside transform
        self.querying = threading.Event()  # a query is inside transform

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def transform(self, texts):
        who = threading.current_thread().name
        self.calls.append((who, list(texts)))
        (self.applying if who.startswith("lockstep-apply") else self.querying).set()
        assert self.gate.wait(HANG), "the test never opened the gate"
        return self.inner.transform(texts)

    def embed_query(self, text):
        return self.transform([text])[0]

    def applied_calls(self) -> list[list[str]]:
        return [texts for who, texts in self.calls if who.startswith("lockstep-apply")]


@pytest.fixture
def slow_v2(monkeypatch):
    """Version 2's model, wrapped in a ``Gated`` once it loads."""
    made: dict[str, Gated] = {}
    real = slots_module.open_model

    def open_model(row, tracking_uri=None):
        model = real(row, tracking_uri)
        if row.model_version != "2":
            return model
        made["2"] = Gated(model)
        return made["2"]

    monkeypatch.setattr(slots_module, "open_model", open_model)
    return made


def _config(**limits) -> ServingConfig:
    return ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, replica="test",
                         limits=ServingLimits(**limits))


def _ids(response: httpx.Response) -> list[str]:
    return [r["id"] for r in response.json()["results"]]


def _pinned(version: str, seq: int | None = None) -> dict[str, str]:
    headers = {"X-Lockstep-Pin": version}
    if seq is not None:
        headers["X-Lockstep-Min-Seq"] = str(seq)
    return headers


QUERY = {"query": "rocket planet orbit comet", "k": 5}
TEXT = "rocket planet orbit comet"


def test_a_durable_write_answers_while_the_slow_version_has_not_applied_it(deployment, slow_v2):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    with serve(d.app(config=_config())) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        slow = slow_v2["2"]
        slow.gate.clear()
        put = client.put("/records/zoo", json={"text": TEXT}, headers=auth())  # default auto: v2 is slow -> durable
        body = put.json()
        assert put.status_code == 200 and body["consistency"] == "durable" and "2" in body["pending"]
        assert slow.applying.wait(HANG)  # v2's applier holds the write, blocked in the model
        # the fast version applies meanwhile: read-your-write on v1 sees it
        fast = client.post("/search", json=QUERY, headers=_pinned("1", body["seq"]))
        assert fast.status_code == 200 and "zoo" in _ids(fast)
        assert int(fast.headers["X-Lockstep-Applied-Seq"]) >= body["seq"]
        assert s.runtime.manager.view.slots["2"].applied_seq < body["seq"]
        routing_now = {sl["model_version"]: sl for sl in client.get("/routing").json()["slots"]}
        assert routing_now["2"]["cost"] == "slow" and routing_now["2"]["lag_seq"] >= 1
        assert routing_now["1"]["cost"] == "fast" and routing_now["1"]["lag_seq"] == 0
        slow.gate.set()
        # read-your-write on the slow version: the search waits until v2 has applied the write
        read = client.post("/search", json=QUERY, headers=_pinned("2", body["seq"]))
        assert read.status_code == 200 and "zoo" in _ids(read)
        assert int(read.headers["X-Lockstep-Applied-Seq"]) >= body["seq"]
        text = client.get("/metrics").text
        for version in ("1", "2"):
            assert metric(text, "lockstep_apply_lag_seconds_count", model_version=version) >= 1
            assert metric(text, "lockstep_apply_batches_total", model_version=version) >= 1
        assert metric(text, "lockstep_write_pending_total", model_version="2") == 1
        assert metric(text, "lockstep_slot_apply_lag_seq", model_version="1") == 0


def test_applied_waits_for_every_version_and_a_timeout_still_answers_200(deployment, slow_v2):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    with serve(d.app(config=_config(write_apply_timeout=HANG))) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        slow = slow_v2["2"]
        slow.gate.clear()
        answered: dict[str, httpx.Response] = {}
        done = threading.Event()

        def put() -> None:
            answered["put"] = client.put("/records/zoo", json={"text": TEXT},
                                         headers={**auth(), "X-Lockstep-Consistency": "applied"})
            done.set()

        writer = threading.Thread(target=put)
        writer.start()
        assert slow.applying.wait(HANG)
        assert not done.is_set()  # v2 has not applied it: the write cannot have been answered
        slow.gate.set()
        writer.join(HANG)
        body = answered["put"].json()
        assert body["consistency"] == "applied" and body["applied"] == ["1", "2"] and body["pending"] == []
        assert all(sl.applied_seq >= body["seq"] for sl in s.runtime.manager.view.slots.values())
        bad = client.put("/records/zoo", json={"text": TEXT}, headers={**auth(), "X-Lockstep-Consistency": "eventually"})
        assert bad.status_code == 422 and "X-Lockstep-Consistency" in bad.json()["detail"]
        assert d.store.head() == body["seq"]  # a refused header wrote nothing

    with serve(d.app(config=_config(write_apply_timeout=0.2))) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        slow = slow_v2["2"]
        slow.gate.clear()
        late = client.put("/records/late", json={"text": TEXT}, headers={**auth(), "X-Lockstep-Consistency": "applied"})
        body = late.json()
        assert late.status_code == 200 and body["consistency"] == "applied" and "2" in body["pending"]
        # a search that must read it from v2 gets 503 naming the version and what it applied
        behind = client.post("/search", json=QUERY, headers=_pinned("2", body["seq"]))
        assert behind.status_code == 503 and behind.headers["Retry-After"]
        detail = behind.json()
        assert detail["model_version"] == "2" and detail["applied_seq"] < body["seq"] == detail["min_seq"]
        assert "model version 2" in detail["detail"] and "X-Lockstep-Min-Seq" in detail["detail"]
        garbage = client.post("/search", json=QUERY, headers={"X-Lockstep-Min-Seq": "-1"})
        assert garbage.status_code == 422 and "X-Lockstep-Min-Seq" in garbage.json()["detail"]
        slow.gate.set()


def test_pending_writes_reach_the_slow_version_in_one_transform_call(deployment, slow_v2):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    with serve(d.app(config=_config())) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        slow = slow_v2["2"]
        slow.gate.clear()
        first = client.put("/records/w0", json={"text": "first write zebra"}, headers=auth()).json()
        assert slow.applying.wait(HANG)
        seqs = [client.put(f"/records/w{i}", json={"text": f"write {i} quokka"}, headers=auth()).json()["seq"]
                for i in range(1, 6)]
        gone = client.delete("/records/r0001", headers=auth()).json()["seq"]
        slow.gate.set()
        assert s.runtime.manager.appliers()["2"].applied.wait(gone, HANG)
        assert slow.applied_calls() == [["first write zebra"], [f"write {i} quokka" for i in range(1, 6)]]
        v2 = s.runtime.manager.view.slots["2"]
        assert v2.applied_seq == gone > max(seqs) > first["seq"]
        assert "r0001" not in v2.index and all(f"w{i}" in v2.index for i in range(6))


def test_readyz_names_the_weighted_versions_not_loaded_and_why(deployment, monkeypatch):
    d = deployment
    release = threading.Event()
    real = slots_module.open_model

    def open_model(row, tracking_uri=None):
        if row.model_version == "2":
            assert release.wait(HANG)
            raise RuntimeError("the model server is away")
        return real(row, tracking_uri)

    monkeypatch.setattr(slots_module, "open_model", open_model)
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    with serve(d.app(config=_config()), ready=False) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        wait_for(lambda: "1" in s.runtime.manager.view.slots, HANG, "v1 to load")
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["ready"] is False
        assert loading.json()["not_loaded"] == [{"model_version": "2", "weight": 50, "state": "loading", "error": None}]
        assert "model version 2 is loading" in loading.json()["reason"] and loading.json()["live"] == ["1"]
        release.set()
        wait_for(lambda: any(st.error for st in s.runtime.manager.status()), HANG, "v2's load to fail")
        failed = client.get("/readyz").json()
        assert failed["not_loaded"] == [{"model_version": "2", "weight": 50, "state": "failed", "error": "load_failed"}]
        routing.set_weights({"1": 100}, engine=d.engine)  # v2 carries no traffic any more: ready
        wait_for(lambda: client.get("/readyz").status_code == 200, HANG, "readiness without v2")


def test_a_full_slow_pool_refuses_that_version_only(deployment, slow_v2):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    config = _config(slow_slot_threads=1, slow_slot_queue=0)
    with serve(d.app(config=config)) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        slow = slow_v2["2"]
        slow.gate.clear()
        first: dict[str, httpx.Response] = {}
        searcher = threading.Thread(target=lambda: first.setdefault("r", client.post("/search", json=QUERY, headers=_pinned("2"))))
        searcher.start()
        assert slow.querying.wait(HANG)  # v2's one thread is busy with that query
        refused = client.post("/search", json=QUERY, headers=_pinned("2"))
        assert refused.status_code == 503 and refused.headers["Retry-After"] and refused.headers["X-Lockstep-Model-Version"] == "2"
        assert "LOCKSTEP_SLOW_SLOT_QUEUE" in refused.json()["detail"]
        assert client.post("/search", json=QUERY, headers=_pinned("1")).status_code == 200  # the fast version answers
        slow.gate.set()
        searcher.join(HANG)
        assert first["r"].status_code == 200
        text = client.get("/metrics").text
        assert metric(text, "lockstep_search_errors_total", model_version="2", status="503") == 1
        assert s.runtime.manager.view.slots["2"].batcher.batches >= 1


def test_a_restarted_replica_replays_durable_writes_without_loss_or_duplicate(deployment, slow_v2):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    written = {f"n{i}": f"new record {i} zebra" for i in range(4)}
    with serve(d.app(config=_config())) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        slow = slow_v2["2"]
        slow.gate.clear()
        for rid, text in written.items():
            assert client.put(f"/records/{rid}", json={"text": text}, headers=auth()).status_code == 200
        written["n0"] = "n0 rewritten quokka"
        client.put("/records/n0", json={"text": written["n0"]}, headers=auth())
        client.delete("/records/r0002", headers=auth())
        assert slow.applying.wait(HANG)
        slow.gate.set()  # the replica stops with v2 part-way: what it had not applied is only in the log
    head = d.store.head()
    with serve(d.app(config=_config())) as s:
        manager = s.runtime.manager
        wait_for(lambda: all(sl.applied_seq == head for sl in manager.view.slots.values()), HANG, "catch-up")
        slow = slow_v2["2"]
        replayed = [t for _, call in slow.calls for t in call]  # the load's catch-up, then its applier (no queries)
        assert sorted(replayed) == sorted(written.values())  # each pending upsert embedded once, in its last state
        live = {r.id: r.text for r in d.store.snapshot().records}
        for version, slot in manager.view.slots.items():
            assert len(slot.index) == len(live) and "r0002" not in slot.index, version
            vectors = slot.index.vectors_of(list(written))
            np.testing.assert_allclose(vectors, d.models[version].transform(list(written.values())), atol=1e-5)


def test_concurrent_queries_of_a_slow_version_go_as_one_predict_call(deployment, slow_v2):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    with serve(d.app(config=_config())) as s, httpx.Client(base_url=s.url, timeout=HANG) as client:
        slow = slow_v2["2"]
        batcher = s.runtime.manager.view.slots["2"].batcher
        slow.gate.clear()
        queries = ["rocket one", "planet two", "orbit three", "comet four"]
        answers: dict[str, int] = {}

        def ask(text: str) -> None:
            answers[text] = client.post("/search", json={"query": text}, headers=_pinned("2")).status_code

        threads = [threading.Thread(target=ask, args=(queries[0],))]
        threads[0].start()
        assert slow.querying.wait(HANG)  # the first query is in the model
        threads += [threading.Thread(target=ask, args=(q,)) for q in queries[1:]]
        for t in threads[1:]:
            t.start()
        wait_for(lambda: len(batcher._pending) == 3, HANG, "three queries waiting for the model")
        slow.gate.set()
        for t in threads:
            t.join(HANG)
        assert answers == dict.fromkeys(queries, 200)
        asked = [texts for who, texts in slow.calls if not who.startswith("lockstep-apply")]
        assert [sorted(texts) for texts in asked] == [queries[:1], sorted(queries[1:])] and batcher.batches == 2  # no timer: what waited went together


def test_the_write_and_slow_slot_settings_are_checked_where_they_enter():
    from lockstep.core.errors import ConfigurationError

    limits = ServingLimits.from_env({})
    assert (limits.write_ack, limits.write_apply_timeout, limits.slow_slot_threads, limits.slow_slot_queue) == ("auto", 10.0, 1, 32)
    given = ServingLimits.from_env({"LOCKSTEP_WRITE_ACK": " Durable ", "LOCKSTEP_WRITE_APPLY_TIMEOUT": "2.5",
                                    "LOCKSTEP_SLOW_SLOT_THREADS": "3", "LOCKSTEP_SLOW_SLOT_QUEUE": "0"})
    assert (given.write_ack, given.write_apply_timeout, given.slow_slot_threads, given.slow_slot_queue) == ("durable", 2.5, 3, 0)
    for name, value in [("LOCKSTEP_WRITE_ACK", "sometimes"), ("LOCKSTEP_WRITE_APPLY_TIMEOUT", "soon"),
                        ("LOCKSTEP_SLOW_SLOT_THREADS", "0")]:
        with pytest.raises(ConfigurationError, match=name):
            ServingLimits.from_env({name: value})
