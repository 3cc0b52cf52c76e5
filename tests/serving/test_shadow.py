"""The shadow runner on real slots and a real log writer: a copy per shadow slot, never
the live one; a full queue drops and counts instead of blocking; a failing or departed
shadow is logged with its error, never raised; stop runs what is queued. (test_api.py
shows the copies of a running app reach the shadow log; here each rule is driven directly.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from lockstep.serving.logs import LogWriter
from lockstep.serving.shadow import ShadowRunner
from lockstep.serving.slots import LoadedSlot, load_slot
from lockstep.store import routing
from lockstep.store.schema import shadow_log
from tests.serving.harness import wait_for

TIMEOUT = 30.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, TIMEOUT, what, interval=0.005)


class Recorder:
    """The runner's callbacks, as the metrics would receive them."""

    def __init__(self) -> None:
        self.results: list[tuple[str, float, bool]] = []
        self.drops: list[str] = []

    def result(self, version: str, seconds: float, ok: bool) -> None:
        self.results.append((version, seconds, ok))

    def drop(self, version: str) -> None:
        self.drops.append(version)


@pytest.fixture
def slots(deployment) -> dict[str, LoadedSlot]:
    """Versions 1 and 2 of the deployment, loaded as a replica loads them."""
    rows = {row.model_version: row for row in routing.read_table(deployment.engine).slots}
    return {v: load_slot(rows[v], deployment.store) for v in ("1", "2")}


@pytest.fixture
def logs(deployment) -> LogWriter:
    return LogWriter(deployment.engine)  # flushed by the tests when they read the shadow log


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def runner(logs, recorder) -> Iterator[ShadowRunner]:
    shadow = ShadowRunner(logs, queue_size=3, on_result=recorder.result, on_drop=recorder.drop)
    yield shadow
    shadow.stop(timeout=TIMEOUT)


def shadow_rows(deployment, logs: LogWriter) -> list:
    logs.flush()
    with deployment.engine.connect() as conn:
        return conn.execute(select(shadow_log).order_by(shadow_log.c.id)).all()


def live(slots: dict[str, LoadedSlot], query: str = "rocket planet", k: int = 4) -> list[str]:
    return slots["1"].search(query, k).ids


def test_each_shadow_slot_gets_one_copy_and_the_live_version_none(runner, slots):
    runner.submit("q1", "rocket planet", 4, "1", live(slots), [slots["1"], slots["2"]])
    assert (runner.submitted, runner.depth, runner.dropped) == (1, 1, 0)
    runner.submit("q2", "guitar", 4, "2", ["x"], [slots["2"]])  # v2 is live for this one: no copy
    assert (runner.submitted, runner.depth) == (1, 1)


def test_a_full_queue_drops_and_counts_without_blocking(runner, slots, recorder):
    for i in range(5):
        runner.submit(f"q{i}", "rocket", 4, "1", ["a"], [slots["2"]])  # the worker is not running
    assert (runner.submitted, runner.dropped, runner.depth) == (3, 2, 3)
    assert recorder.drops == ["2", "2"]


def test_a_copy_is_logged_beside_the_live_answer(runner, slots, deployment, logs, recorder):
    top = live(slots)
    before = datetime.now(UTC)
    runner.submit("q1", "rocket planet", 4, "1", top, [slots["2"]])
    runner.start()
    wait_until(lambda: runner.completed == 1, "the shadow copy")
    [row] = shadow_rows(deployment, logs)
    assert (row.request_id, row.live_version, row.shadow_version, row.error) == ("q1", "1", "2", None)
    assert row.live_top_ids == top
    assert row.shadow_top_ids == slots["2"].search("rocket planet", 4).ids  # what v2 answers for that query
    assert row.latency_ms >= 0
    assert row.at.replace(tzinfo=UTC) >= before.replace(microsecond=0)  # stamped at submission
    assert [(v, ok) for v, _, ok in recorder.results] == [("2", True)]


def test_a_failing_shadow_is_logged_never_raised_and_the_worker_goes_on(runner, slots, deployment, logs, recorder, lockstep_home, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_FAULTS", "serving.search:2*")  # every search of v2 fails
    runner.start()
    runner.submit("q1", "rocket", 4, "1", ["a"], [slots["2"]])
    wait_until(lambda: runner.completed == 1, "the failing copy")
    monkeypatch.delenv("LOCKSTEP_FAULTS")
    runner.submit("q2", "rocket", 4, "1", ["a"], [slots["2"]])
    wait_until(lambda: runner.completed == 2, "the next copy")
    first, second = shadow_rows(deployment, logs)
    assert first.error.startswith("InjectedFault: injected fault at serving.search:2")
    assert (first.shadow_top_ids, second.error) == (None, None)
    assert second.shadow_top_ids is not None
    assert [ok for _, _, ok in recorder.results] == [False, True]


def test_a_shadow_that_left_service_before_its_copy_ran_is_logged_as_such(runner, slots, deployment, logs, recorder):
    runner.submit("q1", "rocket", 4, "1", ["a"], [slots["2"]])
    slots["2"].retire()  # the routing table moved on while the copy waited
    runner.start()
    wait_until(lambda: runner.completed == 1, "the copy of a departed slot")
    [row] = shadow_rows(deployment, logs)
    assert row.error == "shadow slot v2 left service before the copy ran"
    assert row.shadow_top_ids is None
    assert recorder.results[0][2] is False


def test_paused_holds_the_worker_and_stop_runs_what_is_queued(runner, slots, deployment, logs):
    runner.start()
    with runner.paused():
        for i in range(3):
            runner.submit(f"q{i}", "rocket", 4, "1", ["a"], [slots["2"]])
        assert runner.completed == 0  # at most one job in the worker's hand, none finished
    runner.stop(timeout=TIMEOUT)
    assert runner.completed == 3 and runner.dropped == 0
    assert [r.request_id for r in shadow_rows(deployment, logs)] == ["q0", "q1", "q2"]
    runner.stop()  # a second stop is harmless


def test_a_stopped_runner_can_start_again(runner, slots):
    runner.start()
    runner.stop(timeout=TIMEOUT)
    runner.start()
    runner.submit("q1", "rocket", 4, "1", ["a"], [slots["2"]])
    wait_until(lambda: runner.completed == 1, "a copy after the restart")


def test_stop_with_a_full_queue_accounts_for_every_copy(runner, slots):
    """Every copy the runner accepted ends up run or counted as dropped, even at shutdown."""
    runner.start()
    gate = runner.paused()
    gate.__enter__()
    runner.submit("q0", "rocket", 4, "1", ["a"], [slots["2"]])
    wait_until(lambda: runner.depth == 0, "the worker to take the first copy (and wait at the gate)")
    for i in range(1, 5):
        runner.submit(f"q{i}", "rocket", 4, "1", ["a"], [slots["2"]])
    assert (runner.submitted, runner.dropped, runner.depth) == (4, 1, 3)  # the queue is full
    stopper = threading.Thread(target=runner.stop, kwargs={"timeout": TIMEOUT})
    stopper.start()
    wait_until(lambda: list(runner._queue.queue)[-1:] == [None], "the stop marker to be queued")
    gate.__exit__(None, None, None)
    stopper.join(TIMEOUT * 2)
    assert not stopper.is_alive()
    assert runner.completed + runner.dropped - 1 == runner.submitted  # 1: the drop at submission
