"""The champion's side of an offline evaluation, from the vectors its index already holds.

Every retrain judged the challenger against the champion by embedding all evaluation
texts with the champion again: with a transformer champion, 849 s for 18,425 texts on
2 cores (issue 24), and a full re-embed of the champion at every retrain. Its published
index holds those vectors already. So the champion's side takes, for each evaluation
text, the vector of the same record from that index when the record is unchanged between
the index and the evaluation's snapshot, and embeds only the others:

- **same record**: the index holds a vector for the record id;
- **same text**: no change of that record in the change log between the index's applied
  sequence and the snapshot's sequence (either order). A record changed in between, even
  back to the same text, is embedded: the log says when a record changed, not whether its
  text did. A record the index does not hold (added after it) is embedded too.
- **exact storage only**: the reader returns nothing for an index that stores
  approximations (``lockstep.index.champion_vectors.EXACT_KINDS``), so the figures are
  those of a full re-embed, bit for bit when the model is deterministic.

How many vectors were read and how many embedded is logged and returned as figures
(``champion_vectors_reused``, ``champion_vectors_embedded``: MLflow metrics of the run).
The champion's model is loaded only when something must be embedded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lockstep.model.contract import Embedder
from lockstep.model.stored_vectors import StoredVectorReader, StoredVectors
from lockstep.store.records import RecordStore
from lockstep.training.config import TrainConfig
from lockstep.training.fit import EvalSet, check_evaluable, evaluate_vectors

log = logging.getLogger("lockstep.training")


@dataclass(frozen=True)
class VectorReuse:
    """Where the champion's evaluation vectors came from."""

    reused: int  # read from its index
    embedded: int  # embedded now (missing from the index, changed since, or no usable index)
    reason: str  # why nothing (or not everything) was read, for the log

    def figures(self) -> dict[str, float]:
        return {"champion_vectors_reused": float(self.reused), "champion_vectors_embedded": float(self.embedded)}


def evaluate_champion(
    load_embedder: Callable[[], Embedder],
    champion,
    data: EvalSet,
    config: TrainConfig,
    *,
    reader: StoredVectorReader | None = None,
    store: RecordStore | None = None,
):
    """(EvalResult, VectorReuse): the champion on ``data``, its vectors read where its index holds them."""
    check_evaluable(data, config)
    queries, docs, reuse = champion_vectors(load_embedder, champion, data, reader=reader, store=store)
    log.info(
        "champion v%s: %d of %d evaluation vectors read from its index, %d embedded (%s)",
        champion.version, reuse.reused, reuse.reused + reuse.embedded, reuse.embedded, reuse.reason,
    )
    return evaluate_vectors(queries, docs, data, config), reuse


def champion_vectors(
    load_embedder: Callable[[], Embedder],
    champion,
    data: EvalSet,
    *,
    reader: StoredVectorReader | None = None,
    store: RecordStore | None = None,
) -> tuple[np.ndarray, np.ndarray, VectorReuse]:
    """The champion's query and document vectors: stored ones where they still match, embedded otherwise."""
    texts = [*data.query_texts, *data.doc_texts]
    ids = [*data.query_ids, *data.doc_ids]
    rows: dict[str, np.ndarray] = {}
    reason = _usable(data, reader)
    if reason is None:
        stored = reader(champion, list(dict.fromkeys(ids)))
        if isinstance(stored, str):
            reason = stored
        else:
            rows, reason = _current_rows(stored, data.seq, store or RecordStore())
    positions = [i for i, rid in enumerate(ids) if rid not in rows] if ids else list(range(len(texts)))
    vectors = _assemble(texts, ids, rows, positions, load_embedder)
    n_queries = len(data.query_texts)
    reuse = VectorReuse(reused=len(texts) - len(positions), embedded=len(positions), reason=reason)
    return vectors[:n_queries], vectors[n_queries:], reuse


def _usable(data: EvalSet, reader: StoredVectorReader | None) -> str | None:
    """Why the stored vectors cannot be used at all (None: try them)."""
    if reader is None:
        return "no index reader given: every text embedded"
    if data.seq is None or len(data.query_ids) != len(data.query_texts) or len(data.doc_ids) != len(data.doc_texts):
        return "the evaluation set names no record ids and sequence: every text embedded"
    return None


def _current_rows(stored: StoredVectors, seq: int, store: RecordStore) -> tuple[dict[str, np.ndarray], str]:
    """The stored rows of records unchanged between the index and the snapshot, and a summary."""
    low, high = sorted((int(stored.applied_seq), int(seq)))
    held = dict(zip(stored.ids, stored.vectors, strict=True))
    changed = {c.record_id for c in store.iter_changes_since(low, until=high) if c.record_id in held} if low < high else set()
    rows = {rid: vec for rid, vec in held.items() if rid not in changed}
    reason = (
        f"{stored.index_kind} index at applied sequence {stored.applied_seq}, snapshot at {seq}: "
        f"{len(held)} held, {len(changed)} of them changed in between"
    )
    return rows, reason


def _assemble(
    texts: Sequence[str], ids: Sequence[str], rows: dict[str, np.ndarray], positions: list[int],
    load_embedder: Callable[[], Embedder],
) -> np.ndarray:
    """One matrix in text order: stored rows, and one ``transform`` call for the rest."""
    fresh = load_embedder().transform([texts[i] for i in positions]) if positions else None
    dim = fresh.shape[1] if fresh is not None else next(iter(rows.values())).shape[0]
    out = np.empty((len(texts), dim), dtype=np.float32)
    if fresh is not None:
        out[positions] = fresh
    if rows:
        reused = [i for i, rid in enumerate(ids) if rid in rows]
        out[reused] = np.stack([rows[ids[i]] for i in reused])
    return out
