"""A fresh install's first sight is clean: no clock-driven run before the corpus, and nothing red.

``lockstep up`` used to let the weekly ``lockstep_retrain`` catch up its last Monday the
moment its DAG appeared, before the corpus was loaded: the run failed ("the record store
is empty") and raised an alert. Now the time-scheduled DAGs wait for their next slot,
the stack creates DAGs paused and loads the corpus first, and a run with nothing to do
skips with its reason. (The whole stack is checked by tests/integration.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.dags.conftest import airflow_db, task_states  # noqa: F401  (airflow_db is a fixture)

pytestmark = [pytest.mark.airflow]

MONDAY_3AM = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def _first_run(dag, now: datetime, monkeypatch) -> datetime:
    """When the scheduler would start the first run of a new, never-run DAG at ``now``."""
    import airflow.timetables.trigger as trigger
    from airflow.timetables.base import TimeRestriction

    monkeypatch.setattr(trigger, "utcnow", lambda: now)
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup)
    info = dag.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    return info.run_after


@pytest.mark.parametrize("minutes_after", [1, 60, 24 * 60])
def test_weekly_retrain_waits_for_the_next_monday_on_a_new_install(minutes_after, monkeypatch):
    import lockstep_retrain

    now = MONDAY_3AM + timedelta(minutes=minutes_after)
    first = _first_run(lockstep_retrain.dag, now, monkeypatch)
    # Not the Monday that just passed (run_immediately=False alone would still run it
    # within a tenth of a week): the next one.
    assert first == MONDAY_3AM + timedelta(days=7)


@pytest.mark.parametrize("minutes_after", [1, 5, 59])
def test_hourly_drift_check_waits_for_the_next_hour(minutes_after, monkeypatch):
    import lockstep_drift

    now = MONDAY_3AM + timedelta(minutes=minutes_after)
    assert _first_run(lockstep_drift.lockstep_drift_dag, now, monkeypatch) == MONDAY_3AM + timedelta(hours=1)


def test_schedules_off_keeps_only_the_drift_trigger(monkeypatch):
    """What ``lockstep demo`` sets: no clock-driven run can start a second lifecycle mid-demo."""
    import importlib

    import lockstep_drift
    import lockstep_retrain
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    monkeypatch.setenv("LOCKSTEP_SCHEDULES", "off")
    try:
        retrain = importlib.reload(lockstep_retrain).dag
        drift = importlib.reload(lockstep_drift).lockstep_drift_dag
        assert isinstance(retrain.timetable, AssetTriggeredTimetable)
        assert type(drift.timetable).__name__ == "NullTimetable"  # schedule=None: triggered by hand only
    finally:
        monkeypatch.delenv("LOCKSTEP_SCHEDULES")
        importlib.reload(lockstep_retrain)
        importlib.reload(lockstep_drift)


def test_a_wrong_schedules_setting_names_the_variable(monkeypatch):
    from lockstep.ops.dag_support import time_schedules_on

    monkeypatch.setenv("LOCKSTEP_SCHEDULES", "sometimes")
    with pytest.raises(ValueError, match="LOCKSTEP_SCHEDULES must be 'on' or 'off'.*sometimes"):
        time_schedules_on()


def test_retrain_on_an_empty_store_skips_with_its_reason_and_no_alert(lockstep_home, airflow_db):  # noqa: F811
    import lockstep_retrain

    run = lockstep_retrain.dag.test()
    states = task_states(run)
    assert run.state == "success", states
    assert states.pop("which_system") == "success"  # a search deployment: the search path was chosen
    assert set(states.values()) == {"skipped"}, states  # snapshot skipped, so everything after it
    ti = next(t for t in run.get_task_instances() if t.task_id == "snapshot")
    assert ti.state == "skipped"
    alerts = lockstep_home / "alerts.jsonl"
    assert not alerts.exists() or not alerts.read_text().strip(), alerts.read_text()


def test_the_skip_reason_names_the_empty_store_and_the_fix(lockstep_home):
    from lockstep.store.corpus import demo_sample
    from lockstep.store.records import RecordStore
    from lockstep.training.steps import nothing_to_train

    reason = nothing_to_train()
    assert "record store is empty" in reason and "lockstep corpus load" in reason
    RecordStore().upsert_many(demo_sample(20, seed=1))
    assert nothing_to_train() is None


def test_lockstep_train_says_it_skipped_on_an_empty_store(lockstep_home):
    from typer.testing import CliRunner

    from lockstep.cli import app

    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 1
    assert "skipped: nothing to train: the record store is empty" in result.output
    assert "Traceback" not in result.output


def test_demo_expects_only_the_drift_and_promotion_alerts(tmp_path):
    from lockstep.ops.demo import unexpected_alerts

    path = tmp_path / "alerts.jsonl"
    assert unexpected_alerts(path) == []
    lines = [{"event": "drift_detected", "message": "drift"}, {"event": "promoted", "message": "v2 is champion"},
             {"event": "task_failed", "message": "retrain failed"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert unexpected_alerts(path) == ["task_failed: retrain failed"]
