"""lockstep_batch as real DAG runs (dag.test()): the demo corpus (search) and MovieLens (recommender).

Search, in order on one home: a first run fills every row of the champion (equal to a
brute-force FAISS search, version complete); after PUTs and DELETEs a second run
recomputes only the affected keys (counted) and its rows equal a full recompute; a run
with nothing new computes nothing (the mapped task has no shard). Recommender: a first
run gives every user what ``POST /recommend`` gives (the version's own fold-in and seen
items); new interactions recompute only the users they touch and equal a full run.
"""

from __future__ import annotations

import pytest

from tests.batch.helpers import brute_force_related, mismatches, rows_of
from tests.dags.conftest import point_at_fresh_home, task_states

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900, method="thread")]

K = 10


@pytest.fixture(scope="module")
def search_world(tmp_path_factory, airflow_db):
    """1,500 demo-corpus records, one embedder fitted on them, its index live at 100 %."""
    home = tmp_path_factory.mktemp("batch-search")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home, LOCKSTEP_SCHEDULES="off")
        from lockstep.model.embedding import TextEmbedder
        from lockstep.store import routing
        from lockstep.store.corpus import demo_sample
        from lockstep.store.db import dispose_engines, get_engine
        from lockstep.store.records import RecordStore
        from tests.serving.harness import make_slot

        engine = get_engine()
        store = RecordStore(engine)
        store.upsert_many(demo_sample(1500, seed=5))
        model = TextEmbedder(dim=32, min_df=2, random_state=0).fit([r.text for r in store.snapshot().records])
        make_slot(engine, store, model, "1", home)
        routing.set_weights({"1": 100}, engine=engine)
        yield {"home": home, "store": store, "model": model, "engine": engine}
        dispose_engines()


def _truth(world) -> dict:
    from lockstep.index.catch_up import catch_up
    from lockstep.index.storage import load_index
    from lockstep.store.routing import read_table

    slot = read_table(world["engine"]).slot("1")
    loaded = load_index(slot.index_location, expected_fingerprint=slot.fingerprint)
    catch_up(loaded.index, world["model"], world["store"], loaded.applied_seq)
    return brute_force_related(loaded.index, K)


def _run(conf: dict | None = None):
    import lockstep_batch

    # every Param named: dag.test() keeps the previous run's values otherwise
    run = lockstep_batch.dag.test(run_conf={"k": K, "shard_size": 400, "full": False, "model_versions": None, **(conf or {})})
    states = task_states(run)
    assert run.state == "success", states
    return run, states


def _finished(run) -> dict:
    [ti] = [t for t in run.get_task_instances() if t.task_id == "finish"]
    return ti.xcom_pull(task_ids="finish")


def test_search_rows_complete_then_incremental_after_writes(search_world):
    from lockstep.store.batch_results import RELATED, BatchResultStore

    store, engine = search_world["store"], search_world["engine"]
    results = BatchResultStore(engine)

    # --- first run: every record's row, exactly brute force, version complete -------------------
    run, states = _run()
    assert sorted(k for k in states if k.startswith("compute[")) == [f"compute[{i}]" for i in range(4)]  # 1,500 / 400
    assert states["finish"] == "success" and states["drop_retired"] == "success"
    state = results.state(RELATED, "1")
    assert state.complete and state.rows == store.count() == 1500 and state.through_seq == store.head()
    rows = rows_of(RELATED, "1", engine)
    assert mismatches(rows, _truth(search_world)) == []

    # --- PUT / DELETE, then an incremental run ----------------------------------------------------
    first = store.head()
    ids = store.snapshot().ids
    store.upsert(ids[10], "the goalie stopped every shot in the hockey playoff game")
    store.upsert(ids[20], "space shuttle orbit launch from the cape")
    store.upsert("new-record", "encryption keys and the clipper chip debate")
    store.delete(ids[30])
    store.delete(ids[40])
    run, states = _run()
    [v1] = _finished(run)["versions"]
    recomputed = {r.key for r in results.iter_rows(RELATED, "1") if r.input_seq > first}
    assert v1["mode"] == "incremental" and v1["removed"] == 2
    assert len(recomputed) == v1["computed"] and 3 <= v1["computed"] < 150, v1  # only the affected keys
    assert {ids[10], ids[20], "new-record"} <= recomputed
    incremental = rows_of(RELATED, "1", engine)
    assert ids[30] not in incremental and ids[40] not in incremental and len(incremental) == 1499
    assert mismatches(incremental, _truth(search_world)) == []

    # --- a full recompute gives the same rows -----------------------------------------------------
    run, _ = _run({"full": True})
    [full] = _finished(run)["versions"]
    assert full["mode"] == "full" and full["computed"] == 1499
    assert mismatches(incremental, rows_of(RELATED, "1", engine)) == []

    # --- nothing new: no shard, nothing computed, still complete ---------------------------------
    run, states = _run()
    [same] = _finished(run)["versions"]
    assert not any(k.startswith("compute[") for k in states), states
    assert (same["mode"], same["computed"], same["complete"]) == ("unchanged", 0, True)


@pytest.fixture(scope="module")
def recommender_world(tmp_path_factory, airflow_db):
    """MovieLens-100k, an 8-factor ALS fit registered and live at 100 % on a recommender deployment."""
    home = tmp_path_factory.mktemp("batch-recommender")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home, LOCKSTEP_SYSTEM="recommender", LOCKSTEP_SCHEDULES="off")
        from lockstep.recommender import movielens
        from lockstep.recommender.factorization import ALSRecommender
        from lockstep.recommender.registration import recommender_registry, register_fit
        from lockstep.recommender.steps import build_requested
        from lockstep.store.db import dispose_engines
        from lockstep.store.interactions import InteractionStore
        from tests.conftest import DEMO_CACHE

        store = InteractionStore()
        store.upsert_items(movielens.items(DEMO_CACHE))
        store.add_many(movielens.interactions(DEMO_CACHE))
        registry = recommender_registry()
        model = ALSRecommender(factors=8, iterations=3, random_state=0).fit(store.snapshot())
        version = register_fit(model, {}, registry=registry, snapshot_seq=store.max_seq()).version
        build_requested(version, None, registry)  # slot files, slot live at 100 % as the first champion
        yield {"home": home, "store": store, "version": version}
        dispose_engines()


def test_recommender_rows_are_what_recommend_gives_and_follow_new_interactions(recommender_world):
    from lockstep.batch.world import recommender_world as world_at
    from lockstep.store.batch_results import RECOMMENDATIONS, BatchResultStore
    from lockstep.store.routing import read_table

    store, version = recommender_world["store"], recommender_world["version"]
    results = BatchResultStore(store.engine)
    run, states = _run({"shard_size": 300})
    [v] = _finished(run)["versions"]
    assert v["mode"] == "full" and v["rows"] == store.user_count() == 943 and v["complete"]
    first = store.max_seq()

    # new interactions: two users, one of them on a brand-new item
    new_item = "batch-test-item"
    import pandas as pd

    store.upsert_items(pd.DataFrame({"item_id": [new_item], "title": ["A new film"]}))
    store.add("1", new_item, 5.0)
    store.add("2", "50", 4.0)
    store.add("3", new_item, 4.0)
    run, _ = _run({"shard_size": 300})
    [v] = _finished(run)["versions"]
    recomputed = {r.key for r in results.iter_rows(RECOMMENDATIONS, version) if r.input_seq > first}
    assert v["mode"] == "incremental" and len(recomputed) == v["computed"] and {"1", "2", "3"} <= recomputed
    assert v["computed"] < 943 // 2, v

    # every row is what the version answers now (its own fold-in, seen items left out)
    slot = read_table(store.engine).slot(version)
    world = world_at(slot, store, store.max_seq())
    rows = rows_of(RECOMMENDATIONS, version, store.engine)
    want = {u: world.live.recommend(u, K, exclude=world.seen.get(u, ())) for u in world.all_keys()}
    assert mismatches(rows, want) == []
    assert all(new_item not in {i for i, _ in rows[u]} for u in ("1", "3"))  # seen: left out

    # GET /recommendations/{user_id} on the recommender deployment answers the user's row
    import httpx

    from lockstep.core.config import Settings
    from lockstep.serving import ServingConfig
    from lockstep.systems import create_app
    from tests.serving.harness import serve

    config = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, replica="test")
    with serve(create_app(Settings.from_env(), config=config)) as s:
        answer = httpx.get(f"{s.url}/recommendations/1")
        unknown = httpx.get(f"{s.url}/recommendations/nobody")
        spec = httpx.get(f"{s.url}/openapi.json").json()
    assert answer.status_code == 200 and answer.json()["model_version"] == version
    assert [(h["id"], h["score"]) for h in answer.json()["results"]] == rows["1"]
    assert unknown.status_code == 404 and "'nobody' has no precomputed recommendations" in unknown.json()["detail"]
    assert "/related/{record_id}" not in spec["paths"] and "/recommendations/{user_id}" in spec["paths"]
