"""Alerts: rollbacks, failed validations and detected drift, sent through one channel.

The channel is configuration (``LOCKSTEP_ALERT_CHANNEL``): ``log`` (default) writes a
structured warning to the task log and to ``$LOCKSTEP_HOME/alerts.jsonl`` so the
Lockstep UI page and tests can read it back. Other channels are Airflow notifiers
from their providers (SMTP, Slack, ...), configured in the DAGs' callbacks.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("lockstep.alerts")

EVENTS = ("task_failed", "rollback", "validation_failed", "drift_detected", "promoted")


def alert(event: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record and log one alert; returns what was sent."""
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}; one of {', '.join(EVENTS)}")
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "event": event,
        "message": message,
        "details": details or {},
        "channel": os.environ.get("LOCKSTEP_ALERT_CHANNEL", "log"),
    }
    log.warning("lockstep alert [%s]: %s", event, message)
    _append(entry)
    return entry


def recent_alerts(limit: int = 50) -> list[dict[str, Any]]:
    path = _alerts_file()
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[-limit:]
    return [json.loads(line) for line in lines if line.strip()]


def alert_from_context(event: str, context: dict[str, Any]) -> dict[str, Any]:
    """Build an alert from an Airflow callback context (task failure callbacks)."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = context.get("run_id") or getattr(ti, "run_id", "?")
    error = context.get("exception")
    return alert(
        event,
        f"{dag_id}.{task_id} failed in run {run_id}: {error}",
        {"dag_id": dag_id, "task_id": task_id, "run_id": str(run_id), "error": str(error)[:2000]},
    )


def _alerts_file() -> Path:
    from .config import settings

    return settings().home / "alerts.jsonl"


def _append(entry: dict[str, Any]) -> None:
    path = _alerts_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:  # one short line per alert: appends are atomic enough
        fh.write(json.dumps(entry, default=str) + "\n")
