"""Each loaded slot applies the change log on its own thread, in micro-batches.

Before issue 24 a write embedded its text with every loaded version before it answered:
with two transformer versions loaded each write cost ~100 ms of CPU in the request. Now a
write is answered once it is durable in the change log (or once applied, when the client
or the default asks: ``write_ack``), and every slot's ``SlotApplier`` wakes on it and
applies *everything* pending in one catch-up (one ``transform`` call for many writes).
One thread per slot, so a slow version never holds up a fast one.

A write on this replica wakes the appliers at once (an ``Event``, no timer on that path);
the slot manager's change-log tail wakes a slot that is behind the head, which is how
writes made elsewhere (other replicas, Airflow tasks) arrive, and how a failed apply is
retried. ``AppliedSeq`` lets a thread or a coroutine wait, bounded, until a slot has
applied a sequence (a write's ``applied`` acknowledgement, a search's
``X-Lockstep-Min-Seq``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from lockstep.core import clock

log = logging.getLogger("lockstep.serving")


class AppliedSeq:
    """The last sequence a slot applied, and waiters for a later one (threads and coroutines)."""

    def __init__(self, slot: Any) -> None:
        self.slot = slot
        self._cond = threading.Condition()
        self._futures: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def value(self) -> int:
        return int(self.slot.applied_seq)

    def advanced(self) -> None:
        """Tell the waiters the slot's sequence moved (called by the applier after each catch-up)."""
        seq = self.value
        with self._cond:
            self._cond.notify_all()
            due = [w for w in self._futures if w[0] <= seq]
            self._futures = [w for w in self._futures if w[0] > seq]
        for _, loop, future in due:
            loop.call_soon_threadsafe(_resolve, future)

    def wait(self, seq: int, timeout: float) -> bool:
        """Block until the slot has applied ``seq`` or ``timeout`` passed; whether it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self.value >= seq, timeout)

    async def wait_async(self, seq: int, timeout: float) -> bool:
        """``wait`` for the event loop: no thread is held while it waits."""
        if self.value >= seq:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self.value >= seq:
                return True
            self._futures.append((seq, loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._cond:
                self._futures = [w for w in self._futures if w[2] is not future]
        return self.value >= seq


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SlotApplier:
    """One slot's apply thread: wakes on a write, applies everything pending, tells the waiters.

    ``catch_up(slot, on_applied)`` is the system's catch-up (it applies in pages, one
    ``apply_changes`` per page, and returns None once the slot is retiring). ``on_lag``
    gets the version and the seconds each applied change waited since its commit.
    """

    def __init__(
        self,
        slot: Any,
        catch_up: Callable[..., int | None],
        *,
        on_error: Callable[[Any, Exception], None],
        on_ok: Callable[[], None],
        on_lag: Callable[[str, Sequence[float]], None] | None = None,
    ) -> None:
        self.slot = slot
        self.applied = AppliedSeq(slot)
        self.batches = 0  # catch-ups that applied something (for the tests and the metrics)
        self.last_lag: float | None = None  # seconds from commit to applied of the last change applied
        self._catch_up = catch_up
        self._on_error = on_error
        self._on_ok = on_ok
        self._on_lag = on_lag
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lockstep-apply-v{slot.version}", daemon=True)

    def start(self) -> SlotApplier:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                seq = self._catch_up(self.slot, on_applied=self._applied)
            except Exception as exc:  # the sequence stays put; the tail wakes it again while behind
                self._on_error(self.slot, exc)
            else:
                if seq is None:  # retiring: nothing more to apply
                    self.applied.advanced()
                    return
                self._on_ok()
            self.applied.advanced()

    def _applied(self, changes: Sequence[Any]) -> None:
        """One page applied: measure how long its changes waited since their commit."""
        self.batches += 1
        now = clock.now()
        lags = [max(0.0, (now - _aware(c.at)).total_seconds()) for c in changes if getattr(c, "at", None) is not None]
        if lags:
            self.last_lag = lags[-1]
            if self._on_lag is not None:
                self._on_lag(self.slot.version, lags)
        self.applied.advanced()


def _aware(at: datetime | str) -> datetime:
    return clock.utc(at)


def wait_all(appliers: Sequence[SlotApplier], seq: int, timeout: float) -> tuple[list[str], list[str]]:
    """Wait (bounded, in total) until every applier's slot has applied ``seq``: (applied, pending) versions."""
    deadline = time.monotonic() + timeout
    applied, pending = [], []
    for applier in appliers:
        left = max(0.0, deadline - time.monotonic())
        (applied if applier.applied.wait(seq, left) else pending).append(applier.slot.version)
    return applied, pending
