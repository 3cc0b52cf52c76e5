"""The serving API: searches answered by exactly one (model, index) version pair.

``create_app`` builds a FastAPI app around a ``ServingRuntime`` (slot manager, shadow
runner, log writer, metrics); the runtime's threads start and stop with the app's
lifespan. ``run`` serves it with uvicorn. Several replicas may run against one
database: every routing decision comes from the routing table, never from local state.

Per search: read the replica's view once, pick a slot (pin, sticky user bucket, or
random by weight), take a lease on it, embed and search with that slot only, release.
The response names the model version, the index version and the fingerprint that
served it; a request that raced a slot's retirement simply picks again from the newer
view, so it never runs on an unloaded slot.
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
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from ..config import Settings
from ..db import get_engine
from ..errors import InvalidRecordError, RecordNotFoundError
from ..records import RecordStore
from ..schema import ID_LENGTH
from .logs import LogWriter
from .metrics import NO_VERSION, ServingMetrics
from .shadow import ShadowRunner
from .slots import LoadedSlot, ServingView, SlotManager

log = logging.getLogger("lockstep.serving")

MAX_QUERY_CHARS = 2000
MAX_K = 100
MAX_USER_ID_CHARS = 256
MAX_RECORD_TEXT_BYTES = 100_000
MAX_METADATA_BYTES = 16_384
MAX_BODY_BYTES = 1_000_000
MODEL_VERSION_HEADER = "X-Lockstep-Model-Version"
PIN_HEADER = "X-Lockstep-Pin"
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
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


# --- request and response bodies ------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Strict):
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, strict=True)]
    k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = 10
    user_id: Annotated[str | None, Field(min_length=1, max_length=MAX_USER_ID_CHARS, strict=True)] = None


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
    text: Annotated[str, Field(strict=True)]
    metadata: dict[str, Any] | None = None


class RecordWritten(BaseModel):
    id: str
    seq: int


class FeedbackBody(_Strict):
    request_id: Annotated[str, Field(min_length=1, max_length=64, strict=True)]
    record_id: Annotated[str, Field(min_length=1, max_length=ID_LENGTH, strict=True)]
    event: Literal["click"]


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
        )
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
            if pin is not None:
                slot = view.pinned(pin)
                if slot is None:
                    serving = ", ".join(view.slots) or "none"
                    raise HTTPException(
                        404,
                        f"model version {pin!r} ({PIN_HEADER}) is not serving on this replica; "
                        f"serving versions: {serving}",
                    )
            else:
                slot = view.choose(user_id)
                if slot is None:
                    raise HTTPException(
                        503,
                        "no live model version is loaded on this replica yet; see GET /routing "
                        "(a version gets traffic with `lockstep routing set VERSION=100`)",
                    )
            if slot.acquire():
                return view, slot
        raise HTTPException(503, "the routing table is changing too fast to pick a version; retry")


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
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
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

    @app.post("/search", response_model=SearchResponse, responses={404: {}, 422: {}, 503: {}})
    def search(
        body: SearchRequest,
        x_lockstep_pin: Annotated[str | None, Header(alias=PIN_HEADER)] = None,
    ) -> Response:
        """Search with the version the routing table picks (or the pinned one)."""
        started = time.perf_counter()
        at = datetime.now(UTC)
        try:
            view, slot = rt.lease(x_lockstep_pin, body.user_id)
        except HTTPException as exc:
            rt.metrics.errors.labels(NO_VERSION, str(exc.status_code)).inc()
            raise
        request_id = uuid.uuid4().hex
        try:
            hits = slot.search(body.query, body.k)
        except Exception as exc:  # counted and logged against the version, so gates see it
            return _search_failed(rt, slot, body, request_id, at, started, exc)
        finally:
            slot.release()
        elapsed = time.perf_counter() - started
        rt.metrics.requests.labels(slot.version).inc()
        rt.metrics.latency.labels(slot.version).observe(elapsed)
        rt.logs.request(
            request_id=request_id, model_version=slot.version, query=body.query, k=body.k,
            latency_ms=elapsed * 1000.0, status=200, top_ids=hits.ids, user_id=body.user_id,
            replica=rt.config.replica, at=at,
        )
        if x_lockstep_pin is None and view.shadows:
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

    @app.put("/records/{record_id:path}", response_model=RecordWritten, dependencies=[Depends(require_token)])
    def put_record(
        record_id: Annotated[str, Path(min_length=1, max_length=ID_LENGTH)], body: RecordBody
    ) -> RecordWritten:
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

    @app.delete("/records/{record_id:path}", response_model=RecordWritten, dependencies=[Depends(require_token)])
    def delete_record(record_id: Annotated[str, Path(min_length=1, max_length=ID_LENGTH)]) -> RecordWritten:
        """Delete a record (a tombstone in the change log); every loaded version drops it."""
        try:
            seq = rt.store.delete(record_id)
        except RecordNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        rt.metrics.writes.labels("delete").inc()
        rt.manager.catch_up_all()
        return RecordWritten(id=record_id, seq=seq)

    @app.post("/feedback", status_code=202)
    def feedback(body: FeedbackBody) -> dict[str, bool]:
        """Log a click on a search result (written in the background)."""
        rt.logs.feedback(request_id=body.request_id, record_id=body.record_id, event=body.event)
        rt.metrics.feedback.labels(body.event).inc()
        return {"accepted": True}

    @app.get("/routing")
    def routing() -> dict[str, Any]:
        """The routing table this replica serves, and what it holds for each slot."""
        view = rt.manager.view
        held = {s.model_version: s for s in rt.manager.status()}
        out = view.table.to_dict()
        for slot in out["slots"]:
            status = held.get(slot["model_version"])
            slot["loaded"] = slot["model_version"] in view.slots
            slot["error"] = status.error if status else None
            slot["applied_seq"] = status.applied_seq if status else None
        out["replica"] = rt.config.replica
        return out

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        view = rt.manager.view
        live = [slot.version for slot, _ in view.live]
        if live:
            return JSONResponse({"ready": True, "live": live, "generation": view.generation})
        return JSONResponse(
            {"ready": False, "reason": "no live model version is loaded yet", "generation": view.generation},
            status_code=503,
        )

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(rt.metrics.render(), media_type=rt.metrics.content_type)

    return app


def run(host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve one replica until interrupted (configuration from the environment)."""
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=False)


# --- helpers ----------------------------------------------------------------------------------


def _search_failed(
    rt: ServingRuntime, slot: LoadedSlot, body: SearchRequest, request_id: str, at: datetime, started: float, exc: Exception
) -> JSONResponse:
    log.error("search on model version %s failed: %s: %s", slot.version, type(exc).__name__, exc)
    elapsed = time.perf_counter() - started
    rt.metrics.errors.labels(slot.version, "500").inc()
    rt.logs.request(
        request_id=request_id, model_version=slot.version, query=body.query, k=body.k,
        latency_ms=elapsed * 1000.0, status=500, top_ids=[], user_id=body.user_id,
        replica=rt.config.replica, at=at,
    )
    return JSONResponse(
        {"detail": f"search on model version {slot.version} failed: {type(exc).__name__}: {exc}", "request_id": request_id},
        status_code=500,
        headers={MODEL_VERSION_HEADER: slot.version},
    )


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


class _BodyLimit:
    """Refuse a request whose declared body is larger than the limit before reading it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    response = JSONResponse(
                        {"detail": f"request body is {int(value)} bytes; the limit is {self.limit}"}, status_code=413
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
