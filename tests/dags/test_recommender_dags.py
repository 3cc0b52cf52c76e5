"""The recommender system's lifecycle as real DAG runs (dag.test()) on MovieLens-100k.

A recommender deployment (``LOCKSTEP_SYSTEM=recommender``): the interaction store holds
each user's first 80 % of ratings by time; the last 20 % are the simulated users' future,
the items they click when a version recommends them (``RecommenderSimulator``; offline,
the 32-factor fit puts 1.67 of them in a top 10, the 1-factor fit 1.05). The same DAG
ids as search run it:

    v1  ALS, 1 factor             first champion (lockstep_reembed builds it)
    v2  ALS, 32 factors           canary under live traffic: promoted
    v3  v2's fit, item vectors negated (recommends what users like least): rolled back at
        the first canary step
    then lockstep_rollback returns traffic from v2 to v1.

Every run checks that no answer mixed versions and no simulated user saw a failed request.
"""

from __future__ import annotations

import time

import pytest

from tests.dags.conftest import point_at_fresh_home, task_states
from tests.dags.test_rollout_dags import (
    _assert_promoted,
    _assert_rolled_back,
    _params,
    _steps,
    replica,
)

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900, method="thread")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    home = tmp_path_factory.mktemp("recommender-dags")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home, LOCKSTEP_SYSTEM="recommender")
        from lockstep.ops.recommender_simulator import split_future
        from lockstep.recommender import movielens
        from lockstep.recommender.registration import recommender_registry
        from lockstep.store.db import dispose_engines
        from lockstep.store.interactions import InteractionStore
        from tests.conftest import DEMO_CACHE

        store = InteractionStore()
        store.upsert_items(movielens.items(DEMO_CACHE))
        past, future = split_future(movielens.interactions(DEMO_CACHE), 0.2)
        store.add_many(past)
        yield {"home": home, "store": store, "registry": recommender_registry(), "future": future}
        dispose_engines()


def _register(world, model) -> str:
    from lockstep.recommender.registration import register_fit

    snapshot_seq = world["store"].max_seq()
    return register_fit(model, {}, registry=world["registry"], snapshot_seq=snapshot_seq).version


def _run(dag, conf: dict, world, *, traffic: bool = True) -> tuple:
    """dag.test() under live simulated users; returns (dag run, task states, simulator report or None)."""
    from lockstep.ops.recommender_simulator import RecommenderSimulator
    from lockstep.ops.simulator import ClickModel

    sim = None
    if traffic:
        sim = RecommenderSimulator(world["url"], world["future"], concurrency=2, seed=5, rate=150,
                                   click_model=ClickModel(p_relevant=0.6, p_irrelevant=0.01, decay=0.8)).start()
    started = time.monotonic()
    try:
        run = dag.test(run_conf=conf)
    finally:
        report = sim.stop() if sim else None
    print(f"{dag.dag_id} {conf.get('model_version', '')}: {run.state} in {time.monotonic() - started:.1f} s")
    if report:
        print(report.summary())
        assert report.errors == 0, report.error_samples
        assert report.mixed == 0
    return run, task_states(run), report


def test_reembed_dag_builds_the_first_recommender_version_and_makes_it_champion(world):
    import lockstep_reembed

    from lockstep.recommender.factorization import ALSRecommender
    from lockstep.store.routing import read_table

    version = _register(world, ALSRecommender(factors=1, iterations=2).fit(world["store"].snapshot()))
    run = lockstep_reembed.dag.test(run_conf={"model_version": version})
    states = task_states(run)
    assert run.state == "success" and states["build_recommender"] == "success", states
    assert states["prepare"] == "skipped" and states["publish"] == "skipped"
    assert read_table().weights == {version: 100}
    assert world["registry"].version_for_alias("champion").version == version == "1"


def test_a_better_recommender_walks_the_canary_and_is_promoted(world):
    import lockstep_reembed
    import lockstep_rollout

    from lockstep.recommender.factorization import ALSRecommender

    world["good"] = ALSRecommender(factors=32, iterations=10).fit(world["store"].snapshot())
    version = _register(world, world["good"])
    assert lockstep_reembed.dag.test(run_conf={"model_version": version}).state == "success"
    with replica() as url:
        world["url"] = url
        run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_params(url)}, world)
        _assert_promoted(world, run, states, version, "1", "canary")
        assert {s["phase"] for s in _steps(run)} >= {"shadow", "canary"}
        assert report.by_version[version]["requests"] > 0


def test_a_recommender_that_ranks_backwards_is_rolled_back_at_the_first_canary_step(world):
    import lockstep_reembed
    import lockstep_rollout

    backwards = world["good"].__class__(**world["good"].get_params())
    backwards.user_ids_, backwards.item_ids_ = world["good"].user_ids_, world["good"].item_ids_
    backwards.user_factors_ = world["good"].user_factors_
    backwards.item_factors_ = -world["good"].item_factors_  # the items users like least come first
    backwards.library_versions_ = world["good"].library_versions_
    backwards._index_ids()
    backwards.fingerprint_ = backwards._compute_fingerprint()
    version = _register(world, backwards)
    assert lockstep_reembed.dag.test(run_conf={"model_version": version}).state == "success"
    with replica() as url:
        world["url"] = url
        run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_params(url)}, world)
        assert run.state == "failed", states
        assert states["canary"] == "failed" and states["rollback"] == "success", states
        assert report.by_version[version]["ctr"] < report.by_version["2"]["ctr"]
        _assert_rolled_back(world, version, "2", "canary 25%")


def test_rollback_dag_returns_recommender_traffic_to_the_previous_champion(world):
    import lockstep_reembed
    import lockstep_rollback

    from lockstep.store.routing import read_table

    assert lockstep_reembed.dag.test(run_conf={"model_version": "1", "promote_if_first": False}).state == "success"
    with replica() as url:
        world["url"] = url
        conf = {"reason": "users miss older films", "to_version": "1", "serving_url": url, "verify_timeout_seconds": 30}
        run, states, _ = _run(lockstep_rollback.dag, conf, world)
        assert run.state == "success", states
        assert read_table().weights == {"1": 100}
        assert world["registry"].version_for_alias("champion").version == "1"


def test_drift_dag_sees_new_items_in_the_interactions_and_emits_the_drift_asset(world):
    import pandas as pd
    from lockstep_drift import lockstep_drift_dag

    from lockstep.core.alerts import recent_alerts

    store = world["store"]
    new_items = pd.DataFrame({"item_id": [f"new-film-{i}" for i in range(20)], "title": [f"New film {i}" for i in range(20)]})
    store.upsert_items(new_items)
    users = sorted(world["future"])[:200]
    rows = [{"user_id": u, "item_id": f"new-film-{i % 20}", "value": 4.0, "timestamp": 2_000_000_000 + i} for i, u in enumerate(users)]
    rows += [{"user_id": u, "item_id": sorted(world["future"][u])[0], "value": 4.0, "timestamp": 2_000_000_500 + i} for i, u in enumerate(users)]
    store.add_many(pd.DataFrame(rows))
    run = lockstep_drift_dag.test(run_conf={"min_records": 50})
    states = task_states(run)
    assert run.state == "success" and states["emit_drift"] == "success", states
    report = run.get_task_instance("log_report").xcom_pull(task_ids="log_report")
    assert report["system"] == "recommender" and report["champion_version"] == "1"
    assert report["figures"]["new_item_share"] >= 0.5  # the new films, and any future item the v1 fit never saw
    assert any("items it does not know" in r for r in report["reasons"])
    assert any(a["event"] == "drift_detected" for a in recent_alerts(20))


def test_retrain_dag_fits_a_recommender_judged_against_the_champion_and_names_the_challenger(world):
    import lockstep_retrain

    run = lockstep_retrain.dag.test(run_conf={"factors": 16, "iterations": 5, "margin": 0.0})
    states = task_states(run)
    assert run.state == "success", states
    assert states["train_recommender"] == "success" and states["accept_recommender"] == "success", states
    assert states["snapshot"] == "skipped" and states["reject_recommender"] == "skipped"
    registry = world["registry"]
    challenger = registry.version_for_alias("challenger")
    figures = challenger.eval_figures
    assert figures["ndcg_at_10"] > figures["champion_ndcg_at_10"]  # 16 factors against the 1-factor champion's parameters
    assert figures["delta_ndcg_at_10_ci_low"] > 0
    assert challenger.snapshot_seq == world["store"].max_seq()
