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

from airflow.sdk import Metadata, Param, dag, task

from lockstep.ops.dag_support import (
    DEFAULT_ARGS,
    DRIFT,
    NO_RETRY,
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
    params={
        "window_hours": Param(1.0, type="number", exclusiveMinimum=0, maximum=24 * 30, title="Window (hours)", section="Window", description="Length of the window that ends at the run's time; click-through compares it with the window before."),
        "accumulate_hours": Param(24.0, type="number", minimum=0, maximum=24 * 30, title="Accumulated span (hours)", section="Window", description="Also test the records of this longer span (the union of the last windows), so a slow drift adds up instead of starting over every hour. 0 or at most window_hours: off."),
        "false_alarm_rate": Param(0.01, type="number", exclusiveMinimum=0, maximum=0.5, title="False alarms per day", section="False alarms", description="Chance of a false drift alarm per day when nothing moved. Spent evenly over the day's checks (Bonferroni) and shared by the tests of a check (Holm): vocabulary and domain-classifier permutation tests, the segment (cluster) test, click-through."),
        "checks_per_day": Param(24, type="integer", minimum=1, maximum=1440, title="Checks per day", section="False alarms", description="Checks that share the daily false-alarm rate: 24 for the hourly schedule, so each check tests at false_alarm_rate / 24."),
        "unseen_token_share_excess": Param(0.05, type="number", minimum=0, maximum=1, title="Excess of unseen query words", section="Thresholds", description="Search queries only: drift when the share of query words never seen in the training data exceeds that of a same-sized reference sample by more than this."),
        "ctr_relative_drop": Param(0.20, type="number", minimum=0, maximum=1, title="Click-through drop", section="Thresholds", description="Drift when the champion's click-through fell by more than this share against the previous window and the drop is significant (one-sided z-test, within the false-alarm level)."),
        "min_records": Param(50, type="integer", minimum=10, title="Fewest records to judge", section="Thresholds", description="Fewest new records (and, separately, queries) in the window for them to be judged; fewer gives 'not drifted' with a note."),
        "max_samples": Param(2000, type="integer", minimum=50, maximum=20000, title="Most records sampled", section="Run", description="Records, queries and reference texts sampled per side at most (bounds the run time)."),
        "force": Param(False, type="boolean", title="Emit the drift asset anyway", section="Run", description="Emit the drift asset even when no drift is found (demos: schedules a retraining)."),
    },
)
def lockstep_drift():
    @task
    def check(params=None, run_id=None, data_interval_end=None, dag_run=None) -> dict:
        from lockstep.drift import steps as drift_check

        end = data_interval_end or getattr(dag_run, "run_after", None)
        return drift_check.run_check(
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
