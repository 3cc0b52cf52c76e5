"""Shadow traffic: a copy of live requests for slots being evaluated, off the response path.

The live response is computed and returned first; each shadow slot then gets a job in a
bounded queue that one worker thread runs. A full queue drops the copy and counts it,
so a slow or broken shadow can never slow live traffic. The shadow's top-k is logged
beside the live top-k (``lockstep_shadow_log``), which is what the rollout's shadow gate
compares; a shadow failure is logged with its error, never raised to the user.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime

from lockstep.core import clock
from lockstep.serving.logs import LogWriter
from lockstep.serving.slots import LoadedSlot

log = logging.getLogger("lockstep.serving")


@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    query: str
    k: int
    live_version: str
    live_top_ids: tuple[str, ...]
    slot: LoadedSlot
    at: datetime


class ShadowRunner:
    """A bounded queue of shadow searches and the thread that runs them."""

    def __init__(
        self,
        logs: LogWriter,
        *,
        queue_size: int = 1000,
        on_result: Callable[[str, float, bool], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.logs = logs
        self.on_result = on_result
        self.on_drop = on_drop
        self.submitted = 0
        self.dropped = 0
        self.completed = 0
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=queue_size)
        self._gate = threading.Lock()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(
        self,
        request_id: str,
        query: str,
        k: int,
        live_version: str,
        live_top_ids: Iterable[str],
        slots: Iterable[LoadedSlot],
    ) -> None:
        """Queue a copy of a live request for each shadow slot; never blocks."""
        top = tuple(live_top_ids)
        at = clock.now()
        for slot in slots:
            if slot.version == live_version:
                continue
            try:
                self._queue.put_nowait(ShadowJob(request_id, query, k, live_version, top, slot, at))
                with self._count_lock:
                    self.submitted += 1
            except queue.Full:
                self._count_drop(slot.version)

    def _count_drop(self, version: str) -> None:
        with self._count_lock:
            self.dropped += 1
        if self.on_drop is not None:
            self.on_drop(version)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the worker (it finishes at most the job in hand): for tests and benchmarks."""
        with self._gate:
            yield

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="lockstep-shadow", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        while True:  # make room for the stop marker without blocking forever
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:  # shutting down: the oldest copy gives way, counted as dropped
                with suppress(queue.Empty):
                    job = self._queue.get_nowait()
                    if job is not None:
                        self._count_drop(job.slot.version)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._gate:
                self._execute(job)

    def _execute(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        ids: list[str] | None = None
        error = None
        with job.slot.lease() as ok:
            if not ok:
                error = f"shadow slot v{job.slot.version} left service before the copy ran"
            else:
                try:
                    ids = job.slot.search(job.query, job.k).ids
                except Exception as exc:  # a broken shadow is logged, never raised
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning("shadow search on v%s failed: %s", job.slot.version, error)
        latency = time.perf_counter() - started
        self.completed += 1
        if self.on_result is not None:
            self.on_result(job.slot.version, latency, error is None)
        self.logs.shadow(
            request_id=job.request_id,
            live_version=job.live_version,
            shadow_version=job.slot.version,
            live_top_ids=list(job.live_top_ids),
            shadow_top_ids=ids,
            latency_ms=latency * 1000.0,
            error=error,
            at=job.at,
        )
