"""Is a built index the store's records embedded by the registered model? (before ``publish``)

Ids equal the store's at the applied sequence, sampled stored vectors equal fresh
embeddings of the current text, recall@10 against exact search for approximate types
(search settings tuned, then the one-sided 95 % lower bound on >= 1,000 held-out queries
held to the floor: ``tuning``), and the fingerprint equals the registered model's. A failed check leaves the slot
``loading`` with the reason: it is never served.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from lockstep.core.errors import LockstepError
from lockstep.index.catch_up import catch_up
from lockstep.index.tuning import (
    HELD_OUT_QUERIES,
    HELD_OUT_RECORDS,
    choose_search_settings,
    query_set,
)
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
    approximate = index.spec.kind != "flat"
    wanted = sample_size + (HELD_OUT_QUERIES + HELD_OUT_RECORDS if approximate else 0)
    with store.stream_snapshot(chunk_size, texts=False) as truth:
        applied_seq = max(applied_seq, catch_up(index, embedder, store, applied_seq, until=truth.seq))
        seen = _compare_ids(index, truth.chunks, _sample_rows(len(index), wanted, seed))
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
    checked, held_out = _split_sample(seen.sample_ids, sample_size, seed)
    if checked:
        fresh = embedder.transform([texts[i] for i in checked])
        max_diff = float(np.abs(index.vectors_of(checked) - fresh).max())
        figures["sample_max_abs_diff"] = max_diff
        checks["sample_vectors"] = max_diff < 1e-4
        if not checks["sample_vectors"]:
            problems.append(f"stored vectors differ from fresh embeddings of current text by up to {max_diff:.3g}")
        if approximate:
            sets = RecallSets(fresh, [texts[i] for i in checked], held_out, [texts[i] for i in held_out])
            choice = _tune(index, sets, embedder, store, min_recall, seed)
            figures.update(choice.figures(), held_out_disjoint=float(bool(held_out)))
            checks["recall_at_10"] = choice.reached
            if not choice.reached:
                problems.append(_recall_problem(choice, min_recall))
    return IndexValidation(ok=all(checks.values()), checks=checks, figures=figures, problems=problems), applied_seq


@dataclass(frozen=True)
class RecallSets:
    """What the recall check draws its queries from: the checked sample and the held-out records."""

    checked_vectors: np.ndarray
    checked_texts: list[str]
    held_out_ids: list[str]
    held_out_texts: list[str]


def _tune(index: VectorIndex, sets: RecallSets, embedder, store: RecordStore, min_recall: float, seed: int):
    """Choose the search settings for ``min_recall`` (``tuning``) and set them on the index.

    Tuning: the checked records and 3 fragments of each of their texts. Held out: fragments
    of other records' texts (at least ``HELD_OUT_QUERIES``), whole other records (their
    stored vectors, which the sample check shows are their texts' embeddings), and logged
    queries of the request log. A store smaller than the samples reuses the checked texts
    with other windows (``held_out_disjoint`` 0 in the figures).
    """
    from lockstep.index.beam import FRAGMENTS_PER_TEXT, fragment_queries
    from lockstep.store.serving_logs import recent_queries

    def embed(texts: list[str]) -> np.ndarray:
        return embedder.transform(texts) if texts else np.zeros((0, index.dim), dtype=np.float32)

    tuning = [query_set(index, "records", sets.checked_vectors),
              query_set(index, "fragments", embed(fragment_queries(sets.checked_texts, seed, FRAGMENTS_PER_TEXT)))]
    whole = sets.held_out_ids[:HELD_OUT_RECORDS]
    source = sets.held_out_texts[HELD_OUT_RECORDS:] or sets.held_out_texts or sets.checked_texts
    per_text = max(1, math.ceil(HELD_OUT_QUERIES / max(1, len(source))))
    held_out = [query_set(index, "fragments", embed(fragment_queries(source, seed + 1, per_text))),
                query_set(index, "records", index.vectors_of(whole) if whole else sets.checked_vectors)]
    logged = recent_queries(store.engine, HELD_OUT_QUERIES)
    if logged:
        held_out.append(query_set(index, "logged", embed(logged)))
    choice = choose_search_settings(index, tuning, held_out, target=min_recall)
    index.set_search(**choice.settings)
    return choice


def _recall_problem(choice, min_recall: float) -> str:
    worst = min(choice.held_out, key=lambda s: s.lower)
    widest = ", ".join(f"{name} {value}" for name, value in choice.settings.items())
    return (f"recall@10 against exact search on {worst.n} held-out {worst.name} queries is {worst.mean:.3f} "
            f"(95 % lower bound {worst.lower:.3f}), below {min_recall} even at {widest}")


def _split_sample(sample_ids: list[str], sample_size: int, seed: int) -> tuple[list[str], list[str]]:
    """The checked sample and the held-out records, split at random (the rows came sorted)."""
    order = np.random.default_rng(seed + 7).permutation(len(sample_ids))
    shuffled = [sample_ids[i] for i in order.tolist()]
    return shuffled[:sample_size], shuffled[sample_size:]


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
