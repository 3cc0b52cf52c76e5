"""lockstep_rollout and lockstep_rollback end to end: every strategy as a real dag.test() run.

One Lockstep home for the module (training and indexing the versions is the expensive
part), so the cases run in order and each starts from where the previous one left. The
versions and their expected click-through under the simulator's click model (computed
offline from the same corpus and queries) make every verdict clear-cut:

    v1  dim 8            0.36  first champion
    v2  dim 16           0.40  shadow-only candidate; then overridden; then rejected in review
    v3  dim 16, faulty   -     every search fails (fault injection): stopped in the shadow phase
    v4  dim 2, wrong half 0.19 canary: rolled back at the first step
    v5  dim 64           0.47  bandit: promoted (champion v5)
    v6  dim 2, wrong half 0.19 bandit: rolled back
    v7  dim 3, wrong half 0.23 A/B: rolled back
    v8  dim 64, seed 2   0.46  A/B: promoted (champion v8)
    v9  dim 64, seed 3   0.46  canary: promoted after review (champion v9); no worker held while it bakes
    v10 dim 32           0.44  blue-green: promoted (champion v10)
    v11 dim 24           0.43  blue-green: rolled back when verification fails

Gates judge by counts (each look waits for ``min_samples`` answered requests per
version), not by the clock, so a slow machine makes a run longer, not different. Every
run also checks that no answer mixed versions, no user saw a failed search, and the
index of every version that still serves or can be rolled back to is on disk.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.dags.conftest import point_at_fresh_home, task_states

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(600, method="thread")]

SIM_USERS = 400
LADDER = {  # name: (dim, trained on the wrong half of the categories, seed)
    "champion": (8, False, 0), "good": (16, False, 0), "erroring": (16, False, 1), "worse_canary": (2, True, 0),
    "bandit_winner": (64, False, 0), "worse_bandit": (2, True, 5), "worse_ab": (3, True, 1), "ab_winner": (64, False, 2),
    "canary_winner": (64, False, 3), "blue_green": (32, False, 0), "unverified": (24, False, 1),
}


def _params(url: str, strategy: str = "canary", **extra) -> dict:
    """Small bakes by count; every run names every Param (dag.test() keeps the previous run's values)."""
    return {
        "strategy": strategy,
        "canary_steps": [25, 50, 100],
        "bake_seconds": 0,
        "shadow_seconds": 0,
        "max_bake_seconds": 240,  # the safety net only: a loaded machine is slower, not different
        "min_samples": 100,
        "max_extensions": 5,
        "alpha": 0.05,
        "ctr_tau": 0.1,
        "ctr_margin": 0.15,
        "min_overlap": 0.0,  # the weak test models rank differently from the champion by design
        # Searches take well under a millisecond here, so a model with more dimensions is measurably
        # slower in relative terms; allow up to twice the champion's median (the gate is unit-tested).
        "latency_tolerance": 1.0,
        "poll_seconds": 0.5,
        "log_flush_seconds": 1.0,
        "drain_seconds": 0.3,
        "rollback_window_seconds": 1,
        "verify_timeout_seconds": 20,
        "approval_timeout_seconds": 120,
        "require_approval": False,
        "ab_split": 50,
        "ab_samples_per_arm": 400,
        "ab_max_seconds": 300,
        "ab_decision": "rule",
        "bandit_interval_seconds": 1,
        "bandit_min_exposures": 100,
        "bandit_floor": 0.1,
        "bandit_threshold": 0.95,
        "bandit_max_seconds": 300,
        "serving_url": url,
        **extra,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Demo records, the versions of the ladder with built indexes, and a serving replica on loopback."""
    home = tmp_path_factory.mktemp("rollout-home")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home)
        from lockstep.index.build import reembed_version
        from lockstep.model.embedding import TextEmbedder
        from lockstep.model.registry import Registry
        from lockstep.ops.simulator import held_out_queries, record_categories
        from lockstep.store.corpus import DEMO_CATEGORIES, demo_sample
        from lockstep.store.db import dispose_engines
        from lockstep.store.records import RecordStore

        store = RecordStore()
        records = demo_sample(1000, seed=3)
        store.upsert_many(records)
        texts = [r.text for r in records]
        wrong_half = [r.text for r in records if r.metadata["category"] in DEMO_CATEGORIES[:10]]
        registry = Registry()
        versions = {}
        for name, (dim, wrong, seed) in LADDER.items():
            embedder = TextEmbedder(dim=dim, min_df=2, max_df=0.5, random_state=seed).fit(wrong_half if wrong else texts)
            info = registry.log_and_register(embedder, params={"dim": dim}, metrics={}, snapshot_seq=store.head())
            reembed_version(store, registry, info.version)
            versions[name] = info.version
        assert versions["champion"] == "1" and registry.version_for_alias("champion").version == "1"
        mp.setenv("LOCKSTEP_FAULTS", f"serving.search:{versions['erroring']}*")  # every search of that version fails
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
    code = f"from lockstep.serving.runner import run; run('127.0.0.1', {port}, log_level='warning', app='lockstep.systems:create_app')"
    log = open(Path(os.environ["LOCKSTEP_HOME"]) / f"replica-{port}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # it loads every ready version first (eleven here) on a loaded machine
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the serving replica did not become ready"
            time.sleep(0.2)
        print(f"serving replica ready in {time.monotonic() - started:.0f} s")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


# --- running and checking ---------------------------------------------------------------------


def _run(dag, conf: dict, world, *, traffic: bool = True, alongside: Callable[[], None] | None = None) -> tuple:
    """dag.test() under live simulated traffic; returns (dag run, task states, simulator report or None).

    dag.test() must run in the main thread (tasks install signal handlers); ``alongside``
    runs in a thread during the run (an operator, a reviewer, a watcher).
    """
    from lockstep.ops.simulator import ClickModel, Simulator

    sim = None
    if traffic:
        sim = Simulator(world["url"], world["queries"], world["categories"], users=SIM_USERS, concurrency=2, seed=11,
                        click_model=ClickModel(p_relevant=0.5, p_irrelevant=0.02, decay=0.7), rate=150).start()
    helper = threading.Thread(target=alongside, daemon=True) if alongside else None
    if helper:
        helper.start()
    started = time.monotonic()
    try:
        run = dag.test(run_conf=conf)
    finally:
        report = sim.stop() if sim else None
        if helper:
            helper.join(30)
    print(f"{dag.dag_id} {conf.get('model_version', '')}: {run.state} in {time.monotonic() - started:.1f} s")
    if report:
        print(report.summary())
        assert report.errors == 0, report.error_samples  # no user saw a failed search
        assert report.mixed == 0
    _assert_indexes_kept_for_serving_versions(world)
    return run, task_states(run), report


def _assert_indexes_kept_for_serving_versions(world) -> None:
    """No index of a live version, or of one the rollback window may return to, was deleted."""
    from lockstep.store.routing import read_table

    table = read_table()
    for slot in table.slots:
        if slot.state in ("ready", "live", "draining"):
            assert Path(slot.index_location).is_dir(), f"v{slot.model_version} ({slot.state}) lost its index"
    champion = world["registry"].version_for_alias("champion").version
    assert table.slot(champion).state in ("ready", "live"), f"champion v{champion} is {table.slot(champion).state}"


def _steps(run) -> list[dict]:
    from lockstep.rollout import record as rollout_record

    return rollout_record.steps(run.run_id)


def _history_since(generation: int) -> list:
    from lockstep.store.routing import history

    return [e for e in reversed(history()) if e.generation > generation]


def _max_weight_since(version: str, generation: int) -> int:
    return max((e.weights.get(version, 0) for e in _history_since(generation)), default=0)


def _generation() -> int:
    from lockstep.store.routing import read_generation

    return read_generation()


def _champion(world) -> str:
    return world["registry"].version_for_alias("champion").version


def _when(condition: Callable[[], bool], timeout: float = 240, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _review_later(world, version: str, decision: str, delay: float = 1.0) -> Callable[[], None]:
    """A reviewer who tags the version in MLflow ``delay`` s after the rollout started waiting for review."""
    from lockstep.rollout import record as rollout_record

    def waiting() -> bool:
        running = [r for r in rollout_record.recent(5) if r["model_version"] == version and r["status"] == "running"]
        return bool(running) and any(s["step"] == "review" for s in rollout_record.steps(running[0]["rollout_id"]))

    def review() -> None:
        _when(waiting, what=f"v{version}'s review to start")
        time.sleep(delay)
        world["registry"].set_review(version, decision)

    return review


def _assert_rolled_back(world, version: str, champion: str, reason_part: str) -> None:
    from lockstep.core.alerts import recent_alerts
    from lockstep.store.routing import read_table

    table = read_table()
    assert table.weights == {champion: 100} and not table.shadows
    assert table.slot(version).state == "retired"
    info = world["registry"].get_version(version)
    assert info.status == "rejected"
    assert reason_part in info.tags["lockstep.rejected_reason"], info.tags["lockstep.rejected_reason"]
    assert _champion(world) == champion
    assert any(a["event"] == "rollback" and f"v{version} rolled back" in a["message"] for a in recent_alerts())


def _assert_promoted(world, run, states, version: str, previous: str, strategy_task: str) -> None:
    """Promoted: 100 % and alias champion; the previous champion retired after the window, its index gone."""
    from lockstep.store.routing import read_table

    assert run.state == "success", states
    for task_id in (strategy_task, "finalize", "verify", "wait_rollback_window", "retention"):
        assert states[task_id] == "success", (task_id, states)
    assert states["rollback"] == "skipped" and states["shadow_only"] == "skipped"
    registry = world["registry"]
    assert _champion(world) == version
    old = registry.get_version(previous)
    assert old.tags["lockstep.replaced_by"] == version and "lockstep.replaced_at" in old.tags
    table = read_table()
    assert table.weights == {version: 100}
    assert table.slot(previous).state == "retired" and not Path(table.slot(previous).index_location).exists()
    assert _steps(run)[-1]["phase"] == "retention"


# --- shadow ----------------------------------------------------------------------------------------


def test_shadow_strategy_never_promotes(world):
    """Reproduction: strategy=shadow went on to 100 %, moved alias champion and deleted the old champion's index."""
    import lockstep_rollout

    from lockstep.rollout import record as rollout_record
    from lockstep.store.routing import read_table

    version, before = world["versions"]["good"], _generation()
    champion_index = Path(read_table().slot("1").index_location)
    run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"], "shadow")}, world)
    assert run.state == "success", states
    assert states["shadow"] == "success" and states["shadow_only"] == "success"
    for task_id in ("finalize", "verify", "wait_rollback_window", "retention", "rollback", "canary"):
        assert states[task_id] == "skipped", (task_id, states)
    assert _champion(world) == "1" and read_table().weights == {"1": 100} and not read_table().shadows
    assert _max_weight_since(version, before) == 0 and version not in report.by_version  # no user saw it
    assert champion_index.is_dir() and read_table().slot(version).state == "ready"
    assert rollout_record.get(run.run_id)["status"] == "shadow_only"
    shadow = [s for s in _steps(run) if s["phase"] == "shadow" and s["verdict"] == "pass"][0]
    assert shadow["figures"]["copies"] >= 100  # judged on its count of mirrored requests


def test_erroring_candidate_is_stopped_in_the_shadow_phase(world):
    import lockstep_rollout

    version, before = world["versions"]["erroring"], _generation()
    run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"])}, world)
    assert run.state == "failed", states
    assert states["shadow"] == "failed" and states["rollback"] == "success", states
    assert states["canary"] == "upstream_failed" and states["finalize"] == "upstream_failed"
    shadow = [s for s in _steps(run) if s["phase"] == "shadow"]
    assert shadow[-1]["verdict"] == "fail" and shadow[-1]["figures"]["shadow_errors"] > 0
    assert _max_weight_since(version, before) == 0  # never served a user
    assert version not in report.by_version
    _assert_rolled_back(world, version, "1", "shadow")


# --- operator authority ----------------------------------------------------------------------------


def test_a_manual_routing_change_during_a_canary_stops_the_rollout_as_overridden(world):
    """Reproduction: a manual `lockstep routing set` during a canary was undone at the next step."""
    import lockstep_rollout

    from lockstep.core.alerts import recent_alerts
    from lockstep.rollout import record as rollout_record
    from lockstep.store.routing import read_table, set_weights

    version, before = world["versions"]["good"], _generation()
    manual = {}

    def operator() -> None:
        _when(lambda: read_table().weights.get(version) == 25, what="the canary's first step")
        manual["generation"] = set_weights({"1": 100}, reason="stop: the dashboards look odd", actor="alice")

    run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"])}, world, alongside=operator)
    assert run.state == "failed", states
    assert states["canary"] == "failed" and states["rollback"] == "success" and states["finalize"] == "upstream_failed"
    after = _history_since(manual["generation"])
    assert not [e for e in after if e.actor == "lockstep_rollout"]  # the rollout wrote nothing after alice
    assert read_table().weights == {"1": 100} and read_table().slot(version).state == "ready"  # left as alice set it
    assert world["registry"].get_version(version).status != "rejected"  # the operator decides, not the rollback
    record = rollout_record.get(run.run_id)
    assert record["status"] == "overridden" and "alice" in record["reason"]
    assert any(a["event"] == "overridden" and f"v{version}" in a["message"] for a in recent_alerts())
    assert _max_weight_since(version, before) == 25


def test_start_refuses_when_the_champion_alias_and_the_routing_table_disagree(world):
    """Reproduction: start forced the alias's version to 100 % although the routing table said otherwise."""
    import lockstep_rollout

    from lockstep.rollout import record as rollout_record
    from lockstep.store.routing import read_table, set_weights

    version = world["versions"]["good"]
    set_weights({version: 100}, reason="a rollback that moved traffic but not the alias", actor="alice")
    try:
        run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"])}, world, traffic=False)
        assert run.state == "failed" and states["start"] == "failed", states
        assert states["rollback"] == "success" and states["shadow"] == "upstream_failed"
        assert read_table().weights == {version: 100}  # untouched
        assert rollout_record.get(run.run_id) is None  # nothing started
    finally:
        set_weights({"1": 100}, reason="test: alias and routing agree again", actor="alice")


# --- canary ----------------------------------------------------------------------------------------


def test_worse_candidate_is_rolled_back_at_the_first_canary_step(world):
    import lockstep_rollout

    version, before = world["versions"]["worse_canary"], _generation()
    run, states, report = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"])}, world)
    assert run.state == "failed", states
    assert states["shadow"] == "success" and states["canary"] == "failed" and states["rollback"] == "success", states
    canary = [s for s in _steps(run) if s["phase"] == "canary"]
    assert {s["step"] for s in canary} == {"canary 25%"}  # never reached 50 %
    assert canary[-1]["action"] == "rollback"
    assert _max_weight_since(version, before) == 25
    assert report.by_version[version]["ctr"] < report.by_version["1"]["ctr"]
    _assert_rolled_back(world, version, "1", "canary 25%")
    assert "ctr_sequential" in world["registry"].get_version(version).tags["lockstep.rejected_reason"]


# --- bandit ----------------------------------------------------------------------------------------


def test_bandit_promotes_a_better_candidate(world):
    import lockstep_rollout

    version = world["versions"]["bandit_winner"]
    run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"], "bandit")}, world)
    _assert_promoted(world, run, states, version, "1", "bandit")
    decided = [s for s in _steps(run) if s["phase"] == "bandit"][-1]
    assert decided["action"] == "promote" and decided["figures"][f"bandit.prob_best.{version}"] >= 0.95
    assert {g["name"]: g["verdict"] for g in decided["gates"]} == {"bandit": "pass", "error_rate": "pass", "latency": "pass"}


def test_bandit_rolls_back_a_worse_candidate(world):
    import lockstep_rollout

    champion, version = world["versions"]["bandit_winner"], world["versions"]["worse_bandit"]
    run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"], "bandit")}, world)
    assert run.state == "failed", states
    assert states["bandit"] == "failed" and states["finalize"] == "upstream_failed" and states["rollback"] == "success"
    _assert_rolled_back(world, version, champion, "bandit")


# --- A/B ---------------------------------------------------------------------------------------------


def test_ab_test_rolls_back_a_worse_candidate(world):
    import lockstep_rollout

    champion, version = world["versions"]["bandit_winner"], world["versions"]["worse_ab"]
    run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"], "ab")}, world)
    assert run.state == "failed", states
    assert states["ab_test"] == "failed" and states["rollback"] == "success"
    _assert_rolled_back(world, version, champion, "A/B")


def test_ab_test_promotes_a_candidate_at_its_horizon(world):
    import lockstep_rollout

    champion, version = world["versions"]["bandit_winner"], world["versions"]["ab_winner"]
    run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"], "ab")}, world)
    _assert_promoted(world, run, states, version, champion, "ab_test")
    decided = [s for s in _steps(run) if s["phase"] == "ab"][-1]
    assert decided["figures"]["ctr_fixed.cand_n"] >= 400 and decided["figures"]["ctr_fixed.base_n"] >= 400


# --- canary with review: promoted, and no worker held during a bake ------------------------------------


def _watch_task_instances(stop: threading.Event, samples: list[dict]) -> Callable[[], None]:
    """Sample the states of the running rollout's task instances from Airflow's metadata DB."""

    def watch() -> None:
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy.exc import OperationalError

        while not stop.is_set():
            try:
                with create_session() as session:
                    run = session.query(DagRun.run_id).filter(DagRun.dag_id == "lockstep_rollout", DagRun.state == "running").first()
                    if run is not None:
                        rows = session.query(TaskInstance.task_id, TaskInstance.state, TaskInstance.next_method).filter(
                            TaskInstance.dag_id == "lockstep_rollout", TaskInstance.run_id == run.run_id).all()
                        samples.append({r.task_id: (str(getattr(r.state, "value", r.state)), r.next_method) for r in rows})
            except OperationalError:  # SQLite busy while the run writes: sample again
                pass
            stop.wait(0.05)

    return watch


def test_better_candidate_is_approved_and_walks_the_canary_without_holding_a_worker_while_it_bakes(world):
    import lockstep_rollout

    champion, version = world["versions"]["ab_winner"], world["versions"]["canary_winner"]
    stop, samples = threading.Event(), []
    watch = _watch_task_instances(stop, samples)
    review = _review_later(world, version, "approved")

    def alongside() -> None:
        threading.Thread(target=watch, daemon=True).start()
        review()

    conf = {"model_version": version, **_params(world["url"], require_approval=True)}
    try:
        run, states, report = _run(lockstep_rollout.dag, conf, world, alongside=alongside)
    finally:
        stop.set()
    _assert_promoted(world, run, states, version, champion, "canary")
    steps = _steps(run)
    assert [s["step"] for s in steps if s["phase"] == "canary" and s["action"] == "promote"] == ["canary 25%", "canary 50%"]
    assert states["approve_in_airflow"] == "skipped" and states["close_ui_review"] == "success"  # the form was withdrawn
    assert report.by_version[version]["requests"] > 0

    # Between two looks the canary task waits for its timer (deferred; dag.test() runs the trigger in line
    # and parks the task as queued) and no task instance of the run is running: no worker slot is held.
    waiting = [s for s in samples if s.get("canary", ("", None))[1] == "resume" and s["canary"][0] != "running"]
    assert waiting, "the canary never waited between looks"
    for sample in waiting:
        assert not [task for task, (state, _) in sample.items() if state == "running"], sample


def test_rejection_in_review_rolls_back_before_any_traffic_moves(world):
    import lockstep_rollout

    champion, version, before = world["versions"]["canary_winner"], world["versions"]["good"], _generation()
    conf = {"model_version": version, **_params(world["url"], require_approval=True)}
    run, states, _ = _run(lockstep_rollout.dag, conf, world, alongside=_review_later(world, version, "rejected"))
    assert run.state == "failed", states
    assert states["review"] == "failed" and states["shadow"] == "upstream_failed", states
    assert states["rollback"] == "success"
    assert states["approve_in_airflow"] == "skipped" and states["close_ui_review"] == "success"  # form withdrawn
    review = [s for s in _steps(run) if s["phase"] == "review"][-1]
    assert review["verdict"] == "fail" and review["figures"]["waited_seconds"] >= 1.0
    assert _max_weight_since(version, before) == 0
    _assert_rolled_back(world, version, champion, "rejected in review")


# --- blue-green --------------------------------------------------------------------------------------


def test_blue_green_switches_at_once_and_promotes(world):
    import lockstep_rollout

    champion, version, before = world["versions"]["canary_winner"], world["versions"]["blue_green"], _generation()
    run, states, _ = _run(lockstep_rollout.dag, {"model_version": version, **_params(world["url"], "blue_green")}, world)
    _assert_promoted(world, run, states, version, champion, "blue_green")
    weights = [e.weights for e in _history_since(before) if e.actor == "lockstep_rollout"]
    assert {champion: 100} in weights and {version: 100} in weights
    assert not [w for w in weights if 0 < w.get(version, 0) < 100]  # one switch, no step in between


def test_blue_green_rolls_back_when_the_replicas_do_not_follow(world):
    import lockstep_rollout

    champion, version = world["versions"]["blue_green"], world["versions"]["unverified"]
    conf = {"model_version": version, **_params("http://127.0.0.1:9", "blue_green", verify_timeout_seconds=2)}  # nobody there
    run, states, _ = _run(lockstep_rollout.dag, conf, world)
    assert run.state == "failed", states
    assert states["blue_green"] == "success" and states["finalize"] == "success" and states["verify"] == "failed"
    assert states["rollback"] == "success" and states["retention"] == "upstream_failed"
    _assert_rolled_back(world, version, champion, "127.0.0.1:9")  # alias champion moved back too


# --- lockstep_rollback -------------------------------------------------------------------------------


def test_rollback_dag_returns_traffic_and_alias_to_the_previous_champion(world):
    import lockstep_rollback

    from lockstep.index.build import reembed_version
    from lockstep.store.routing import history, read_table

    current, previous = world["versions"]["blue_green"], world["versions"]["canary_winner"]
    conf = {"reason": "customers report worse results", "to_version": previous, "serving_url": world["url"], "verify_timeout_seconds": 15}
    run, states, _ = _run(lockstep_rollback.dag, conf, world, traffic=False)
    assert run.state == "failed" and states["roll_back"] == "failed"  # the previous champion's index was retired
    assert read_table().weights == {current: 100}

    reembed_version(world["store"], world["registry"], previous, promote_if_first=False)  # rebuild it
    run, states, _ = _run(lockstep_rollback.dag, conf, world)
    assert run.state == "success", states
    assert read_table().weights == {previous: 100}
    assert history(limit=5)[0].reason.endswith("customers report worse results")
    registry = world["registry"]
    assert _champion(world) == previous
    assert registry.get_version(current).tags["lockstep.rolled_back_reason"] == "customers report worse results"
    assert registry.champion_history()[-1]["reason"] == "rollback: customers report worse results"
