"""lockstep_rollout and lockstep_rollback end to end: dag.test(), a live serving app, simulated users.

One Lockstep home for the module (training and indexing five versions is the expensive
part), so the cases run in order and each starts from where the previous one left:

1. v2 fails every search (fault injection): stopped in the shadow phase, never served.
2. v3 is rejected in review (MLflow tag): rolled back before any traffic moves.
3. v4, trained on the wrong half of the corpus, loses clicks: rolled back at the first
   canary step.
4. v5, a better model, is approved in review, walks the canary steps, becomes champion
   at 100 %; the previous champion is retired after the rollback window.
5. lockstep_rollback refuses to return to the retired v1, then, once v1's index is
   rebuilt, moves all traffic and the alias back to it.

In every run the simulator checks that no answer mixes versions and no search fails.
The Airflow-UI approval form (HITL) needs an api-server to be answered, so here the
review is answered through the MLflow tag; the form itself is opened and withdrawn.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.dags.conftest import task_states

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(300, method="thread")]

SIM_USERS = 400


def _fast_params(url: str, **extra) -> dict:
    return {
        "canary_steps": [25, 50, 100],
        "bake_seconds": 3,
        "shadow_seconds": 3,
        "min_samples": 40,
        "max_extensions": 5,
        "ctr_tau": 0.1,
        "ctr_margin": 0.1,
        "poll_seconds": 0.2,
        "log_flush_seconds": 0.8,
        "drain_seconds": 0.3,
        "rollback_window_seconds": 1,
        "verify_timeout_seconds": 15,
        "approval_timeout_seconds": 30,
        "serving_url": url,
        "strategy": "canary",
        "require_approval": False,  # every run names every Param: dag.test() keeps the previous run's values
        **extra,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Demo records, five registered versions with built indexes, and a serving app on loopback."""
    from tests.conftest import DEMO_CACHE

    home = tmp_path_factory.mktemp("rollout-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKSTEP_HOME", str(home))
        for var in ("LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE", "LOCKSTEP_API_TOKEN", "LOCKSTEP_FAULTS"):
            mp.delenv(var, raising=False)
        mp.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
        from lockstep.db import dispose_engines

        dispose_engines()
        from lockstep.corpus import DEMO_CATEGORIES, demo_sample
        from lockstep.embedding import TextEmbedder
        from lockstep.records import RecordStore
        from lockstep.reembed import reembed_version
        from lockstep.registry import Registry
        from lockstep.simulator import held_out_queries, record_categories

        store = RecordStore()
        records = demo_sample(1000, seed=3)
        store.upsert_many(records)
        texts = [r.text for r in records]
        wrong_half = [r.text for r in records if r.metadata["category"] in DEMO_CATEGORIES[:10]]
        registry = Registry()

        def version(dim: int, train: list[str], seed: int = 0) -> str:
            embedder = TextEmbedder(dim=dim, min_df=2, max_df=0.5, random_state=seed).fit(train)
            info = registry.log_and_register(embedder, params={"dim": dim}, metrics={}, snapshot_seq=store.head())
            reembed_version(store, registry, info.version)
            return info.version

        versions = {
            "champion": version(16, texts),  # v1, champion when its index is built
            "erroring": version(24, texts, seed=1),  # v2
            "rejected": version(24, texts, seed=2),  # v3
            "worse": version(32, wrong_half),  # v4
            "better": version(64, texts),  # v5
        }
        assert versions == {"champion": "1", "erroring": "2", "rejected": "3", "worse": "4", "better": "5"}
        mp.setenv("LOCKSTEP_FAULTS", f"serving.search:{versions['erroring']}*")  # v2 fails every search
        with replica() as url:
            yield {
                "home": home, "store": store, "registry": registry, "url": url, "versions": versions,
                "queries": held_out_queries(limit=1500), "categories": record_categories(store),
            }
        dispose_engines()


@contextmanager
def replica() -> Iterator[str]:
    """A serving replica in its own process (as in production, and off this process's GIL)."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = f"from lockstep.serving.app import run; run('127.0.0.1', {port}, log_level='warning')"
    log = open(Path(os.environ["LOCKSTEP_HOME"]) / f"replica-{port}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the serving replica did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _simulator(world):
    from lockstep.simulator import ClickModel, Simulator

    return Simulator(world["url"], world["queries"], world["categories"], users=SIM_USERS, concurrency=3,
                     click_model=ClickModel(p_relevant=0.5, p_irrelevant=0.02, decay=0.7), rate=150)


def _run(dag, conf: dict, world) -> tuple:
    """dag.test() under live simulated traffic; returns (dag run, task states, simulator report).

    dag.test() must run in the main thread (tasks install signal handlers); the module's
    timeout marker stops a run that hangs.
    """
    sim = _simulator(world).start()
    started = time.monotonic()
    try:
        run = dag.test(run_conf=conf)
    finally:
        report = sim.stop()
    print(f"{dag.dag_id} {conf.get('model_version', '')}: {run.state} in {time.monotonic() - started:.1f} s; {report.summary()}")
    assert report.errors == 0, report.error_samples
    assert report.mixed == 0
    assert report.requests > 100
    return run, task_states(run), report


def _review_later(world, version: str, decision: str, delay: float = 1.0) -> threading.Thread:
    """A reviewer who tags the version in MLflow ``delay`` s after the rollout started waiting for review."""
    from lockstep import rollout_record

    def review() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = [r for r in rollout_record.recent(5) if r["model_version"] == version and r["status"] == "running"]
            if running and any(s["step"] == "review" for s in rollout_record.steps(running[0]["rollout_id"])):
                time.sleep(delay)
                world["registry"].set_review(version, decision)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=review, daemon=True)
    thread.start()
    return thread


def _steps(run) -> list[dict]:
    from lockstep import rollout_record

    return rollout_record.steps(run.run_id)


def _max_weight_since(version: str, generation: int) -> int:
    from lockstep.routing import history

    return max((e.weights.get(version, 0) for e in history() if e.generation > generation), default=0)


def _generation() -> int:
    from lockstep.routing import read_generation

    return read_generation()


def _assert_rolled_back(world, version: str, reason_part: str) -> None:
    from lockstep.alerts import recent_alerts
    from lockstep.routing import read_table

    table = read_table()
    assert table.weights == {"1": 100} and not table.shadows
    assert table.slot(version).state == "retired"
    info = world["registry"].get_version(version)
    assert info.status == "rejected"
    assert reason_part in info.tags["lockstep.rejected_reason"], info.tags["lockstep.rejected_reason"]
    assert world["registry"].version_for_alias("champion").version == "1"
    assert any(a["event"] == "rollback" and f"v{version} rolled back" in a["message"] for a in recent_alerts())


def test_erroring_candidate_is_stopped_in_the_shadow_phase(world):
    import lockstep_rollout

    version = world["versions"]["erroring"]
    before = _generation()
    run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_fast_params(world["url"])}, world)
    assert run.state == "failed", states
    assert states["shadow"] == "failed" and states["rollback"] == "success", states
    assert states["canary"] == "upstream_failed" and states["finalize"] == "upstream_failed"
    assert states["retention"] == "upstream_failed"
    shadow = [s for s in _steps(run) if s["phase"] == "shadow"]
    assert shadow[-1]["verdict"] == "fail" and shadow[-1]["figures"]["shadow_errors"] > 0
    assert _max_weight_since(version, before) == 0  # never served a user
    assert version not in report.by_version
    _assert_rolled_back(world, version, "shadow")


def test_rejection_in_review_rolls_back_before_any_traffic_moves(world):
    import lockstep_rollout

    version = world["versions"]["rejected"]
    before = _generation()
    reviewer = _review_later(world, version, "rejected")
    run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_fast_params(world["url"], require_approval=True)}, world)
    reviewer.join()
    assert run.state == "failed", states
    assert states["review"] == "failed" and states["shadow"] == "upstream_failed", states
    assert states["rollback"] == "success"
    assert states["approve_in_airflow"] == "skipped" and states["close_ui_review"] == "success"  # form withdrawn
    review = [s for s in _steps(run) if s["phase"] == "review"][-1]
    assert review["verdict"] == "fail" and review["figures"]["waited_seconds"] >= 1.0
    assert _max_weight_since(version, before) == 0
    _assert_rolled_back(world, version, "rejected in review")


def test_worse_candidate_is_rolled_back_at_the_first_canary_step(world):
    import lockstep_rollout

    version = world["versions"]["worse"]
    before = _generation()
    run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_fast_params(world["url"])}, world)
    assert run.state == "failed", states
    assert states["shadow"] == "success" and states["canary"] == "failed" and states["rollback"] == "success", states
    canary = [s for s in _steps(run) if s["phase"] == "canary"]
    assert {s["step"] for s in canary} == {"canary 25%"}  # never reached 50 %
    assert canary[-1]["action"] == "rollback"
    assert _max_weight_since(version, before) == 25
    assert report.by_version[version]["ctr"] < report.by_version["1"]["ctr"]
    _assert_rolled_back(world, version, "canary 25%")
    assert "ctr_sequential" in world["registry"].get_version(version).tags["lockstep.rejected_reason"]


def test_better_candidate_reaches_100_percent_and_becomes_champion(world):
    import lockstep_rollout

    from lockstep.routing import read_table

    version = world["versions"]["better"]
    old_index = Path(read_table().slot("1").index_location)
    assert old_index.is_dir()
    reviewer = _review_later(world, version, "approved")
    run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_fast_params(world["url"], require_approval=True)}, world)
    reviewer.join()
    assert run.state == "success", states
    for task_id in ("review", "shadow", "canary", "finalize", "verify", "wait_rollback_window", "retention"):
        assert states[task_id] == "success", (task_id, states)
    assert states["rollback"] == "skipped" and states["ab_test"] == "skipped" and states["shadow_only"] == "skipped"
    steps = _steps(run)
    assert [s["step"] for s in steps if s["phase"] == "canary" and s["action"] == "promote"] == ["canary 25%", "canary 50%"]
    assert steps[-1]["phase"] == "retention"

    registry = world["registry"]
    assert registry.version_for_alias("champion").version == version
    old = registry.get_version("1")
    assert old.tags["lockstep.replaced_by"] == version and "lockstep.replaced_at" in old.tags
    table = read_table()
    assert table.weights == {version: 100}
    assert table.slot("1").state == "retired" and not old_index.exists()  # retention after the window
    assert report.by_version[version]["requests"] > 0


def test_rollback_dag_returns_traffic_and_alias_to_the_previous_champion(world):
    import lockstep_rollback

    from lockstep.reembed import reembed_version
    from lockstep.routing import history, read_table

    conf = {"reason": "customers report worse results", "serving_url": world["url"], "verify_timeout_seconds": 15}
    run, states, _ = _run(lockstep_rollback.dag, conf, world)
    assert run.state == "failed" and states["roll_back"] == "failed"  # v1's index was retired
    assert read_table().weights == {"5": 100}

    reembed_version(world["store"], world["registry"], "1", promote_if_first=False)  # rebuild it
    run, states, report = _run(lockstep_rollback.dag, conf, world)
    assert run.state == "success", states
    assert read_table().weights == {"1": 100}
    assert history(limit=5)[0].reason.endswith("customers report worse results")
    registry = world["registry"]
    assert registry.version_for_alias("champion").version == "1"
    assert registry.get_version("5").tags["lockstep.rolled_back_reason"] == "customers report worse results"
    assert registry.champion_history()[-1]["reason"] == "rollback: customers report worse results"
