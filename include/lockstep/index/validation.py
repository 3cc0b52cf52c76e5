"""Is a built index the store's records embedded by the registered model? (before ``publish``)

Ids equal the store's at the applied sequence, sampled stored vectors equal fresh
embeddings of the current text, recall@10 against exact search for approximate types,
and the fingerprint equals the registered model's. A failed check leaves the slot
``loading`` with the reason: it is never served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from lockstep.core.errors import LockstepError
from lockstep.index.catch_up import catch_up
from lockstep.index.recall import measure_recall
from lockstep.index.vector_index import VectorIndex
from lockstep.store.records import RecordStore, SnapshotChunk


class IndexValidationError(LockstepError):
    """A built index does not hold exactly what the record store holds."""



@dataclass(frozen=True)
class IndexValidation:
    ok: bool
    checks: dict[str, bool]
    figures: dict[str, float]
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)



# --- validation ------------------------------------------------------------------------------


def validate_built_index(
    index: VectorIndex,
    applied_seq: int,
    embedder,
    store: RecordStore,
    *,
    expected_fingerprint: str,
    sample_size: int = 200,
    min_recall: float = 0.95,
    seed: int = 0,
    chunk_size: int = 20_000,
) -> tuple[IndexValidation, int]:
    """Check the index against the record store; catches up to the store's head first.

    The store's ids are streamed once (then the texts of a seeded sample), inside one read
    transaction whose sequence is what the index is caught up to, so both sides are
    compared at the same state however long the check takes and whatever is written
    meanwhile. Returns the validation and the sequence the index now reflects.
    """
    checks: dict[str, bool] = {}
    figures: dict[str, float] = {}
    problems: list[str] = []
    checks["fingerprint"] = embedder.fingerprint == expected_fingerprint
    if not checks["fingerprint"]:
        problems.append(f"model fingerprint {embedder.fingerprint} differs from the registered {expected_fingerprint}")
    with store.stream_snapshot(chunk_size, texts=False) as truth:
        applied_seq = max(applied_seq, catch_up(index, embedder, store, applied_seq, until=truth.seq))
        seen = _compare_ids(index, truth.chunks, _sample_rows(len(index), sample_size, seed))
        texts = truth.texts_of(seen.sample_ids)
    extra = len(index) - seen.matched
    figures.update(record_count=float(len(index)), store_count=float(seen.store_count))
    checks["record_count"] = len(index) == seen.store_count
    checks["id_set"] = not seen.missing and extra == 0
    if not checks["id_set"]:
        problems.append(
            f"id sets differ: {seen.missing} records missing from the index (e.g. {seen.missing_examples}), "
            f"{extra} extra (e.g. {_extra_examples(index, store) if extra else []})"
        )
    if seen.sample_ids:
        fresh = embedder.transform([texts[i] for i in seen.sample_ids])
        max_diff = float(np.abs(index.vectors_of(seen.sample_ids) - fresh).max())
        figures["sample_max_abs_diff"] = max_diff
        checks["sample_vectors"] = max_diff < 1e-4
        if not checks["sample_vectors"]:
            problems.append(f"stored vectors differ from fresh embeddings of current text by up to {max_diff:.3g}")
        if index.spec.kind == "hnsw":
            figures.update(_tune_beam(index, fresh, [texts[i] for i in seen.sample_ids], embedder, min_recall, seed))
        elif index.spec.kind != "flat":
            figures["recall_at_10"] = measure_recall(index, fresh, k=10)
        if "recall_at_10" in figures:
            recall = figures["recall_at_10"]
            checks["recall_at_10"] = recall >= min_recall
            if not checks["recall_at_10"]:
                problems.append(f"recall@10 against exact search is {recall:.3f}, below {min_recall}"
                                + (f" even at efSearch {int(figures['ef_search'])}" if "ef_search" in figures else ""))
    return IndexValidation(ok=all(checks.values()), checks=checks, figures=figures, problems=problems), applied_seq


def _tune_beam(index: VectorIndex, fresh: np.ndarray, texts: list[str], embedder, min_recall: float,
               seed: int) -> dict[str, float]:
    """Choose the HNSW beam for ``min_recall`` (plus a margin) and set it on the index (``beam``)."""
    from lockstep.index.beam import choose_for_records

    choice = choose_for_records(index, fresh, texts, embedder, min_recall=min_recall, seed=seed)
    index.set_ef_search(choice.ef_search)
    return {
        "recall_at_10": choice.recall,
        "recall_at_10_records": choice.recall_records,
        "recall_at_10_queries": choice.recall_queries,
        "ef_search": float(choice.ef_search),
    }


@dataclass
class _IdComparison:
    store_count: int = 0
    matched: int = 0
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)


def _compare_ids(index: VectorIndex, chunks: Iterator[SnapshotChunk], sample_rows: np.ndarray) -> _IdComparison:
    """One pass over the store's ids: which the index lacks, and which of the sampled rows it has."""
    out = _IdComparison()
    wanted = iter(sample_rows.tolist())
    next_row = next(wanted, None)
    for chunk in chunks:
        for rid in chunk.ids:
            present = rid in index
            if present:
                out.matched += 1
            else:
                out.missing += 1
                if len(out.missing_examples) < 3:
                    out.missing_examples.append(rid)
            if next_row == out.store_count:
                if present:
                    out.sample_ids.append(rid)
                next_row = next(wanted, None)
            out.store_count += 1
    return out


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample of ``size`` out of about ``n`` rows."""
    if n <= 0 or size <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(size, n), replace=False))


def _extra_examples(index: VectorIndex, store: RecordStore, limit: int = 3) -> list[str]:
    """A few indexed ids the store no longer has (only computed when validation already failed)."""
    found: list[str] = []
    ids = index.ids
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        live = store.get_many(chunk)
        found.extend(i for i in chunk if i not in live)
        if len(found) >= limit:
            break
    return sorted(found)[:limit]
