"""The early verdict in lockstep_reembed, as real dag.test() runs on the demo corpus (issue 14).

One Lockstep home for the module; the cases run in order:

    v1  dim 8                    first version: "no baseline", the load continues, v1 champion
    v2  dim 2, wrong half        action stop: stopped after the first slice (slot retired, version
                                 rejected, files freed); the champion's routing, alias and index untouched
    v3  dim 2, wrong half        action warn (the default): the load continues to a ready index, and warns
    v4  dim 64                   action stop: better, continues and completes

The early nDCG@10 difference (on the 20 % first slice) agrees in sign with the full
offline evaluation of the same two models on the whole corpus.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.dags.conftest import point_at_fresh_home, task_states

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900, method="thread")]

RECORDS = 2000
SHARE = 0.2
MODELS = {"champion": (8, False), "worse_stop": (2, True), "worse_warn": (2, True), "better": (64, False)}


def _conf(version: str, action: str | None = None, **extra) -> dict:
    """Every Param named (dag.test() keeps the previous run's values); action None: the default."""
    conf = {
        "model_version": version, "shard_size": 250, "index_type": "flat", "promote_if_first": True,
        "early_verdict_share": SHARE, "early_verdict_margin": 0.01, **extra,
    }
    conf["early_verdict_action"] = action or "warn"
    return conf


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Demo records, the four versions registered (no index yet), and logged searches of the corpus."""
    home = tmp_path_factory.mktemp("early-verdict-home")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home)
        from lockstep.model.embedding import TextEmbedder
        from lockstep.model.registry import Registry
        from lockstep.store.corpus import DEMO_CATEGORIES, demo_sample
        from lockstep.store.db import dispose_engines
        from lockstep.store.records import RecordStore

        store = RecordStore()
        records = demo_sample(RECORDS, seed=3)
        store.upsert_many(records)
        texts = [r.text for r in records]
        wrong_half = [r.text for r in records if r.metadata["category"] in DEMO_CATEGORIES[:10]]
        registry = Registry()
        versions, models = {}, {}
        for name, (dim, wrong) in MODELS.items():
            model = TextEmbedder(dim=dim, min_df=2, max_df=0.5, random_state=0).fit(wrong_half if wrong else texts)
            info = registry.log_and_register(model, params={"dim": dim}, metrics={}, snapshot_seq=store.head())
            versions[name], models[name] = info.version, model
        _log_searches(records[::20])
        yield {"store": store, "registry": registry, "versions": versions, "models": models}
        dispose_engines()


def _log_searches(records) -> None:
    """Searches as a serving replica logs them (the early verdict's logged queries)."""
    from lockstep.serving.logs import LogWriter
    from lockstep.store.db import get_engine

    writer = LogWriter(get_engine())
    for i, r in enumerate(records):
        writer.request(request_id=f"req-{i}", model_version="1", query=" ".join(r.text.split()[:12]), k=10,
                       latency_ms=1.0, status=200, top_ids=[])
    assert writer.flush() == len(records)


def _full_delta(world, candidate: str) -> float:
    """The offline evaluation's nDCG@10 difference, candidate - champion, on the whole corpus."""
    from lockstep.model.evaluation import compare
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import evaluate_embedder, split_holdout

    cfg = TrainConfig()
    holdout = split_holdout(world["store"].snapshot().records, cfg)
    ours = evaluate_embedder(world["models"][candidate], holdout, cfg)
    theirs = evaluate_embedder(world["models"]["champion"], holdout, cfg)
    return compare(ours, theirs, cfg.margin, cfg.metric).figures["delta_ndcg_at_10"]


def _files_digest(location: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(location).iterdir()) if p.is_file()}


def test_first_version_has_no_baseline_and_becomes_champion(world):
    import lockstep_reembed

    from lockstep.index.early_verdict import early_verdict_of

    v1 = world["versions"]["champion"]
    run = lockstep_reembed.dag.test(run_conf=_conf(v1))
    states = task_states(run)
    assert run.state == "success", states
    assert states["early_verdict"] == "success" and states["stop_load"] == "skipped"
    assert states["publish"] == "success"
    assert any(k.startswith("embed_first_slice[") for k in states)
    verdict = early_verdict_of(v1, world["registry"])
    assert verdict["verdict"] == "no baseline" and "no champion" in verdict["reason"]
    assert world["registry"].version_for_alias("champion").version == v1


def test_a_worse_candidate_is_stopped_after_the_first_slice_and_the_champion_is_untouched(world):
    import lockstep_reembed

    from lockstep.index.early_verdict import early_verdict_of
    from lockstep.index.storage import index_location
    from lockstep.store.routing import read_table

    registry, v1, v2 = world["registry"], world["versions"]["champion"], world["versions"]["worse_stop"]
    before = read_table()
    champion_slot = before.slot(v1)
    champion_files = _files_digest(champion_slot.index_location)

    run = lockstep_reembed.dag.test(run_conf=_conf(v2, action="stop"))
    states = task_states(run)
    assert run.state == "success", states
    assert states["early_verdict"] == "success" and states["stop_load"] == "success"
    for skipped in ("embed", "merge", "validate", "publish"):
        assert states[skipped] == "skipped", (skipped, states)
    assert not any(k.startswith("embed[") and states[k] == "success" for k in states)  # the rest was never embedded

    # the verdict, with its figures, on the MLflow version and on the version's run
    verdict = early_verdict_of(v2, registry)
    figures = verdict["figures"]
    assert verdict["verdict"] == "stop" and verdict["champion_version"] == v1
    assert figures["delta_ndcg_at_10_ci_high"] < -0.01
    assert 0.1 * RECORDS < figures["loaded_records"] < 0.3 * RECORDS
    assert figures["n_queries"] > 100 and figures["logged_queries"] > 50  # distinct texts of the 100 logged
    assert 0.0 <= figures["logged_overlap_at_10"] <= 1.0
    info = registry.get_version(v2)
    metrics = registry._client().get_run(info.run_id).data.metrics
    assert metrics["early_verdict.delta_ndcg_at_10"] == pytest.approx(figures["delta_ndcg_at_10"])
    # the early figure agrees in sign with the full offline evaluation
    assert figures["delta_ndcg_at_10"] < 0 and _full_delta(world, "worse_stop") < 0

    # the slot is retired with the reason, the version rejected, its files gone
    after = read_table()
    slot = after.slot(v2)
    assert slot.state == "retired" and "early verdict" in slot.note and slot.weight == 0
    assert info.status == "rejected" and "early verdict" in info.tags["lockstep.rejected_reason"]
    assert "challenger" not in info.aliases
    assert not index_location(registry.model_name, v2).exists()

    # nothing of the champion changed: routing, alias, index files
    assert after.weights == before.weights == {v1: 100}
    assert after.slot(v1).state == champion_slot.state and after.slot(v1).index_location == champion_slot.index_location
    assert registry.version_for_alias("champion").version == v1
    assert _files_digest(champion_slot.index_location) == champion_files

    # the UI page shows why the load stopped, though the version's files are gone
    from lockstep.systems import load_dashboard

    shown = {v["model_version"]: v for v in load_dashboard().early_verdicts}
    assert shown[v2]["verdict"] == "stop" and shown[v2]["figures"]["delta_ndcg_at_10"] == figures["delta_ndcg_at_10"]
    assert shown[v1]["verdict"] == "no baseline"


def test_by_default_a_worse_candidate_is_loaded_with_a_warning(world, caplog):
    import lockstep_reembed

    from lockstep.index.early_verdict import early_verdict_of
    from lockstep.index.manifest import read_manifest
    from lockstep.store.routing import read_table

    v3 = world["versions"]["worse_warn"]
    with caplog.at_level("WARNING", logger="lockstep.early_verdict"):
        run = lockstep_reembed.dag.test(run_conf=_conf(v3))
    states = task_states(run)
    assert run.state == "success", states
    assert states["stop_load"] == "skipped" and states["publish"] == "success"
    verdict = early_verdict_of(v3, world["registry"])
    assert verdict["verdict"] == "warn" and verdict["action"] == "warn" and "the load continues" in verdict["reason"]
    slot = read_table().slot(v3)
    assert slot.state == "ready"
    manifest = read_manifest(slot.index_location)
    assert manifest.extra["early_verdict"]["verdict"] == "warn" and "validation" in manifest.extra
    assert manifest.record_count == RECORDS
    assert any("early verdict for v" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_a_better_candidate_continues_and_completes_under_action_stop(world):
    import lockstep_reembed

    from lockstep.index.early_verdict import early_verdict_of
    from lockstep.store.routing import read_table

    v1, v4 = world["versions"]["champion"], world["versions"]["better"]
    run = lockstep_reembed.dag.test(run_conf=_conf(v4, action="stop"))
    states = task_states(run)
    assert run.state == "success", states
    assert states["stop_load"] == "skipped" and states["merge"] == "success" and states["publish"] == "success"
    verdict = early_verdict_of(v4, world["registry"])
    assert verdict["verdict"] == "continue"
    early = verdict["figures"]["delta_ndcg_at_10"]
    full = _full_delta(world, "better")
    assert early > 0 and full > 0, (early, full)  # the same sign as the full evaluation
    table = read_table()
    assert table.slot(v4).state == "ready" and table.weights == {v1: 100}
