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

from airflow.sdk import Metadata, Param, dag, task

from lockstep.ops.dag_support import (
    CHALLENGER,
    DEFAULT_ARGS,
    INDEX_READY,
    NO_RETRY,
    deployment_system,
    embedding_processes,
    latest_extra,
    on_failure,
    time_limits,
)

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
    params={
        "model_version": Param(
            None, type=["null", "string"],
            title="Model version", section="Version", description="Registered version to index. Empty: the version from the challenger asset, else alias 'challenger'.",
        ),
        "promote_if_first": Param(True, type="boolean", title="Make the first version champion", section="Version", description="With no champion yet, make this version champion at 100 % once its index is ready."),
        "index_type": Param(
            "auto", enum=["auto", "flat", "ivf", "hnsw"],
            title="Index type", section="Index", description="auto: exact flat below LOCKSTEP_ANN_THRESHOLD records, HNSW above. flat is exact; ivf and hnsw are approximate (validated by recall@10).",
        ),
        "shard_size": Param(
            None, type=["null", "integer"], minimum=100, maximum=1_000_000,
            title="Records per shard", section="Index", description="Records per shard (one mapped task each). Empty: chosen from the record count to give about target_shards shards.",
        ),
        "target_shards": Param(
            None, type=["null", "integer"], minimum=1, maximum=1000,
            title="Shards to aim for", section="Index", description="Shards to aim for when shard_size is empty. Empty: 4 per embedding process (LOCKSTEP_REEMBED_WORKERS, default the core count; each task costs Airflow ~3 s).",
        ),
        "min_recall": Param(0.95, type="number", minimum=0, maximum=1, title="Least recall@10", section="Validation", description="Minimum recall@10 against exact search for approximate index types."),
        "sample_size": Param(200, type="integer", minimum=1, title="Vectors re-embedded to compare", section="Validation", description="Stored vectors compared with fresh embeddings during validation."),
        "early_verdict_share": Param(
            0.1, type="number", exclusiveMinimum=0, maximum=0.5,
            title="First slice", section="Early verdict", description="Share of the records embedded first, as a uniform sample (a seeded hash of the id), and judged before the rest is embedded.",
        ),
        "early_verdict_action": Param(
            "warn", enum=["warn", "stop"],
            title="When the candidate is worse", section="Early verdict", description="warn: continue the load and warn; stop: stop it (slot retired, version rejected, its files deleted). Worse: the 95 % CI's upper bound of the nDCG@10 difference lies below -margin.",
        ),
        "early_verdict_margin": Param(
            0.01, type="number", minimum=0, maximum=1,
            title="Margin (nDCG@10)", section="Early verdict", description="How much worse than the champion, in nDCG@10 on the loaded records, the candidate must be beyond doubt before the action applies.",
        ),
    },
)
def lockstep_reembed():
    @task.run_if(lambda context: deployment_system() == "recommender", skip_message="a search deployment")
    @task(outlets=[INDEX_READY])
    def build_recommender(params=None, triggering_asset_events=None):
        from lockstep.recommender import steps as recommender

        extra = latest_extra(triggering_asset_events, CHALLENGER)
        ready = recommender.build_requested(params["model_version"], extra, promote_if_first=params["promote_if_first"])
        yield Metadata(INDEX_READY, ready)
        return ready

    @task.run_if(lambda context: deployment_system() != "recommender", skip_message="a recommender deployment")
    @task
    def prepare(params=None, triggering_asset_events=None) -> dict:
        from lockstep.index import steps as reembed

        return reembed.prepare_requested(params["model_version"], latest_extra(triggering_asset_events, CHALLENGER))

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
