"""lockstep_drift: has the recent data moved away from what the champion was trained on?

Plan of a run: check -> log to MLflow -> decide -> (emit_drift | no_drift).

**check** compares the window that ends at the run's time (one hour by default) with
the champion's training snapshot: records upserted in the window (vocabulary and, under
the champion model, a domain classifier's ROC AUC against a permutation threshold),
search queries from the request log (words the champion never saw) and click-through
of the champion's searches against the period before. The embedding reference is the
part of the training snapshot the champion was *not* fitted on (its held-out records).
With no champion yet, or too little new data, the answer is "not drifted" with a note.

**log_report** writes one run to the MLflow experiment `lockstep-drift`: the figures as
metrics, the JSON report and a plot (embeddings on two principal components, each
figure against its threshold), tagged with the champion version. A retry reuses it.

**emit_drift** sends a `drift_detected` alert and emits the drift asset, which
schedules `lockstep_retrain`; the event's extra holds the champion version, the reasons
and the figures. Param `force` emits it even without drift (demos).

On a recommender deployment (``LOCKSTEP_SYSTEM=recommender``) **check** compares the
interactions since the champion's fit with those before it instead: the share on items
the fit does not know, and the shift of item popularity (``lockstep.drift.interactions``).

Runs at the top of every hour. A new install does not catch up the last hour (no start
date, and the timetable does not run immediately); ``LOCKSTEP_SCHEDULES=off`` leaves the
hourly run out (trigger it yourself).
"""

from __future__ import annotations

from airflow.sdk import Metadata, dag, task

from lockstep.ops.dag_support import (
    DEFAULT_ARGS,
    DRIFT,
    DRIFT_FORM,
    NO_RETRY,
    dag_params,
    on_failure,
    schedule,
    time_limits,
)

THRESHOLD_KEYS = (
    "false_alarm_rate",
    "checks_per_day",
    "unseen_token_share_excess",
    "ctr_relative_drop",
)


LIMITS = time_limits("lockstep_drift")  # every task's execution_timeout and the run's dagrun_timeout


@dag(
    dag_id="lockstep_drift",
    description="Compare recent records, queries and click-through with the champion's training data; emit the drift asset.",
    # run_immediately=timedelta(0): the first run is at the next full hour, never the last one.
    schedule=schedule("0 * * * *"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=LIMITS.run,
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "execution_timeout": LIMITS.task},
    tags=["lockstep", "monitoring", "drift"],
    doc_md=__doc__,
    params=dag_params(DRIFT_FORM),  # defaults, bounds and texts from the config classes (dag_support)
)
def lockstep_drift():
    @task
    def check(params=None, run_id=None, data_interval_end=None, dag_run=None) -> dict:
        from lockstep.drift import steps as drift_check
        from lockstep.systems import steps as system

        end = data_interval_end or getattr(dag_run, "run_after", None)
        return system.drift_check(
            window_hours=float(params["window_hours"]),
            thresholds={k: params[k] for k in THRESHOLD_KEYS},
            min_records=int(params["min_records"]),
            max_samples=int(params["max_samples"]),
            accumulate_hours=float(params["accumulate_hours"]),
            now=end.isoformat() if end is not None else None,
            work_dir=str(drift_check.run_folder(run_id) / "drift"),
        )

    @task
    def log_report(report: dict, run_id=None) -> dict:
        from lockstep.drift import steps as drift_check

        logged = drift_check.log_drift_report(report, check_id=run_id)
        return {**report, "mlflow_run_id": logged["run_id"]}

    @task.branch(**NO_RETRY)
    def decide(report: dict, params=None) -> str:
        return "emit_drift" if report["drifted"] or params["force"] else "no_drift"

    @task(outlets=[DRIFT])
    def emit_drift(report: dict, params=None, run_id=None):
        from lockstep.drift import steps as drift_check

        drift_check.alert_drift(report, check_id=run_id)
        extra = drift_check.asset_extra(report, forced=bool(params["force"]) and not report["drifted"])
        yield Metadata(DRIFT, extra)
        return extra

    @task(**NO_RETRY)
    def no_drift(report: dict) -> dict:
        return {"status": report["status"], "notes": report["notes"]}

    report = log_report(check())
    decide(report) >> [emit_drift(report), no_drift(report)]


# The @dag function returns the DAG object; keep it so tests can run lockstep_drift_dag.test().
lockstep_drift_dag = lockstep_drift()
