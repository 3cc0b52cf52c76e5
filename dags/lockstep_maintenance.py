"""lockstep_maintenance: keep the Lockstep database and the replicas' restart time bounded.

Plan of a run (daily at 03:30 UTC): checkpoint the served indexes -> compact the change log; purge
the request, shadow and feedback logs alongside.

**checkpoint** catches every served index (slots `ready`, `live`, `draining`) up to
the change log's head and saves it (content-named files, manifest replaced
atomically): a restarting replica replays only the changes after that, and the
compaction floor can move past them.

**compact** deletes change-log rows that no reader needs any more: a change followed
by a later change of the same record, older than the retention, at or before every
served index's applied sequence and every in-use model's training snapshot; and then
tombstones every index has applied, once nothing older of their record is left (a
delete never comes back). A re-embed in flight holds compaction back.

**purge_logs** deletes request, shadow and feedback log rows, and the streaming loader's applied-message ids, older than the retention.

Retentions default to `LOCKSTEP_CHANGE_LOG_RETENTION_DAYS` (7) and
`LOCKSTEP_LOG_RETENTION_DAYS` (30); the Params override them for one run.
``LOCKSTEP_SCHEDULES=off`` leaves the daily run out (trigger it yourself).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from lockstep.ops.dag_support import DEFAULT_ARGS, on_failure, schedule, time_limits

LIMITS = time_limits("lockstep_maintenance")  # every task's execution_timeout and the run's dagrun_timeout


@dag(
    dag_id="lockstep_maintenance",
    description="Checkpoint served indexes, compact the change log, purge old request/shadow/feedback logs.",
    # Daily at 03:30 UTC, never a catch-up run on a new install; LOCKSTEP_SCHEDULES=off leaves it out.
    schedule=schedule("30 3 * * *"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=LIMITS.run,
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "execution_timeout": LIMITS.task},
    tags=["lockstep", "maintenance"],
    doc_md=__doc__,
    params={
        "change_log_retention_days": Param(
            None, type=["null", "number"], minimum=0,
            title="Change log kept (days)", section="Retention", description="Days of change log kept whole; empty: LOCKSTEP_CHANGE_LOG_RETENTION_DAYS (default 7).",
        ),
        "log_retention_days": Param(
            None, type=["null", "number"], minimum=0,
            title="Serving logs kept (days)", section="Retention", description="Days of request, shadow and feedback logs kept; empty: LOCKSTEP_LOG_RETENTION_DAYS (default 30).",
        ),
        "checkpoint": Param(True, type="boolean", title="Checkpoint indexes first", section="Checkpoint", description="Catch up and save served indexes before compacting."),
    },
)
def lockstep_maintenance():
    @task
    def checkpoint(params=None) -> list[dict]:
        from lockstep.systems import steps as system

        return system.checkpoint_indexes() if params["checkpoint"] else []

    @task
    def compact(checkpoints: list[dict], params=None) -> dict:
        from lockstep.ops import retention

        return retention.compact(retention_days=params["change_log_retention_days"])

    @task
    def purge_logs(params=None) -> dict:
        from lockstep.ops import retention

        return retention.purge_logs(days=params["log_retention_days"])

    compact(checkpoint())
    purge_logs()


dag = lockstep_maintenance()
