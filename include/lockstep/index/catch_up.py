"""Catch-up: bring an index up to date by replaying the record store's change log.

Only each record's last change counts, so replaying twice changes nothing and a delete
after the snapshot stays deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lockstep.index.vector_index import VectorIndex
from lockstep.store.records import DELETE, Change, RecordStore


def apply_changes(index: VectorIndex, embedder: Any, changes: Sequence[Change]) -> int:
    """Apply change-log entries in order; returns the last sequence applied (0 if none).

    Only each record's last change in the batch matters: a later delete wins over an
    earlier upsert and vice versa, so a delete can never be undone by replaying older
    entries, and replaying the same entries twice changes nothing.
    """
    if not changes:
        return 0
    final: dict[str, Change] = {}
    for change in changes:
        final[change.record_id] = change
    deletes = [rid for rid, c in final.items() if c.op == DELETE]
    upserts = [c for c in final.values() if c.op != DELETE]
    if deletes:
        index.remove(deletes)
    if upserts:
        vectors = embedder.transform([c.text for c in upserts])
        index.upsert([c.record_id for c in upserts], vectors)
    return max(c.seq for c in changes)


def catch_up(
    loaded_index: VectorIndex,
    embedder: Any,
    store: RecordStore,
    since_seq: int,
    *,
    until: int | None = None,
    page: int = 5000,
) -> int:
    """Apply every change after ``since_seq`` (up to ``until``); returns the new applied sequence."""
    applied = since_seq
    while True:
        batch = store.changes_since(applied, until=until, limit=page)
        if not batch:
            return applied
        applied = apply_changes(loaded_index, embedder, batch)
        if len(batch) < page:
            return applied
