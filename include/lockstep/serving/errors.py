"""How the app answers what goes wrong before or around a route.

* a body over the limit, declared or streamed: 413, without reading more than the limit;
* malformed JSON: 400, and a well-formed body with wrong fields: 422, both saying what;
* an exception that escapes the app: 500 with a request id and no internals (the
  traceback goes to the server log under that id), or 503 when the database cannot be
  reached, because retrying then helps;
* more requests at once than the replica takes: 503, and one not answered in time: 504
  (``limits``, applied first when ``Guard`` is given the runtime).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lockstep.serving.bodies import REQUEST_ID_HEADER
from lockstep.serving.limits import Limits
from lockstep.serving.logs import is_connection_error
from lockstep.serving.metrics import NO_VERSION
from lockstep.serving.outage import summary

log = logging.getLogger("lockstep.serving")


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Malformed JSON is 400, a well-formed body with wrong fields 422; both say what is wrong."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = next((e.get("ctx", {}) for e in errors if e.get("type") == "json_invalid"), {})
        message = f"request body is not valid JSON: {ctx.get('error', 'parse error')}"
        status = 400
    else:
        message = "; ".join(_describe(e) for e in errors) or "invalid request"
        status = 422
    if request.url.path == "/search":
        rt = request.app.state.lockstep
        rt.metrics.errors.labels(NO_VERSION, str(status)).inc()
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return JSONResponse({"detail": message, "errors": jsonable_encoder(details)}, status)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


class Guard:
    """Body limit for declared and streamed bodies; a 500 with a request id for any crash.

    A body with ``Content-Length`` over the limit is refused before it is read. A body
    without one (chunked transfer) is read here up to the limit and handed on from
    memory, so the app never reads more than ``limit`` bytes of it. An exception that
    escapes the app becomes a 500 whose body names a request id and nothing else; the
    traceback goes to the server log under that id.
    """

    def __init__(self, app: Any, limit: int, runtime: Any = None) -> None:
        self.app = app
        self.limit = limit
        # with the replica's runtime, its concurrency cap and request timeout come first
        self.limits = Limits(self._guard, runtime) if runtime is not None else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.limits is not None:
            await self.limits(scope, receive, send)
        else:
            await self._guard(scope, receive, send)

    async def _guard(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await _too_large(f"request body is {declared} bytes; the limit is {self.limit}", scope, receive, send)
            return
        if declared is None and _may_stream(scope):
            body = await _read_up_to(receive, self.limit)
            if body is None:
                await _too_large(f"request body is over the limit of {self.limit} bytes", scope, receive, send)
                return
            receive = _replay(body, receive)
        await self._run(scope, receive, send)

    async def _run(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = uuid.uuid4().hex
            if started:
                log.error("request %s: %s %s failed", request_id, scope.get("method"), scope.get("path"), exc_info=exc)
                raise
            await _crash_response(exc, request_id, scope)(scope, receive, send)


def _crash_response(exc: Exception, request_id: str, scope: dict[str, Any]) -> JSONResponse:
    """503 when the database cannot be reached (retrying helps), else 500; never internals."""
    where = f"{scope.get('method')} {scope.get('path')}"
    headers = {REQUEST_ID_HEADER: request_id}
    if is_connection_error(exc):
        log.warning("request %s: %s: the database cannot be reached: %s", request_id, where, summary(exc))
        detail = f"the database cannot be reached right now; retry (request id {request_id})"
        return JSONResponse({"detail": detail, "request_id": request_id}, 503, headers={**headers, "Retry-After": "5"})
    log.error("request %s: %s failed", request_id, where, exc_info=exc)
    detail = f"internal error (request id {request_id}; the server log has the details)"
    return JSONResponse({"detail": detail, "request_id": request_id}, 500, headers=headers)


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _may_stream(scope: dict[str, Any]) -> bool:
    """A request that may carry a body without declaring its length (chunked)."""
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", ()))


async def _read_up_to(receive: Any, limit: int) -> bytes | None:
    """The whole body if it is at most ``limit`` bytes, else None (reading stops there)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


async def _too_large(detail: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
    response = JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})
    await response(scope, receive, send)
