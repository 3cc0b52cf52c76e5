"""The shape of lockstep_rollout, read from the DAG object (no run): what promotes, what waits, what is bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest

pytestmark = pytest.mark.airflow

WAITING = {"review": "review", "shadow": "shadow", "canary": "canary", "ab_test": "ab", "bandit": "bandit"}


@pytest.fixture(scope="module")
def dag():
    import lockstep_rollout

    return lockstep_rollout.dag


def test_finalize_waits_only_on_the_promoting_strategies(dag):
    """Reproduction: finalize had start upstream, so a shadow-only run satisfied its trigger rule and promoted."""
    import lockstep_rollout

    from lockstep.rollout.steps import PROMOTING_STRATEGIES

    finalize = dag.get_task("finalize")
    promoting = {lockstep_rollout.STRATEGY_TASKS[s] for s in PROMOTING_STRATEGIES}
    assert finalize.upstream_task_ids == promoting
    assert "shadow_only" not in finalize.get_flat_relative_ids(upstream=True)
    assert "start" not in finalize.upstream_task_ids
    assert dag.get_task("shadow_only").downstream_task_ids == {"rollback"}  # the end of a shadow run


def test_waits_hold_no_worker_and_everything_is_bounded(dag):
    from lockstep.rollout.operator import RolloutPhaseOperator
    from lockstep.rollout.steps import ROLLOUT_POOL

    for task_id, phase in WAITING.items():
        task = dag.get_task(task_id)
        assert isinstance(task, RolloutPhaseOperator) and task.phase == phase, task_id
        assert task.retries == 0  # a verdict does not change by trying again
    for task in dag.tasks:
        assert task.execution_timeout is not None and task.execution_timeout <= timedelta(minutes=30), task.task_id
        assert task.pool == ROLLOUT_POOL == "lockstep_rollout", task.task_id
    assert dag.dagrun_timeout is not None and dag.dagrun_timeout >= timedelta(hours=24)  # outlives the longest review


def test_a_phase_defers_between_looks_and_returns_the_result_when_done(monkeypatch):
    """The operator's contract with the executor: not done -> defer with a timer; done -> the result."""
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

    from lockstep.rollout import steps as rollout
    from lockstep.rollout.operator import RolloutPhaseOperator

    task = RolloutPhaseOperator(task_id="canary", phase="canary", plan={"rollout_id": "r1"})  # outside the DAG
    outcomes = iter([rollout.Tick(False, wait_seconds=7.0), rollout.Tick(True, {"verdict": "pass"})])
    monkeypatch.setattr(rollout, "tick", lambda phase, plan, external=None: next(outcomes))
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({"ti": None})
    assert isinstance(deferred.value.trigger, DateTimeTrigger) and deferred.value.method_name == "resume"
    assert task.resume({"ti": None}, event=None) == {"verdict": "pass"}

    def overridden(phase, plan, external=None):
        raise rollout.RolloutOverridden("overridden by alice")

    monkeypatch.setattr(rollout, "tick", overridden)
    with pytest.raises(AirflowFailException, match="alice"):
        task.execute({"ti": None})
