"""lockstep_reembed: re-embed every record with a model version into a new index.

Plan of a run: resolve the version -> register its slot as a write target (loading)
-> snapshot at sequence S (one parquet row group per shard; the last shards hold the
first slice, a uniform sample of ``early_verdict_share`` of the records) -> embed the
first slice -> early verdict: the candidate against the champion restricted to the
loaded records (held-out queries: nDCG@10 with a paired bootstrap CI; logged queries:
top-10 overlap, latency), logged to the MLflow version -> stop (only with
``early_verdict_action`` stop and the CI's upper bound below ``-early_verdict_margin``:
slot retired, version rejected, its files deleted; the champion untouched) or continue
-> embed the other shards in parallel (mapped; each reads only its row group; at most
``LOCKSTEP_REEMBED_WORKERS`` at once, default the core count, about 4 rounds of them) -> merge
shard by shard and catch up every change after S -> validate against the record store
-> publish (slot ready, MLflow tag) -> emit the index-ready asset, which starts
``lockstep_rollout``. With no champion the verdict is "no baseline" and the load continues.
On a recommender deployment (``LOCKSTEP_SYSTEM=recommender``) ``prepare`` is skipped
(``run_if``) and the run is one step instead: write the fit's serving files and register its slot (serving folds
in the interactions logged after the fit), then emit the same asset.

Live writes never stop: the slot is registered before the snapshot, and every write
lands in the change log the merge and validation steps catch up from. A half-built or
failed index stays in state ``loading`` and is never served.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Metadata, dag, task

from lockstep.ops.dag_support import (
    CHALLENGER,
    DEFAULT_ARGS,
    INDEX_READY,
    NO_RETRY,
    REEMBED_FORM,
    dag_params,
    embedding_processes,
    latest_extra,
    on_failure,
    time_limits,
)
from lockstep.systems.steps import starts_reembed_with

EMBEDDING_PROCESSES = embedding_processes()  # shard tasks of one run embedding at once (read when the file is parsed)
LIMITS = time_limits("lockstep_reembed")  # every task's execution_timeout and the run's dagrun_timeout


@dag(
    dag_id="lockstep_reembed",
    description="Bulk re-embed every record into a new versioned FAISS index, with dual writes and catch-up.",
    schedule=[CHALLENGER],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=LIMITS.run,
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "execution_timeout": LIMITS.task},
    tags=["lockstep", "indexing"],
    doc_md=__doc__,
    params=dag_params(REEMBED_FORM),  # defaults, bounds and texts from the config classes (dag_support)
)
def lockstep_reembed():
    @task.run_if(lambda context: starts_reembed_with("build_recommender"), skip_message="a search deployment")
    @task(outlets=[INDEX_READY])
    def build_recommender(params=None, triggering_asset_events=None):
        from lockstep.systems import steps as system

        extra = latest_extra(triggering_asset_events, CHALLENGER)
        ready = system.build(params["model_version"], extra, promote_if_first=params["promote_if_first"])
        yield Metadata(INDEX_READY, ready)
        return ready

    @task.run_if(lambda context: starts_reembed_with("prepare"), skip_message="a recommender deployment")
    @task
    def prepare(params=None, triggering_asset_events=None) -> dict:
        from lockstep.index import steps as reembed

        return reembed.prepare_requested(
            params["model_version"], latest_extra(triggering_asset_events, CHALLENGER), allow_rejected=params["allow_rejected"],
        )

    @task
    def snapshot(plan: dict, params=None) -> dict:
        from lockstep.index import steps as reembed

        return reembed.snapshot(
            plan, params["shard_size"], target_shards=params["target_shards"] or reembed.dag_target_shards(),
            first_slice_share=params["early_verdict_share"],
        )

    @task
    def first_slice(snap: dict) -> list[int]:
        return snap["first_slice"]

    @task
    def rest_of_shards(snap: dict) -> list[int]:
        return snap["rest"]

    @task
    def early_verdict(plan: dict, snap: dict, first: list[dict], params=None) -> dict:
        from lockstep.index import steps as reembed

        return reembed.early_verdict(
            plan, snap, first[:], margin=params["early_verdict_margin"], action=params["early_verdict_action"],
        )

    @task.branch
    def stop_or_continue(verdict: dict) -> str:
        return "stop_load" if verdict["verdict"] == "stop" else "embed"

    @task
    def stop_load(plan: dict, verdict: dict) -> dict:
        from lockstep.index import steps as reembed

        return reembed.stop_load(plan, verdict)

    # At most LOCKSTEP_REEMBED_WORKERS shard tasks embed at once: more only fight for the same cores.
    @task(map_index_template="shard {{ task.op_kwargs['shard'] }}", max_active_tis_per_dagrun=EMBEDDING_PROCESSES)
    def embed(plan: dict, snap: dict, shard: int) -> dict:
        from lockstep.index import steps as reembed

        return reembed.embed(plan, snap, shard)

    @task
    def merge(plan: dict, snap: dict, first: list[dict], rest: list[dict], verdict: dict, params=None) -> dict:
        from lockstep.index import steps as reembed

        return reembed.merge(
            plan, snap, [*first[:], *rest[:]], {"kind": params["index_type"]}, extra={"early_verdict": verdict},
        )

    @task(**NO_RETRY)
    def validate(plan: dict, merged: dict, params=None) -> dict:
        from lockstep.index import steps as reembed

        return reembed.validate(plan, sample_size=params["sample_size"], min_recall=params["min_recall"])

    @task(outlets=[INDEX_READY])
    def publish(plan: dict, checked: dict, params=None):
        from lockstep.index import steps as reembed

        ready = reembed.publish(plan, params["promote_if_first"])
        yield Metadata(INDEX_READY, ready)
        return ready

    build_recommender()
    # The search tasks follow lockstep.index.plan.STEPS, the order `lockstep index build` runs
    # in one process (tests/dags/test_reembed_plan.py checks it).
    plan = prepare()
    snap = snapshot(plan)
    first = embed.override(task_id="embed_first_slice").partial(plan=plan, snap=snap).expand(shard=first_slice(snap))
    verdict = early_verdict(plan, snap, first)
    decision = stop_or_continue(verdict)
    rest = embed.partial(plan=plan, snap=snap).expand(shard=rest_of_shards(snap))  # listed while the first slice embeds
    decision >> [stop_load(plan, verdict), rest]
    merged = merge(plan, snap, first, rest, verdict)
    publish(plan, validate(plan, merged))


dag = lockstep_reembed()
