"""Batch serving's reads: ``GET /related/{record_id}`` (search) and ``GET /recommendations/{user_id}``
(recommender), answered from the operational table that ``lockstep_batch`` fills.

Per request: the replica's routing snapshot picks one version exactly as ``/search`` does
(``X-Lockstep-Pin``, else the sticky bucket of ``user_id``, else random by weight; a
holdback user gets the holdback version), but only among the versions whose batch rows
are *complete*; the answer is that one version's row, never a mix. When no serving
version has complete rows (say, right after a promotion, until the batch run for the
new champion finishes), the answer is 503 with ``Retry-After`` and a message; a key the
chosen version has no row for is 404. The answer names ``model_version``, when the row
was computed (``computed_at``) and through which input sequence (``input_seq``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel
from starlette.concurrency import run_in_threadpool

from lockstep.serving.bodies import (
    _ID_DOC,
    MAX_USER_ID_CHARS,
    MODEL_VERSION_HEADER,
    PIN_HEADER,
    UNLOADED_RETRY_AFTER,
    Id,
    RecordId,
    _optional,
    error_responses,
)
from lockstep.serving.inputs import clean_id
from lockstep.store.batch_results import RECOMMENDATIONS, RELATED, BatchResultStore
from lockstep.store.routing import SERVING_STATES, RoutingTable, SlotRow

UserId = Annotated[str, Path(min_length=1, max_length=MAX_USER_ID_CHARS, json_schema_extra=_ID_DOC), Id]
CallerId = Annotated[
    str | None,
    Query(min_length=1, max_length=MAX_USER_ID_CHARS, json_schema_extra=_ID_DOC,
          description="The caller's user id: picks the version by the same sticky bucket as /search."),
    AfterValidator(_optional(clean_id)),
]

Pin = Annotated[str | None, Header(alias=PIN_HEADER, description="Pin a serving model version (404 if it is not serving).")]


class BatchResult(BaseModel):
    id: str
    score: float


class BatchAnswer(BaseModel):
    model_version: str
    computed_at: str  # ISO 8601, UTC
    input_seq: int  # the row reflects the inputs (change log / interactions) through this sequence
    routing_generation: int
    results: list[BatchResult]


def batch_router(kind: str) -> APIRouter:
    """The batch read of the deployment's system, by the batch table's kind: related records
    (``RELATED``, search) or recommendations (``RECOMMENDATIONS``)."""
    router = APIRouter()
    responses = error_responses(404, 422, 500, 503)
    if kind == RECOMMENDATIONS:

        @router.get("/recommendations/{user_id:record_id}", response_model=BatchAnswer, responses=responses)
        async def recommendations(request: Request, user_id: UserId, x_lockstep_pin: Pin = None) -> JSONResponse:
            """The user's precomputed top-k unseen items under the version routing assigns to them."""
            return await run_in_threadpool(_answer, request, RECOMMENDATIONS, user_id, user_id, x_lockstep_pin)
    else:

        @router.get("/related/{record_id:record_id}", response_model=BatchAnswer, responses=responses)
        async def related(request: Request, record_id: RecordId, user_id: CallerId = None, x_lockstep_pin: Pin = None) -> JSONResponse:
            """The record's precomputed top-k related records under the version routing assigns to the caller."""
            return await run_in_threadpool(_answer, request, RELATED, record_id, user_id, x_lockstep_pin)

    return router


def _answer(request: Request, kind: str, key: str, user_id: str | None, pin: str | None) -> JSONResponse:
    rt = request.app.state.lockstep
    table: RoutingTable = rt.manager.view.table
    results = BatchResultStore(rt.engine)
    complete = results.complete_versions(kind)
    slot = _pinned(table, pin, complete) if pin is not None else _routed(table, user_id, complete)
    row = results.read(kind, slot.model_version, key)
    if row is None:
        what = "record" if kind == RELATED else "user"
        raise HTTPException(
            404, f"{what} {key!r} has no precomputed {kind} under model version {slot.model_version} "
                 f"(unknown, or new since the version's last batch run)",
            headers={MODEL_VERSION_HEADER: slot.model_version},
        )
    payload: dict[str, Any] = {
        "model_version": slot.model_version,
        "computed_at": row.computed_at.isoformat(),
        "input_seq": row.input_seq,
        "routing_generation": table.generation,
        "results": [{"id": i, "score": s} for i, s in row.results],
    }
    return JSONResponse(payload, headers={MODEL_VERSION_HEADER: slot.model_version})


def _pinned(table: RoutingTable, pin: str, complete: set[str]) -> SlotRow:
    version = pin.strip()
    slot = table.slot(version) if version else None
    if slot is None or slot.state not in SERVING_STATES:
        serving = ", ".join(s.model_version for s in table.slots if s.state in SERVING_STATES) or "none"
        raise HTTPException(404, f"model version {pin!r} ({PIN_HEADER}) is not serving; serving versions: {serving}")
    if version not in complete:
        raise HTTPException(503, f"model version {version} has no complete batch rows yet (lockstep_batch computes them); retry later",
                            headers={"Retry-After": UNLOADED_RETRY_AFTER})
    return slot


def _routed(table: RoutingTable, user_id: str | None, complete: set[str]) -> SlotRow:
    slot = table.choose(user_id, available=complete)
    if slot is None:
        raise HTTPException(
            503, "no serving model version has complete batch rows for this caller yet (lockstep_batch computes them "
                 "after each promotion and every hour); retry later",
            headers={"Retry-After": UNLOADED_RETRY_AFTER},
        )
    return slot
