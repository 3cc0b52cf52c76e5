"""A stream message's payload: one record change, or the reason it cannot be one.

A message carries ``{"op": "upsert"|"delete", "id": ..., "text": ..., "metadata": ...}``
as JSON. It is checked here as ``PUT``/``DELETE /records`` check their input (the
store's ``validate_record``, and no control characters in ids, text or metadata, the
rules of ``lockstep.core.characters``, as the API's), so a message the
API would refuse goes to the dead-letter stream with the same reason, before anything
is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lockstep.core.characters import bad_character
from lockstep.core.errors import InvalidRecordError, LockstepError
from lockstep.store.records import DELETE, UPSERT, PendingWrite, validate_record
from lockstep.store.schema import ID_LENGTH

KEYS = {"op", "id", "text", "metadata"}
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024


class BadMessage(LockstepError, ValueError):
    """A message that can never be applied; its text is the dead letter's reason."""


@dataclass(frozen=True)
class Message:
    """One message as the broker delivered it: its id there and its raw payload (None: no payload field)."""

    id: str
    payload: bytes | None


def parse_change(payload: bytes | None, field: str = "data") -> PendingWrite:
    """The checked record change a payload asks for; ``BadMessage`` names what is wrong."""
    if payload is None:
        raise BadMessage(f"the message has no {field!r} field")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadMessage(f"the payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    body = _json_object(payload)
    unknown = sorted(set(body) - KEYS)
    if unknown:
        raise BadMessage(f"unknown key(s) {', '.join(map(repr, unknown))}; a message has op, id, text, metadata")
    op = body.get("op")
    if op not in (UPSERT, DELETE):
        raise BadMessage(f"op must be 'upsert' or 'delete', got {op!r}")
    record_id = _record_id(body.get("id"))
    if op == DELETE:
        return PendingWrite(DELETE, record_id)
    text, metadata = body.get("text"), body.get("metadata")
    try:
        metadata_json = validate_record(record_id, text, metadata)
    except InvalidRecordError as exc:
        raise BadMessage(str(exc)) from exc
    _check_text(text, "text")
    if metadata is not None:
        _check_metadata(metadata, "metadata")
    return PendingWrite(UPSERT, record_id, text, metadata_json)


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadMessage(f"the payload is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise BadMessage(f"the payload is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(body, dict):
        raise BadMessage(f"the payload must be a JSON object, got {type(body).__name__}")
    return body


def _record_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadMessage(f"id must be a non-empty string, got {value!r}")
    if len(value) > ID_LENGTH:
        raise BadMessage(f"id {value[:40]!r}... is {len(value)} characters; the limit is {ID_LENGTH}")
    _check(value, "id", text=False)
    return value


def _check_text(value: str, where: str) -> None:
    _check(value, where, text=True)


def _check_metadata(value: Any, where: str) -> None:
    """Keys are identifiers and string values free text, at any depth (JSON parsing bounds the depth)."""
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key, f"{where}: key {key!r}", text=False)
            _check_metadata(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_metadata(item, f"{where}[{i}]")


def _check(value: str, where: str, *, text: bool) -> None:
    found = bad_character(value, text=text)
    if found is not None:
        raise BadMessage(f"{where} {found}")
