"""The shape of lockstep_rollout, read from the DAG object (no run): what promotes, what waits, what is bounded, the form."""

from __future__ import annotations

from datetime import timedelta

import pytest

pytestmark = pytest.mark.airflow

WAITING = {"review": "review", "shadow": "shadow", "canary": "canary", "ab_test": "ab", "bandit": "bandit"}


@pytest.fixture(scope="module")
def dag():
    """A freshly parsed DAG: runs in other modules (``dag.test(run_conf=...)``) change the
    params of the module's DAG object in place, and this module reads its defaults."""
    import importlib

    import lockstep_rollout

    return importlib.reload(lockstep_rollout).dag


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


# --- the trigger form ------------------------------------------------------------------------------


def test_the_params_are_the_rollout_config_field_by_field(dag):
    """Reproduction: the DAG restated 32 Params by hand beside RolloutConfig; now it is generated from it."""
    from dataclasses import fields

    from lockstep.ops.dag_support import serving_url_default
    from lockstep.rollout.config import RolloutConfig
    from lockstep.rollout.operator import configured_defaults

    overrides = {"serving_url": serving_url_default(), **configured_defaults()}
    config_fields = fields(RolloutConfig)
    assert list(dag.params) == ["model_version", *(f.name for f in config_fields)]
    for f in config_fields:
        param = dag.params.get_param(f.name)
        default = overrides.get(f.name, f.default)
        assert param.value == (list(default) if isinstance(default, tuple) else default), f.name
        assert param.description == f.metadata["description"], f.name
        assert param.schema == {"title": f.metadata["title"], "section": f.metadata["section"], **f.metadata["schema"]}, f.name
    # The form's defaults, read back by the library, are the config's defaults.
    assert RolloutConfig.from_params(dag.params.validate()) == RolloutConfig.from_params(overrides)


def test_the_form_shows_the_sections_in_order(dag):
    from lockstep.rollout.config import SECTIONS

    sections = [dag.params.get_param(name).schema["section"] for name in dag.params]
    blocks = [s for i, s in enumerate(sections) if i == 0 or s != sections[i - 1]]
    assert blocks == list(SECTIONS)  # every section once, in the order the form shows them
    assert all(dag.params.get_param(name).schema.get("title") for name in dag.params)


def test_deployment_defaults_reach_the_form_and_bad_ones_fail_the_parse(monkeypatch):
    from lockstep.rollout.config import RolloutError
    from lockstep.rollout.operator import configured_defaults, rollout_params

    monkeypatch.setenv("LOCKSTEP_ROLLOUT_DEFAULTS", '{"bake_seconds": 15, "canary_steps": [10, 100]}')
    params = rollout_params(configured_defaults())
    assert params["bake_seconds"].value == 15 and params["canary_steps"].value == [10, 100]
    assert params["min_overlap"].value == 0.2  # the rest keep the config's defaults
    monkeypatch.setenv("LOCKSTEP_ROLLOUT_DEFAULTS", '{"bake_second": 15}')
    with pytest.raises(RolloutError, match="'bake_second'"):
        configured_defaults()
    with pytest.raises(RolloutError, match="bake_seconds=-1 does not fit"):
        rollout_params({"bake_seconds": -1})
    with pytest.raises(RolloutError, match="bake_second"):
        rollout_params({"bake_second": 1})


def test_the_review_form_expires_with_the_longest_review(dag):
    from lockstep.rollout.operator import REVIEW_FORM_EXPIRES

    assert dag.get_task("approve_in_airflow").response_timeout == REVIEW_FORM_EXPIRES
    assert dag.params.get_param("approval_timeout_seconds").schema["maximum"] == REVIEW_FORM_EXPIRES.total_seconds()


def test_every_strategy_the_form_offers_has_a_branch(dag):
    import lockstep_rollout

    from lockstep.rollout.config import STRATEGIES

    assert list(lockstep_rollout.STRATEGY_TASKS) == list(STRATEGIES) == dag.params.get_param("strategy").schema["enum"]
    assert set(lockstep_rollout.STRATEGY_TASKS.values()) <= set(dag.task_ids)
