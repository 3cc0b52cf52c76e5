"""The serving API: searches answered by exactly one (model, index) version pair.

``create_app`` builds a FastAPI app around a ``ServingRuntime`` (slot manager, shadow
runner, log writer, metrics); the runtime's threads start and stop with the app's
lifespan. ``runner.run`` serves it with uvicorn. Several replicas may run against one
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

A record write is answered once durable in the change log, or once every loaded
version has applied it (``write_acks``); each version applies writes in micro-batches on
its own thread (``appliers``), a search can wait for its own write (``read_your_write``),
a slow version serves from its own bounded pool (``slow_slots``), and ``/readyz`` is ready
only when every version with traffic is loaded (``readiness``).

The bodies and limits are ``bodies``, the replica's state ``runtime``, the answers to
what goes wrong ``errors``, and running it as a process ``runner``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine

from lockstep.core.config import Settings
from lockstep.core.errors import InvalidRecordError, RecordNotFoundError
from lockstep.serving.asked import Asked
from lockstep.serving.batch_reads import batch_router
from lockstep.serving.bodies import (
    CONSISTENCY_HEADER,
    MAX_BODY_BYTES,
    MAX_METADATA_BYTES,
    MAX_RECORD_TEXT_BYTES,
    MIN_SEQ_HEADER,
    PIN_HEADER,
    FeedbackAccepted,
    FeedbackBody,
    RecordBody,
    RecordId,
    RecordWritten,
    SearchRequest,
    SearchResponse,
    error_responses,
)
from lockstep.serving.clicks import ClickVerdict
from lockstep.serving.errors import Guard, validation_error
from lockstep.serving.metrics import NO_VERSION
from lockstep.serving.parts import ServingParts
from lockstep.serving.read_your_write import behind, caught_up, min_seq_of
from lockstep.serving.readiness import readiness
from lockstep.serving.runtime import ServingConfig, ServingRuntime
from lockstep.serving.slow_slots import SlotBusy
from lockstep.serving.write_acks import acknowledge, consistency
from lockstep.store.batch_results import RELATED
from lockstep.store.db import get_engine

log = logging.getLogger("lockstep.serving")
_UNSET: Any = object()


# --- the app ----------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | str | None = None,
    api_token: str | None = _UNSET,
    config: ServingConfig | None = None,
    parts: ServingParts | None = None,
) -> FastAPI:
    """Build one serving replica. Defaults come from the environment (``Settings``).

    ``parts`` are the deployment system's routes and slots (``lockstep.systems.create_app``
    passes them); default: the search system's.
    """
    parts = parts or SEARCH_PARTS
    settings = settings or Settings.from_env()
    if engine is None:
        settings.ensure_home()
        engine = get_engine(settings.database_url)
    elif isinstance(engine, str):
        engine = get_engine(engine)
    token = settings.api_token if api_token is _UNSET else api_token
    rt = ServingRuntime(settings, engine, api_token=token, config=config or ServingConfig(), parts=parts)

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
        description=parts.description,
        lifespan=lifespan,
    )
    app.state.lockstep = rt
    app.add_middleware(Guard, limit=MAX_BODY_BYTES, runtime=rt)  # and the replica's limits (serving.limits)
    app.add_exception_handler(RequestValidationError, validation_error)

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

    parts.add_routes(app, rt, require_token)
    app.include_router(batch_router(parts.batch_kind))  # GET /related or /recommendations (batch serving)

    @app.post("/feedback", status_code=202, response_model=FeedbackAccepted, responses=error_responses(400, 413, 422, 500, 503))
    async def feedback(body: FeedbackBody) -> FeedbackAccepted:
        """Log a click on a search result: only a record among its request's results, once.

        A click whose request is pinned is logged but not counted (``counted: false``).
        """
        verdict = await rt.clicks.judge(body.request_id, body.record_id)
        if verdict not in (ClickVerdict.COUNTED, ClickVerdict.PINNED):
            rt.metrics.feedback_rejected.labels(verdict.value).inc()
            raise HTTPException(422, _click_refusal(verdict, body))
        rt.logs.feedback(request_id=body.request_id, record_id=body.record_id, event=body.event)
        rt.metrics.feedback.labels(body.event).inc()
        return FeedbackAccepted(accepted=True, counted=verdict is ClickVerdict.COUNTED)

    @app.get("/routing", responses={**error_responses(500), 200: {"description": "The routing table", "content": {
        "application/json": {"example": {
            "generation": 12,
            "slots": [{"model_version": "3", "state": "live", "weight": 100, "shadow": False, "loaded": True,
                       "error": None, "applied_seq": 5120, "lag_seq": 0, "lag_seconds": 0.004,
                       "cost": "fast"}],
            "holdback": {"model_version": "1", "percent": 5.0, "set_at": "2026-11-30T07:00:00+00:00",
                         "set_by": "lockstep holdback set"},
            "replica": "host:1234"}}}}})
    def routing() -> dict[str, Any]:
        """The routing table this replica serves, and what it holds for each slot.

        ``holdback`` (null when none is set) is the long-term holdback group: ``percent``
        of users with a user id are always served by its ``model_version``, whatever the
        weights (``lockstep holdback set VERSION PERCENT``).

        ``lag_seq`` is how many changes this replica knows of that the slot has not applied,
        ``lag_seconds`` the commit-to-applied time of the last change it applied, ``cost``
        ``fast`` or ``slow`` (a slow version gets its own pool and durable write answers).

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
            slot["lag_seq"] = status.lag_seq if status else None
            slot["lag_seconds"] = status.lag_seconds if status else None
            slot["cost"] = status.cost if status else None
        out["replica"] = rt.config.replica
        return out

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive. Answered on the event loop (no worker thread): a full thread pool cannot stall it."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "A version with traffic (or the holdback version) is not loaded "
                                                        "on this replica: `not_loaded` names each and why."}})
    async def readyz() -> JSONResponse:
        """Ready when every live version with weight > 0 (and the holdback version) is loaded.

        Otherwise 503 naming each missing version, ``loading`` or ``failed`` with its error
        category (``readiness``); ``unloaded`` names the live versions it lacks. The ready
        path is one attribute read of the published view, so it runs on the event loop.
        """
        return readiness(rt.manager)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        return Response(rt.metrics.render(), media_type=rt.metrics.content_type)

    return app


# --- the search system's endpoints ------------------------------------------------------------


def _add_search_routes(app: FastAPI, rt: ServingRuntime, require_token: Any) -> None:
    """``/search`` and the record writes, on a replica of the search system."""
    @app.post("/search", response_model=SearchResponse, responses=error_responses(400, 404, 413, 422, 500, 503))
    async def search(
        body: SearchRequest,
        x_lockstep_pin: Annotated[str | None, Header(alias=PIN_HEADER)] = None,
        x_lockstep_min_seq: Annotated[str | None, Header(alias=MIN_SEQ_HEADER)] = None,
    ) -> Response:
        """Search with the version the routing table picks (or the pinned one).

        ``X-Lockstep-Min-Seq: N`` (a write's ``seq``) reads your write: the version that
        answers waits, bounded by LOCKSTEP_WRITE_APPLY_TIMEOUT, until it has applied N
        (503 with ``Retry-After`` naming the version and its applied sequence if it has
        not). Every answer carries ``X-Lockstep-Applied-Seq``. A slow version (an imported
        or transformer model) embeds concurrent queries in one predict call on its own
        bounded pool; a full pool answers 503 for that version only (``slow_slots``).

        A pinned request is answered normally but logged as pinned, and never counts in
        gate, drift or bandit statistics. Concurrent searches of one version go to its
        index as one batched FAISS call (``slot.searches``, see ``search_batches``): a lone
        query on a fast slot (an ANN index, or a small flat one) is searched right here on
        the event loop, as embedding a query and an HNSW search take less time than the hop
        to a worker thread and back, but only when its index's lock is free at once (when a
        writer holds it the search waits in a thread instead); queries that wait together
        are searched together in a worker thread while the loop goes on, and a large flat
        index is always searched in a thread.
        """
        asked = Asked(body.query, body.k, body.user_id, pinned=x_lockstep_pin is not None)
        try:
            min_seq = min_seq_of(x_lockstep_min_seq)
            view, slot = rt.lease(x_lockstep_pin, body.user_id)
        except HTTPException as exc:
            rt.metrics.errors.labels(getattr(exc, "model_version", NO_VERSION), str(exc.status_code)).inc()
            raise
        try:
            if min_seq is not None and not await caught_up(rt, slot, min_seq):
                return behind(rt, view, slot, asked, min_seq)
            seen = slot.applied_seq  # what the search below sees at least
            pool = rt.pool(slot)
            if pool is not None:  # a slow model: its own pool, this query joins the next predict call
                pool.reserve()
                try:
                    vector = await slot.batcher.embed(body.query)
                    hits = await slot.searches.search(vector, body.k)
                finally:
                    pool.free()
            elif slot.batcher is not None:
                hits = await slot.searches.search(await slot.batcher.embed(body.query), body.k)
            else:
                hits = await slot.searches.search(slot.embedder.embed_query(body.query), body.k)
        except SlotBusy as exc:  # this version's pool is full: 503 for it only
            return rt.busy(view, slot, asked, exc)
        except Exception as exc:  # counted and logged against the version, so gates see it
            return rt.failed(view, slot, asked, exc, "search")
        finally:
            slot.release()
        return rt.answered(view, slot, hits, asked, applied_seq=seen)

    @app.put(
        "/records/{record_id:record_id}", response_model=RecordWritten, dependencies=[Depends(require_token)],
        responses=error_responses(400, 401, 403, 413, 422, 500, 503),
    )
    def put_record(
        record_id: RecordId,
        body: RecordBody,
        x_lockstep_consistency: Annotated[str | None, Header(alias=CONSISTENCY_HEADER)] = None,
    ) -> RecordWritten:
        """Insert or replace a record; answered once durable, or once every loaded version applied it.

        ``X-Lockstep-Consistency: applied | durable`` picks (default LOCKSTEP_WRITE_ACK:
        ``auto``, applied while every loaded model is fast); see ``write_acks``.
        """
        mode = consistency(x_lockstep_consistency, rt.limits.write_ack, rt.manager)  # checked before the write
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
        return _acknowledged(rt, record_id, seq, mode)

    @app.delete(
        "/records/{record_id:record_id}", response_model=RecordWritten, dependencies=[Depends(require_token)],
        responses=error_responses(401, 403, 404, 422, 500, 503),
    )
    def delete_record(
        record_id: RecordId,
        x_lockstep_consistency: Annotated[str | None, Header(alias=CONSISTENCY_HEADER)] = None,
    ) -> RecordWritten:
        """Delete a record (a tombstone in the change log); every loaded version drops it (as for PUT)."""
        mode = consistency(x_lockstep_consistency, rt.limits.write_ack, rt.manager)
        try:
            seq = rt.store.delete(record_id)
        except RecordNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        rt.metrics.writes.labels("delete").inc()
        return _acknowledged(rt, record_id, seq, mode)


# --- helpers ----------------------------------------------------------------------------------


SEARCH_PARTS = ServingParts(
    description="Semantic search served by exactly one (model version, index version) pair per request.",
    add_routes=_add_search_routes,
    batch_kind=RELATED,
)


def _acknowledged(rt: ServingRuntime, record_id: str, seq: int, mode: str) -> RecordWritten:
    return acknowledge(rt.manager, record_id, seq, mode=mode, timeout=rt.limits.write_apply_timeout,
                       on_pending=lambda version: rt.metrics.write_pending.labels(version).inc())


def _click_refusal(verdict: ClickVerdict, body: FeedbackBody) -> str:
    if verdict is ClickVerdict.UNKNOWN_REQUEST:
        return (f"request_id {body.request_id!r} names no search this service answered "
                "(clicks are accepted only for the request_id of a search response)")
    if verdict is ClickVerdict.NOT_A_RESULT:
        return f"record_id {body.record_id!r} was not among the results of request_id {body.request_id!r}"
    return f"the click on record_id {body.record_id!r} for request_id {body.request_id!r} is already recorded"


def _json_bytes(value: Any) -> bytes:
    import json

    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, f"metadata is not plain JSON ({exc})") from exc
