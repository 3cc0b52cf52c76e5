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
  before it, from the request and feedback logs, judged per user (per-user sums).

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

The pieces live beside it: ``window`` reads the two sides, ``signals`` measures them,
``verdict`` decides, ``report`` writes and describes the result.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lockstep.core import clock, jsonio
from lockstep.core.config import DRIFT_EXPERIMENT, drift_experiment, run_folder  # noqa: F401  (run_folder re-exported: the drift DAG keeps its report there)
from lockstep.core.errors import RegistryError
from lockstep.drift.click_through import click_through_drift
from lockstep.drift.report import (
    REPORT_FILE,
    finish_report,
    flat_numbers,
    metric_key,
    run_params,
    summary,
)
from lockstep.drift.signals import (
    Embedder,
    Sizes,
    ctr_judged,
    measure_records,
    queries_judged,
    with_accumulated,
    with_queries,
)
from lockstep.drift.verdict import DriftReport, DriftThresholds, Finding, assess
from lockstep.drift.window import DriftCheckError, click_through_periods, current_window, reference
from lockstep.store.records import RecordStore
from lockstep.training.config import TrainConfig

STATUS_NO_CHAMPION = "no_champion"  # nothing to compare with: not an error
STATUS_INSUFFICIENT = "insufficient_data"  # no signal had enough data to be judged
STATUS_COMPARED = "compared"

# The check's own defaults over ``DriftThresholds`` (none: 1 % false alarms per check;
# the hourly DAG passes checks_per_day=24 so that 1 % holds per day).
CHECK_THRESHOLDS: dict[str, Any] = {}

TAG_CHECK_ID = "lockstep.check_id"
TAG_CHAMPION = "lockstep.champion_version"
TAG_DRIFTED = "lockstep.drifted"
TAG_STATUS = "lockstep.drift_status"


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
        return finish_report(report, STATUS_NO_CHAMPION, {**context, "champion_version": None}, work_dir)

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
    ref_ctr, cur_ctr = click_through_periods(store.engine, champion.version, end, window_hours)
    counts = {
        "reference_impressions": ref_ctr.impressions,
        "reference_clicks": ref_ctr.clicks,
        "current_impressions": cur_ctr.impressions,
        "current_clicks": cur_ctr.clicks,
    }
    ctr = click_through_drift(
        ref_ctr.clicks, ref_ctr.impressions, cur_ctr.clicks, cur_ctr.impressions,
        reference_users=ref_ctr.clusters, current_users=cur_ctr.clusters,
    )

    embed = Embedder(registry.load_embedder(champion.version), ref)
    sizes = Sizes(min_records, max_samples, n_permutations, seed)
    records = measure_records(embed, ref, win, sizes)
    extra: list[Finding] = []
    if accumulate_hours > window_hours:
        long_win = current_window(
            store, end, accumulate_hours, after_seq=champion.snapshot_seq,
            max_samples=max_samples, seed=seed,
        )
        records, extra = with_accumulated(records, embed, ref, long_win, sizes)
    report = assess(
        records.vocabulary, records.embeddings, ctr, limits, segment=records.segment, extra=extra
    )
    report = with_queries(report, ref, win, min_records, list(records.notes), records.unjudged, seed)
    judged = (
        records.vocabulary is not None
        or records.embeddings is not None
        or bool(extra)
        or queries_judged(win, min_records)
        or ctr_judged(ctr, limits)
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
    return finish_report(
        report, status, context, work_dir, records.reference_vectors, records.current_vectors,
        seed, members,
    )


def log_drift_report(
    report: Mapping[str, Any],
    plot: str | Path | None = None,
    *,
    check_id: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> dict[str, Any]:
    """One MLflow run in ``experiment`` (default: the system's drift experiment): figures as metrics, the report and plot as files.

    ``plot`` defaults to the one ``run_drift_check`` wrote. With a ``check_id`` (a DAG
    run id) a finished run with the same id is found and returned instead of logging
    a second one, so a retried task does not duplicate the record.
    """
    from lockstep.core.config import settings
    from lockstep.model.registry import Registry

    plot_path = Path(plot) if plot else _existing(report.get("files", {}).get("plot"))
    version = report.get("champion_version")
    tags = {
        TAG_CHAMPION: str(version) if version is not None else "none",
        TAG_DRIFTED: str(bool(report.get("drifted"))).lower(),
        TAG_STATUS: str(report.get("status")),
        "mlflow.note.content": summary(report),
    }
    with tempfile.TemporaryDirectory(prefix="lockstep-drift-") as tmp:
        report_path = Path(tmp) / REPORT_FILE
        report_path.write_text(jsonio.dumps(report, indent=2, sort_keys=True))
        files = {"reports": report_path, **({"plots": plot_path} if plot_path is not None and plot_path.exists() else {})}
        run_id, experiment_id, reused = Registry(tracking_uri=tracking_uri or settings().mlflow_tracking_uri).log_run(
            experiment or drift_experiment(),
            f"drift {report.get('window', {}).get('end', '')}",
            tags=tags,
            metrics={metric_key(k): float(v) for k, v in flat_numbers(report).items()},
            params=run_params(report),
            files=files,
            once_per=(TAG_CHECK_ID, check_id) if check_id else None,
        )
    return {"run_id": run_id, "experiment_id": experiment_id, "reused": reused}


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


def _training_split_of(registry: Any, champion: Any) -> tuple[int, str]:
    """The champion's own holdout_percent and label key, from its training run's params."""
    default = (TrainConfig.holdout_percent, TrainConfig.label_key)
    try:
        params = registry.run_params(champion.run_id)
    except RegistryError:  # the training run is gone: the defaults it was trained with
        return default
    raw = params.get("holdout_percent")
    percent = int(raw) if raw is not None and raw.isdigit() else default[0]
    return percent, params.get("label_key") or default[1]


def _parse_time(value: datetime | str) -> datetime:
    """The window's end as aware UTC (a naive time is UTC: the stores write UTC)."""
    try:
        return clock.utc(value)
    except (TypeError, ValueError) as exc:
        raise DriftCheckError(f"now={value!r} is not an ISO date and time") from exc


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).exists() else None
