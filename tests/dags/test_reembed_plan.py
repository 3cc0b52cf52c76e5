"""lockstep_reembed follows the re-embed plan (``lockstep.index.plan``), read from the DAG object (no run).

The plan is written once and ``lockstep index build`` runs it in one process; the DAG's
search tasks must come in the same order, so the two paths cannot drift apart.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.airflow

HELPERS = {"first_slice", "rest_of_shards"}  # list a snapshot's shards for the mapped tasks: not steps
OTHER_SYSTEM = {"build_recommender"}  # the recommender deployment's one-step build


@pytest.fixture(scope="module")
def dag():
    import importlib

    import lockstep_reembed

    return importlib.reload(lockstep_reembed).dag


def _downstream(dag, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).get_flat_relative_ids(upstream=False))


def test_the_search_tasks_are_the_plans_steps(dag):
    from lockstep.index.plan import step_names

    search_tasks = set(dag.task_ids) - HELPERS - OTHER_SYSTEM
    assert search_tasks == set(step_names())


def test_the_dag_runs_the_steps_in_the_plans_order(dag):
    """Each step of the main line is downstream of every step before it: one order, the plan's."""
    from lockstep.index.plan import STEPS, Branch

    main_line = [step.name for step in STEPS]
    for i, earlier in enumerate(main_line):
        after = _downstream(dag, earlier)
        assert set(main_line[i + 1 :]) <= after, (earlier, sorted(set(main_line[i + 1 :]) - after))
        assert not set(main_line[:i]) & after, (earlier, sorted(set(main_line[:i]) & after))
    for branch in (s for s in STEPS if isinstance(s, Branch)):
        # the branch's step follows the fork and ends the run: nothing of the plan comes after it
        assert branch.to.name in dag.get_task(branch.name).downstream_task_ids
        assert not _downstream(dag, branch.to.name) & set(main_line)


def test_the_branch_goes_to_the_plans_steps():
    """stop_or_continue returns the plan's step names: stop_load for a stop, else the plan's next step."""
    import lockstep_reembed

    from lockstep.index.plan import STEPS, Branch, stops

    fork = next(i for i, s in enumerate(STEPS) if isinstance(s, Branch))
    branch, after = STEPS[fork], STEPS[fork + 1]
    decide = lockstep_reembed.dag.get_task(branch.name).python_callable
    for verdict in ("stop", "warn", "continue", "no baseline"):
        expected = branch.to.name if stops({"verdict": verdict}) else after.name
        assert decide({"verdict": verdict}) == expected, verdict
