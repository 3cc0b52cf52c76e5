"""What one serving replica holds: its slots, log writer, shadow runner, metrics and
click judge, started and stopped with the app, and how a request leases a slot.

A request takes one routing view and a lease on one slot; a pin that is not serving is
404, and a share whose version this replica could not load is refused (503), never moved
to another version.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from lockstep.core.config import ServingLimits, Settings
from lockstep.model.contract import SLOW
from lockstep.serving.asked import Asked
from lockstep.serving.bodies import (
    APPLIED_SEQ_HEADER,
    MODEL_VERSION_HEADER,
    PIN_HEADER,
    REQUEST_ID_HEADER,
    UNLOADED_RETRY_AFTER,
    JSONAnswer,
)
from lockstep.serving.clicks import ClickJudge, RecentAnswers
from lockstep.serving.logs import LogWriter
from lockstep.serving.metrics import ServingMetrics
from lockstep.serving.parts import ServingParts
from lockstep.serving.shadow import ShadowRunner
from lockstep.serving.slot_manager import ServingView, SlotManager
from lockstep.serving.slots import LoadedSlot
from lockstep.serving.slow_slots import BUSY_RETRY_AFTER, SlotBusy, SlotPool
from lockstep.store.records import RecordStore

log = logging.getLogger("lockstep.serving")


@dataclass(frozen=True)
class ServingConfig:
    """Timings and queue sizes of one replica (the limits on input are in ``bodies``)."""

    poll_interval: float = 0.1
    tail_interval: float = 0.2
    load_retry_after: float = 30.0
    shadow_queue_size: int = 1000
    log_flush_interval: float = 0.5
    log_batch_size: int = 500
    listen: bool = True
    feedback_wait: float | None = None  # how long a click may wait for its request; None: 2 flushes + 1 s
    recent_answers: int = 20_000  # answers kept in memory to judge clicks (older ones: the database)
    limits: ServingLimits | None = None  # concurrency, request timeout, waiting clicks; None: from the environment
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


# --- the runtime ------------------------------------------------------------------------------


class ServingRuntime:
    """Everything one replica holds; tests reach it as ``app.state.lockstep``."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        api_token: str | None,
        config: ServingConfig,
        parts: ServingParts | None = None,
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.engine = engine
        self.api_token = api_token
        self.config = config
        self.store = RecordStore(engine)
        self.metrics = ServingMetrics()
        self.manager = SlotManager(
            engine,
            self.store,
            system=parts.slots(engine) if parts is not None and parts.slots is not None else None,
            tracking_uri=settings.mlflow_tracking_uri,
            poll_interval=config.poll_interval,
            tail_interval=config.tail_interval,
            retry_after=config.load_retry_after,
            listen=config.listen,
            on_lag=self.metrics.applied,
        )
        self.logs = LogWriter(
            engine,
            flush_interval=config.log_flush_interval,
            batch_size=config.log_batch_size,
            on_drop=self.metrics.log_drop,
            on_reject=self.metrics.log_reject,
        )
        self.limits = config.limits if config.limits is not None else ServingLimits.from_env()
        self._pools = threading.Lock()
        self.answers = RecentAnswers(config.recent_answers)
        wait = config.feedback_wait if config.feedback_wait is not None else 2 * config.log_flush_interval + 1.0
        self.clicks = ClickJudge(engine, self.answers, wait=wait, max_waiting=waiting_room(self.limits))
        self.shadow = ShadowRunner(
            self.logs,
            queue_size=config.shadow_queue_size,
            on_result=self.metrics.shadow_result,
            on_drop=self.metrics.shadow_drop,
        )
        self.metrics.attach(self.manager, self.shadow, self.logs, config.replica)

    def start(self) -> None:
        quiet = self.parts.quiet_blas if self.parts is not None else None
        self._blas = quiet() if quiet is not None else None  # the system's BLAS limit while serving
        self.logs.start()
        self.shadow.start()
        self.manager.start()

    def stop(self) -> None:
        self.manager.stop()
        self.shadow.stop()
        self.logs.stop()
        if getattr(self, "_blas", None) is not None:
            self._blas.restore_original_limits()

    def lease(self, pin: str | None, user_id: str | None) -> tuple[ServingView, LoadedSlot]:
        """Pick a slot from one view and take a lease on it (the caller must release it)."""
        for _ in range(5):
            view = self.manager.view
            slot = self._pinned(view, pin) if pin is not None else self._routed(view, user_id)
            if slot.acquire():
                return view, slot
        raise HTTPException(503, "the routing table is changing too fast to pick a version; retry")

    def pool(self, slot: LoadedSlot) -> SlotPool | None:
        """A slow slot's own bounded pool (made on first use; closed when the slot unloads); None if fast."""
        if getattr(slot, "cost", None) != SLOW:
            return None
        if slot.pool is None:
            with self._pools:
                if slot.pool is None:
                    slot.attach_pool(SlotPool(slot.version, self.limits.slow_slot_threads, self.limits.slow_slot_queue))
        return slot.pool

    def busy(self, view: ServingView, slot: LoadedSlot, asked: Asked, exc: SlotBusy) -> JSONResponse:
        """503 for this version only: its own pool is full (counted against it; not logged, as a refusal)."""
        self.metrics.errors.labels(slot.version, "503").inc()
        self.answers.remember(asked.request_id, [], asked.pinned)
        return JSONResponse(
            {"detail": str(exc), "request_id": asked.request_id}, status_code=503,
            headers={MODEL_VERSION_HEADER: slot.version, "Retry-After": BUSY_RETRY_AFTER},
        )

    def answered(self, view: ServingView, slot: LoadedSlot, hits: Any, asked: Asked,
                 applied_seq: int | None = None) -> JSONResponse:
        """Count, log, mirror to the shadows and answer a request ``slot`` served (search or recommend).

        ``applied_seq`` (searches) is the change-log sequence the slot had applied before it
        searched: the answer's ``X-Lockstep-Applied-Seq`` header.
        """
        elapsed = time.perf_counter() - asked.started
        self.metrics.requests.labels(slot.version).inc()
        self.metrics.latency.labels(slot.version).observe(elapsed)
        self.answers.remember(asked.request_id, hits.ids, asked.pinned)
        held = self._log(view, slot, asked, elapsed, 200, hits.ids)
        if not asked.pinned and not held and view.shadows:  # holdback answers are no live traffic to compare
            self.shadow.submit(asked.request_id, asked.query, asked.k, slot.version, hits.ids, view.shadows)
        payload = {
            "request_id": asked.request_id,
            "model_version": slot.version,
            "index_version": slot.index_version,
            "fingerprint": slot.fingerprint,
            "routing_generation": view.generation,
            "results": [{"id": i, "score": s} for i, s in zip(hits.ids, hits.scores, strict=True)],
        }
        headers = {MODEL_VERSION_HEADER: slot.version}
        if applied_seq is not None:
            headers[APPLIED_SEQ_HEADER] = str(applied_seq)
        return JSONAnswer(payload, headers=headers)  # orjson: the same JSON, cheaper (issue 26)

    def failed(self, view: ServingView, slot: LoadedSlot, asked: Asked, exc: Exception, what: str) -> JSONResponse:
        """A 500 counted and logged against the version (the gates see it), details only in the server log."""
        log.error("request %s: %s on model version %s failed", asked.request_id, what, slot.version, exc_info=exc)
        self.metrics.errors.labels(slot.version, "500").inc()
        self.answers.remember(asked.request_id, [], asked.pinned)
        self._log(view, slot, asked, time.perf_counter() - asked.started, 500, [])
        return JSONResponse(
            {"detail": f"{what} on model version {slot.version} failed (request id {asked.request_id}; "
                       "the server log has the details)",
             "request_id": asked.request_id},
            status_code=500,
            headers={MODEL_VERSION_HEADER: slot.version, REQUEST_ID_HEADER: asked.request_id},
        )

    def _log(self, view: ServingView, slot: LoadedSlot, asked: Asked, elapsed: float, status: int,
             top_ids: list[str]) -> bool:
        """Log the request; returns whether the holdback rule answered it (flagged, left out of statistics).

        Decided from the view that routed the request, so a holdback set or cleared while
        it ran cannot flag it differently from how it was routed.
        """
        held = not asked.pinned and view.table.held_back(asked.user_id) == slot.version
        self.logs.request(
            request_id=asked.request_id, model_version=slot.version, query=asked.query, k=asked.k,
            latency_ms=elapsed * 1000.0, status=status, top_ids=top_ids, user_id=asked.user_id,
            replica=self.config.replica, at=asked.at, pinned=asked.pinned, holdback=held,
        )
        return held

    def _pinned(self, view: ServingView, pin: str) -> LoadedSlot:
        slot = view.pinned(pin)
        if slot is None:
            serving = ", ".join(view.slots) or "none"
            raise HTTPException(
                404,
                f"model version {pin!r} ({PIN_HEADER}) is not serving on this replica; serving versions: {serving}",
            )
        return slot

    def _routed(self, view: ServingView, user_id: str | None) -> LoadedSlot:
        route = view.route(user_id)
        if route is None:
            raise HTTPException(
                503,
                "no live model version is loaded on this replica yet; see GET /routing "
                "(a version gets traffic with `lockstep routing set VERSION=100`)",
            )
        if route.slot is None:  # its share is refused, never handed to another version
            raise _Refused(
                route.version,
                503,
                f"model version {route.version} has {route.weight} % of traffic but is not loaded on this replica "
                "(see GET /routing); its share is refused rather than moved to another version; retry",
                headers={"Retry-After": UNLOADED_RETRY_AFTER},
            )
        return route.slot


def waiting_room(limits: ServingLimits) -> int:
    """How many clicks may wait for another replica's log: at most a quarter of the concurrency
    cap, because a waiting click holds its place, and a flood of made-up ids must never take
    the places searches need."""
    return min(limits.feedback_waiting, limits.max_concurrency // 4)


class _Refused(HTTPException):
    """A refusal on behalf of one version (counted against it in the metrics)."""

    def __init__(self, model_version: str, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers=headers)
        self.model_version = model_version
