"""What every Lockstep DAG shares: the assets between DAGs, retry policy, time limits, alerts.

Kept free of heavy imports: DAG files import this at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from airflow.sdk import Asset, Param

from lockstep.batch.config import BatchOptions
from lockstep.core.config import (
    DagForm,
    embedding_processes,  # noqa: F401  (re-exported: lockstep_reembed reads it at parse time)
    knobs,
)
from lockstep.drift.config import DriftCheckOptions
from lockstep.index.reembed_options import ReembedOptions
from lockstep.recommender.config import RecommenderTrainConfig
from lockstep.training.config import RetrainOptions, TrainConfig

# Asset events carry {"model_version", "fingerprint", "index_location"} in their extra.
CHALLENGER = Asset(name="lockstep_challenger", uri="lockstep://models/challenger")
INDEX_READY = Asset(name="lockstep_index_ready", uri="lockstep://indexes/ready")
DRIFT = Asset(name="lockstep_drift", uri="lockstep://monitoring/drift")

DEFAULT_ARGS = {
    "owner": "lockstep",
    "retries": 2,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}

# Tasks that only compute (no outside system) fail fast instead of retrying.
NO_RETRY = {"retries": 0}


@dataclass(frozen=True)
class TimeLimits:
    """A DAG's ``execution_timeout`` for every task and its ``dagrun_timeout``."""

    task: timedelta
    run: timedelta


def time_limits(dag_id: str) -> TimeLimits:
    """``dag_id``'s time limits: the defaults in ``lockstep.core.config.DEFAULT_DAG_TIMEOUTS``,
    overridden per DAG by ``LOCKSTEP_DAG_TIMEOUTS`` (read where the file is parsed).

    Every DAG sets both, so a hung MLflow, database or broker call fails its task (which
    retries and alerts) instead of waiting for ever.
    """
    from lockstep.core.config import dag_timeouts

    limits = dag_timeouts(dag_id)
    return TimeLimits(task=timedelta(seconds=limits.task), run=timedelta(seconds=limits.run))


def on_failure(context) -> None:
    """Failure callback: one alert per failed task, through the configured channel."""
    from lockstep.core.alerts import alert_from_context

    alert_from_context("task_failed", context)


def latest_extra(triggering_asset_events, asset: Asset) -> dict:
    """The extra of the newest event of ``asset`` that triggered this run ({} if none).

    Pass the task context's ``triggering_asset_events`` (the events behind an
    asset-scheduled run; empty for a UI trigger).
    """
    if not triggering_asset_events:
        return {}
    events = None
    for key in (asset, asset.uri, asset.name):
        try:
            events = triggering_asset_events[key]
            break
        except (KeyError, TypeError):
            continue
    return dict(events[-1].extra or {}) if events else {}


def time_schedules_on() -> bool:
    """False when ``LOCKSTEP_SCHEDULES=off``: the weekly retrain and hourly drift check are left
    out (asset triggers stay), as ``lockstep demo`` does so that no clock-driven run interferes."""
    from lockstep.core.config import schedules_on

    return schedules_on()


def schedule(cron: str, asset: Asset | None = None):
    """A DAG's schedule: the cron (UTC) or, with ``asset``, whichever comes first.

    With ``LOCKSTEP_SCHEDULES=off`` the clock is left out and only the asset (or nothing)
    triggers a run. ``run_immediately=timedelta(0)``: a new install waits for the next
    cron time (False would still run the last one when it is recent enough).
    """
    from datetime import timedelta

    from airflow.timetables.assets import AssetOrTimeSchedule
    from airflow.timetables.trigger import CronTriggerTimetable

    if not time_schedules_on():
        return asset
    clock_schedule = CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0))
    return clock_schedule if asset is None else AssetOrTimeSchedule(timetable=clock_schedule, assets=asset)


def serving_url_default() -> str:
    """Default of the rollout and rollback DAGs' Param ``serving_url``: the replicas to verify.

    ``LOCKSTEP_SERVING_URLS`` lists every serving replica directly, comma-separated
    (docker-compose.yaml sets it in every Airflow container: the default is read where the
    DAG is parsed); without it, the embedded stack's one replica.
    """
    from lockstep.core.config import serving_urls

    return serving_urls()


# Emitted by lockstep_rollout's finalize when a version reaches 100 % (extra: {"model_version", ...}):
# lockstep_batch recomputes the operational table for the new champion right away.
PROMOTED = Asset(name="lockstep_promoted", uri="lockstep://models/promoted")


# --- trigger forms: each DAG's Params built from the config classes that own the defaults ------

RETRAIN_FORM = DagForm("lockstep_retrain", (
    *knobs(TrainConfig, ("family", "dim", "max_features", "min_df", "max_df", "window", "min_count", "epochs",
                         "sif_a", "fit_sample", "margin", "holdout_percent", "max_eval_queries")),
    *knobs(RecommenderTrainConfig, ("factors", "iterations")),
    *knobs(RetrainOptions),
))
# The retrain Params that are TrainConfig fields: train, evaluate and register pass them on.
TRAIN_KEYS = tuple(k.name for k in knobs(TrainConfig))
REEMBED_FORM = DagForm("lockstep_reembed", knobs(ReembedOptions))
DRIFT_FORM = DagForm("lockstep_drift", knobs(DriftCheckOptions))
BATCH_FORM = DagForm("lockstep_batch", knobs(BatchOptions))


def dag_params(form: DagForm) -> dict[str, Param]:
    """The Params of ``form``'s DAG, in its order: each knob's default, schema, title, section, description.

    The defaults live in the config classes (``TrainConfig``, ``ReembedOptions`` ...), so
    the trigger form, the library and the CLI cannot disagree on them.
    """
    return {
        k.name: Param(k.form_default, **k.schema, title=k.title, section=k.section, description=k.description)
        for k in form.knobs
    }
