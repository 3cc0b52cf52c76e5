"""A small readers-writer lock.

FAISS allows concurrent searches but no add or remove while a search runs. Searches
take the shared side, writes the exclusive side; a waiting writer blocks new readers
so a steady stream of searches cannot starve live writes.

``try_read`` takes the shared side only if it is free at once (no writer active or
waiting) and never waits: the serving event loop uses it, because a thread that waits
there freezes every request of its process, ``/healthz`` included (issue 21).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            self._release_read()

    @contextmanager
    def try_read(self) -> Iterator[bool]:
        """``with lock.try_read() as ok:`` -- the shared side if it is free now (``ok``), never a wait.

        Refused (``ok`` False) while a writer holds the lock or waits for it, exactly
        when ``read`` would block; the caller then searches from a thread instead.
        """
        with self._cond:
            ok = not (self._writer or self._writers_waiting)
            if ok:
                self._readers += 1
        try:
            yield ok
        finally:
            if ok:
                self._release_read()

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
