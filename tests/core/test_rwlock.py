"""The readers-writer lock guarding FAISS: readers share, a writer is alone, and a waiting
writer holds back new readers so a stream of searches cannot starve live writes.

No test sleeps to let something happen. A thread is known to be blocked when it waits on
the lock's condition: CPython's ``threading.Condition`` lists its waiters in ``_waiters``,
so the tests poll (with a generous timeout) until that list has the expected length.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from lockstep.core.rwlock import RWLock

TIMEOUT = 30.0  # generous: the machine is shared; nothing here should take more than milliseconds


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def blocked(lock: RWLock) -> int:
    """How many threads wait inside the lock right now."""
    with lock._cond:
        return len(lock._cond._waiters)


class Worker:
    """A thread whose exception (if any) is re-raised by ``join``."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread in join()
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), f"{self.name} is still blocked"
        if self.errors:
            raise self.errors[0]


def test_readers_hold_the_lock_together():
    lock = RWLock()
    barrier = threading.Barrier(4, timeout=TIMEOUT)  # breaks unless all four are inside at once

    def read() -> None:
        with lock.read():
            barrier.wait()

    workers = [Worker(read, f"reader {i}") for i in range(4)]
    for worker in workers:
        worker.join()
    assert not barrier.broken
    assert (lock._readers, lock._writer) == (0, False)


def test_a_writer_keeps_readers_out_until_it_is_done():
    lock = RWLock()
    order: list[str] = []

    def read() -> None:
        with lock.read():
            order.append("reader in")

    with lock.write():
        reader = Worker(read, "reader")
        wait_until(lambda: blocked(lock) == 1, "the reader to wait")
        order.append("writer out")
    reader.join()
    assert order == ["writer out", "reader in"]


def test_readers_keep_a_writer_out_until_the_last_one_leaves():
    lock = RWLock()
    order: list[str] = []
    first, second = lock.read(), lock.read()
    first.__enter__()
    second.__enter__()

    def write() -> None:
        with lock.write():
            order.append("writer in")

    writer = Worker(write, "writer")
    wait_until(lambda: blocked(lock) == 1, "the writer to wait")
    first.__exit__(None, None, None)
    assert blocked(lock) == 1 and order == []  # one reader left: the writer was not even woken
    order.append("last reader out")
    second.__exit__(None, None, None)
    writer.join()
    assert order == ["last reader out", "writer in"]


def test_a_waiting_writer_goes_before_readers_that_came_after_it():
    """Without the writer preference a steady stream of searches would starve live writes."""
    lock = RWLock()
    order: list[str] = []
    held = lock.read()
    held.__enter__()

    def write() -> None:
        with lock.write():
            order.append("writer")

    def read() -> None:
        with lock.read():
            order.append("late reader")

    writer = Worker(write, "writer")
    wait_until(lambda: lock._writers_waiting == 1 and blocked(lock) == 1, "the writer to wait")
    late = Worker(read, "late reader")  # only a reader holds the lock, yet it must wait
    wait_until(lambda: blocked(lock) == 2, "the late reader to wait behind the writer")
    assert order == []
    held.__exit__(None, None, None)
    writer.join()
    late.join()
    assert order == ["writer", "late reader"]


def test_writers_exclude_each_other():
    lock = RWLock()
    order: list[str] = []

    def write() -> None:
        with lock.write():
            order.append("second writer")

    with lock.write():
        other = Worker(write, "second writer")
        wait_until(lambda: blocked(lock) == 1, "the second writer to wait")
        order.append("first writer out")
    other.join()
    assert order == ["first writer out", "second writer"]


@pytest.mark.parametrize("side", ["read", "write"])
def test_an_exception_inside_releases_the_lock(side):
    lock = RWLock()
    with pytest.raises(RuntimeError, match="search failed"), getattr(lock, side)():
        raise RuntimeError("search failed")
    assert (lock._readers, lock._writer, lock._writers_waiting) == (0, False, 0)
    done = threading.Event()

    def write() -> None:
        with lock.write():
            done.set()

    Worker(write, "writer after the failure").join()
    assert done.is_set()


def test_counts_stay_consistent_under_many_mixed_threads():
    """Readers never see a write half-done: the writer moves 1 between two cells under the lock."""
    lock = RWLock()
    cells = [100, 0]
    seen: list[int] = []

    def write() -> None:
        for _ in range(200):
            with lock.write():
                cells[0] -= 1  # the sum is off until the last line
                cells[1] += 1
                cells[0] += 1
                cells[1] -= 1

    def read() -> None:
        for _ in range(200):
            with lock.read():
                seen.append(cells[0] + cells[1])

    workers = [Worker(write, f"writer {i}") for i in range(2)] + [Worker(read, f"reader {i}") for i in range(4)]
    for worker in workers:
        worker.join()
    assert len(seen) == 800 and set(seen) == {100}
    assert (lock._readers, lock._writer, lock._writers_waiting) == (0, False, 0)
