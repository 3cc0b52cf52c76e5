"""Every scheduled DAG's clock (UTC cron) and asset, and LOCKSTEP_SCHEDULES=off leaving the clock out."""

from __future__ import annotations

import pytest
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from lockstep.ops.dag_support import DRIFT, PROMOTED, schedule


def test_a_cron_alone_is_a_utc_cron_timetable(monkeypatch):
    monkeypatch.delenv("LOCKSTEP_SCHEDULES", raising=False)
    timetable = schedule("30 3 * * *")
    assert isinstance(timetable, CronTriggerTimetable)
    assert timetable.summary == "30 3 * * *"


@pytest.mark.parametrize("asset", [DRIFT, PROMOTED])
def test_a_cron_with_an_asset_runs_on_whichever_comes_first(monkeypatch, asset):
    monkeypatch.setenv("LOCKSTEP_SCHEDULES", "on")
    timetable = schedule("0 3 * * 1", asset)
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert timetable.timetable.summary == "0 3 * * 1" and timetable.asset_condition.uri == asset.uri


def test_schedules_off_leave_only_the_asset(monkeypatch):
    monkeypatch.setenv("LOCKSTEP_SCHEDULES", "off")
    assert schedule("0 * * * *") is None
    assert schedule("30 * * * *", PROMOTED) is PROMOTED
