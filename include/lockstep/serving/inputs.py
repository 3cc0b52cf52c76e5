"""Checks on client strings that the JSON schema cannot express: no control characters.

A NUL in a query once made PostgreSQL refuse a whole batch of the request log, and a
NUL in a record id answered 500. Every string a client sends is checked at the edge,
before anything is written, and refused with a 422 that names the field:

- identifiers (record ids, user ids, request ids, metadata keys) may hold no control
  character at all (Unicode category Cc) and no lone surrogate (Cs, which no UTF-8
  database column can store);
- free text (queries, record text, metadata string values) may hold tab, line feed
  and carriage return -- pasted text has them -- but no other control character.

The functions raise ``ValueError``, so used as pydantic ``AfterValidator``s the message
ends up in the 422 body next to the field's location.
"""

from __future__ import annotations

from typing import Any

from lockstep.core.characters import bad_character

MAX_METADATA_DEPTH = 32
# The same rules as JSON-schema patterns, for the OpenAPI document (surrogates cannot be
# written in a pattern portably; the validators refuse them).
ID_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"


def problem(value: str, *, text: bool) -> str | None:
    """What is wrong with ``value`` (an identifier, or free text if ``text``), or None."""
    found = bad_character(value, text=text)
    return None if found is None else f"{found}; this field may not hold control characters"


def clean_id(value: str) -> str:
    """Validator for identifiers."""
    message = problem(value, text=False)
    if message:
        raise ValueError(message)
    return value


def clean_text(value: str) -> str:
    """Validator for free text (tab and line breaks allowed)."""
    message = problem(value, text=True)
    if message:
        raise ValueError(message)
    return value


def clean_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validator for record metadata: keys are identifiers, string values free text, at any depth."""
    if value is not None:
        _walk(value, "metadata", 0)
    return value


def _walk(value: Any, where: str, depth: int) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        message = problem(value, text=True)
        if message:
            raise ValueError(f"{where} {message}")
    elif isinstance(value, dict):
        for key, item in value.items():
            message = problem(str(key), text=False)
            if message:
                raise ValueError(f"{where}: key {str(key)!r} {message}")  # repr escapes control characters once
            _walk(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{where}[{i}]", depth + 1)
