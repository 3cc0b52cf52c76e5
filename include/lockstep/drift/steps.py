"""The drift check: what the ``lockstep_drift`` DAG runs every hour.

It compares what arrived recently with what the champion was trained on:

* **records** upserted in the window (the last version of each, live only, and only
  changes made *after* the champion's training snapshot, so a window that overlaps the
  training load does not compare the training data with itself): vocabulary drift
  against the training snapshot, embedding drift under the champion model, and the
  segment of the embedding space the window over-fills (all permutation or
  chi-square tests, sharing one false-alarm level; see ``lockstep.drift.statistics``). With
  ``accumulate_hours`` the same tests also run on the records of that longer span;
* **search queries** from the request log in the window: the share of query words the
  champion's training texts never contained (a TF-IDF model cannot see them at all).
  Query embeddings are not compared with document embeddings: a three-word query and
  a three-hundred-word post are told apart by length alone, so that AUC would say
  nothing about drift;
* **click-through** of the champion's requests in the window against the period
  before it, from the request and feedback logs.

The embedding reference must be texts the champion was *not* fitted on. A TF-IDF +
SVD model fits its own training texts more closely than any new text, so training
texts against fresh ones give a domain-classifier AUC of about 0.72 with no drift at
all, and the check would fire every hour. The reference is therefore the champion's
training snapshot (the ``snapshot_seq`` version tag) restricted to the records
training held out (``training.is_holdout`` with the champion's own
``holdout_percent``; only labelled records are held out). When fewer than
``min_records`` were held out, training texts fill the reference, the embedding
figures are reported but not judged, and the report says so. The vocabulary
comparison has no such bias (it involves no model), so it uses a sample of the
whole snapshot.

What a DAG task calls (``run_drift_check``, ``log_drift_report``, ``alert_drift``,
``asset_extra``) takes and returns JSON-able values, and a rerun of a DAG run (same
window end, same check id) gives the same answer and logs and alerts nothing twice.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from lockstep.core import clock, jsonio
from lockstep.core.config import run_folder  # noqa: F401  (re-exported: the drift DAG keeps its report there)
from lockstep.core.errors import LockstepError
from lockstep.drift.statistics import (
    DriftError,
    DriftReport,
    DriftThresholds,
    EmbeddingDrift,
    Finding,
    SegmentDrift,
    VocabularyDrift,
    assess,
    click_through_drift,
    embedding_drift,
    embedding_findings,
    plot_drift,
    segment_drift,
    segment_findings,
    vocabulary_drift,
    vocabulary_findings,
)
from lockstep.store import serving_logs
from lockstep.store.records import UPSERT, RecordStore
from lockstep.store.schema import changes
from lockstep.training.fit import TrainConfig, is_holdout

EXPERIMENT = "lockstep-drift"
REPORT_FILE = "drift.json"
PLOT_FILE = "drift.png"

STATUS_NO_CHAMPION = "no_champion"  # nothing to compare with: not an error
STATUS_INSUFFICIENT = "insufficient_data"  # no signal had enough data to be judged
STATUS_COMPARED = "compared"

# The check's own defaults over ``DriftThresholds`` (none: 1 % false alarms per check;
# the hourly DAG passes checks_per_day=24 so that 1 % holds per day).
CHECK_THRESHOLDS: dict[str, Any] = {}
ACCUMULATED = "accumulated_"  # figure prefix of the accumulated window's tests
N_CLUSTERS = 10  # k-means clusters for the segment test

TAG_CHECK_ID = "lockstep.check_id"
TAG_CHAMPION = "lockstep.champion_version"
TAG_DRIFTED = "lockstep.drifted"
TAG_STATUS = "lockstep.drift_status"


class DriftCheckError(LockstepError, ValueError):
    """The check cannot run: bad parameters, or a champion without a training snapshot."""


# --- the two sides ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What the champion was trained on, split by whether it was fitted on it."""

    version: str
    snapshot_seq: int
    held_out: list[str]  # texts training held out: the embedding reference
    fitted_fill: list[str]  # training texts added because too few were held out
    vocabulary: list[str]  # a sample of the whole snapshot: the vocabulary reference
    snapshot_records: int
    holdout_percent: int

    @property
    def embedding_texts(self) -> list[str]:
        return self.held_out + self.fitted_fill

    @property
    def embedding_judged(self) -> bool:
        """Only a reference free of fitted texts gives an unbiased AUC."""
        return not self.fitted_fill


@dataclass(frozen=True)
class Window:
    """What arrived between ``start`` and ``end`` (UTC)."""

    start: datetime
    end: datetime
    records: list[str]  # texts, sampled down to max_samples
    n_records: int  # before sampling
    queries: list[str]
    n_queries: int


def reference(
    store: RecordStore,
    version: str,
    snapshot_seq: int,
    *,
    holdout_percent: int = TrainConfig.holdout_percent,
    label_key: str = TrainConfig.label_key,
    min_records: int = 50,
    max_samples: int = 2000,
    seed: int = 0,
) -> Reference:
    """The champion's training snapshot as drift reference (see the module docstring).

    Reads only ids, sequences and metadata of the whole snapshot, then the texts of the
    sample, so a snapshot of millions of records costs memory for the ids alone.
    """
    head = store.head()
    if snapshot_seq < 0 or snapshot_seq > head:
        raise DriftCheckError(
            f"champion version {version} was trained on snapshot {snapshot_seq}, but this record "
            f"store's change log ends at {head}: LOCKSTEP_DATABASE_URL points at another store "
            "than the one the champion was trained on"
        )
    rows = _snapshot_index(store.engine, snapshot_seq)
    if not rows:
        raise DriftCheckError(
            f"champion version {version} was trained on snapshot {snapshot_seq}, which holds no "
            "records; retrain on a loaded corpus (lockstep train)"
        )
    held = [
        seq for rid, seq, meta in rows
        if _labelled(meta, label_key) and is_holdout(rid, holdout_percent)
    ]
    held_set = set(held)
    fitted = [seq for _, seq, _ in rows if seq not in held_set]
    rng = random.Random(seed)
    held = _sample(held, max_samples, rng)
    fill: list[int] = []
    if len(held) < min_records:
        fill = _sample(fitted, max(0, max_samples - len(held)), rng)
    vocab_seqs = _sample([seq for _, seq, _ in rows], max_samples, rng)
    texts = _texts_by_seq(store.engine, set(held) | set(fill) | set(vocab_seqs))
    return Reference(
        version=str(version),
        snapshot_seq=int(snapshot_seq),
        held_out=[texts[s] for s in held],
        fitted_fill=[texts[s] for s in fill],
        vocabulary=[texts[s] for s in vocab_seqs],
        snapshot_records=len(rows),
        holdout_percent=int(holdout_percent),
    )


def current_window(
    store: RecordStore,
    end: datetime,
    window_hours: float,
    *,
    after_seq: int = 0,
    max_samples: int = 2000,
    seed: int = 0,
) -> Window:
    """Records upserted and queries searched in ``[end - window_hours, end)``.

    A record counts once, in its last version within the window, and only when that
    version is an upsert (deleted records are gone) made after ``after_seq`` (the
    champion's snapshot: records it was trained on are not new data).
    """
    end = clock.utc(end)
    start = end - timedelta(hours=window_hours)
    rng = random.Random(seed)
    last = (
        select(changes.c.record_id, func.max(changes.c.seq).label("seq"))
        .where(changes.c.at >= start, changes.c.at < end, changes.c.seq > after_seq)
        .group_by(changes.c.record_id)
        .subquery()
    )
    live = (
        select(changes.c.seq)
        .join(last, changes.c.seq == last.c.seq)
        .where(changes.c.op == UPSERT)
        .order_by(changes.c.seq)
    )
    with store.engine.connect() as conn:
        seqs = [int(s) for s in conn.execute(live).scalars()]
    # Unpinned only: pinned traffic is any client's choice, not users'.
    all_queries = serving_logs.queries(store.engine, serving_logs.Window(start, end))
    sampled = _sample(seqs, max_samples, rng)
    texts = _texts_by_seq(store.engine, set(sampled))
    return Window(
        start=start,
        end=end,
        records=[texts[s] for s in sampled],
        n_records=len(seqs),
        queries=_sample(all_queries, max_samples, rng),
        n_queries=len(all_queries),
    )


def click_through_counts(
    engine: Engine, model_version: str, end: datetime, window_hours: float
) -> dict[str, int]:
    """Impressions and clicks of one model version: the window and the period before it.

    Impressions and clicks are those of ``lockstep.store.serving_logs`` (the rollout gates
    count the same): an impression is a search answered with a result list, a click such
    a search that got at least one click, so clicks never exceed impressions. Only the
    champion's requests count: during a rollout the other versions' traffic says nothing
    about whether the champion's data has moved.
    """
    end = clock.utc(end)
    start = end - timedelta(hours=window_hours)
    before = start - timedelta(hours=window_hours)
    reference = serving_logs.click_through(engine, model_version, serving_logs.Window(before, start))
    current = serving_logs.click_through(engine, model_version, serving_logs.Window(start, end))
    return {
        "reference_impressions": reference.impressions,
        "reference_clicks": reference.clicks,
        "current_impressions": current.impressions,
        "current_clicks": current.clicks,
    }


# --- the check ----------------------------------------------------------------------------


def thresholds_from(values: Mapping[str, Any] | None) -> DriftThresholds:
    """DriftThresholds from a Params-style dict: ``CHECK_THRESHOLDS`` under what is given;
    None values keep the default."""
    known = {f.name for f in fields(DriftThresholds)}
    given = {k: v for k, v in dict(values or {}).items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise DriftCheckError(
            f"unknown drift thresholds {unknown}; known ones: {', '.join(sorted(known))}"
        )
    return DriftThresholds(**{**CHECK_THRESHOLDS, **given})


def run_drift_check(
    window_hours: float = 1.0,
    thresholds: Mapping[str, Any] | None = None,
    min_records: int = 50,
    max_samples: int = 2000,
    registry: Any = None,
    store: RecordStore | None = None,
    now: datetime | str | None = None,
    *,
    work_dir: str | Path | None = None,
    n_permutations: int = 100,
    seed: int = 0,
    accumulate_hours: float = 0.0,
) -> dict[str, Any]:
    """Compare the recent window with the champion's training snapshot; a JSON report.

    ``now`` is the window's end (a DAG run passes its own time, so a rerun looks at the
    same window). With ``work_dir`` the report and its plot are written there and
    their paths returned under ``files``, for ``log_drift_report``.

    With ``accumulate_hours`` longer than the window, the records of that longer span
    (the union of the last windows) are tested too, under the same false-alarm level
    (Holm over both): a drift too slow to show in one hour builds up there instead of
    starting from nothing every hour.

    No champion yet gives status ``no_champion`` and too little data gives
    ``insufficient_data``: both are answers (not drifted, with a note), not errors.
    """
    if window_hours <= 0:
        raise DriftCheckError(f"window_hours must be > 0, got {window_hours}")
    if accumulate_hours < 0:
        raise DriftCheckError(f"accumulate_hours must be >= 0 (0 = off), got {accumulate_hours}")
    if min_records < 1 or max_samples < min_records:
        raise DriftCheckError(
            f"need 1 <= min_records <= max_samples, got min_records={min_records}, "
            f"max_samples={max_samples}"
        )
    limits = thresholds_from(thresholds)
    end = _parse_time(now) if now is not None else clock.now()
    store = store or RecordStore()
    if registry is None:
        from lockstep.model.registry import Registry

        registry = Registry()
    context = {
        "window": {
            "start": (end - timedelta(hours=window_hours)).isoformat(),
            "end": end.isoformat(),
            "hours": float(window_hours),
        },
        "min_records": int(min_records),
        "max_samples": int(max_samples),
        "accumulate_hours": float(accumulate_hours),
    }

    champion = registry.version_for_alias("champion")
    if champion is None:
        report = DriftReport(
            drifted=False,
            reasons=[],
            figures={},
            thresholds=limits,
            notes=[
                "no champion model yet: nothing to compare the recent data with; "
                "train and roll out a first version (lockstep train, then lockstep_reembed)"
            ],
        )
        return _finish(report, STATUS_NO_CHAMPION, {**context, "champion_version": None}, work_dir)

    if champion.snapshot_seq is None:
        raise DriftCheckError(
            f"champion version {champion.version} has no snapshot_seq tag, so its training "
            "data is unknown; it was not registered by Lockstep. Register a version with "
            "lockstep train and promote it."
        )
    holdout_percent, label_key = _training_split_of(registry, champion)
    ref = reference(
        store,
        champion.version,
        champion.snapshot_seq,
        holdout_percent=holdout_percent,
        label_key=label_key,
        min_records=min_records,
        max_samples=max_samples,
        seed=seed,
    )
    win = current_window(
        store, end, window_hours, after_seq=champion.snapshot_seq, max_samples=max_samples, seed=seed
    )
    counts = click_through_counts(store.engine, champion.version, end, window_hours)
    ctr = click_through_drift(
        counts["reference_clicks"],
        counts["reference_impressions"],
        counts["current_clicks"],
        counts["current_impressions"],
    )

    embed = _Embedder(registry.load_embedder(champion.version), ref)
    sizes = _Sizes(min_records, max_samples, n_permutations, seed)
    records = _measure_records(embed, ref, win, sizes)
    extra: list[Finding] = []
    if accumulate_hours > window_hours:
        long_win = current_window(
            store, end, accumulate_hours, after_seq=champion.snapshot_seq,
            max_samples=max_samples, seed=seed,
        )
        extra, long_figures, long_notes = _accumulated_findings(embed, ref, long_win, sizes)
        records = _RecordSignals(
            records.vocabulary, records.embeddings, records.segment,
            {**records.unjudged, **long_figures, f"{ACCUMULATED}window_records": float(long_win.n_records)},
            records.notes + long_notes, records.reference_vectors, records.current_vectors,
        )
    report = assess(
        records.vocabulary, records.embeddings, ctr, limits, segment=records.segment, extra=extra
    )
    report = _with_queries(report, ref, win, min_records, list(records.notes), records.unjudged, seed)
    judged = (
        records.vocabulary is not None
        or records.embeddings is not None
        or bool(extra)
        or _queries_judged(win, min_records)
        or _ctr_judged(ctr, limits)
    )
    context.update(
        {
            "champion_version": champion.version,
            "champion_fingerprint": champion.fingerprint,
            "reference_snapshot_seq": ref.snapshot_seq,
            "counts": {
                "window_records": win.n_records,
                "window_queries": win.n_queries,
                "reference_snapshot_records": ref.snapshot_records,
                "reference_held_out": len(ref.held_out),
                "reference_fitted_fill": len(ref.fitted_fill),
                "reference_vocabulary_sample": len(ref.vocabulary),
                "holdout_percent": ref.holdout_percent,
                **counts,
            },
        }
    )
    status = STATUS_COMPARED if judged else STATUS_INSUFFICIENT
    members = records.segment.current_members if records.segment is not None else ()
    return _finish(
        report, status, context, work_dir, records.reference_vectors, records.current_vectors,
        seed, members,
    )


def log_drift_report(
    report: Mapping[str, Any],
    plot: str | Path | None = None,
    *,
    check_id: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = EXPERIMENT,
) -> dict[str, Any]:
    """One MLflow run in ``experiment``: figures as metrics, the report and plot as files.

    ``plot`` defaults to the one ``run_drift_check`` wrote. With a ``check_id`` (a DAG
    run id) a finished run with the same id is found and returned instead of logging
    a second one, so a retried task does not duplicate the record.
    """
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from lockstep.core.config import settings

    conf = settings()
    uri = tracking_uri or conf.mlflow_tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, experiment, uri, conf.artifact_root)
    if check_id:
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_CHECK_ID}` = '{_quote(check_id)}' and attributes.status = 'FINISHED'",
            max_results=1,
        )
        if found:
            return {"run_id": found[0].info.run_id, "experiment_id": experiment_id, "reused": True}

    plot_path = Path(plot) if plot else _existing(report.get("files", {}).get("plot"))
    version = report.get("champion_version")
    tags = {
        TAG_CHAMPION: str(version) if version is not None else "none",
        TAG_DRIFTED: str(bool(report.get("drifted"))).lower(),
        TAG_STATUS: str(report.get("status")),
        "mlflow.note.content": _summary(report),
    }
    if check_id:
        tags[TAG_CHECK_ID] = check_id
    run = client.create_run(experiment_id, run_name=f"drift {report.get('window', {}).get('end', '')}")
    run_id = run.info.run_id
    try:
        now_ms = int(clock.now().timestamp() * 1000)
        metrics = [
            Metric(_metric_key(k), float(v), now_ms, 0)
            for k, v in _flat_numbers(report).items()
        ]
        params = [Param(k, str(v)[:6000]) for k, v in _params(report).items()]
        client.log_batch(
            run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()]
        )
        with tempfile.TemporaryDirectory(prefix="lockstep-drift-") as tmp:
            report_path = Path(tmp) / REPORT_FILE
            report_path.write_text(jsonio.dumps(report, indent=2, sort_keys=True))
            client.log_artifact(run_id, str(report_path), artifact_path="reports")
        if plot_path is not None and plot_path.exists():
            client.log_artifact(run_id, str(plot_path), artifact_path="plots")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return {"run_id": run_id, "experiment_id": experiment_id, "reused": False}


def alert_drift(report: Mapping[str, Any], *, check_id: str | None = None) -> dict[str, Any] | None:
    """A ``drift_detected`` alert when the report says drift; None otherwise.

    With a ``check_id`` an alert already sent for the same check is not sent again.
    """
    from lockstep.core.alerts import alert, recent_alerts

    if not report.get("drifted"):
        return None
    if check_id and any(
        a.get("event") == "drift_detected" and a.get("details", {}).get("check_id") == check_id
        for a in recent_alerts(200)
    ):
        return None
    reasons = list(report.get("reasons", []))
    message = (
        f"drift against champion version {report.get('champion_version')}: "
        + ("; ".join(reasons) if reasons else "see the report")
    )
    details = {
        "champion_version": report.get("champion_version"),
        "window": report.get("window"),
        "reasons": reasons,
        "figures": report.get("figures", {}),
    }
    if check_id:
        details["check_id"] = check_id
    return alert("drift_detected", message, details)


def asset_extra(report: Mapping[str, Any], *, forced: bool = False) -> dict[str, Any]:
    """What the drift asset event carries to ``lockstep_retrain`` and the UI (strict JSON)."""
    figures = {
        k: float(v)
        for k, v in (report.get("figures") or {}).items()
        if isinstance(v, int | float) and math.isfinite(v)
    }
    return {
        "model_version": report.get("champion_version"),
        "fingerprint": report.get("champion_fingerprint"),
        "drifted": bool(report.get("drifted")),
        "forced": bool(forced),
        "status": report.get("status"),
        "reasons": list(report.get("reasons", [])),
        "figures": figures,
        "window_end": (report.get("window") or {}).get("end"),
        "mlflow_run_id": report.get("mlflow_run_id"),
        "segment": jsonio.plain(report.get("segment")),
    }


# --- internals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _RecordSignals:
    """What the window's records showed; None where a signal could not be measured."""

    vocabulary: VocabularyDrift | None = None
    embeddings: EmbeddingDrift | None = None
    segment: SegmentDrift | None = None
    unjudged: dict[str, float] = field(default_factory=dict)  # reported, not judged
    notes: tuple[str, ...] = ()
    reference_vectors: np.ndarray | None = None
    current_vectors: np.ndarray | None = None


@dataclass(frozen=True)
class _Sizes:
    min_records: int
    max_samples: int
    n_permutations: int
    seed: int


class _Embedder:
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


def _measure_records(embed: _Embedder, ref: Reference, win: Window, sizes: _Sizes) -> _RecordSignals:
    """Vocabulary, embedding and segment drift of the window's records, when there are
    enough.

    Embeddings against a reference that includes fitted texts are measured for the
    report but left out of the verdict (see the module docstring).
    """
    if win.n_records < sizes.min_records:
        return _RecordSignals(
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
        return _RecordSignals(vocab, None, None, {}, tuple(notes), None, None)
    if ref.embedding_judged:
        return _RecordSignals(vocab, measured, segment, {}, tuple(notes), ref_vectors, cur_vectors)
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
    return _RecordSignals(vocab, None, None, unjudged, tuple(notes), ref_vectors, cur_vectors)


def _accumulated_findings(
    embed: _Embedder, ref: Reference, win: Window, sizes: _Sizes
) -> tuple[list[Finding], dict[str, float], tuple[str, ...]]:
    """The same record tests over the accumulated window, as extra findings."""
    signals = _measure_records(embed, ref, win, sizes)
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


def _with_queries(
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
    if _queries_judged(win, min_records):
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


def _queries_judged(win: Window, min_records: int) -> bool:
    return win.n_queries >= min_records


def _ctr_judged(ctr: Any, limits: DriftThresholds) -> bool:
    return min(ctr.reference_impressions, ctr.current_impressions) >= limits.min_impressions


def _finish(
    report: DriftReport,
    status: str,
    context: dict[str, Any],
    work_dir: str | Path | None,
    ref_vectors: Any = None,
    cur_vectors: Any = None,
    seed: int = 0,
    segment_members: tuple[int, ...] = (),
) -> dict[str, Any]:
    result = {**jsonio.plain(report.to_dict()), "status": status, **context}
    if work_dir is not None:
        folder = Path(work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        plot = plot_drift(
            report, ref_vectors, cur_vectors, folder / PLOT_FILE, seed=seed,
            segment_members=segment_members,
        )
        result["files"] = {"report": str(folder / REPORT_FILE), "plot": str(plot)}
        _atomic_write_json(folder / REPORT_FILE, result)
    return result


def _training_split_of(registry: Any, champion: Any) -> tuple[int, str]:
    """The champion's own holdout_percent and label key, from its training run's params."""
    default = (TrainConfig.holdout_percent, TrainConfig.label_key)
    if not champion.run_id:
        return default
    import mlflow

    try:
        client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri)
        params = client.get_run(champion.run_id).data.params
    except mlflow.MlflowException:
        return default
    raw = params.get("holdout_percent")
    percent = int(raw) if raw is not None and raw.isdigit() else default[0]
    return percent, params.get("label_key") or default[1]


def _snapshot_index(engine: Engine, at_seq: int) -> list[tuple[str, int, dict | None]]:
    """(id, seq, metadata) of every live record as of ``at_seq``, without the texts."""
    last = (
        select(changes.c.record_id, func.max(changes.c.seq).label("seq"))
        .where(changes.c.seq <= at_seq)
        .group_by(changes.c.record_id)
        .subquery()
    )
    stmt = (
        select(changes.c.record_id, changes.c.seq, changes.c.metadata)
        .join(last, changes.c.seq == last.c.seq)
        .where(changes.c.op == UPSERT)
        .order_by(changes.c.record_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [(r.record_id, int(r.seq), json.loads(r.metadata) if r.metadata else None) for r in rows]


def _texts_by_seq(engine: Engine, seqs: set[int]) -> dict[int, str]:
    wanted = sorted(seqs)
    found: dict[int, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        with engine.connect() as conn:
            rows = conn.execute(select(changes.c.seq, changes.c.text).where(changes.c.seq.in_(chunk)))
            found.update({int(seq): text for seq, text in rows})
    return found


def _labelled(meta: dict | None, key: str) -> bool:
    return (meta or {}).get(key) not in (None, "")


def _sample(items: list[Any], n: int, rng: random.Random) -> list[Any]:
    """At most ``n`` items, in their original order."""
    if len(items) <= n:
        return list(items)
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


def _parse_time(value: datetime | str) -> datetime:
    """The window's end as aware UTC (a naive time is UTC: the stores write UTC)."""
    try:
        return clock.utc(value)
    except (TypeError, ValueError) as exc:
        raise DriftCheckError(f"now={value!r} is not an ISO date and time") from exc


def _atomic_write_json(path: Path, value: Any) -> None:
    from lockstep.core.atomic import atomic_write

    atomic_write(path, jsonio.dumps(value, indent=2, sort_keys=True))


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).exists() else None


def _flat_numbers(report: Mapping[str, Any]) -> dict[str, float]:
    """The figures and counts as MLflow metrics (finite numbers only)."""
    numbers: dict[str, float] = {}
    for key, value in (report.get("figures") or {}).items():
        if isinstance(value, int | float) and math.isfinite(value):
            numbers[key] = float(value)
    for key, value in (report.get("counts") or {}).items():
        if isinstance(value, int | float) and math.isfinite(value):
            numbers[f"count_{key}"] = float(value)
    numbers["drifted"] = 1.0 if report.get("drifted") else 0.0
    return numbers


def _params(report: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "window_hours": (report.get("window") or {}).get("hours"),
        "window_end": (report.get("window") or {}).get("end"),
        "min_records": report.get("min_records"),
        "max_samples": report.get("max_samples"),
        "reference_snapshot_seq": report.get("reference_snapshot_seq"),
        "accumulate_hours": report.get("accumulate_hours"),
    }
    for key, value in (report.get("thresholds") or {}).items():
        params[f"threshold.{key}"] = value
    return {k: v for k, v in params.items() if v is not None}


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def _summary(report: Mapping[str, Any]) -> str:
    return describe(report)[:5000]


def describe(report: Mapping[str, Any]) -> str:
    """The report as a person reads it: verdict, reasons, the segment that moved, notes."""
    verdict = "Drift" if report.get("drifted") else "No drift"
    window = report.get("window") or {}
    lines = [
        f"{verdict} ({report.get('status')}), champion {report.get('champion_version')}, "
        f"window {window.get('start', '?')} to {window.get('end', '?')}"
    ]
    lines += [f"- {r}" for r in report.get("reasons", [])]
    segment = report.get("segment")
    if segment:
        words = ", ".join(str(w) for w, _ in segment.get("top_words", []))
        lines.append(
            f"Segment that moved most: {segment['current_share']:.1%} of the window vs "
            f"{segment['reference_share']:.1%} of the reference ({segment['n_current']} records, "
            f"chi-square p = {segment['p_value']:.2g})" + (f"; words: {words}" if words else "")
        )
        lines += [f"  e.g. {example}" for example in segment.get("examples", [])]
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _experiment_id(client: Any, name: str, tracking_uri: str, artifact_root: Path) -> str:
    """The experiment's id, created on first use; a database store keeps its files
    under the Lockstep home (as the registry does), not in the working directory."""
    import mlflow

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.split(":", 1)[0] not in ("http", "https", "databricks"):
        location = (artifact_root / re.sub(r"[^A-Za-z0-9._-]+", "_", name)).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.MlflowException:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
