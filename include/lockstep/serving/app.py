"""The serving API: searches answered by exactly one (model, index) version pair.

``create_app`` builds a FastAPI app around a ``ServingRuntime`` (slot manager, shadow
runner, log writer, metrics); the runtime's threads start and stop with the app's
lifespan. ``run`` serves it with uvicorn. Several replicas may run against one
database: every routing decision comes from the routing table, never from local state.

Per search: read the replica's view once, pick a slot (pin, sticky user bucket, or
random by weight), take a lease on it, embed and search with that slot only, release.
The response names the model version, the index version and the fingerprint that
served it; a request that raced a slot's retirement simply picks again from the newer
view, so it never runs on an unloaded slot. A request whose share belongs to a live
version this replica could not load gets 503: that share is never moved to another
version (see ``slots``).

What a client cannot do: steer the gates (pinned requests are logged as pinned and
left out of every statistic; a click counts only for a record among its request's
results, once -- see ``clicks``), smuggle control characters into ids or text (422
naming the field -- see ``inputs``), or send a body over 1 MB, declared or streamed
(413). An unexpected error answers 500 with a request id and no internals; the full
error goes to the server log under that id.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor

from lockstep.core import clock
from lockstep.core.config import Settings
from lockstep.core.errors import ConfigurationError, InvalidRecordError, RecordNotFoundError
from lockstep.serving.clicks import ClickJudge, RecentAnswers, Verdict
from lockstep.serving.inputs import ID_PATTERN, TEXT_PATTERN, clean_id, clean_metadata, clean_text
from lockstep.serving.logs import LogWriter, is_connection_error
from lockstep.serving.metrics import NO_VERSION, ServingMetrics
from lockstep.serving.outage import summary
from lockstep.serving.shadow import ShadowRunner
from lockstep.serving.slots import LoadedSlot, ServingView, SlotManager
from lockstep.store.db import get_engine
from lockstep.store.records import RecordStore
from lockstep.store.schema import ID_LENGTH

log = logging.getLogger("lockstep.serving")

MAX_QUERY_CHARS = 2000
MAX_K = 100
MAX_USER_ID_CHARS = 256
MAX_RECORD_TEXT_BYTES = 100_000
MAX_METADATA_BYTES = 16_384
MAX_BODY_BYTES = 1_000_000
MODEL_VERSION_HEADER = "X-Lockstep-Model-Version"
PIN_HEADER = "X-Lockstep-Pin"
REQUEST_ID_HEADER = "X-Request-Id"
UNLOADED_RETRY_AFTER = "5"  # seconds a client should wait when its share's version is not loaded
_UNSET: Any = object()


@dataclass(frozen=True)
class ServingConfig:
    """Timings and queue sizes of one replica (the limits on input are constants above)."""

    poll_interval: float = 0.1
    tail_interval: float = 0.2
    load_retry_after: float = 30.0
    shadow_queue_size: int = 1000
    log_flush_interval: float = 0.5
    log_batch_size: int = 500
    listen: bool = True
    feedback_wait: float | None = None  # how long a click may wait for its request; None: 2 flushes + 1 s
    recent_answers: int = 20_000  # answers kept in memory to judge clicks (older ones: the database)
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


# --- request and response bodies ------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _optional(check: Any) -> Any:
    return lambda value: None if value is None else check(value)


# The patterns document the rule in the OpenAPI document; the validators enforce it with
# a message that names the character and its position.
Id = AfterValidator(clean_id)
Text = AfterValidator(clean_text)
_ID_DOC = {"pattern": ID_PATTERN}
_TEXT_DOC = {"pattern": TEXT_PATTERN}


class SearchRequest(_Strict):
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, strict=True, json_schema_extra=_TEXT_DOC), Text]
    k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = 10
    user_id: Annotated[
        str | None,
        Field(min_length=1, max_length=MAX_USER_ID_CHARS, strict=True, json_schema_extra=_ID_DOC),
        AfterValidator(_optional(clean_id)),
    ] = None


class SearchResult(BaseModel):
    id: str
    score: float


class SearchResponse(BaseModel):
    request_id: str
    model_version: str
    index_version: str
    fingerprint: str
    routing_generation: int
    results: list[SearchResult]


class RecordBody(_Strict):
    text: Annotated[str, Field(strict=True, json_schema_extra=_TEXT_DOC), Text]
    metadata: Annotated[dict[str, Any] | None, AfterValidator(clean_metadata)] = None


class RecordWritten(BaseModel):
    id: str
    seq: int


class FeedbackBody(_Strict):
    request_id: Annotated[str, Field(min_length=1, max_length=64, strict=True, json_schema_extra=_ID_DOC), Id]
    record_id: Annotated[str, Field(min_length=1, max_length=ID_LENGTH, strict=True, json_schema_extra=_ID_DOC), Id]
    event: Literal["click"]


class FeedbackAccepted(BaseModel):
    accepted: bool
    counted: bool  # False for a click on a pinned request: logged, left out of statistics


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: what is wrong, in words (and the request id of a 5xx)."""

    detail: str
    errors: list[dict[str, Any]] | None = None
    request_id: str | None = None


_STATUS_TEXT = {
    400: "The body is not valid JSON.",
    401: "Missing or wrong bearer token.",
    403: "Writes are disabled: no API token is configured.",
    404: "Not found (the message says what).",
    413: "The body (declared or streamed) is larger than 1 MB, or a field is over its size limit.",
    422: "A field is invalid (the message names it).",
    500: "Unexpected error: the answer carries a request id; details are in the server log.",
    503: "No version can answer on this replica, or the database cannot be reached, right now (the message says which); retry.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an operation can give, for the OpenAPI document."""
    return {code: {"model": ErrorBody, "description": _STATUS_TEXT[code]} for code in codes}


class _AnyPath(PathConvertor):
    """Starlette's ``path`` convertor stops at a line break ("a%0Ab" would be a bare 404);
    this one matches every id, so a bad one gets the 422 that names it."""

    regex = "[\\s\\S]*"


register_url_convertor("record_id", _AnyPath())
RecordId = Annotated[str, Path(min_length=1, max_length=ID_LENGTH, json_schema_extra=_ID_DOC), Id]


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
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.api_token = api_token
        self.config = config
        self.store = RecordStore(engine)
        self.metrics = ServingMetrics()
        self.manager = SlotManager(
            engine,
            self.store,
            tracking_uri=settings.mlflow_tracking_uri,
            poll_interval=config.poll_interval,
            tail_interval=config.tail_interval,
            retry_after=config.load_retry_after,
            listen=config.listen,
        )
        self.logs = LogWriter(
            engine,
            flush_interval=config.log_flush_interval,
            batch_size=config.log_batch_size,
            on_drop=self.metrics.log_drop,
            on_reject=self.metrics.log_reject,
        )
        self.answers = RecentAnswers(config.recent_answers)
        wait = config.feedback_wait if config.feedback_wait is not None else 2 * config.log_flush_interval + 1.0
        self.clicks = ClickJudge(engine, self.answers, wait=wait)
        self.shadow = ShadowRunner(
            self.logs,
            queue_size=config.shadow_queue_size,
            on_result=self.metrics.shadow_result,
            on_drop=self.metrics.shadow_drop,
        )
        self.metrics.attach(self.manager, self.shadow, self.logs, config.replica)

    def start(self) -> None:
        self.logs.start()
        self.shadow.start()
        self.manager.start()

    def stop(self) -> None:
        self.manager.stop()
        self.shadow.stop()
        self.logs.stop()

    def lease(self, pin: str | None, user_id: str | None) -> tuple[ServingView, LoadedSlot]:
        """Pick a slot from one view and take a lease on it (the caller must release it)."""
        for _ in range(5):
            view = self.manager.view
            slot = self._pinned(view, pin) if pin is not None else self._routed(view, user_id)
            if slot.acquire():
                return view, slot
        raise HTTPException(503, "the routing table is changing too fast to pick a version; retry")

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


class _Refused(HTTPException):
    """A refusal on behalf of one version (counted against it in the metrics)."""

    def __init__(self, model_version: str, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers=headers)
        self.model_version = model_version


# --- the app ----------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | str | None = None,
    api_token: str | None = _UNSET,
    config: ServingConfig | None = None,
) -> FastAPI:
    """Build one serving replica. Defaults come from the environment (``Settings``)."""
    settings = settings or Settings.from_env()
    if engine is None:
        settings.ensure_home()
        engine = get_engine(settings.database_url)
    elif isinstance(engine, str):
        engine = get_engine(engine)
    token = settings.api_token if api_token is _UNSET else api_token
    rt = ServingRuntime(settings, engine, api_token=token, config=config or ServingConfig())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt.start()
        try:
            yield
        finally:
            rt.stop()

    app = FastAPI(
        title="Lockstep serving API",
        version="1",
        description="Semantic search served by exactly one (model version, index version) pair per request.",
        lifespan=lifespan,
    )
    app.state.lockstep = rt
    app.add_middleware(_Guard, limit=MAX_BODY_BYTES)
    app.add_exception_handler(RequestValidationError, _validation_error)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if not rt.api_token:
            raise HTTPException(
                403,
                "writes are disabled on this server: no API token is configured. Set LOCKSTEP_API_TOKEN "
                "for the server and send 'Authorization: Bearer <token>'",
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPException(
                401, "missing bearer token: send 'Authorization: Bearer <LOCKSTEP_API_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), rt.api_token.encode()):
            raise HTTPException(401, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.post("/search", response_model=SearchResponse, responses=_errors(400, 404, 413, 422, 500, 503))
    async def search(
        body: SearchRequest,
        x_lockstep_pin: Annotated[str | None, Header(alias=PIN_HEADER)] = None,
    ) -> Response:
        """Search with the version the routing table picks (or the pinned one).

        A pinned request is answered normally but logged as pinned, and never counts in
        gate, drift or bandit statistics. A fast slot (an ANN index, or a small flat one)
        is searched right here on the event loop: embedding a query and an HNSW search
        take less time than handing the request to a worker thread and back (the hop,
        and the GIL hand-overs it causes, were most of the cost; docs/benchmarks.md,
        "Serving at scale"). A slow one (a large flat index) runs in the thread pool.
        """
        started = time.perf_counter()
        at = clock.now()
        pinned = x_lockstep_pin is not None
        try:
            view, slot = rt.lease(x_lockstep_pin, body.user_id)
        except HTTPException as exc:
            rt.metrics.errors.labels(getattr(exc, "model_version", NO_VERSION), str(exc.status_code)).inc()
            raise
        request_id = uuid.uuid4().hex
        try:
            hits = slot.search(body.query, body.k) if slot.fast else await run_in_threadpool(slot.search, body.query, body.k)
        except Exception as exc:  # counted and logged against the version, so gates see it
            return _search_failed(rt, slot, body, request_id, at, started, exc, pinned)
        finally:
            slot.release()
        elapsed = time.perf_counter() - started
        rt.metrics.requests.labels(slot.version).inc()
        rt.metrics.latency.labels(slot.version).observe(elapsed)
        rt.answers.remember(request_id, hits.ids, pinned)
        rt.logs.request(
            request_id=request_id, model_version=slot.version, query=body.query, k=body.k,
            latency_ms=elapsed * 1000.0, status=200, top_ids=hits.ids, user_id=body.user_id,
            replica=rt.config.replica, at=at, pinned=pinned,
        )
        if not pinned and view.shadows:
            rt.shadow.submit(request_id, body.query, body.k, slot.version, hits.ids, view.shadows)
        payload = {
            "request_id": request_id,
            "model_version": slot.version,
            "index_version": slot.index_version,
            "fingerprint": slot.fingerprint,
            "routing_generation": view.generation,
            "results": [{"id": i, "score": s} for i, s in zip(hits.ids, hits.scores, strict=True)],
        }
        return JSONResponse(payload, headers={MODEL_VERSION_HEADER: slot.version})

    @app.put(
        "/records/{record_id:record_id}", response_model=RecordWritten, dependencies=[Depends(require_token)],
        responses=_errors(400, 401, 403, 413, 422, 500, 503),
    )
    def put_record(record_id: RecordId, body: RecordBody) -> RecordWritten:
        """Insert or replace a record; every loaded version gets it before the answer."""
        size = len(body.text.encode())
        if size > MAX_RECORD_TEXT_BYTES:
            raise HTTPException(413, f"record text is {size} bytes; the limit is {MAX_RECORD_TEXT_BYTES}")
        if body.metadata is not None:
            meta_size = len(_json_bytes(body.metadata))
            if meta_size > MAX_METADATA_BYTES:
                raise HTTPException(413, f"record metadata is {meta_size} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
        try:
            seq = rt.store.upsert(record_id, body.text, body.metadata)
        except InvalidRecordError as exc:
            raise HTTPException(422, str(exc)) from exc
        rt.metrics.writes.labels("upsert").inc()
        rt.manager.catch_up_all()
        return RecordWritten(id=record_id, seq=seq)

    @app.delete(
        "/records/{record_id:record_id}", response_model=RecordWritten, dependencies=[Depends(require_token)],
        responses=_errors(401, 403, 404, 422, 500, 503),
    )
    def delete_record(record_id: RecordId) -> RecordWritten:
        """Delete a record (a tombstone in the change log); every loaded version drops it."""
        try:
            seq = rt.store.delete(record_id)
        except RecordNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        rt.metrics.writes.labels("delete").inc()
        rt.manager.catch_up_all()
        return RecordWritten(id=record_id, seq=seq)

    @app.post("/feedback", status_code=202, response_model=FeedbackAccepted, responses=_errors(400, 413, 422, 500, 503))
    async def feedback(body: FeedbackBody) -> FeedbackAccepted:
        """Log a click on a search result: only a record among its request's results, once.

        A click whose request is pinned is logged but not counted (``counted: false``).
        """
        verdict = await rt.clicks.judge(body.request_id, body.record_id)
        if verdict not in (Verdict.COUNTED, Verdict.PINNED):
            rt.metrics.feedback_rejected.labels(verdict.value).inc()
            raise HTTPException(422, _click_refusal(verdict, body))
        rt.logs.feedback(request_id=body.request_id, record_id=body.record_id, event=body.event)
        rt.metrics.feedback.labels(body.event).inc()
        return FeedbackAccepted(accepted=True, counted=verdict is Verdict.COUNTED)

    @app.get("/routing", responses=_errors(500))
    def routing() -> dict[str, Any]:
        """The routing table this replica serves, and what it holds for each slot.

        ``error`` is a short category (``index_integrity``, ``fingerprint_mismatch``,
        ``model_unavailable``, ...): this endpoint is open, so paths and messages stay in
        the server log.
        """
        view = rt.manager.view
        held = {s.model_version: s for s in rt.manager.status()}
        out = view.table.to_dict()
        for slot in out["slots"]:
            status = held.get(slot["model_version"])
            slot["loaded"] = slot["model_version"] in view.slots
            slot["error"] = status.error_category if status else None
            slot["applied_seq"] = status.applied_seq if status else None
        out["replica"] = rt.config.replica
        return out

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "No live model version is loaded on this replica yet."}})
    def readyz() -> JSONResponse:
        """Ready when at least one live version is loaded; ``unloaded`` names live versions it lacks."""
        view = rt.manager.view
        live = [slot.version for slot, _ in view.live]
        if live:
            return JSONResponse({"ready": True, "live": live, "unloaded": list(view.unloaded), "generation": view.generation})
        return JSONResponse(
            {"ready": False, "reason": "no live model version is loaded yet", "generation": view.generation},
            status_code=503,
        )

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        return Response(rt.metrics.render(), media_type=rt.metrics.content_type)

    return app


WORKERS_ENV = "LOCKSTEP_SERVING_WORKERS"


def run(host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", workers: int | None = None) -> None:
    """Serve until interrupted (configuration from the environment).

    One process serves on one core (the GIL); ``workers`` (or ``LOCKSTEP_SERVING_WORKERS``)
    processes share the port, each a replica of its own with its own copy of the loaded
    indexes and its own ``/metrics`` (scrape each, or run one worker per container).
    """
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workers = workers if workers is not None else _workers_from_env()
    if workers > 1:
        uvicorn.run("lockstep.serving.app:create_app", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=False)
        return
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=False)


def _workers_from_env() -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(f"{WORKERS_ENV}={raw!r} must be a whole number of processes, at least 1")
    return int(raw)


# --- helpers ----------------------------------------------------------------------------------


def _search_failed(
    rt: ServingRuntime, slot: LoadedSlot, body: SearchRequest, request_id: str, at: datetime, started: float,
    exc: Exception, pinned: bool,
) -> JSONResponse:
    log.error("request %s: search on model version %s failed", request_id, slot.version, exc_info=exc)
    elapsed = time.perf_counter() - started
    rt.metrics.errors.labels(slot.version, "500").inc()
    rt.answers.remember(request_id, [], pinned)
    rt.logs.request(
        request_id=request_id, model_version=slot.version, query=body.query, k=body.k,
        latency_ms=elapsed * 1000.0, status=500, top_ids=[], user_id=body.user_id,
        replica=rt.config.replica, at=at, pinned=pinned,
    )
    return JSONResponse(
        {"detail": f"search on model version {slot.version} failed (request id {request_id}; the server log has the details)",
         "request_id": request_id},
        status_code=500,
        headers={MODEL_VERSION_HEADER: slot.version, REQUEST_ID_HEADER: request_id},
    )


def _click_refusal(verdict: Verdict, body: FeedbackBody) -> str:
    if verdict is Verdict.UNKNOWN_REQUEST:
        return (f"request_id {body.request_id!r} names no search this service answered "
                "(clicks are accepted only for the request_id of a search response)")
    if verdict is Verdict.NOT_A_RESULT:
        return f"record_id {body.record_id!r} was not among the results of request_id {body.request_id!r}"
    return f"the click on record_id {body.record_id!r} for request_id {body.request_id!r} is already recorded"


def _json_bytes(value: Any) -> bytes:
    import json

    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, f"metadata is not plain JSON ({exc})") from exc


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
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


class _Guard:
    """Body limit for declared and streamed bodies; a 500 with a request id for any crash.

    A body with ``Content-Length`` over the limit is refused before it is read. A body
    without one (chunked transfer) is read here up to the limit and handed on from
    memory, so the app never reads more than ``limit`` bytes of it. An exception that
    escapes the app becomes a 500 whose body names a request id and nothing else; the
    traceback goes to the server log under that id.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
