"""A message's payload is checked as PUT/DELETE /records check theirs, before anything is written."""

from __future__ import annotations

import json

import pytest

from lockstep.store.records import PendingWrite
from lockstep.streaming.messages import BadMessage, parse_change


def _parse(body: object) -> PendingWrite:
    return parse_change(json.dumps(body).encode())


def test_an_upsert_carries_its_metadata_as_the_store_writes_it():
    write = _parse({"op": "upsert", "id": "a1", "text": "line one\n\tline two", "metadata": {"lang": "en", "n": [1, 2]}})
    assert write == PendingWrite("upsert", "a1", "line one\n\tline two", '{"lang":"en","n":[1,2]}')


def test_a_delete_needs_only_an_id():
    assert _parse({"op": "delete", "id": "a1"}) == PendingWrite("delete", "a1")


@pytest.mark.parametrize(("body", "reason"), [
    ({"op": "upsert", "id": "x" * 257, "text": "t"}, "is 257 characters; the limit is 256"),
    ({"op": "upsert", "id": "a", "text": "bell \x07"}, "text contains control character U+0007 at position 5"),
    ({"op": "upsert", "id": "a", "text": "t", "metadata": {"k\x01": 1}}, "metadata: key 'k\\x01' contains control character"),
    ({"op": "upsert", "id": "a", "text": "t", "metadata": {"k": ["ok", "\x1b"]}}, "metadata.k[1] contains control character U+001B"),
    ({"op": "upsert", "id": "a", "text": "   "}, "text must be a non-empty string"),
    ({"op": "delete", "id": 7}, "id must be a non-empty string, got 7"),
    ({"id": "a", "text": "t"}, "op must be 'upsert' or 'delete', got None"),
    ({"op": "upsert", "id": "a", "text": "t", "metadata": {"x": float("nan")}}, "metadata is not JSON-serialisable"),
])
def test_a_message_the_api_would_refuse_is_refused_with_the_reason(body, reason):
    with pytest.raises(BadMessage) as refused:
        _parse(body)
    assert reason in str(refused.value)
