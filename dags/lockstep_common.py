"""What every Lockstep DAG shares: the assets between DAGs, retry policy, alerts.

Kept free of heavy imports: DAG files import this at parse time.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset

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


def on_failure(context) -> None:
    """Failure callback: one alert per failed task, through the configured channel."""
    from lockstep.alerts import alert_from_context

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
