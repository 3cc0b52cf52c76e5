"""Drift of the recommender's interactions: new items, and a shift in what people interact with.

The recommender's ``lockstep_drift`` check (``LOCKSTEP_SYSTEM=recommender``) compares the
interactions logged since the champion's fit (its snapshot sequence; newest
``max_samples``) with as many interactions just before it:

- **new items**: the share of recent interactions on items the champion's fit does not
  know. They are recommended only after fold-in and their neighbours are guesses, so a
  catalogue that turns over needs a new fit. Drift when the share is significantly above
  ``new_item_share`` (one-sided exact binomial test).
- **popularity shift**: the recent item distribution against the reference one, over the
  reference's most popular items plus one bucket for the rest (chi-square test of
  homogeneity), judged only when the total-variation distance between the two is at
  least ``popularity_shift``: with much traffic a trivial shift is significant.

Both tests share the check's false-alarm level with Holm's procedure, as the search
system's tests do (``drift.verdict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lockstep.drift.verdict import DriftReport, DriftThresholds, Finding, holm

TOP_ITEMS = 200  # reference items compared one by one; the rest share one bucket (two random samples of 5,000 MovieLens ratings: distance ~0.1)


@dataclass(frozen=True)
class InteractionLimits:
    new_item_share: float = 0.05  # share of recent interactions on unknown items tolerated
    popularity_shift: float = 0.25  # total-variation distance below which a shift is not judged


def interaction_findings(
    reference: pd.DataFrame, recent: pd.DataFrame, known_items: set[str], limits: InteractionLimits
) -> tuple[list[Finding], dict[str, float]]:
    """The two tests' findings and their figures."""
    figures: dict[str, float] = {"recent_interactions": float(len(recent)), "reference_interactions": float(len(reference))}
    new = int((~recent["item_id"].isin(known_items)).sum())
    share = new / len(recent)
    figures["new_item_share"] = share
    p_new = float(stats.binomtest(new, len(recent), limits.new_item_share, alternative="greater").pvalue)
    findings = [Finding(
        "new_items", p_new,
        f"{share:.1%} of the {len(recent)} interactions since the champion's fit are on items it does not know "
        f"(tolerated: {limits.new_item_share:.0%})",
    )]
    ref_counts, cur_counts = _bucketed(reference["item_id"], recent["item_id"])
    tv = 0.5 * float(np.abs(ref_counts / ref_counts.sum() - cur_counts / cur_counts.sum()).sum())
    figures["popularity_tv_distance"] = tv
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    p_pop = float(stats.chi2_contingency(table).pvalue) if tv >= limits.popularity_shift and table.shape[1] > 1 else 1.0
    findings.append(Finding(
        "popularity_shift", p_pop,
        f"item popularity moved: total-variation distance {tv:.2f} between the interactions before and since the "
        f"champion's fit (judged from {limits.popularity_shift:.2f})",
    ))
    return findings, figures


def assess_interactions(
    reference: pd.DataFrame, recent: pd.DataFrame, known_items: set[str],
    thresholds: DriftThresholds, limits: InteractionLimits,
) -> DriftReport:
    """Drift when a test is significant after Holm's correction at the check's level."""
    findings, figures = interaction_findings(reference, recent, known_items, limits)
    level = thresholds.per_check_rate
    reasons = []
    for finding, significant in zip(findings, holm([f.p_value for f in findings], level), strict=True):
        figures[f"{finding.name}_p_value"] = finding.p_value
        if significant:
            reasons.append(f"{finding.reason} (p = {finding.p_value:.2g}; level {level:.2g})")
    figures["false_alarm_level"] = level
    figures["tests"] = float(len(findings))
    figures["drifted"] = 1.0 if reasons else 0.0
    return DriftReport(drifted=bool(reasons), reasons=reasons, figures=figures, thresholds=thresholds)


def run_interaction_drift_check(
    thresholds: DriftThresholds,
    *,
    limits: InteractionLimits | None = None,
    min_interactions: int = 50,
    max_samples: int = 20_000,
    registry: Any = None,
    store: Any = None,
    work_dir: str | None = None,
    system: str = "",
) -> dict[str, Any]:
    """Compare the interactions since the champion's fit with those before; a JSON report
    (``system``: the name the report carries, given by the system that runs the check)."""
    from lockstep.drift.report import finish_report
    from lockstep.recommender.registration import load_version, recommender_registry
    from lockstep.store.interactions import InteractionStore

    limits = limits or InteractionLimits()
    store = store or InteractionStore()
    registry = registry or recommender_registry()
    champion = registry.version_for_alias("champion")
    context: dict[str, Any] = {"system": system, "champion_version": champion.version if champion else None}
    if champion is None:
        report = DriftReport(False, [], {}, thresholds, notes=["no champion recommender yet: nothing to compare with"])
        return finish_report(report, "no_champion", context, work_dir)
    snapshot = int(champion.snapshot_seq or 0)
    head = store.max_seq()
    recent = store.changes_since(max(snapshot, head - max_samples))
    if len(recent) < min_interactions:
        note = f"{len(recent)} interactions since the champion's fit (at sequence {snapshot}); {min_interactions} needed to judge"
        report = DriftReport(False, [], {"recent_interactions": float(len(recent))}, thresholds, notes=[note])
        return finish_report(report, "insufficient_data", context, work_dir)
    reference = store.changes_since(max(0, snapshot - len(recent)), until=snapshot)
    model, _ = load_version(champion.version, registry)
    report = assess_interactions(reference, recent, set(model.item_ids_), thresholds, limits)
    context.update({"champion_fingerprint": champion.fingerprint, "reference_snapshot_seq": snapshot, "head_seq": head})
    return finish_report(report, "compared", context, work_dir)


def _bucketed(reference: pd.Series, recent: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Counts over the reference's ``TOP_ITEMS`` most popular items and one bucket for all others."""
    top = list(reference.value_counts().index[:TOP_ITEMS])
    ref = reference.value_counts().reindex(top, fill_value=0).to_numpy(dtype=float)
    cur = recent.value_counts().reindex(top, fill_value=0).to_numpy(dtype=float)
    return np.append(ref, len(reference) - ref.sum()), np.append(cur, len(recent) - cur.sum())
