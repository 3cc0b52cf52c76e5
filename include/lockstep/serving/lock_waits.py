"""Searches made from the event loop that never wait there on an index lock (issue 21).

A fast slot (``/search``) and every recommender slot (``/recommend``) are searched on
the event loop: the search costs less than the hop to a worker thread and back. But a
search that meets a writer on its index (a live write, a fold-in placing an item, the
swap of a compaction) must not wait on the loop, or every request of the process,
``/healthz`` included, waits with it. ``LockFreeSearch`` asks once without waiting
(the slot's ``search(..., wait=False)``, None when the lock is not free at once) and
only then makes the same search in a worker thread, where it may wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["LOCK_WAIT_THREADS", "LockFreeSearch"]

# Worker threads for searches that met a writer on their index: their own tokens, so a
# long write can never use up the pool that /metrics and slow searches share.
LOCK_WAIT_THREADS = 16


class LockFreeSearch:
    """``await fast_search(slot.search, *args)``: on the loop if the lock is free now, else in a thread.

    ``search`` must take ``wait=False`` and then return None instead of waiting; called
    again without it (from the thread) it waits and answers. One instance per app: the
    worker threads it may use are its own limiter's.
    """

    def __init__(self, threads: int = LOCK_WAIT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"a lock-wait limiter needs at least 1 thread, got {threads}")
        self.limiter = anyio.CapacityLimiter(threads)

    async def __call__(self, search: Callable[..., Any], *args: Any) -> Any:
        hits = search(*args, wait=False)
        if hits is not None:
            return hits
        return await anyio.to_thread.run_sync(search, *args, limiter=self.limiter)
