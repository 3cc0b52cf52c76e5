"""Which clicks count, decided one click at a time: the in-memory table of recent answers,
the request log of a real database behind it, and the short wait for a search another
replica has not flushed yet. (tests/serving/test_integrity.py shows the same rules over
HTTP; here each rule is driven directly, including the races.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from lockstep.serving.clicks import Answer, ClickJudge, ClickVerdict, RecentAnswers
from lockstep.serving.logs import LogWriter
from lockstep.store.db import get_engine
from tests.serving.harness import wait_for

TIMEOUT = 30.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, TIMEOUT, what, interval=0.005)


# --- the recent answers ----------------------------------------------------------------------------


def test_a_click_counts_once_and_only_on_a_result():
    answers = RecentAnswers()
    answers.remember("q1", ["a", "b", "c"], pinned=False)
    answer = answers.get("q1")
    assert answers.claim("q1", answer, "z") is ClickVerdict.NOT_A_RESULT
    assert answer.clicked is None  # a refused click marks nothing
    assert answers.claim("q1", answer, "b") is ClickVerdict.COUNTED
    assert answers.claim("q1", answer, "b") is ClickVerdict.DUPLICATE
    assert answers.claim("q1", answer, "a") is ClickVerdict.COUNTED  # another result of the same search
    assert answer.clicked == {"a", "b"}


def test_a_click_on_a_pinned_search_is_logged_but_not_counted():
    answers = RecentAnswers()
    answers.remember("q1", ["a"], pinned=True)
    answer = answers.get("q1")
    assert answers.claim("q1", answer, "a") is ClickVerdict.PINNED
    assert answers.claim("q1", answer, "a") is ClickVerdict.DUPLICATE


def test_the_table_keeps_the_most_recently_used_answers():
    answers = RecentAnswers(capacity=3)
    for rid in ("q1", "q2", "q3"):
        answers.remember(rid, [rid], pinned=False)
    assert answers.get("q1") is not None  # q1 is used again: q2 is now the oldest
    answers.remember("q4", ["q4"], pinned=False)
    assert len(answers) == 3
    assert answers.get("q2") is None
    assert {rid for rid in ("q1", "q3", "q4") if answers.get(rid)} == {"q1", "q3", "q4"}


def test_adopting_an_answer_from_the_database_keeps_one_already_in_memory():
    """Two clicks of one request read the database at once: both must share one answer."""
    answers = RecentAnswers(capacity=2)
    first = answers.adopt("q1", Answer(("a",), False))
    second = answers.adopt("q1", Answer(("a",), False))
    assert second is first
    answers.claim("q1", first, "a")
    assert answers.claim("q1", second, "a") is ClickVerdict.DUPLICATE
    answers.adopt("q2", Answer(("b",), False))
    answers.adopt("q3", Answer(("c",), False))
    assert len(answers) == 2 and answers.get("q1") is None  # adopted answers are bounded too


def test_concurrent_clicks_on_one_record_count_exactly_once():
    answers = RecentAnswers()
    answers.remember("q1", ["a", "b"], pinned=False)
    answer = answers.get("q1")
    start = threading.Barrier(8, timeout=TIMEOUT)
    verdicts: list[ClickVerdict] = []
    lock = threading.Lock()

    def click() -> None:
        start.wait()
        verdict = answers.claim("q1", answer, "a")
        with lock:
            verdicts.append(verdict)

    threads = [threading.Thread(target=click) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(v.value for v in verdicts) == ["counted"] + ["duplicate"] * 7


# --- the judge: memory, then the database, then a short wait ---------------------------------------


@pytest.fixture
def engine(lockstep_home, tmp_path):
    return get_engine(f"sqlite:///{tmp_path / 'lockstep.db'}")


@pytest.fixture
def logs(engine):
    return LogWriter(engine)  # not started: each test flushes when the rows should be in the database


def log_search(logs: LogWriter, request_id: str, top_ids: list[str], *, pinned: bool = False) -> None:
    logs.request(request_id=request_id, model_version="1", query="rocket", k=len(top_ids), latency_ms=1.0,
                 status=200, top_ids=top_ids, pinned=pinned)
    logs.flush()


def judge(judge_: ClickJudge, request_id: str, record_id: str) -> ClickVerdict:
    return asyncio.run(judge_.judge(request_id, record_id))


def test_a_search_answered_here_is_judged_from_memory_without_the_database(engine):
    answers = RecentAnswers()
    answers.remember("q1", ["a", "b"], pinned=False)
    clicks = ClickJudge(engine, answers, wait=0.0)
    assert judge(clicks, "q1", "a") is ClickVerdict.COUNTED
    assert judge(clicks, "q1", "a") is ClickVerdict.DUPLICATE
    assert judge(clicks, "q1", "z") is ClickVerdict.NOT_A_RESULT
    assert clicks.misses == 0


def test_a_search_answered_elsewhere_is_judged_from_the_request_log(engine, logs):
    log_search(logs, "q1", ["a", "b"])
    log_search(logs, "q2", ["c"], pinned=True)
    answers = RecentAnswers()
    clicks = ClickJudge(engine, answers, wait=0.0)
    assert judge(clicks, "q1", "z") is ClickVerdict.NOT_A_RESULT
    assert judge(clicks, "q1", "b") is ClickVerdict.COUNTED
    assert judge(clicks, "q1", "b") is ClickVerdict.DUPLICATE
    assert judge(clicks, "q2", "c") is ClickVerdict.PINNED
    assert len(answers) == 2 and answers.get("q1").top_ids == ("a", "b")  # kept: the next click needs no query


def test_clicks_already_logged_make_a_repeat_a_duplicate_after_a_restart(engine, logs):
    log_search(logs, "q1", ["a", "b"])
    logs.feedback(request_id="q1", record_id="a", event="click")
    logs.flush()
    clicks = ClickJudge(engine, RecentAnswers(), wait=0.0)  # a fresh replica remembers nothing
    assert judge(clicks, "q1", "a") is ClickVerdict.DUPLICATE
    assert judge(clicks, "q1", "b") is ClickVerdict.COUNTED


def test_an_unknown_request_is_refused_after_the_wait(engine):
    clicks = ClickJudge(engine, RecentAnswers(), wait=0.0)
    assert judge(clicks, "never", "a") is ClickVerdict.UNKNOWN_REQUEST
    assert clicks.misses == 1  # looked once in the database
    assert len(clicks.answers) == 0  # nothing remembered for an unknown request


def test_a_search_logged_during_the_wait_is_found(engine, logs):
    """Replica A answered, its log batch lands while replica B waits on the click."""
    clicks = ClickJudge(engine, RecentAnswers(), wait=TIMEOUT * 4, poll=0.01)
    result: list[ClickVerdict] = []
    waiting = threading.Thread(target=lambda: result.append(judge(clicks, "q1", "a")))
    waiting.start()
    wait_until(lambda: clicks.misses >= 1, "the judge to miss the request once")
    log_search(logs, "q1", ["a"])
    waiting.join(TIMEOUT * 4)
    assert result == [ClickVerdict.COUNTED]


def test_a_search_answered_here_during_the_wait_is_found_in_memory(engine):
    """The click overtook the search on this very replica: the memory is checked between looks."""
    answers = RecentAnswers()
    clicks = ClickJudge(engine, answers, wait=TIMEOUT * 4, poll=0.01)
    result: list[ClickVerdict] = []
    waiting = threading.Thread(target=lambda: result.append(judge(clicks, "q1", "b")))
    waiting.start()
    wait_until(lambda: clicks.misses >= 1, "the judge to miss the request once")
    answers.remember("q1", ["a", "b"], pinned=True)
    waiting.join(TIMEOUT * 4)
    assert result == [ClickVerdict.PINNED]


def test_a_logged_request_without_results_has_nothing_to_click(engine, logs):
    log_search(logs, "q1", [])
    clicks = ClickJudge(engine, RecentAnswers(), wait=0.0)
    assert judge(clicks, "q1", "a") is ClickVerdict.NOT_A_RESULT
