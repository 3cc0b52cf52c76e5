"""lockstep_holdback with dag.test(): the daily lift report, computed and logged to a real MLflow store."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.dags.conftest import task_states

pytestmark = [pytest.mark.airflow]


def test_the_report_dag_logs_the_lift_per_day_once_per_date(lockstep_home, airflow_db):
    import lockstep_holdback
    from mlflow import MlflowClient

    from lockstep.core import clock
    from lockstep.core.config import settings
    from lockstep.store import routing
    from lockstep.store.db import get_engine
    from tests.holdback.test_report import write

    engine = get_engine()
    for v in ("1", "2"):
        routing.register_slot(v, f"models:/m/{v}", f"/idx/v{v}", f"sha256:{v * 8}", state="ready")
    routing.set_weights({"2": 100})
    routing.set_holdback("1", 10, actor="test")
    yesterday = (clock.now() - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)  # whole rows on one day
    for i in range(10):  # holdback: 2 of 5 user-days clicked; champion: 3 of 5 (each user searches 4 times)
        arm_user, version, held, clicks = (f"h{i}", "1", True, int(i < 2)) if i < 5 else (f"c{i}", "2", False, int(i < 8))
        write(engine, arm_user, version, at=yesterday, n=4, clicks=clicks, holdback=held)

    run = lockstep_holdback.lockstep_holdback_dag.test(run_conf={"days": 3})
    assert run.state == "success", task_states(run)

    client = MlflowClient(settings().mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("lockstep-holdback")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    logged = runs[0]
    assert logged.data.metrics["lift"] == pytest.approx(0.5)  # (3/5) / (2/5) - 1
    assert logged.data.metrics["lift_low"] < 0.5 < logged.data.metrics["lift_high"]
    assert logged.data.metrics["champion_user_days"] == 5 and logged.data.metrics["holdback_user_days"] == 5
    assert logged.data.tags["lockstep.holdback_version"] == "1" and logged.data.tags["lockstep.champion_version"] == "2"
    folder = Path(client.download_artifacts(logged.info.run_id, "holdback", str(lockstep_home / "art")))
    days = json.loads((folder / "lift.json").read_text())["days"]
    assert [(d["day"], d["holdback_user_days"], d["holdback_clicked"]) for d in days] == [(yesterday.date().isoformat(), 5, 2)]
    assert (folder / "chart" / "lift.svg").read_text().startswith("<svg")

    again = lockstep_holdback.lockstep_holdback_dag.test(run_conf={"days": 3})  # a second run on the same date
    assert again.state == "success", task_states(again)
    assert len(client.search_runs([experiment.experiment_id])) == 1
