"""The edge checks on client strings, one input at a time: which characters are refused in
identifiers and in free text, the message that names the character and where it is, and
the field pydantic puts next to it. (tests/serving/test_integrity.py sends a few of these
through a real server and database; here every rule is checked on its own.)"""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from lockstep.serving.bodies import FeedbackBody, RecordBody, SearchRequest
from lockstep.serving.inputs import (
    ID_PATTERN,
    MAX_METADATA_DEPTH,
    TEXT_PATTERN,
    clean_id,
    clean_metadata,
    clean_text,
    problem,
)

# (character, refused in identifiers, refused in free text)
CHARACTERS = [
    ("\x00", True, True),  # NUL: PostgreSQL refuses it in text columns
    ("\x01", True, True),
    ("\x08", True, True),
    ("\t", True, False),  # pasted text has tabs and line breaks
    ("\n", True, False),
    ("\x0b", True, True),  # vertical tab and form feed are not line breaks a client means
    ("\x0c", True, True),
    ("\r", True, False),
    ("\x1b", True, True),  # ESC: terminal escape sequences
    ("\x1f", True, True),
    ("\x7f", True, True),  # DEL
    ("\x80", True, True),  # C1 controls
    ("\x85", True, True),
    ("\x9f", True, True),
    ("\ud800", True, True),  # lone surrogates: no UTF-8 column can store them
    ("\udfff", True, True),
    (" ", False, False),
    ("\xa0", False, False),  # no-break space is a printable character
    ("\u200b", False, False),  # zero-width space (a format character, not a control)
    ("é", False, False),
    ("日", False, False),
    ("\U0001f642", False, False),  # an astral emoji is one code point, not a surrogate pair
]


@pytest.mark.parametrize(("char", "bad_in_id", "bad_in_text"), CHARACTERS, ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_each_character_is_judged_by_its_kind_of_field(char, bad_in_id, bad_in_text):
    value = f"ab{char}cd"
    for text, bad in ((False, bad_in_id), (True, bad_in_text)):
        message = problem(value, text=text)
        if not bad:
            assert message is None
            continue
        kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "control character"
        assert message == (
            f"contains {kind} U+{ord(char):04X} at position 2; this field may not hold control characters"
        )


def test_the_first_bad_character_is_the_one_named():
    assert "U+0001 at position 3" in problem("abc\x01\x00", text=False)
    assert "U+001B at position 5" in problem("a\tb\nc\x1b\x00", text=True)


def test_an_empty_string_is_clean():
    assert problem("", text=False) is None and problem("", text=True) is None


@pytest.mark.parametrize(("check", "bad"), [(clean_id, "id\nwith newline"), (clean_text, "text\x00nul")])
def test_validators_return_clean_values_unchanged_and_raise_value_error_otherwise(check, bad):
    good = "tab\tand\r\nbreaks" if check is clean_text else "r0001-é"
    assert check(good) is good
    with pytest.raises(ValueError, match=r"contains control character U\+00"):
        check(bad)


# --- metadata at any depth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "where"),
    [
        ({"note": "bad\x00"}, "metadata.note contains control character U+0000"),
        ({"a": {"b": ["fine", "x\x1b"]}}, "metadata.a.b[1] contains control character U+001B"),
        ([{"k": "v"}, {"k": "\x7f"}], "metadata[1].k contains control character U+007F"),
    ],
)
def test_metadata_errors_give_the_path_to_the_bad_value(metadata, where):
    with pytest.raises(ValueError) as caught:
        clean_metadata(metadata)
    assert str(caught.value).startswith(where)


@pytest.mark.parametrize(
    ("metadata", "where", "what"),
    [
        ({"k\x00ey": "v"}, "metadata: key ", "contains control character U+0000 at position 1"),
        ({"a": {"ke\ny": 1}}, "metadata.a: key ", "contains control character U+000A at position 2"),
        ({"bad\ud800": 1}, "metadata: key ", "contains a lone surrogate U+D800 at position 3"),
    ],
)
def test_a_bad_metadata_key_is_named_by_its_parent_and_position(metadata, where, what):
    with pytest.raises(ValueError) as caught:
        clean_metadata(metadata)
    message = str(caught.value)
    assert message.startswith(where) and what in message


def test_a_bad_metadata_key_is_shown_escaped_once():
    with pytest.raises(ValueError) as caught:
        clean_metadata({"k\x00ey": "v"})
    assert "key 'k\\x00ey' contains" in str(caught.value)


def test_metadata_keeps_text_breaks_and_non_strings():
    value = {"note": "line one\nline two\tend", "n": 3, "x": 1.5, "ok": True, "none": None, "list": [1, "a\r\nb"]}
    assert clean_metadata(value) is value
    assert clean_metadata(None) is None


def nested(depth: int) -> dict:
    value: dict = {"leaf": "x"}
    for _ in range(depth):
        value = {"d": value}
    return value


def test_metadata_nesting_is_bounded():
    assert clean_metadata(nested(MAX_METADATA_DEPTH - 1)) is not None  # 32 levels of objects
    with pytest.raises(ValueError, match=f"nested deeper than {MAX_METADATA_DEPTH} levels"):
        clean_metadata(nested(MAX_METADATA_DEPTH))  # 33 levels of objects


def test_metadata_nesting_through_lists_counts_too():
    value: object = "x"
    for _ in range(MAX_METADATA_DEPTH + 1):
        value = [value]
    with pytest.raises(ValueError, match=r"^metadata\.root\[0\]\[0\].*: nested deeper than"):
        clean_metadata({"root": value})


# --- the documented patterns say the same as the validators ----------------------------------------


@pytest.mark.parametrize(("pattern", "text"), [(ID_PATTERN, False), (TEXT_PATTERN, True)])
def test_the_openapi_patterns_accept_exactly_what_the_validators_accept(pattern, text):
    """The OpenAPI document's pattern is what a client generator checks: it must not promise more or less."""
    compiled = re.compile(pattern)  # fullmatch: Python's '$' would also match before a final newline
    disagree = [
        hex(code) for code in range(0x3000)
        if not 0xD800 <= code <= 0xDFFF  # patterns cannot express surrogates; the validators refuse them
        and (compiled.fullmatch(chr(code)) is None) != (problem(chr(code), text=text) is not None)
    ]
    assert disagree == []


# --- the request models name the field ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "field", "fragment"),
    [
        (SearchRequest, {"query": "rocket\x00planet"}, "query", "U+0000 at position 6"),
        (SearchRequest, {"query": "rocket", "user_id": "u\x01"}, "user_id", "U+0001"),
        (SearchRequest, {"query": "rocket", "user_id": "u\tv"}, "user_id", "U+0009"),  # a tab is no part of an id
        (RecordBody, {"text": "bad\x0btext"}, "text", "U+000B"),
        (RecordBody, {"text": "fine", "metadata": {"a": ["\x9f"]}}, "metadata", "metadata.a[0] contains control character U+009F"),
        (FeedbackBody, {"request_id": "r\x00", "record_id": "a", "event": "click"}, "request_id", "U+0000"),
        # pydantic refuses a lone surrogate in a strict str before our validator runs; the field is still named
        (FeedbackBody, {"request_id": "r", "record_id": "a\ud800", "event": "click"}, "record_id", "unicode"),
    ],
)
def test_each_bad_field_is_named_in_the_validation_error(model, body, field, fragment):
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == (field,)
    assert fragment in errors[0]["msg"]


def test_clean_requests_pass_the_models():
    assert SearchRequest.model_validate({"query": "rocket\tplanet\r\n", "user_id": "ü-1"}).user_id == "ü-1"
    assert RecordBody.model_validate({"text": "a\nb", "metadata": {"k": ["v\tw"]}}).metadata == {"k": ["v\tw"]}
    assert SearchRequest.model_validate({"query": "rocket"}).user_id is None  # an absent id is not checked
