"""The verdict: the tests' findings corrected together (Holm) under a daily budget.

Every signal is a calibrated test, and drift is declared when the p-values, corrected
together by Holm's procedure, fall below the per-check share of the daily false-alarm
rate (``DriftThresholds``). ``assess`` turns the measured signals into one
``DriftReport`` whose reasons a person can act on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lockstep.drift.classifier import EmbeddingDrift
from lockstep.drift.click_through import ClickThroughDrift
from lockstep.drift.segments import SegmentDrift
from lockstep.drift.statistics import DriftError
from lockstep.drift.vocabulary import VocabularyDrift


@dataclass(frozen=True)
class DriftThresholds:
    """When the signals count as drift. Defaults and why:

    * ``false_alarm_rate`` 0.01 over ``checks_per_day`` 1: the chance that a check of
      data with no drift says drift. The rate is a daily budget spent evenly over the
      day's checks (Bonferroni alpha spending: each check tests at rate / checks, so by
      the union bound the day's chance of any false alarm stays within the rate); the
      hourly DAG passes 24. Within one check the several tests share that level by
      Holm's procedure, so testing more statistics does not add false alarms.
    * ``unseen_token_share_excess`` 0.05: search queries only. Queries are not
      documents (three words against three hundred), so they cannot be permuted with
      the reference texts; their unseen share is compared with a same-sized reference
      sample's instead, and this excess is the floor.
    * ``embedding_mean_cosine_distance``: None, reported only; the classifier already
      sees a shift of the mean, and the right value depends on the model.
    * ``ctr_relative_drop`` 0.20, with at least ``min_impressions`` 100 per side (the
      usual minimum per arm before a rate is trusted): a drop must be large as well as
      significant, because with much traffic a trivial drop is significant.
    """

    false_alarm_rate: float = 0.01
    checks_per_day: int = 1
    unseen_token_share_excess: float = 0.05
    embedding_mean_cosine_distance: float | None = None
    ctr_relative_drop: float = 0.20
    min_impressions: int = 100

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise DriftError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if int(self.checks_per_day) != self.checks_per_day or self.checks_per_day < 1:
            raise DriftError(f"checks_per_day must be a whole number >= 1, got {self.checks_per_day}")

    @property
    def per_check_rate(self) -> float:
        """The false-alarm level one check spends: the daily rate over the day's checks."""
        return self.false_alarm_rate / self.checks_per_day


@dataclass(frozen=True)
class Finding:
    """One calibrated test: its p-value and the sentence to give when it is significant."""

    name: str
    p_value: float
    reason: str


@dataclass(frozen=True)
class DriftReport:
    """The decision, a sentence per test that fired, and flat figures for MLflow."""

    drifted: bool
    reasons: list[str]
    figures: dict[str, float]
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    notes: list[str] = field(default_factory=list)  # signals that could not be judged
    segment: dict[str, Any] | None = None  # the part of the window that moved

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (asset metadata, XCom, a version tag)."""
        return {
            "drifted": self.drifted,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "figures": dict(self.figures),
            "thresholds": asdict(self.thresholds),
            "segment": dict(self.segment) if self.segment else None,
        }


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses to reject at family-wise rate alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if not p_values[i] <= alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def assess(
    vocab: VocabularyDrift | None,
    emb: EmbeddingDrift | None,
    ctr: ClickThroughDrift | None,
    thresholds: DriftThresholds | None = None,
    *,
    segment: SegmentDrift | None = None,
    extra: Sequence[Finding] = (),
) -> DriftReport:
    """Drift when any test is significant after Holm's correction at the per-check rate.

    None means not measured. ``extra`` adds findings measured elsewhere (the check's
    accumulated window), so they share the same false-alarm level.
    """
    limits = thresholds or DriftThresholds()
    notes: list[str] = []
    figures: dict[str, float] = {}
    findings: list[Finding] = list(extra)
    reasons: list[str] = []

    if vocab is None:
        notes.append("vocabulary not measured")
    else:
        findings += vocabulary_findings(vocab, figures, notes)
    if emb is None:
        notes.append("embeddings not measured")
    else:
        findings += embedding_findings(emb, figures)
        reasons += _mean_shift_reason(emb, limits)
    if segment is not None:
        findings += segment_findings(segment, figures)
    if ctr is None:
        notes.append("click-through not measured")
    else:
        findings += _click_through_findings(ctr, limits, notes, figures)

    level = limits.per_check_rate
    rejected = holm([f.p_value for f in findings], level)
    for finding, significant in zip(findings, rejected, strict=True):
        figures[f"{finding.name}_p_value"] = finding.p_value
        if significant:
            reasons.append(f"{finding.reason} (p = {finding.p_value:.2g}; {_level_text(limits, len(findings))})")
    figures["false_alarm_level"] = level
    figures["tests"] = float(len(findings))
    figures["drifted"] = 1.0 if reasons else 0.0
    return DriftReport(
        drifted=bool(reasons),
        reasons=reasons,
        figures=figures,
        thresholds=limits,
        notes=notes,
        segment=segment_summary(segment) if segment is not None else None,
    )


def _level_text(limits: DriftThresholds, n_tests: int) -> str:
    per_day = f" ({limits.false_alarm_rate:g} a day over {limits.checks_per_day} checks)" if limits.checks_per_day > 1 else ""
    return f"false-alarm level {limits.per_check_rate:.2g} per check{per_day}, Holm over {n_tests} tests"


def vocabulary_findings(
    vocab: VocabularyDrift, figures: dict[str, float], notes: list[str], prefix: str = ""
) -> list[Finding]:
    """Figures for the report and the two permutation tests (when they were run)."""
    key = f"{prefix}vocabulary"
    figures[f"{key}_unseen_token_share"] = vocab.unseen_token_share
    figures[f"{key}_unseen_token_share_excess"] = vocab.unseen_token_share_excess
    figures[f"{key}_js_distance"] = vocab.js_distance
    figures[f"{key}_js_distance_excess"] = vocab.js_distance_excess
    figures[f"{key}_current_tokens"] = float(vocab.n_current_tokens)
    if not math.isnan(vocab.baseline_js_distance):
        figures[f"{key}_unseen_token_share_baseline"] = vocab.baseline_unseen_token_share
        figures[f"{key}_js_distance_baseline"] = vocab.baseline_js_distance
    if vocab.n_permutations < 1:
        notes.append(f"{_where(prefix)}vocabulary reported, not tested (no permutations run)")
        return []
    examples = ", ".join(word for word, _ in vocab.top_unseen[:5])
    return [
        Finding(
            f"{key}_unseen",
            vocab.unseen_p_value,
            f"{_where(prefix)}{vocab.unseen_token_share:.1%} of current tokens are unseen in the "
            f"reference ({vocab.unseen_token_share_excess:+.1%} over a same-sized reference sample)"
            + (f"; most frequent new words: {examples}" if examples else ""),
        ),
        Finding(
            f"{key}_js",
            vocab.js_p_value,
            f"{_where(prefix)}token distribution moved: Jensen-Shannon distance "
            f"{vocab.js_distance:.3f}, {vocab.js_distance_excess:+.3f} over a same-sized "
            "reference sample",
        ),
    ]


def embedding_findings(emb: EmbeddingDrift, figures: dict[str, float], prefix: str = "") -> list[Finding]:
    key = f"{prefix}embedding"
    figures[f"{key}_auc"] = emb.auc
    figures[f"{key}_auc_null_q95"] = emb.null_auc_quantile
    figures[f"{key}_permutation_p_value"] = emb.p_value
    figures[f"{key}_mean_cosine_distance"] = emb.mean_cosine_distance
    figures[f"{key}_n_reference"] = float(emb.n_reference)
    figures[f"{key}_n_current"] = float(emb.n_current)
    return [
        Finding(
            f"{key}_classifier",
            emb.tail_p_value,
            f"{_where(prefix)}a classifier tells current from reference embeddings with ROC AUC "
            f"{emb.auc:.3f} (shuffled labels reach {emb.null_auc_quantile:.3f} 5 % of the time; "
            f"{emb.n_reference} vs {emb.n_current} vectors, {emb.n_permutations} permutations)",
        )
    ]


def segment_findings(seg: SegmentDrift, figures: dict[str, float], prefix: str = "") -> list[Finding]:
    key = f"{prefix}segment"
    figures[f"{key}_current_share"] = seg.current_share
    figures[f"{key}_reference_share"] = seg.reference_share
    figures[f"{key}_excess_share"] = seg.excess_share
    figures[f"{key}_moved_share"] = seg.moved_share
    words = ", ".join(word for word, _ in seg.top_words[:6])
    return [
        Finding(
            f"{key}_clusters",
            seg.p_value,
            f"{_where(prefix)}a segment grew: {seg.current_share:.1%} of the window ({seg.n_current} "
            f"records) sits in a part of the embedding space that holds {seg.reference_share:.1%} "
            f"of the reference ({seg.moved_share:.1%} of the window moved between "
            f"{seg.n_clusters} clusters)" + (f"; its words: {words}" if words else ""),
        )
    ]


def segment_summary(seg: SegmentDrift) -> dict[str, Any]:
    """The segment as the report shows it (no member indices: they belong to the plot)."""
    return {
        "current_share": seg.current_share,
        "reference_share": seg.reference_share,
        "excess_share": seg.excess_share,
        "moved_share": seg.moved_share,
        "n_current": seg.n_current,
        "p_value": seg.p_value,
        "n_clusters": seg.n_clusters,
        "examples": list(seg.examples),
        "top_words": [[word, count] for word, count in seg.top_words],
    }


def _where(prefix: str) -> str:
    return f"over the accumulated window ({prefix.rstrip('_')}): " if prefix else ""


def _mean_shift_reason(emb: EmbeddingDrift, limits: DriftThresholds) -> list[str]:
    """The optional effect-size rule a user can add on top of the tests."""
    limit = limits.embedding_mean_cosine_distance
    if limit is None or emb.mean_cosine_distance <= limit:
        return []
    return [
        f"the mean embedding moved: cosine distance {emb.mean_cosine_distance:.3f} "
        f"(threshold {limit:.3f})"
    ]


def _click_through_findings(
    ctr: ClickThroughDrift,
    limits: DriftThresholds,
    notes: list[str],
    figures: dict[str, float],
) -> list[Finding]:
    figures["ctr_reference"] = ctr.ctr_reference
    figures["ctr_current"] = ctr.ctr_current
    figures["ctr_relative_drop"] = ctr.relative_drop
    figures["ctr_z"] = ctr.z
    figures["ctr_reference_impressions"] = float(ctr.reference_impressions)
    figures["ctr_current_impressions"] = float(ctr.current_impressions)
    figures["ctr_user_level"] = float(ctr.user_level)  # 1: z from per-user sums (delta-method variance)
    figures["ctr_design_effect"] = ctr.design_effect
    fewest = min(ctr.reference_impressions, ctr.current_impressions)
    if fewest < limits.min_impressions:
        notes.append(
            f"click-through not judged: {fewest} impressions on one side, "
            f"fewer than {limits.min_impressions}"
        )
        return []
    if ctr.relative_drop <= limits.ctr_relative_drop:
        figures["ctr_one_sided_p"] = ctr.p_value  # reported; too small a drop to test
        return []
    return [
        Finding(
            "ctr",
            ctr.p_value,
            f"click-through fell from {ctr.ctr_reference:.2%} to {ctr.ctr_current:.2%} "
            f"({ctr.relative_drop:.0%} drop, more than {limits.ctr_relative_drop:.0%})",
        )
    ]
