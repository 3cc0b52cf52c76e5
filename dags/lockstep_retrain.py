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

from airflow.sdk import Metadata, Param, dag, task

from lockstep.ops.dag_support import (
    CHALLENGER,
    DEFAULT_ARGS,
    DRIFT,
    NO_RETRY,
    deployment_system,
    latest_extra,
    on_failure,
    schedule,
    time_limits,
)

TRAIN_KEYS = (
    "family", "dim", "max_features", "min_df", "max_df", "window", "min_count", "epochs", "sif_a",
    "margin", "holdout_percent", "max_eval_queries", "fit_sample",
)
# The built-in families (lockstep.model.families.families(), which imports scikit-learn and
# so cannot run at parse time; tests/dags/test_family_switch.py checks the two agree).
FAMILIES = ["tfidf_svd", "word_vectors"]

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
    params={
        "family": Param("tfidf_svd", type="string", enum=FAMILIES, title="Model family", section="Model", description="The kind of model to train: tfidf_svd (TF-IDF + TruncatedSVD) or word_vectors (Word2Vec trained on the corpus, SIF pooling). A switch rolls out like any new version."),
        "dim": Param(256, type="integer", minimum=8, maximum=2048, title="Embedding dimension", section="Model", description="Embedding dimension (SVD components, or word-vector size)."),
        "max_features": Param(50000, type="integer", minimum=100, title="Vocabulary size", section="Model", description="Vocabulary size (the most frequent words are kept)."),
        "min_df": Param(2, type="integer", minimum=1, title="Least document frequency", section="Model", description="tfidf_svd: minimum number of documents a term must appear in."),
        "max_df": Param(0.5, type="number", exclusiveMinimum=0, maximum=1, title="Largest document share", section="Model", description="tfidf_svd: drop terms in more than this share of documents."),
        "window": Param(10, type="integer", minimum=1, maximum=50, title="Context window", section="Model", description="word_vectors: words on each side that Word2Vec learns a word from."),
        "min_count": Param(2, type="integer", minimum=1, title="Least word count", section="Model", description="word_vectors: words seen fewer times in the training texts get no vector."),
        "epochs": Param(10, type="integer", minimum=1, maximum=100, title="Training passes", section="Model", description="word_vectors: passes of Word2Vec over the training texts."),
        "sif_a": Param(0.001, type="number", exclusiveMinimum=0, title="SIF weight a", section="Model", description="word_vectors: a word weighs a / (a + its share of the training tokens); smaller a mutes frequent words more."),
        "fit_sample": Param(200000, type=["null", "integer"], minimum=2, title="Records to fit on", section="Model", description="Records the vocabulary and the SVD are fitted on (a seeded sample; bounds training memory at millions of records); empty: all."),
        "margin": Param(0.005, type="number", minimum=0, title="Required nDCG@10 gain", section="Evaluation", description="nDCG@10 gain the challenger must show over the champion (and its CI lower bound must be > 0)."),
        "holdout_percent": Param(10, type="integer", minimum=1, maximum=50, title="Held-out queries (%)", section="Evaluation", description="Percent of labelled records held out as evaluation queries (stable by id)."),
        "max_eval_queries": Param(1500, type="integer", minimum=10, title="Most evaluation queries", section="Evaluation", description="At most this many evaluation queries."),
        "factors": Param(64, type="integer", minimum=1, maximum=1024, title="ALS factors", section="Recommender", description="Recommender deployments only: the embedding dimension of users and items."),
        "iterations": Param(15, type="integer", minimum=1, maximum=200, title="ALS iterations", section="Recommender", description="Recommender deployments only: alternating least-squares passes."),
        "skip_validation": Param(False, type="boolean", title="Skip data validation", section="Data", description="Skip the Great Expectations suite (not recommended)."),
    },
)
def lockstep_retrain():
    @task.branch
    def which_system() -> str:
        return "train_recommender" if deployment_system() == "recommender" else "snapshot"

    @task(**NO_RETRY)
    def train_recommender(params=None, triggering_asset_events=None) -> dict:
        from lockstep.recommender import steps as recommender

        return recommender.train_for_dag(params, latest_extra(triggering_asset_events, DRIFT))

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
        from lockstep.training import steps as retrain

        config = {k: params[k] for k in TRAIN_KEYS}
        return retrain.evaluate(snap["seq"], model["model_path"], str(retrain.run_folder(run_id)), config)

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
