"""lockstep_holdback: the daily lift report of the champion over the long-term holdback group.

Plan of a run (daily at 04:00 UTC): report -> log_report.

**report** reads the serving logs of the last `days` UTC days up to the run's time and,
per day, compares the click-through of the holdback group (users frozen on one version by
`lockstep holdback set VERSION PERCENT`) with that of the day's champion outside the
holdback. The unit is the user-day: one user's searches on one day, clicked when any of
them was, so each user counts once a day. The lift `CTR_champion / CTR_holdback - 1`
comes with a delta-method confidence interval (`confidence`).

**log_report** records it as one MLflow run in the experiment `lockstep-holdback`: the
newest complete day's lift, interval and click-throughs as metrics, every day in
`holdback/lift.json` and the chart as SVG. A retried task returns the run already logged
for that date. `lockstep holdback show` prints the same table on demand.
``LOCKSTEP_SCHEDULES=off`` leaves the daily run out (trigger it yourself).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from lockstep.ops.dag_support import DEFAULT_ARGS, NO_RETRY, on_failure, schedule, time_limits

LIMITS = time_limits("lockstep_holdback")  # every task's execution_timeout and the run's dagrun_timeout


@dag(
    dag_id="lockstep_holdback",
    description="Daily lift of the champion over the long-term holdback group, per day with a confidence interval.",
    # Daily at 04:00 UTC, never a catch-up run on a new install; LOCKSTEP_SCHEDULES=off leaves it out.
    schedule=schedule("0 4 * * *"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=LIMITS.run,
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "execution_timeout": LIMITS.task},
    tags=["lockstep", "holdback"],
    doc_md=__doc__,
    params={
        "days": Param(30, type="integer", minimum=1, maximum=400, title="Days", section="Report",
                      description="How many UTC days back the report goes, the run's own day included."),
        "confidence": Param(0.95, type="number", exclusiveMinimum=0, exclusiveMaximum=1, title="Confidence",
                            section="Report", description="Confidence level of each day's interval on the lift."),
    },
)
def lockstep_holdback():
    @task(**NO_RETRY)
    def report(params=None, data_interval_end=None, dag_run=None) -> dict:
        from lockstep.holdback import steps as holdback

        end = data_interval_end or getattr(dag_run, "run_after", None)
        return holdback.report_for_run(days=int(params["days"]), confidence=float(params["confidence"]),
                                       now=end.isoformat() if end is not None else None)

    @task
    def log_report(lift: dict, data_interval_end=None, dag_run=None, run_id=None) -> dict:
        from lockstep.holdback import steps as holdback

        end = data_interval_end or getattr(dag_run, "run_after", None)
        logged = holdback.log_report(lift, report_date=end.date().isoformat() if end is not None else run_id)
        return {"mlflow_run_id": logged["run_id"], "summary": logged["summary"], "reused": logged["reused"]}

    log_report(report())


# The @dag function returns the DAG object; keep it so tests can run lockstep_holdback_dag.test().
lockstep_holdback_dag = lockstep_holdback()
