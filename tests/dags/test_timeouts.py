"""Every DAG has a ``dagrun_timeout`` and every task an ``execution_timeout`` (a hung MLflow,
database or broker call fails its task instead of waiting for ever), as the scheduler holds
them (serialized); the defaults live in one table and ``LOCKSTEP_DAG_TIMEOUTS`` overrides them
per DAG; a wrong override is refused naming what is wrong."""

from __future__ import annotations

import importlib
import json
import sys
from datetime import timedelta

import pytest

from lockstep.core.config import DEFAULT_DAG_TIMEOUTS, dag_timeouts
from lockstep.core.errors import ConfigurationError
from tests.dags.conftest import DAGS

DAG_IDS = sorted(p.stem for p in DAGS.glob("lockstep_*.py"))


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def _serialized(dag):
    """The DAG as the scheduler and API server hold it."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def test_every_dag_file_has_default_limits():
    assert sorted(DEFAULT_DAG_TIMEOUTS) == DAG_IDS


def test_every_dag_has_a_run_timeout_and_every_task_an_execution_timeout(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == DAG_IDS
    for dag_id, dag in dagbag.dags.items():
        task_limit, run_limit = (timedelta(seconds=s) for s in DEFAULT_DAG_TIMEOUTS[dag_id])
        for held in (dag, _serialized(dag)):
            assert held.dagrun_timeout == run_limit, dag_id
            for t in held.tasks:
                assert t.execution_timeout is not None, f"{dag_id}.{t.task_id} has no execution_timeout"
                assert timedelta(0) < t.execution_timeout <= task_limit, f"{dag_id}.{t.task_id}"


def _parse(module: str, monkeypatch):
    """``module``'s DAG parsed afresh with the current environment (as the dag-processor would)."""
    monkeypatch.syspath_prepend(str(DAGS))
    sys.modules.pop(module, None)
    loaded = importlib.import_module(module)
    sys.modules.pop(module, None)  # the next import sees the restored environment
    return next(v for v in vars(loaded).values() if getattr(v, "dag_id", None) == module and hasattr(v, "tasks"))


def test_the_environment_overrides_one_dags_limits_and_leaves_the_others(monkeypatch, airflow_db):
    monkeypatch.setenv("LOCKSTEP_DAG_TIMEOUTS", json.dumps({"lockstep_retrain": {"task": 90, "run": 600},
                                                            "lockstep_drift": {"run": 1800}}))
    retrain = _parse("lockstep_retrain", monkeypatch)
    assert retrain.dagrun_timeout == timedelta(minutes=10)
    assert {t.execution_timeout for t in retrain.tasks} == {timedelta(seconds=90)}
    drift = _parse("lockstep_drift", monkeypatch)
    assert drift.dagrun_timeout == timedelta(minutes=30)  # only "run" given: the task limit keeps its default
    assert {t.execution_timeout for t in drift.tasks} == {timedelta(seconds=DEFAULT_DAG_TIMEOUTS["lockstep_drift"][0])}
    batch = _parse("lockstep_batch", monkeypatch)
    assert batch.dagrun_timeout == timedelta(seconds=DEFAULT_DAG_TIMEOUTS["lockstep_batch"][1])


@pytest.mark.parametrize(("raw", "problem"), [
    ("{not json", "LOCKSTEP_DAG_TIMEOUTS is not JSON"),
    ("[1, 2]", "must be a JSON object of DAG ids"),
    ('{"lockstep_retrian": {"task": 60}}', "'lockstep_retrian' is not a Lockstep DAG"),
    ('{"lockstep_retrain": {"tasks": 60}}', "needs an object with 'task' and/or 'run'"),
    ('{"lockstep_retrain": 60}', "needs an object with 'task' and/or 'run'"),
    ('{"lockstep_retrain": {"task": 0}}', "lockstep_retrain.task=0 must be a number of seconds above 0"),
    ('{"lockstep_retrain": {"task": "1h"}}', "lockstep_retrain.task='1h' must be a number of seconds"),
    ('{"lockstep_retrain": {"run": true}}', "lockstep_retrain.run=True must be a number of seconds"),
    ('{"lockstep_retrain": {"task": 7200, "run": 60}}', "task limit (7200 s) is longer than its run limit (60 s)"),
])
def test_a_wrong_override_is_refused_naming_what_is_wrong(raw, problem):
    with pytest.raises(ConfigurationError) as refused:
        dag_timeouts("lockstep_retrain", {"LOCKSTEP_DAG_TIMEOUTS": raw})
    assert problem in str(refused.value)


def test_a_wrong_override_fails_the_dag_files_parse_with_its_message(monkeypatch, airflow_db):
    monkeypatch.setenv("LOCKSTEP_DAG_TIMEOUTS", '{"lockstep_holdback": {"task": -5}}')
    with pytest.raises(ConfigurationError, match="lockstep_holdback.task=-5"):
        _parse("lockstep_holdback", monkeypatch)
