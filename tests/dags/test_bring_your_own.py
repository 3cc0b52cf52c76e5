"""Bring your own model: a team's pyfunc model goes import -> reembed -> rollout -> serving -> rollback.

The model is defined only in the test (tests/model/byo_models.py: a plain
``mlflow.pyfunc.PythonModel`` over a scikit-learn pipeline the team fitted, nothing from
``lockstep``) and logged to a run as the team would. Lockstep registers it with
``lockstep model import`` and every later step is the DAGs' own, run with dag.test():
the re-embed builds its index, a canary under live simulated traffic promotes it (it is
the better model), serving answers with it, and the rollback DAG returns traffic to the
previous champion. Throughout, a result's score is the inner product of the team
model's own embeddings of the query and the record (the pairing property).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.dags.conftest import point_at_fresh_home, task_states
from tests.dags.test_rollout_dags import _assert_promoted, _params, _run, replica

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900, method="thread")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Demo records, a weak built-in champion (v1, dim 8) with its index, and the team's model imported as v2."""
    home = tmp_path_factory.mktemp("byo-home")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home)
        from typer.testing import CliRunner

        from lockstep.cli import app
        from lockstep.index.build import reembed_version
        from lockstep.model.embedding import TextEmbedder
        from lockstep.model.registry import Registry
        from lockstep.ops.simulator import held_out_queries, record_categories
        from lockstep.store.corpus import demo_sample
        from lockstep.store.db import dispose_engines
        from lockstep.store.records import RecordStore
        from tests.model.byo_models import fit_pipeline, log_team_model

        store = RecordStore()
        records = demo_sample(1000, seed=3)
        store.upsert_many(records)
        texts = [r.text for r in records]
        registry = Registry()
        champion = TextEmbedder(dim=8, min_df=2, max_df=0.5).fit(texts)
        info = registry.log_and_register(champion, params={"dim": 8}, metrics={}, snapshot_seq=store.head())
        reembed_version(store, registry, info.version)
        pipeline = fit_pipeline(texts, dim=64)
        uri = log_team_model(registry.tracking_uri, home / "team", pipeline=pipeline)
        result = CliRunner().invoke(app, ["model", "import", "--model-uri", uri])
        assert result.exit_code == 0, result.output
        assert registry.version_for_alias("challenger").version == "2"
        yield {
            "home": home, "store": store, "registry": registry, "pipeline": pipeline, "texts": {r.id: r.text for r in records},
            "queries": held_out_queries(limit=1500), "categories": record_categories(store),
        }
        dispose_engines()


def test_reembed_dag_builds_the_imported_models_index(world):
    import lockstep_reembed

    from lockstep.index.manifest import read_manifest
    from lockstep.store.routing import read_table

    run = lockstep_reembed.dag.test(run_conf={"model_version": "2", "shard_size": 300})
    assert run.state == "success", task_states(run)
    slot = read_table().slot("2")
    assert slot.state == "ready" and slot.fingerprint == world["registry"].get_version("2").fingerprint
    assert read_manifest(slot.index_location).fingerprint == slot.fingerprint


def test_canary_promotes_the_imported_model_and_serving_pairs_it_with_its_own_index(world):
    import httpx
    import lockstep_rollout

    with replica() as url:
        world["url"] = url
        # The team's scikit-learn pipeline takes 1-2 ms per query where the built-in family's fast path takes
        # 0.1 ms: the latency gate rightly calls it slower, so the team allows it (the gate has its own tests).
        params = {"model_version": "2", **_params(url), "latency_tolerance": 50.0}
        run, states, report = _run(lockstep_rollout.dag, params, world)
        _assert_promoted(world, run, states, "2", "1", "canary")
        assert report.by_version["2"]["ctr"] > report.by_version["1"]["ctr"]
        pipeline = world["pipeline"]
        for query in world["queries"][:20]:
            body = httpx.post(f"{url}/search", json={"query": query.text, "k": 5}, timeout=10).json()
            assert body["model_version"] == "2"
            q = pipeline.transform([query.text])[0]
            for hit in body["results"]:
                expected = float(np.dot(q, pipeline.transform([world["texts"][hit["id"]]])[0]))
                assert hit["score"] == pytest.approx(expected, abs=1e-4)


def test_rollback_dag_returns_traffic_from_the_imported_model(world):
    import lockstep_rollback

    from lockstep.index.build import reembed_version
    from lockstep.store.routing import read_table

    reembed_version(world["store"], world["registry"], "1", promote_if_first=False)  # retention removed it at promotion
    with replica() as url:
        world["url"] = url
        conf = {"reason": "the team's model misses rare words", "to_version": "1", "serving_url": url, "verify_timeout_seconds": 30}
        run, states, _ = _run(lockstep_rollback.dag, conf, world)
        assert run.state == "success", states
        assert read_table().weights == {"1": 100}
        assert world["registry"].version_for_alias("champion").version == "1"
        assert world["registry"].get_version("2").tags["lockstep.rolled_back_reason"] == "the team's model misses rare words"
