"""Concurrent queries of one slot embedded in one ``predict`` call (every slow model).

The built-in families embed a query in microseconds on a hand-written path; an imported
pyfunc model pays its framework's per-call overhead (a scikit-learn pipeline ~1 ms, a
transformer far more) once per call, whatever the batch size. So a slot whose model has
no fast path gets a ``QueryBatcher``: a query that arrives while a batch is being embedded
waits for the next batch instead of starting its own call. Nothing waits on a timer: at
low load every query is a batch of one and pays no extra latency; under load, batches
grow to ``max_batch`` and the calls per second stay what the model can do.

The batcher runs on the event loop (one per app), so its queue needs no lock; the
embedding itself runs in the thread pool, or on the slot's own pool (``run``; a slow
slot's ``SlotPool``, see ``slow_slots``). Every slot whose model is slow
(``model.contract.embed_cost``: imported pyfuncs, transformer families) has one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

MAX_BATCH = 64


class QueryBatcher:
    """``await batcher.embed(text)``: the text's vector, embedded together with its neighbours in time."""

    def __init__(
        self,
        embed_many: Callable[[Sequence[str]], np.ndarray],
        max_batch: int = MAX_BATCH,
        run: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.embed_many = embed_many
        self.max_batch = max_batch
        self.run = run or run_in_threadpool  # where a predict call runs
        self.batches = 0  # predict calls made (for the metrics and the tests)
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._draining = False

    async def embed(self, text: str) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Embed what is pending, a batch at a time, until nothing is left."""
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self.batches += 1
                try:
                    vectors = await self.run(self.embed_many, [text for text, _ in batch])
                except Exception as exc:  # every query of the batch gets the model's error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors, strict=True):
                    if not future.done():
                        future.set_result(vector)
        finally:
            self._draining = False
