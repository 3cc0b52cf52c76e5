"""lockstep_batch: precompute top-k per key for every serving version into the operational table.

Plan of a run (the library calls are in ``lockstep.batch.steps``)::

    plan ── jobs ── compute (mapped: one task per shard of keys) ── finish ── drop_retired

- **plan** reads the routing table and the input head T once (the change-log sequence on
  a search deployment, the interaction sequence on a recommender one). The versions are
  the live slots with weight plus a holdback version. Per version: **full** (no complete
  rows yet, another vector space, another k, the change log compacted past its last
  run, or Param ``full``): its rows are cleared and it takes no batch traffic until
  **finish**; **incremental**: only the keys whose inputs changed after its last run's
  sequence (the rules are in ``lockstep.batch.related`` and
  ``lockstep.batch.recommendations``); **unchanged**: nothing to do.
- **compute** takes one shard of a version's keys: related records per record (search:
  each record's stored vector searched in the version's own FAISS index, itself left
  out) or recommendations per user (recommender: the user's vector against the version's
  item index, seen items left out), and replaces their rows.
- **finish** removes deleted records' rows, checks that each version holds exactly one
  row per key it has at T, and marks it complete through T: from then on
  ``GET /related`` and ``GET /recommendations`` may route to it.
- **drop_retired** removes the rows of versions whose slot is retired or gone.

Runs hourly (at 30 minutes past; ``LOCKSTEP_SCHEDULES=off`` leaves that out) and whenever
``lockstep_rollout`` promotes a version (the promoted asset).
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, dag, task

from lockstep.ops.dag_support import (
    BATCH_FORM,
    DEFAULT_ARGS,
    NO_RETRY,
    PROMOTED,
    dag_params,
    on_failure,
    schedule,
    time_limits,
)

LIMITS = time_limits("lockstep_batch")  # every task's execution_timeout and the run's dagrun_timeout


@dag(
    dag_id="lockstep_batch",
    description="Precompute top-k related records / recommendations per key for the serving versions, incrementally.",
    schedule=schedule("30 * * * *", PROMOTED),  # hourly at :30, or a promotion
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=LIMITS.run,
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "execution_timeout": LIMITS.task},
    tags=["lockstep", "batch"],
    doc_md=__doc__,
    params=dag_params(BATCH_FORM),  # defaults, bounds and texts from the config classes (dag_support)
)
def lockstep_batch():
    @task
    def plan(params=None) -> dict:
        from lockstep.batch import steps as batch

        versions = [v.strip() for v in (params["model_versions"] or "").split(",") if v.strip()] or None
        return batch.plan(k=params["k"], shard_size=params["shard_size"], versions=versions, full=params["full"])

    @task(**NO_RETRY)
    def jobs(run: dict) -> list[dict]:
        from lockstep.batch import steps as batch

        return batch.jobs(run)

    @task(map_index_template="v{{ task.op_kwargs['job']['model_version'] }} shard {{ task.op_kwargs['job']['shard'] }}")
    def compute(run: dict, job: dict) -> dict:
        from lockstep.batch import steps as batch

        return batch.compute(run, job)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def finish(run: dict, computed: list[dict]) -> dict:
        from lockstep.batch import steps as batch

        return batch.finish(run, list(computed or []))

    @task
    def drop_retired() -> dict:
        from lockstep.ops import retention

        return retention.drop_retired_batch_results()

    run = plan()
    computed = compute.partial(run=run).expand(job=jobs(run))
    finish(run, computed) >> drop_retired()


dag = lockstep_batch()
