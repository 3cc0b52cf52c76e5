"""The real-scheduler integration test: ``lockstep demo`` against a real Airflow.

The command starts a real Airflow (api-server, scheduler, dag-processor, triggerer,
LocalExecutor) whose metadata database is a real PostgreSQL server, plus the MLflow UI
and the serving app; it triggers the DAGs through Airflow's REST API and follows the
asset-triggered runs: first model -> traffic -> the other 10 newsgroups arrive as live
writes -> drift -> retrain -> re-embed -> canary rollout to 100 %. ``dag.test()`` alone
does not prove the DAGs work under the scheduler; this does. It is also the headless
variant of the main command, run as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.timeout(2700)]


def test_demo_lifecycle_under_the_real_scheduler_on_postgres(tmp_path, postgres_server, monkeypatch):
    metadata = postgres_server.create_database("airflow")
    home = tmp_path / "home"
    env = dict(os.environ)
    for var in ("LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE", "AIRFLOW_HOME",
                "AIRFLOW__CORE__DAGS_FOLDER", "LOCKSTEP_FAULTS"):
        env.pop(var, None)
    env["LOCKSTEP_HOME"] = str(home)
    env.setdefault("LOCKSTEP_CACHE_DIR", str(Path.home() / ".cache" / "lockstep-tests"))
    lockstep = Path(sys.executable).with_name("lockstep")
    result = subprocess.run(
        [str(lockstep), "demo", "--per-category", "60", "--airflow-db", metadata],
        env=env, capture_output=True, text=True, timeout=2400,
    )
    summary = result.stdout
    assert result.returncode == 0, f"{summary}\n--- stderr ---\n{result.stderr[-6000:]}"
    assert "lifecycle completed" in summary
    for step in ("first model", "drift -> retrain", "re-embed + canary rollout", "traffic summary"):
        assert step in summary

    from lockstep.registry import Registry

    monkeypatch.setenv("LOCKSTEP_HOME", str(home))  # read what the demo left behind
    registry = Registry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    champion = registry.version_for_alias("champion")
    assert champion is not None and champion.version != "1"  # the drift-driven retrain won
    history = registry.champion_history()
    assert [h["version"] for h in history][-2:] == ["1", champion.version]
