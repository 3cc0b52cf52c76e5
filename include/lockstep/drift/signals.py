"""What the window shows against the reference: the record tests, the accumulated
window's tests, and the search-query signal, ready for ``lockstep.drift.verdict``.

The champion embeds the reference once (``Embedder``) for the window and the accumulated
window alike. Embeddings against a reference that includes texts the champion was fitted
on are measured for the report but left out of the verdict: such texts alone push the
domain classifier's AUC to about 0.7.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lockstep.drift.classifier import EmbeddingDrift, embedding_drift
from lockstep.drift.segments import SegmentDrift, segment_drift
from lockstep.drift.statistics import DriftError
from lockstep.drift.verdict import (
    DriftReport,
    DriftThresholds,
    Finding,
    embedding_findings,
    segment_findings,
    vocabulary_findings,
)
from lockstep.drift.vocabulary import VocabularyDrift, vocabulary_drift
from lockstep.drift.window import Reference, Window

ACCUMULATED = "accumulated_"  # figure prefix of the accumulated window's tests
N_CLUSTERS = 10  # k-means clusters for the segment test


@dataclass(frozen=True)
class RecordSignals:
    """What the window's records showed; None where a signal could not be measured."""

    vocabulary: VocabularyDrift | None = None
    embeddings: EmbeddingDrift | None = None
    segment: SegmentDrift | None = None
    unjudged: dict[str, float] = field(default_factory=dict)  # reported, not judged
    notes: tuple[str, ...] = ()
    reference_vectors: np.ndarray | None = None
    current_vectors: np.ndarray | None = None


@dataclass(frozen=True)
class Sizes:
    """The check's sample sizes and permutation settings, shared by both windows."""

    min_records: int
    max_samples: int
    n_permutations: int
    seed: int


class Embedder:
    """The champion model, with the reference embedded once for both windows."""

    def __init__(self, model: Any, ref: Reference) -> None:
        self.model = model
        self._ref_texts = ref.embedding_texts
        self._ref_vectors: np.ndarray | None = None

    @property
    def reference_vectors(self) -> np.ndarray:
        if self._ref_vectors is None:
            self._ref_vectors = self.model.transform(self._ref_texts)
        return self._ref_vectors

    def transform(self, texts: list[str]) -> np.ndarray:
        return self.model.transform(texts)


def measure_records(embed: Embedder, ref: Reference, win: Window, sizes: Sizes) -> RecordSignals:
    """Vocabulary, embedding and segment drift of the window's records, when there are
    enough.

    Embeddings against a reference that includes fitted texts are measured for the
    report but left out of the verdict (see the module docstring).
    """
    if win.n_records < sizes.min_records:
        return RecordSignals(
            notes=(
                f"records not judged: {win.n_records} new or changed records in the window, "
                f"fewer than {sizes.min_records}",
            )
        )
    notes: list[str] = []
    try:
        vocab = vocabulary_drift(
            ref.vocabulary, win.records, seed=sizes.seed, n_permutations=sizes.n_permutations
        )
    except DriftError as exc:
        vocab = None
        notes.append(f"vocabulary not measured: {exc}")
    ref_vectors = embed.reference_vectors
    cur_vectors = embed.transform(win.records)
    try:
        measured = embedding_drift(
            ref_vectors, cur_vectors, n_permutations=sizes.n_permutations, seed=sizes.seed,
            max_samples=sizes.max_samples,
        )
        segment = segment_drift(
            ref_vectors, cur_vectors, win.records, ref.vocabulary, n_clusters=N_CLUSTERS,
            seed=sizes.seed,
        )
    except DriftError as exc:
        notes.append(f"embeddings not measured: {exc}")
        return RecordSignals(vocab, None, None, {}, tuple(notes), None, None)
    if ref.embedding_judged:
        return RecordSignals(vocab, measured, segment, {}, tuple(notes), ref_vectors, cur_vectors)
    notes.append(
        f"embeddings reported, not judged: only {len(ref.held_out)} records of the champion's "
        f"training snapshot were held out from training (fewer than {sizes.min_records}), so the "
        f"reference includes {len(ref.fitted_fill)} texts the champion was fitted on, which "
        "alone push the classifier's AUC to about 0.7; label more records (metadata "
        "'category') or raise holdout_percent when training"
    )
    unjudged = {
        "embedding_auc_unjudged": measured.auc,
        "embedding_mean_cosine_distance_unjudged": measured.mean_cosine_distance,
        "segment_current_share_unjudged": segment.current_share,
    }
    return RecordSignals(vocab, None, None, unjudged, tuple(notes), ref_vectors, cur_vectors)


def with_accumulated(
    records: RecordSignals, embed: Embedder, ref: Reference, long_win: Window, sizes: Sizes
) -> tuple[RecordSignals, list[Finding]]:
    """The window's signals plus the accumulated window's: its tests as extra findings (so
    they share the check's false-alarm level), its figures and notes for the report."""
    extra, long_figures, long_notes = _accumulated_findings(embed, ref, long_win, sizes)
    merged = RecordSignals(
        records.vocabulary, records.embeddings, records.segment,
        {**records.unjudged, **long_figures, f"{ACCUMULATED}window_records": float(long_win.n_records)},
        records.notes + long_notes, records.reference_vectors, records.current_vectors,
    )
    return merged, extra


def _accumulated_findings(
    embed: Embedder, ref: Reference, win: Window, sizes: Sizes
) -> tuple[list[Finding], dict[str, float], tuple[str, ...]]:
    """The same record tests over the accumulated window, as extra findings."""
    signals = measure_records(embed, ref, win, sizes)
    figures: dict[str, float] = {}
    notes: list[str] = [f"{ACCUMULATED.rstrip('_')} window: {n}" for n in signals.notes]
    findings: list[Finding] = []
    if signals.vocabulary is not None:
        findings += vocabulary_findings(signals.vocabulary, figures, notes, ACCUMULATED)
    if signals.embeddings is not None:
        findings += embedding_findings(signals.embeddings, figures, ACCUMULATED)
    if signals.segment is not None:
        findings += segment_findings(signals.segment, figures, ACCUMULATED)
    return findings, figures, tuple(notes)


def with_queries(
    report: DriftReport,
    ref: Reference,
    win: Window,
    min_records: int,
    notes: list[str],
    unjudged: dict[str, float],
    seed: int,
) -> DriftReport:
    """Add the query signal to the records' report: words the champion never saw."""
    reasons = list(report.reasons)
    figures = {**report.figures, **unjudged}
    all_notes = notes + list(report.notes)
    queries = None
    if queries_judged(win, min_records):
        try:
            # No permutation test: queries are not documents (see DriftThresholds).
            queries = vocabulary_drift(ref.vocabulary, win.queries, seed=seed, n_permutations=0)
        except DriftError as exc:
            all_notes.append(f"queries not measured: {exc}")
    else:
        all_notes.append(
            f"queries not judged: {win.n_queries} searches in the window, fewer than {min_records}"
        )
    if queries is not None:
        figures.update(_query_figures(queries))
        limit = report.thresholds.unseen_token_share_excess
        if queries.unseen_token_share_excess > limit:
            examples = ", ".join(word for word, _ in queries.top_unseen[:5])
            reasons.append(
                f"{queries.unseen_token_share:.1%} of search-query words never occur in the "
                f"champion's training data ({queries.unseen_token_share_excess:+.1%} over a "
                f"same-sized sample of it, threshold {limit:.1%})"
                + (f"; most frequent: {examples}" if examples else "")
            )
    figures["drifted"] = 1.0 if reasons else 0.0
    return DriftReport(
        drifted=bool(reasons),
        reasons=reasons,
        figures=figures,
        thresholds=report.thresholds,
        notes=all_notes,
        segment=report.segment,
    )


def _query_figures(queries: VocabularyDrift) -> dict[str, float]:
    figures = {
        "queries_unseen_token_share": queries.unseen_token_share,
        "queries_unseen_token_share_excess": queries.unseen_token_share_excess,
        "queries_js_distance": queries.js_distance,  # reported: queries are not documents
        "queries_tokens": float(queries.n_current_tokens),
    }
    return figures


def queries_judged(win: Window, min_records: int) -> bool:
    """Enough searches in the window for their words to say something."""
    return win.n_queries >= min_records


def ctr_judged(ctr: Any, limits: DriftThresholds) -> bool:
    """Enough impressions on both sides for a click-through rate to be trusted."""
    return min(ctr.reference_impressions, ctr.current_impressions) >= limits.min_impressions
