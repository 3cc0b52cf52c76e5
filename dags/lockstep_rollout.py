"""lockstep_rollout: take a model version with a built index to 100 % of traffic, or back.

Plan of a run (each box is one task; the library calls are in ``lockstep.rollout.steps``)::

    start ── open_review ─┬─ review ── shadow ── choose_strategy ─┬─ canary ─────┐
                          │     └─ close_ui_review              ├─ ab_test ────┤
                          └─ approve_in_airflow                 ├─ bandit ─────┼─ finalize ── verify ── wait_rollback_window ── retention
                                                                ├─ blue_green ─┘
                                                                └─ shadow_only   (the end: shadow never promotes)
    rollback  (trigger rule ONE_FAILED on start ... verify: runs whichever failed, never after a success)

finalize's only upstream tasks are the four promoting strategies: a run whose branch
took shadow_only skips it (and everything after it).

review, shadow, canary, ab_test and bandit wait for people or traffic. Each is a
deferrable task (``lockstep.rollout.operator``): it makes one look, then hands a timer
to the triggerer and frees its worker slot until the next look (every
``poll_seconds``); its place is kept in the rollout record. Every task has an
``execution_timeout``, the run a ``dagrun_timeout``, and all run in the Airflow pool
``lockstep_rollout``.

- **start** resolves the candidate (Param, else the index-ready event, else alias
  ``challenger``), checks its slot is ready and the champion live, records the rollout
  and gives sticky users a new salt. A candidate that already is champion skips the run.
- **review** (with ``require_approval``) waits for whichever answer comes first: the
  Approve/Reject form of ``approve_in_airflow`` (Airflow's Required Actions page, which
  shows the evaluation figures and the drift context) or the tag ``lockstep.review`` =
  ``approved``/``rejected`` on the version in MLflow. Rejection or timeout fails it.
  Every decision names who gave it (the Airflow user who answered the form, or the tag
  ``lockstep.review.by``); an approval that names nobody is not taken. The reviewer is
  written on the version (``lockstep.review.by``/``.at``/``.via``) and in the review step.
  ``close_ui_review`` then withdraws an unanswered Airflow form.
- **shadow** mirrors live traffic to the candidate and gates on its error rate, latency
  against live and top-k overlap with live.
- **canary** walks the traffic steps below 100 %; each step bakes until both versions
  have ``min_samples`` answered requests (and at least ``bake_seconds`` have passed),
  then is judged against the champion over the same window (error rate, Mann-Whitney
  latency with a tolerance, click-through with an always-valid sequential test).
  Inconclusive extends the bake (another ``min_samples`` each) up to ``max_extensions``
  times, then fails; a look without its counts by ``max_bake_seconds`` counts as
  inconclusive, never as a pass. **ab_test**, **bandit** and **blue_green** are
  the other strategies; **shadow_only** ends after the shadow phase with no live traffic.
- **finalize** sets 100 % and moves alias ``champion`` (the old champion is tagged with
  when it was replaced); **verify** reads the routing table back and probes the serving
  API until it answers with the new version.
- Before each traffic change (and at each look) a rollout checks that nobody else
  changed the routing since its own last change (compare-and-set on the generation).
  If an operator did (``lockstep routing set``, ``lockstep_rollback``), the rollout
  stops as **overridden**: it records and alerts it, and leaves the traffic alone.
  ``start`` refuses to begin while alias ``champion`` and the routing table disagree.
- **rollback** returns all traffic to the champion in one transaction (a failing gate has
  done so already, at once), tags the candidate rejected with reason and figures, drains
  and retires its slot, and alerts. A rolled-back run ends as failed.
- **retention** retires the previous champion's slot and deletes its index once the
  rollback window is over (``lockstep_rollback`` can return to it until then).

Gate results of every step are in the table ``lockstep_rollout_steps``. The trigger form
shows one Param per field of ``lockstep.rollout.config.RolloutConfig`` (its title,
section, description and default), in sections: strategy, review, traffic steps and
bakes, gates, A/B test, bandit, verify and retire, timing.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import TriggerRule, dag, task

from lockstep.ops.dag_support import (
    DEFAULT_ARGS,
    INDEX_READY,
    NO_RETRY,
    PROMOTED,
    latest_extra,
    on_failure,
    serving_url_default,
    time_limits,
)
from lockstep.rollout.operator import (
    REVIEW_FORM_EXPIRES,
    ROLLOUT_POOL,
    RolloutPhaseOperator,
    configured_defaults,
    rollout_params,
)

STRATEGY_TASKS = {
    "canary": "canary",
    "shadow": "shadow_only",
    "ab": "ab_test",
    "bandit": "bandit",
    "blue_green": "blue_green",
}
# The longest a task may compute at once (a look, the final update, a rollback with its drain), and
# the whole run: review (<= 24 h) + strategy (each has its own time limit) + rollback window.
# Defaults 30 min and 7 days; LOCKSTEP_DAG_TIMEOUTS overrides them.
LIMITS = time_limits("lockstep_rollout")
TASK_TIMEOUT, RUN_TIMEOUT = LIMITS.task, LIMITS.run


@dag(
    dag_id="lockstep_rollout",
    description="Review, shadow, staged traffic with statistical gates, final traffic update, rollback.",
    schedule=[INDEX_READY],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "pool": ROLLOUT_POOL, "execution_timeout": TASK_TIMEOUT},
    tags=["lockstep", "rollout"],
    doc_md=__doc__,
    # One Param per RolloutConfig field (title, section, description, schema and default from
    # there), the deployment's LOCKSTEP_ROLLOUT_DEFAULTS applied; model_version first.
    params=rollout_params({"serving_url": serving_url_default(), **configured_defaults()}),
)
def lockstep_rollout():
    @task
    def start(params=None, triggering_asset_events=None, run_id=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from lockstep.rollout import steps as rollout

        try:
            plan = rollout.start(run_id, params["model_version"], latest_extra(triggering_asset_events, INDEX_READY), params)
        except rollout.RolloutError as exc:  # a missing slot or a bad Param: retrying cannot fix it
            raise AirflowFailException(str(exc)) from exc
        if plan.noop:
            raise AirflowSkipException(plan.reason)
        return plan.to_dict()

    @task.branch
    def open_review(params=None) -> list[str]:
        """Open the Airflow approval form only when a reviewer must approve; review always runs."""
        return ["approve_in_airflow", "review"] if params["require_approval"] else ["review"]

    approve_in_airflow = ApprovalOperator(
        task_id="approve_in_airflow",
        subject="Roll out model version {{ ti.xcom_pull(task_ids='start')['model_version'] }}?",
        body="{{ ti.xcom_pull(task_ids='start')['review_markdown'] }}",
        defaults="Reject",
        response_timeout=REVIEW_FORM_EXPIRES,
        retries=0,
    )

    @task(trigger_rule=TriggerRule.ALL_DONE, **NO_RETRY)
    def close_ui_review() -> None:
        """Withdraw the Airflow review form once the review is decided (a no-op if answered)."""
        from airflow.sdk.exceptions import DownstreamTasksSkipped

        raise DownstreamTasksSkipped(tasks=["approve_in_airflow"])

    @task.branch
    def choose_strategy(plan: dict) -> str:
        return STRATEGY_TASKS[plan["strategy"]]

    @task(**NO_RETRY)
    def blue_green(plan: dict) -> dict:
        from lockstep.rollout import steps as rollout

        return rollout.run_blue_green(plan)

    @task
    def shadow_only(plan: dict) -> dict:
        from lockstep.rollout import steps as rollout

        return rollout.shadow_only(plan)

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, outlets=[PROMOTED])  # PROMOTED starts lockstep_batch
    def finalize(ti=None) -> dict:
        """Upstream: the promoting strategies only (never start or shadow_only), so shadow never promotes."""
        from lockstep.rollout import steps as rollout

        return rollout.finalize(ti.xcom_pull(task_ids="start"))

    @task(**NO_RETRY)
    def verify(plan: dict, final: dict) -> dict:
        from lockstep.rollout import steps as rollout
        from lockstep.systems import steps as system

        return rollout.verify(plan, final, probe=system.verify_probe())

    wait_rollback_window = DateTimeSensorAsync(
        task_id="wait_rollback_window",
        target_time="{{ ti.xcom_pull(task_ids='finalize')['retire_after'] }}",
    )

    @task
    def retention(plan: dict, final: dict) -> dict:
        from lockstep.rollout import steps as rollout

        return rollout.retire_previous(plan, final)

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def rollback(ti=None) -> dict:
        """Runs when any task from start to verify failed; reads the plan itself (start may have failed)."""
        from lockstep.rollout import steps as rollout

        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
        failed = sorted(task_id for task_id, state in states.items() if str(state) == "failed")
        return rollout.rollback(ti.xcom_pull(task_ids="start"), failed_tasks=failed)

    plan = start()
    reviewed = RolloutPhaseOperator(task_id="review", phase="review", plan=plan)
    # The form opens in the same scheduling round as review starts, so it is waiting (and
    # can be withdrawn) by the time close_ui_review runs.
    plan >> open_review() >> [approve_in_airflow, reviewed]
    reviewed >> close_ui_review()
    shadowed = RolloutPhaseOperator(task_id="shadow", phase="shadow", plan=plan)
    reviewed >> shadowed
    branch = choose_strategy(plan)
    shadowed >> branch
    strategies = [
        RolloutPhaseOperator(task_id="canary", phase="canary", plan=plan),
        RolloutPhaseOperator(task_id="ab_test", phase="ab", plan=plan),
        RolloutPhaseOperator(task_id="bandit", phase="bandit", plan=plan),
        blue_green(plan),
    ]
    only_shadow = shadow_only(plan)
    branch >> [*strategies, only_shadow]
    final = finalize()
    strategies >> final
    verified = verify(plan, final)
    verified >> wait_rollback_window >> retention(plan, final)
    rollback() << [plan, reviewed, shadowed, branch, *strategies, only_shadow, final, verified]


dag = lockstep_rollout()
