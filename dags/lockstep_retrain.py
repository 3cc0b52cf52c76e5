"""lockstep_retrain: validate the data, train, evaluate against the champion, register.

Plan of a run: snapshot -> validate -> train -> evaluate -> register -> (accept | reject).
On a recommender deployment (``LOCKSTEP_SYSTEM=recommender``) the run branches at the
start to train_recommender (ALS on the interaction store, judged on a per-user time split
against the champion's parameters, registered) -> (accept_recommender | reject_recommender).
Param ``family`` picks the kind of model (``tfidf_svd`` or ``word_vectors``); a version
of another family than the champion's is judged and rolled out like any other.
A better model gets alias ``challenger`` and emits the challenger asset, which starts
``lockstep_reembed``; a model that is not better is registered, tagged rejected with
the reason and figures, and the run stops there. With an empty record store there is
nothing to train: the run skips with that reason (no failure, no alert).

Runs weekly (Monday 03:00 UTC) and whenever ``lockstep_drift`` emits the drift asset.
A new install does not catch up the last Monday (the DAG has no start date and its
timetable does not run immediately), so nothing runs before a corpus is loaded.
``LOCKSTEP_SCHEDULES=off`` leaves out the weekly run (the drift trigger stays).
"""

from __future__ import annotations

from airflow.sdk import Metadata, dag, task

from lockstep.ops.dag_support import (
    CHALLENGER,
    DEFAULT_ARGS,
    DRIFT,
    NO_RETRY,
    RETRAIN_FORM,
    TRAIN_KEYS,
    dag_params,
    latest_extra,
    on_failure,
    schedule,
    time_limits,
)

LIMITS = time_limits("lockstep_retrain")  # every task's execution_timeout and the run's dagrun_timeout


@dag(
    dag_id="lockstep_retrain",
    description="Validate data, train, evaluate against the champion, register in MLflow.",
    schedule=schedule("0 3 * * 1", DRIFT),  # Monday 03:00 UTC, or a drift
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=LIMITS.run,
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "execution_timeout": LIMITS.task},
    tags=["lockstep", "training"],
    doc_md=__doc__,
    params=dag_params(RETRAIN_FORM),  # defaults, bounds and texts from the config classes (dag_support)
)
def lockstep_retrain():
    @task.branch
    def which_system() -> str:
        from lockstep.systems import steps as system

        return system.retrain_start()

    @task(**NO_RETRY)
    def train_recommender(params=None, triggering_asset_events=None) -> dict:
        from lockstep.systems import steps as system

        return system.train(params, latest_extra(triggering_asset_events, DRIFT))

    @task.branch
    def decide_recommender(trained: dict) -> str:
        return "accept_recommender" if trained["accepted"] else "reject_recommender"

    @task(outlets=[CHALLENGER])
    def accept_recommender(trained: dict):
        from lockstep.training import steps as retrain

        challenger = retrain.accept(trained["version"])
        yield Metadata(CHALLENGER, challenger)
        return challenger

    @task
    def reject_recommender(trained: dict) -> dict:
        from lockstep.training import steps as retrain

        return retrain.reject(trained["version"], trained)

    @task(**NO_RETRY)
    def snapshot() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from lockstep.training import steps as retrain

        if reason := retrain.nothing_to_train():
            raise AirflowSkipException(reason)
        return retrain.snapshot()

    @task(**NO_RETRY)
    def validate(snap: dict, params=None, run_id=None) -> dict:
        from lockstep.training import steps as retrain

        if params["skip_validation"]:
            return {"success": True, "skipped": True}
        return retrain.validate(snap["seq"], str(retrain.run_folder(run_id)))

    @task(**NO_RETRY)
    def train(snap: dict, validation: dict, params=None, run_id=None) -> dict:
        from lockstep.training import steps as retrain

        config = {k: params[k] for k in TRAIN_KEYS}
        return retrain.train(snap["seq"], str(retrain.run_folder(run_id)), config)

    @task
    def evaluate(snap: dict, model: dict, params=None, run_id=None) -> dict:
        from lockstep.systems import steps as system
        from lockstep.training import steps as retrain

        config = {k: params[k] for k in TRAIN_KEYS}
        return system.evaluate_retrain(snap["seq"], model["model_path"], str(retrain.run_folder(run_id)), config)

    @task
    def register(snap: dict, model: dict, evaluation: dict, params=None, run_id=None, triggering_asset_events=None) -> dict:
        from lockstep.training import steps as retrain

        config = {k: params[k] for k in TRAIN_KEYS}
        folder = str(retrain.run_folder(run_id))
        drift = latest_extra(triggering_asset_events, DRIFT)
        return retrain.register(snap["seq"], model["model_path"], evaluation, folder, run_id, config, drift=drift)

    @task.branch
    def decide(evaluation: dict) -> str:
        return "accept" if evaluation["better"] else "reject"

    @task(outlets=[CHALLENGER])
    def accept(registered: dict):
        from lockstep.training import steps as retrain

        challenger = retrain.accept(registered["version"])
        yield Metadata(CHALLENGER, challenger)
        return challenger

    @task
    def reject(registered: dict, evaluation: dict) -> dict:
        from lockstep.training import steps as retrain

        return retrain.reject(registered["version"], evaluation)

    system = which_system()
    trained = train_recommender()
    system >> trained
    decide_recommender(trained) >> [accept_recommender(trained), reject_recommender(trained)]
    snap = snapshot()
    system >> snap
    model = train(snap, validate(snap))
    evaluation = evaluate(snap, model)
    registered = register(snap, model, evaluation)
    decision = decide(evaluation)
    registered >> decision
    decision >> [accept(registered), reject(registered, evaluation)]


dag = lockstep_retrain()
