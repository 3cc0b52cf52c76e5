"""What a client sends and gets: request and response bodies, their limits, the headers.

The bodies are strict pydantic models (unknown fields refused); ids and texts are checked
by ``lockstep.serving.inputs``, whose patterns also document the rule in the OpenAPI
document. Every error answer has the same shape (``ErrorBody``), described per status.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Path
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.convertors import PathConvertor, register_url_convertor

from lockstep.serving.inputs import ID_PATTERN, TEXT_PATTERN, clean_id, clean_metadata, clean_text
from lockstep.store.schema import ID_LENGTH

MAX_QUERY_CHARS = 2000
MAX_K = 100
MAX_USER_ID_CHARS = 256
MAX_RECORD_TEXT_BYTES = 100_000
MAX_METADATA_BYTES = 16_384
MAX_BODY_BYTES = 1_000_000
MODEL_VERSION_HEADER = "X-Lockstep-Model-Version"
PIN_HEADER = "X-Lockstep-Pin"
REQUEST_ID_HEADER = "X-Request-Id"
CONSISTENCY_HEADER = "X-Lockstep-Consistency"  # a write: "applied" | "durable" (default LOCKSTEP_WRITE_ACK)
MIN_SEQ_HEADER = "X-Lockstep-Min-Seq"  # a search: answer from a version that has applied this sequence
APPLIED_SEQ_HEADER = "X-Lockstep-Applied-Seq"  # a search's answer: the sequence its version had applied
UNLOADED_RETRY_AFTER = "5"  # seconds a client should wait when its share's version is not loaded


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


class JSONAnswer(Response):
    """A served answer (``/search``, ``/recommend``) as JSON written by orjson.

    The same JSON as Starlette's ``JSONResponse`` (compact, UTF-8, the shortest float that
    reads back the same), for a fraction of its cost: serializing the answer was a
    measurable part of each request at 16 connections (docs/benchmarks.md, issue 26).
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RecordBody(_Strict):
    text: Annotated[str, Field(strict=True, json_schema_extra=_TEXT_DOC), Text]
    metadata: Annotated[dict[str, Any] | None, AfterValidator(clean_metadata)] = None


class RecordWritten(BaseModel):
    """A durable write: its change-log ``seq``, and which loaded versions had applied it when answered.

    ``consistency`` is how it was acknowledged: ``applied`` (waited, bounded by
    LOCKSTEP_WRITE_APPLY_TIMEOUT, for every loaded version) or ``durable`` (answered at the
    commit). ``pending`` names the versions that apply it later (send ``X-Lockstep-Min-Seq:
    <seq>`` with a search to read it back).
    """

    id: str
    seq: int
    consistency: Literal["applied", "durable"] = "applied"
    applied: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)


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
    503: "No version can answer on this replica, the database cannot be reached, the replica is already working "
         "on its most requests at once (LOCKSTEP_SERVING_MAX_CONCURRENCY), a slow version's own pool is full "
         "(LOCKSTEP_SLOW_SLOT_QUEUE), or the version has not applied X-Lockstep-Min-Seq in time, right now "
         "(the message says which); retry after Retry-After.",
    504: "The request was not answered within LOCKSTEP_SERVING_REQUEST_TIMEOUT_S seconds; retry later.",
}
# Every operation can meet the replica's limits (``limits``): too many requests at once, or too slow.
_LIMIT_CODES = (503, 504)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an operation can give, for the OpenAPI document (the limits' 503 and 504 always)."""
    return {code: {"model": ErrorBody, "description": _STATUS_TEXT[code]} for code in dict.fromkeys((*codes, *_LIMIT_CODES))}


class _AnyPath(PathConvertor):
    """Starlette's ``path`` convertor stops at a line break ("a%0Ab" would be a bare 404);
    this one matches every id, so a bad one gets the 422 that names it."""

    regex = "[\\s\\S]*"


register_url_convertor("record_id", _AnyPath())
RecordId = Annotated[str, Path(min_length=1, max_length=ID_LENGTH, json_schema_extra=_ID_DOC), Id]
