"""What a click on a made-up ``request_id`` costs: one read of the request log, then a refusal.

``/feedback`` is open, and an unknown id used to cost about ten database reads over two
seconds. Each test counts the statements that read the request log with a SQLAlchemy
event listener on the real engine (SQLite).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import event

from lockstep.core.config import ServingLimits
from lockstep.core.errors import ConfigurationError
from lockstep.serving import ServingConfig
from lockstep.serving.clicks import ClickJudge, ClickVerdict, RecentAnswers
from lockstep.serving.logs import LogWriter
from lockstep.store import routing
from lockstep.store.db import get_engine
from tests.serving.harness import serve

TIMEOUT = 60.0


class RequestLogReads:
    """Every SELECT on the request log: how many ids each one asked for."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.sizes: list[int] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "lockstep_request_log" in statement:
            self.sizes.append(len(parameters) if isinstance(parameters, (tuple, list)) else 1)

    def __len__(self) -> int:
        return len(self.sizes)


@pytest.fixture
def reads_of(request) -> Iterator:
    listeners: list[RequestLogReads] = []

    def attach(engine) -> RequestLogReads:
        counter = RequestLogReads(engine)
        event.listen(engine, "before_cursor_execute", counter)
        listeners.append(counter)
        return counter

    yield attach
    for counter in listeners:
        event.remove(counter.engine, "before_cursor_execute", counter)


def test_an_unknown_request_id_costs_one_read_and_is_refused_at_once_over_http(deployment, reads_of):
    d = deployment
    routing.set_weights({"1": 100}, engine=d.engine)
    config = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, replica="t",
                           feedback_wait=60, limits=ServingLimits(feedback_waiting=0))  # no room: refused after the read
    with serve(d.app(config=config)) as s, httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        reads = reads_of(d.engine)
        made_up = "0123456789abcdef" * 2
        response = client.post("/feedback", json={"request_id": made_up, "record_id": "r0001", "event": "click"})
        assert response.status_code == 422
        assert f"request_id '{made_up}' names no search this service answered" in response.json()["detail"]
        assert len(reads) == 1
        assert (s.runtime.clicks.misses, s.runtime.clicks.turned_away, s.runtime.clicks.waiting) == (1, 1, 0)
        # a real search answered here is judged from memory: no read at all
        answer = client.post("/search", json={"query": "rocket planet", "k": 3}).json()
        click = {"request_id": answer["request_id"], "record_id": answer["results"][0]["id"], "event": "click"}
        assert client.post("/feedback", json=click).json() == {"accepted": True, "counted": True}
        assert len(reads) == 1


def test_a_flood_of_unknown_ids_costs_one_read_each_and_the_waiting_room_stays_bounded(lockstep_home, tmp_path, reads_of):
    """8 clicks fill the room; 32 more are refused after their one read; the 8 are re-checked
    together (every re-check is one query for all of them) and found once their searches
    reach the log."""
    engine = get_engine(f"sqlite:///{tmp_path / 'lockstep.db'}")
    logs = LogWriter(engine)
    judge = ClickJudge(engine, RecentAnswers(), wait=TIMEOUT * 2, poll=0.01, max_waiting=8)
    reads = reads_of(engine)

    async def flood() -> tuple[list[ClickVerdict], list[ClickVerdict]]:
        waiting = [asyncio.create_task(judge.judge(f"w{i}", "a")) for i in range(8)]
        await until(lambda: judge.waiting == 8, "8 clicks to wait in the room")
        refused = [await judge.judge(f"x{i}", "a") for i in range(32)]  # answered while the 8 still wait
        assert judge.waiting == 8 and not any(task.done() for task in waiting)
        for i in range(8):  # their searches reach the request log (another replica's batch lands)
            logs.request(request_id=f"w{i}", model_version="1", query="q", k=1, latency_ms=1.0, status=200, top_ids=["a"])
        await asyncio.to_thread(logs.flush)
        return refused, list(await asyncio.wait_for(asyncio.gather(*waiting), TIMEOUT))

    refused, found = asyncio.run(flood())
    assert refused == [ClickVerdict.UNKNOWN_REQUEST] * 32 and judge.turned_away == 32
    assert found == [ClickVerdict.COUNTED] * 8 and judge.waiting == 0
    own = [size for size in reads.sizes if size == 1]
    shared = [size for size in reads.sizes if size != 1]
    assert len(own) == 40  # one read of its own per click, however the room fares
    assert shared and set(shared) == {8}  # each re-check: one query for all 8 waiting clicks


def test_a_click_found_in_the_room_by_another_replica_s_search_is_read_once_more_with_its_clicks(lockstep_home, tmp_path, reads_of):
    engine = get_engine(f"sqlite:///{tmp_path / 'lockstep.db'}")
    logs = LogWriter(engine)
    logs.request(request_id="q1", model_version="1", query="q", k=2, latency_ms=1.0, status=200, top_ids=["a", "b"])
    logs.feedback(request_id="q1", record_id="a", event="click")
    logs.flush()
    judge = ClickJudge(engine, RecentAnswers(), wait=TIMEOUT, max_waiting=8)
    reads = reads_of(engine)
    assert asyncio.run(judge.judge("q1", "a")) is ClickVerdict.DUPLICATE  # its logged click came with the one read
    assert asyncio.run(judge.judge("q1", "b")) is ClickVerdict.COUNTED  # now from memory
    assert len(reads) == 1 and judge.misses == 0


async def until(condition, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT} s waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("LOCKSTEP_SERVING_MAX_CONCURRENCY", "0", "at least 1"),
    ("LOCKSTEP_SERVING_MAX_CONCURRENCY", "many", "whole number"),
    ("LOCKSTEP_SERVING_FEEDBACK_WAITING", "-1", "whole number"),
    ("LOCKSTEP_SERVING_REQUEST_TIMEOUT_S", "soon", "not a number of seconds"),
    ("LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S", "-5", "not a number of seconds"),
])
def test_a_bad_limit_setting_is_refused_with_the_variable_named(name, raw, message):
    with pytest.raises(ConfigurationError, match=message) as caught:
        ServingLimits.from_env({name: raw})
    assert f"{name}={raw!r}" in str(caught.value)


def test_the_limits_have_working_defaults_and_read_the_environment():
    assert ServingLimits.from_env({}) == ServingLimits(64, 10.0, 20.0, 16)
    env = {"LOCKSTEP_SERVING_MAX_CONCURRENCY": "3", "LOCKSTEP_SERVING_REQUEST_TIMEOUT_S": "0",
           "LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S": "7.5", "LOCKSTEP_SERVING_FEEDBACK_WAITING": "0"}
    assert ServingLimits.from_env(env) == ServingLimits(3, 0.0, 7.5, 0)
