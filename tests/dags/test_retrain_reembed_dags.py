"""lockstep_retrain and lockstep_reembed end to end with dag.test() on the demo corpus.

One scenario, in order (it is expensive, so the steps share one Lockstep home):
retrain registers a version with its figures; re-embedding it while another thread
upserts and deletes records ends with an index holding exactly the live records, each
vector from the record's latest text; a shard that fails once is retried and reused.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.dags.conftest import task_states, task_tries

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

TRAIN_PARAMS = {"dim": 48, "min_df": 2, "max_features": 20000, "max_eval_queries": 300, "holdout_percent": 10}


@pytest.fixture
def demo_store(lockstep_home):
    from lockstep.store.corpus import demo_sample
    from lockstep.store.records import RecordStore

    store = RecordStore()
    store.upsert_many(demo_sample(1200, seed=3))
    return store


def test_retrain_then_reembed_under_live_writes(demo_store, airflow_db, monkeypatch):
    import lockstep_reembed
    import lockstep_retrain

    from lockstep.index.storage import load_index
    from lockstep.model.registry import Registry
    from lockstep.store.routing import read_table

    # --- retrain: registers v1 with its figures, alias challenger -----------------------------
    run = lockstep_retrain.dag.test(run_conf=TRAIN_PARAMS)
    states = task_states(run)
    assert run.state == "success", states
    assert states["accept"] == "success" and states["reject"] == "skipped"
    registry = Registry()
    v1 = registry.get_version("1")
    assert v1.fingerprint.startswith("sha256:")
    assert v1.tags["lockstep.model_sha256"].startswith("sha256:")  # checked before the file is unpickled
    assert v1.eval_figures["ndcg_at_10"] > 0.3
    assert registry.version_for_alias("challenger").version == "1"
    client_run = registry._client().get_run(v1.run_id)
    assert "ndcg_at_10" in client_run.data.metrics

    # --- reembed while writes flow; shard 1 fails once after writing its output ---------------
    monkeypatch.setenv("LOCKSTEP_FAULTS", "reembed.embed:1")
    stop = threading.Event()
    written: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        rng = np.random.default_rng(7)
        live = demo_store.snapshot().ids
        try:
            i = 0
            while not stop.is_set():
                rid = live[int(rng.integers(len(live)))]
                if i % 3 == 2:
                    try:
                        demo_store.delete(rid)
                        written.append(("delete", rid))
                    except KeyError:
                        pass
                else:
                    text = f"live update {i} about orbit rockets and hockey goalies"
                    demo_store.upsert(f"{rid}" if i % 2 else f"new-{i}", text)
                    written.append(("upsert", rid))
                i += 1
                time.sleep(0.02)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        run = lockstep_reembed.dag.test(run_conf={"model_version": "1", "shard_size": 300})
    finally:
        stop.set()
        thread.join()
    assert not errors
    states = task_states(run)
    assert run.state == "success", states
    assert len(written) > 20, "the writer should have raced the re-embedding"
    embeds = sorted(k for k in states if k.startswith("embed["))
    assert len(embeds) >= 4 and all(states[k] == "success" for k in embeds)  # >= 1200 records / 300
    tries = task_tries(run)
    assert tries["embed[1]"] == 2 and tries["embed[0]"] == 1, tries  # the injected fault fired once

    # the slot is ready, v1 became the first champion at 100 %
    table = read_table()
    slot = {s.model_version: s for s in table.slots}["1"]
    assert slot.state == "live" and slot.weight == 100
    assert registry.version_for_alias("champion").version == "1"
    assert registry.get_version("1").tags["lockstep.index_location"] == slot.index_location

    # the index holds exactly the live records, each vector from its latest text
    loaded = load_index(slot.index_location, expected_fingerprint=v1.fingerprint)
    from lockstep.index.catch_up import catch_up

    model = registry.load_embedder("1")
    catch_up(loaded.index, model, demo_store, loaded.applied_seq)  # writes after the run's validation
    truth = demo_store.snapshot()
    assert sorted(loaded.index.ids) == truth.ids
    texts = {r.id: r.text for r in truth.records}
    changed = sorted({rid for op, rid in written if op == "upsert" and rid in texts})[:50]
    np.testing.assert_allclose(
        loaded.index.vectors_of(changed), model.transform([texts[i] for i in changed]), atol=1e-5
    )
    # the retried shard reused its output (the merge refuses duplicate ids, so success
    # already shows none); partial indexes are removed once the index is published
    assert not (loaded.location / "shards").exists()


def test_library_build_in_worker_processes_equals_the_serial_build(demo_store):
    """``lockstep index build`` embeds shards in spawned processes; the index must not change."""
    from lockstep.index.build import reembed_version
    from lockstep.index.manifest import read_manifest
    from lockstep.index.storage import load_index
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry

    registry = Registry()
    truth = demo_store.snapshot()
    model = TextEmbedder(dim=32, min_df=2).fit([r.text for r in truth.records])
    versions = [
        registry.log_and_register(model, params={}, metrics={}, snapshot_seq=truth.seq).version for _ in range(2)
    ]
    serial = reembed_version(demo_store, registry, versions[0], shard_size=250, workers=1, promote_if_first=False)
    parallel = reembed_version(demo_store, registry, versions[1], shard_size=250, workers=2, promote_if_first=False)
    assert (serial["workers"], parallel["workers"]) == (1, 2)
    assert serial["shards"] == parallel["shards"] == 5 and serial["shard_size"] == 250
    one, two = (load_index(o["index_location"], expected_fingerprint=model.fingerprint).index for o in (serial, parallel))
    assert sorted(one.ids) == sorted(two.ids) == truth.ids
    np.testing.assert_array_equal(one.vectors_of(truth.ids), two.vectors_of(truth.ids))
    assert read_manifest(parallel["index_location"]).extra["validation"]["store_count"] == len(truth.ids)
