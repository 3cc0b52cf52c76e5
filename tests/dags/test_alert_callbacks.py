"""Alerts from real task runs (dag.test()): the shared failure callback and an alert a task
sends both leave through the configured notifiers, with links to the run that sent them."""

from __future__ import annotations

import json

import pytest

from tests.dags.conftest import task_states
from tests.ops.alert_receivers import WebhookReceiver

AIRFLOW_UI = "http://airflow.example.org:8080"


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


PROBE_DAG = """
from datetime import datetime

from airflow.sdk import DAG, task
from lockstep.ops.dag_support import on_failure

# Two tasks as a rollout would run them: one alerts (a rollback), the next one fails.
with DAG(
    "lockstep_alert_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 0, "on_failure_callback": on_failure},
) as dag:

    @task
    def roll_back() -> None:
        from lockstep.core.alerts import alert

        alert("rollback", "v3 rolled back to v2: error rate 4 % over the 1 % gate",
              {"candidate": "3", "champion": "2", "figures": {"error_rate": 0.04}})

    @task
    def merge() -> None:
        raise RuntimeError("index shard 2 is missing")

    roll_back() >> merge()
"""


def probe_dag(folder, monkeypatch):
    """The probe DAG from a DAG bundle of its own: dag.test() serializes a DAG from the bundle
    that holds its file, so the test adds one for a folder it owns (the project's DAG folder
    stays the first bundle)."""
    import importlib.util

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lockstep_alert_probe.py"
    path.write_text(PROBE_DAG)
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "dags-folder", "classpath": local, "kwargs": {}},
        {"name": "lockstep-alert-probe", "classpath": local, "kwargs": {"path": str(folder)}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    spec = importlib.util.spec_from_file_location("lockstep_alert_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_failed_task_and_task_alert_reach_the_webhook(lockstep_home, airflow_db, receiver, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCKSTEP_ALERT_CHANNEL", "log,webhook")
    monkeypatch.setenv("LOCKSTEP_ALERT_WEBHOOK_URL", receiver.url("/alerts"))
    monkeypatch.setenv("LOCKSTEP_AIRFLOW_UI_URL", AIRFLOW_UI)

    run = probe_dag(tmp_path / "probe-dags", monkeypatch).test()

    assert task_states(run) == {"roll_back": "success", "merge": "failed"}
    by_event = {r.json()["event"]: r.json() for r in receiver.at("/alerts")}
    assert set(by_event) == {"rollback", "task_failed"}
    run_link = f"{AIRFLOW_UI}/dags/lockstep_alert_probe/runs/{_quoted(run.run_id)}"

    rollback = by_event["rollback"]
    assert rollback["version"] == "3" and rollback["figures"]["figures"] == {"error_rate": 0.04}
    assert rollback["links"]["Airflow task"] == f"{run_link}/tasks/roll_back"

    failed = by_event["task_failed"]
    assert failed["figures"]["task_id"] == "merge" and failed["figures"]["run_id"] == run.run_id
    assert "index shard 2 is missing" in failed["reason"]
    assert failed["links"]["Airflow run"] == run_link
    assert failed["links"]["Airflow task"].endswith("/tasks/merge")

    recorded = [json.loads(line) for line in (lockstep_home / "alerts.jsonl").read_text().splitlines()]
    assert [a["event"] for a in recorded] == ["rollback", "task_failed"]
    assert all(a["delivery"] == {"log": "sent", "webhook": "sent"} for a in recorded)


def _quoted(run_id: str) -> str:
    from urllib.parse import quote

    return quote(run_id, safe="")
