"""A slow version gets its own bounded pool, so it cannot take the threads of the others.

Measured (issue 24): serving a transformer version and a TF-IDF version 50/50 on one
replica, at 8 concurrent clients the transformer's p50 was 130 ms and the TF-IDF version
slowed 4.6x, because both ran on the one thread pool of the app. A slot whose model is
slow (``lockstep.model.contract.embed_cost``: its ``COST``) now embeds its queries (through its ``QueryBatcher``) and searches
on a ``SlotPool`` of ``LOCKSTEP_SLOW_SLOT_THREADS`` threads (default 1). At most
``LOCKSTEP_SLOW_SLOT_QUEUE`` queries wait for it; one more is refused with 503 and
``Retry-After`` for that version only (``SlotBusy``), while the fast versions answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

BUSY_RETRY_AFTER = "1"  # seconds a client refused by a full slow-slot pool should wait

T = TypeVar("T")


class SlotBusy(Exception):
    """The slow version's pool and its queue are full: refuse this query (503) for that version."""

    def __init__(self, version: str, waiting: int) -> None:
        super().__init__(
            f"model version {version} is slow and already has {waiting} queries running or waiting on this replica "
            f"(LOCKSTEP_SLOW_SLOT_THREADS, LOCKSTEP_SLOW_SLOT_QUEUE); retry in {BUSY_RETRY_AFTER} s"
        )
        self.version = version


class SlotPool:
    """A bounded executor of one slot: ``threads`` workers, at most ``queue`` calls waiting."""

    def __init__(self, version: str, threads: int, queue: int) -> None:
        self.version = version
        self.threads = threads
        self.capacity = threads + queue
        self.refused = 0
        self._outstanding = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"lockstep-slot-v{version}")

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def reserve(self, n: int = 1) -> None:
        """Take ``n`` places or raise ``SlotBusy`` (a query counts from the moment it waits)."""
        with self._lock:
            if self._outstanding + n > self.capacity:
                self.refused += 1
                raise SlotBusy(self.version, self._outstanding)
            self._outstanding += n

    def free(self, n: int = 1) -> None:
        with self._lock:
            self._outstanding -= n

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the pool's threads (the caller has reserved its place)."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
