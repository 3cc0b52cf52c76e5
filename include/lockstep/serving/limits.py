"""How much one replica takes on at once, and how long it gives one request.

Without these a flood queued without bound inside the replica (every waiting request
holding a socket and memory, and every later search waiting behind it), and a request
stuck on a slow database or model was never answered. ``Limits`` is the outermost
middleware of the app:

* at most ``max_concurrency`` requests are worked on at once (``LOCKSTEP_SERVING_MAX_CONCURRENCY``);
  one more is answered 503 with ``Retry-After`` and a message at once, before its body
  is read. A request that timed out still counts until its work has really ended, so
  the cap measures the work in the replica, not the answers sent;
* a request not answered within ``request_timeout`` seconds (``LOCKSTEP_SERVING_REQUEST_TIMEOUT_S``,
  0: none) is answered 504 with a message at once. Its work is not cancelled but runs
  to its end with its output discarded: cancelling a search that runs in a worker
  thread would end its task and give up its slot lease while the thread still reads the
  index (the thread cannot be stopped), and a write cut off half-way would leave the
  client unsure of what happened. The place stays taken until the work ends, so a
  replica stuck on a slow database fills its cap and refuses (503) rather than piling
  up work. A request that ends with 200 after its 504 is still logged as 200.

The liveness, readiness and metrics endpoints are left out, so an overloaded replica is
still seen as alive and its metrics can still be scraped. uvicorn's own
``limit_concurrency`` (set by ``runner``) is a looser backstop on connections.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi.responses import JSONResponse

from lockstep.serving.metrics import NO_VERSION

log = logging.getLogger("lockstep.serving")

UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OVERLOAD_RETRY_AFTER = "1"  # seconds a refused client should wait
_COUNTED_PATHS = frozenset({"/search", "/recommend"})  # refusals show in lockstep_search_errors


class Limits:
    """The concurrency cap and the request timeout of one replica (a pure ASGI middleware)."""

    def __init__(self, app: Any, runtime: Any) -> None:
        self.app = app
        self.runtime = runtime
        self.max_concurrency: int = runtime.limits.max_concurrency
        self.timeout: float = runtime.limits.request_timeout
        self.in_flight = 0
        self.refused = 0  # answered 503: over the cap
        self.timed_out = 0  # answered 504: over the timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrency:
            await self._overloaded(scope, receive, send)
            return
        self.in_flight += 1
        if not self.timeout:
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
            return
        await self._with_timeout(scope, receive, send)

    async def _with_timeout(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the request as its own task, so its answer can be given while its work still ends."""
        reply = _Reply(send)
        work = asyncio.ensure_future(self.app(scope, receive, reply.send))
        work.add_done_callback(lambda task: self._ended(task, reply, scope))
        try:
            done, _ = await asyncio.wait({work}, timeout=self.timeout)
        except asyncio.CancelledError:  # the server gave up on the request (its graceful timeout)
            work.cancel()
            raise
        if done or reply.started:
            await work  # finished, or already answering: let it finish as it is
            return
        reply.cut()  # not cancelled: a cancelled search would give up its slot lease while its thread still reads
        await self._timed_out(scope, receive, send)

    def _ended(self, work: asyncio.Future[None], reply: _Reply, scope: dict[str, Any]) -> None:
        """The request's work is over: free its place, and log an error that came after its 504."""
        self.in_flight -= 1
        if work.cancelled():
            return
        exc = work.exception()  # also marks it retrieved; when the request was still waiting, it re-raises it
        if exc is not None and reply.is_cut:
            log.error("%s %s failed after its 504", scope.get("method"), scope.get("path"), exc_info=exc)

    async def _overloaded(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.refused += 1
        self._count(scope, "503")
        detail = (f"this replica is already working on {self.max_concurrency} requests "
                  f"(LOCKSTEP_SERVING_MAX_CONCURRENCY); retry in {OVERLOAD_RETRY_AFTER} s")
        response = JSONResponse({"detail": detail}, 503, headers={"Retry-After": OVERLOAD_RETRY_AFTER})
        await response(scope, receive, send)

    async def _timed_out(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.timed_out += 1
        self._count(scope, "504")
        log.warning("%s %s was not answered within %g s; answered 504", scope.get("method"), scope.get("path"),
                    self.timeout)
        detail = (f"the request was not answered within {self.timeout:g} s "
                  "(LOCKSTEP_SERVING_REQUEST_TIMEOUT_S); retry later")
        await JSONResponse({"detail": detail}, 504)(scope, receive, send)

    def _count(self, scope: dict[str, Any], status: str) -> None:
        if scope.get("path") in _COUNTED_PATHS:
            self.runtime.metrics.errors.labels(NO_VERSION, status).inc()


class _Reply:
    """The app's ``send``, which knows whether the answer has started and can be cut off."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.started = False
        self._cut = False

    async def send(self, message: dict[str, Any]) -> None:
        if self._cut:  # the client already has its 504: what the late work says goes nowhere
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)

    def cut(self) -> None:
        self._cut = True

    @property
    def is_cut(self) -> bool:
        return self._cut
