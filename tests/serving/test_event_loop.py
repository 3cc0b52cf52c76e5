"""The serving event loop never waits on an index lock (issue 21).

A writer on one version's index (a live write, or the swap of a compaction) used to
freeze the whole process: a fast slot is searched on the event loop, and a search that
met the writer waited there, so ``/healthz``, ``/readyz``, ``/metrics`` and the searches
of every other version waited too. Here the write lock of v1's index is held from the
test itself, over a real uvicorn server: the probes and a search pinned to v2 answer
while it is held, and the v1 search that met it completes once it is let go.

Nothing is timed. A request is known to be waiting on the lock when it sits in the
lock's condition (``_cond._waiters``, as in tests/core/test_rwlock.py); timeouts are
failure guards only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from lockstep.core.rwlock import RWLock
from lockstep.serving.bodies import PIN_HEADER
from lockstep.store import routing
from tests.serving.harness import serve

TIMEOUT = 10.0  # per request, a failure guard: each answers in milliseconds when nothing is frozen


def waiting(lock: RWLock) -> int:
    """How many threads wait inside the lock right now."""
    with lock._cond:
        return len(lock._cond._waiters)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class Request:
    """One HTTP request in a thread of its own; ``join`` hands over the response or error."""

    def __init__(self, call: Callable[[], httpx.Response]) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], httpx.Response]) -> None:
        try:
            self.response = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in join()
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = 30.0) -> httpx.Response:
        assert self.done.wait(timeout), "the request never completed"
        if self.error is not None:
            raise self.error
        return self.response


@contextmanager
def writer_holding(lock: RWLock) -> Iterator[None]:
    """The write side of ``lock`` held by the calling thread until the block ends."""
    with lock.write():
        yield


@contextmanager
def writer_waiting(lock: RWLock) -> Iterator[None]:
    """A reader inside ``lock`` and a writer queued behind it: new readers are held back."""
    with lock.read():
        release = threading.Event()

        def write() -> None:
            with lock.write():
                release.wait(TIMEOUT * 3)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        wait_until(lambda: lock._writers_waiting == 1, "the writer to queue")
        try:
            yield
        finally:
            release.set()  # the writer leaves as soon as it gets in (after this reader)
    writer.join(TIMEOUT)


def search(url: str, version: str, query: str = "rocket planet") -> httpx.Response:
    return httpx.post(f"{url}/search", json={"query": query, "k": 5}, headers={PIN_HEADER: version}, timeout=TIMEOUT * 3)


@pytest.mark.parametrize("writer", [writer_holding, writer_waiting], ids=["writer-holds", "writer-waits"])
def test_a_writer_on_one_index_freezes_neither_the_probes_nor_other_versions(deployment, writer):
    d = deployment
    routing.set_weights({"1": 50, "2": 50}, engine=d.engine)
    with serve(d.app()) as s, httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        lock = s.runtime.manager.view.slots["1"].index._lock
        assert client.post("/search", json={"query": "rocket"}, headers={PIN_HEADER: "1"}).status_code == 200
        with writer(lock):
            before = waiting(lock)
            blocked = Request(lambda: search(s.url, "1"))
            # the v1 search met the writer and waits on the lock -- in a worker thread, not the loop
            wait_until(lambda: waiting(lock) == before + 1, "the v1 search to wait on its index lock")
            assert client.get("/healthz").json() == {"status": "ok"}
            ready = client.get("/readyz")
            assert ready.status_code == 200 and sorted(ready.json()["live"]) == ["1", "2"]
            assert "lockstep_" in client.get("/metrics").text
            other = client.post("/search", json={"query": "rocket planet", "k": 5}, headers={PIN_HEADER: "2"})
            assert other.status_code == 200 and other.json()["model_version"] == "2" and other.json()["results"]
            assert not blocked.done.is_set(), "the v1 search answered while its index was write-locked"
        answer = blocked.join()
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert body["model_version"] == "1" and body["results"]
        # after the writer: v1 is searched on the loop again, with the same answer as before
        again = client.post("/search", json={"query": "rocket planet", "k": 5}, headers={PIN_HEADER: "1"}).json()
        assert [r["id"] for r in again["results"]] == [r["id"] for r in body["results"]]


def test_try_read_never_waits_and_is_refused_exactly_when_read_would_block():
    lock = RWLock()
    with lock.try_read() as first, lock.try_read() as second:
        assert first and second and lock._readers == 2  # readers share
    assert lock._readers == 0
    with lock.write():
        with lock.try_read() as ok:
            assert not ok  # a writer inside
        assert lock._readers == 0
    with writer_waiting(lock), lock.try_read() as ok:
        assert not ok  # a writer waiting: new readers are held back, so no starving it
    with lock.try_read() as ok:  # all released: granted again, and a writer can get in after it
        assert ok
    with lock.write():
        assert lock._writer
