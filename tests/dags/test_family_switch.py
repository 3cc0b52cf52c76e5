"""A family switch rolls out like any new version: TF-IDF champion -> word-vector challenger.

One Lockstep home for the module, the cases in order, every step a real ``dag.test()``
run: ``lockstep_retrain`` with Param ``family=word_vectors`` trains Word2Vec + SIF on the
demo sample and registers it against a weak TF-IDF champion (tagged with its family and
its evaluation figures); ``lockstep_reembed`` builds its index; ``lockstep_rollout``
walks the canary under live simulated traffic to 100 % and alias ``champion``; the
serving replica then answers with the word-vector version, and every result's score is
the inner product of that model's own embeddings of the query and the record (the
pairing property).

The DAGs are parsed afresh from their files (``dag.test(run_conf=...)`` changes a DAG's
Params in place, and other modules run the imported ones with their defaults).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.dags.conftest import DAGS, point_at_fresh_home, task_states
from tests.dags.test_rollout_dags import _assert_promoted, _params, _run, replica

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900, method="thread")]

SWITCH = {  # every Param of lockstep_retrain, so no earlier run's value carries over
    "family": "word_vectors", "dim": 32, "max_features": 20000, "min_df": 2, "max_df": 0.5,
    "window": 10, "min_count": 2, "epochs": 10, "sif_a": 0.001, "fit_sample": 200000,
    "margin": 0.005, "holdout_percent": 10, "max_eval_queries": 300, "skip_validation": False,
}


def fresh_dag(name: str):
    """The DAG of ``dags/<name>.py`` parsed into a module of its own (not ``sys.modules[name]``)."""
    spec = importlib.util.spec_from_file_location(f"{name}_family_switch", DAGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Demo records and a weak TF-IDF champion (v1, dim 2) serving at 100 % from its index."""
    home = tmp_path_factory.mktemp("family-switch-home")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home)
        from lockstep.index.build import reembed_version
        from lockstep.model.embedding import TextEmbedder
        from lockstep.model.registry import Registry
        from lockstep.ops.simulator import held_out_queries, record_categories
        from lockstep.store.corpus import demo_sample
        from lockstep.store.db import dispose_engines
        from lockstep.store.records import RecordStore

        store = RecordStore()
        records = demo_sample(1000, seed=3)
        store.upsert_many(records)
        registry = Registry()
        champion = TextEmbedder(dim=2, min_df=2, max_df=0.5).fit([r.text for r in records])
        info = registry.log_and_register(champion, params={"family": "tfidf_svd", "dim": 2}, metrics={}, snapshot_seq=store.head())
        reembed_version(store, registry, info.version)
        assert registry.version_for_alias("champion").version == "1"
        yield {
            "home": home, "store": store, "registry": registry, "texts": {r.id: r.text for r in records},
            "queries": held_out_queries(limit=1500), "categories": record_categories(store),
        }
        dispose_engines()


def test_the_family_param_lists_the_built_in_families_and_refuses_others(airflow_db):
    from airflow.sdk.exceptions import ParamValidationError

    from lockstep.model.families import families
    from tests.dags.test_dag_integrity import _scheduler_params

    dag = fresh_dag("lockstep_retrain")
    assert dag.params.get_param("family").schema["enum"] == sorted(families())
    assert _scheduler_params(dag).deep_merge({}).validate()["family"] == "tfidf_svd"
    assert _scheduler_params(dag).deep_merge({"family": "word_vectors"}).validate()["family"] == "word_vectors"
    with pytest.raises(ParamValidationError, match="family"):
        _scheduler_params(dag).deep_merge({"family": "bert"}).validate()


def test_retrain_dag_registers_a_word_vector_challenger_with_its_figures(world):
    from lockstep.model.word_vectors import WordVectorEmbedder

    run = fresh_dag("lockstep_retrain").test(run_conf=SWITCH)
    states = task_states(run)
    assert run.state == "success", states
    assert states["accept"] == "success" and states["reject"] == "skipped"
    registry = world["registry"]
    v2 = registry.get_version("2")
    assert v2.tags["lockstep.family"] == "word_vectors" and v2.dim == 32
    assert registry.version_for_alias("challenger").version == "2"
    figures = v2.eval_figures
    print(f"word_vectors v2: nDCG@10 {figures['ndcg_at_10']:.4f}, against the TF-IDF dim-2 champion "
          f"{figures['delta_ndcg_at_10']:+.4f} ({figures['delta_ndcg_at_10_ci_low']:+.4f} to {figures['delta_ndcg_at_10_ci_high']:+.4f})")
    assert figures["delta_ndcg_at_10_ci_low"] > 0  # judged against the other family's champion
    assert v2.tags["lockstep.champion_at_training"] == "1"
    params = registry.run_params(v2.run_id)
    assert params["family"] == "word_vectors" and params["embedder.window"] == "10" and params["embedder.dim"] == "32"
    assert f"**Model family:** {WordVectorEmbedder.FAMILY}" in registry.version_description("2")
    world["model"] = registry.load_embedder("2")
    assert type(world["model"]) is WordVectorEmbedder and world["model"].fingerprint == v2.fingerprint


def test_reembed_dag_builds_the_word_vector_index(world):
    from lockstep.index.storage import load_index
    from lockstep.store.routing import read_table

    run = fresh_dag("lockstep_reembed").test(run_conf={"model_version": "2", "shard_size": 300})
    assert run.state == "success", task_states(run)
    slot = read_table().slot("2")
    fingerprint = world["registry"].get_version("2").fingerprint
    assert slot.state == "ready" and slot.fingerprint == fingerprint
    assert read_table().weights == {"1": 100}  # a challenger waits for its rollout
    loaded = load_index(slot.index_location, expected_fingerprint=fingerprint)
    assert sorted(loaded.index.ids) == world["store"].snapshot().ids
    some = sorted(world["texts"])[:40]
    np.testing.assert_allclose(
        loaded.index.vectors_of(some), world["model"].transform([world["texts"][i] for i in some]), atol=1e-5
    )


def test_canary_promotes_the_word_vectors_and_serving_pairs_them_with_their_index(world):
    import httpx

    with replica() as url:
        world["url"] = url
        params = {"model_version": "2", **_params(url), "latency_tolerance": 2.0}
        run, states, report = _run(fresh_dag("lockstep_rollout"), params, world)
        _assert_promoted(world, run, states, "2", "1", "canary")
        assert report.by_version["2"]["ctr"] > report.by_version["1"]["ctr"]
        model, texts = world["model"], world["texts"]
        answered = 0
        for query in world["queries"][:30]:
            body = httpx.post(f"{url}/search", json={"query": query.text, "k": 5}, timeout=10).json()
            assert body["model_version"] == "2" and body["fingerprint"] == model.fingerprint
            q = model.embed_query(query.text)
            for hit in body["results"]:
                expected = float(np.dot(q, model.transform([texts[hit["id"]]])[0]))
                assert hit["score"] == pytest.approx(expected, abs=1e-4)
                answered += 1
        assert answered >= 100
