"""The rollout steps as a library: gate analysis from log rows, strategies, verification, rollback.

Traffic here is synthetic: a thread writes request and click rows the way serving
replicas do, with a chosen click-through and error rate per version and a split that
follows the routing table, so every verdict is known in advance. The end-to-end runs
with the real serving app and Airflow are in tests/dags/test_rollout_dags.py.
"""

from __future__ import annotations

import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from lockstep.rollout import record
from lockstep.rollout import steps as rollout
from lockstep.rollout.analysis import GateSettings, shadow_gates
from lockstep.rollout.gates import GateVerdict
from lockstep.store import routing
from lockstep.store.db import get_engine
from lockstep.store.schema import feedback_log, request_log, shadow_log
from lockstep.store.serving_logs import Window, arm_stats, shadow_stats

FAST = {
    "bake_seconds": 0, "shadow_seconds": 0, "min_samples": 30, "max_extensions": 1, "poll_seconds": 0.05, "max_bake_seconds": 60,
    "log_flush_seconds": 0, "drain_seconds": 0.0, "ctr_tau": 0.1, "ctr_margin": 0.1, "canary_steps": [20, 50, 100],
    "bandit_interval_seconds": 0,
}


# --- helpers -------------------------------------------------------------------------------------


def _slot(version: str, root: Path, state: str = "ready") -> None:
    from lockstep.index.storage import index_location

    location = index_location("m", version)  # inside LOCKSTEP_INDEX_STORE, where retention may delete
    location.mkdir(parents=True, exist_ok=True)
    routing.register_slot(version, f"models:/m/{version}", str(location), f"sha256:{version * 8}", state=state)


def _plan(rollout_id: str = "r1", candidate: str = "2", champion: str = "1", **config) -> rollout.RolloutPlan:
    cfg = rollout.RolloutConfig.from_params({**FAST, **config})
    record.begin(rollout_id, candidate, champion, cfg.strategy, cfg.to_dict())
    return rollout.RolloutPlan(rollout_id, candidate, champion, cfg)


@pytest.fixture
def slots(lockstep_home, tmp_path):
    """Slots v1 (champion, 100 %) and v2 (candidate, ready), no registry needed."""
    _slot("1", tmp_path)
    _slot("2", tmp_path)
    routing.set_weights({"1": 100})
    return tmp_path


class Traffic:
    """Writes request rows (split by the routing table) and clicks, like serving replicas, one batch at a time.

    Seeded, and driven by the rollout itself: ``run_phase(..., sleep=traffic.batch)`` writes
    one batch where the executor would wait, so every look sees the same rows in every run.
    """

    def __init__(self, ctr: dict[str, float], errors: dict[str, float] | None = None, latency: dict[str, float] | None = None,
                 per_batch: int = 100, seed: int = 0) -> None:
        self.ctr, self.errors, self.latency = ctr, errors or {}, latency or {}
        self.per_batch = per_batch
        self.rng = random.Random(seed)
        self.batches = 0

    def batch(self, _wait: float = 0.0) -> None:
        engine = get_engine()
        weights = routing.read_table(engine).weights
        requests, clicks = [], []
        at = datetime.now(UTC) - timedelta(milliseconds=1)
        for i in range(self.per_batch):
            version = self.rng.choices(list(weights), weights=list(weights.values()))[0]
            rid = f"b{self.batches}-{i}-{self.rng.getrandbits(32):08x}"
            failed = self.rng.random() < self.errors.get(version, 0.0)
            requests.append({"request_id": rid, "at": at, "model_version": version, "user_id": None, "query": "q", "k": 10,
                             "latency_ms": max(0.1, self.rng.gauss(self.latency.get(version, 10.0), 1.0)),
                             "status": 500 if failed else 200, "top_ids": [], "replica": "synthetic"})
            if not failed and self.rng.random() < self.ctr.get(version, 0.0):
                clicks.append({"request_id": rid, "record_id": "r", "event": "click", "at": at})
        with engine.begin() as conn:
            conn.execute(insert(request_log), requests)
            if clicks:
                conn.execute(insert(feedback_log), clicks)
        self.batches += 1


def _run(phase: str, plan: rollout.RolloutPlan | dict, traffic: Traffic | None = None, **kwargs) -> dict:
    """The phase look by look, one traffic batch between two looks (no traffic: a real short sleep)."""
    return rollout.run_phase(phase, plan, sleep=traffic.batch if traffic else time.sleep, **kwargs)


# --- reading the logs ----------------------------------------------------------------------------------


def test_arm_stats_counts_requests_errors_and_clicked_requests_in_the_window(lockstep_home):
    engine = get_engine()
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    rows = [
        ("a", t0 + timedelta(seconds=1), "1", 200), ("b", t0 + timedelta(seconds=2), "1", 200),
        ("c", t0 + timedelta(seconds=3), "2", 500), ("d", t0 + timedelta(seconds=4), "2", 200),
        ("e", t0 - timedelta(seconds=1), "1", 200), ("f", t0 + timedelta(seconds=10), "2", 200),  # outside
    ]
    with engine.begin() as conn:
        conn.execute(insert(request_log), [
            {"request_id": r, "at": at, "model_version": v, "query": "q", "k": 10, "latency_ms": 5.0, "status": s, "top_ids": []}
            for r, at, v, s in rows
        ])
        conn.execute(insert(feedback_log), [
            {"request_id": r, "record_id": "x", "event": "click", "at": t0 + timedelta(seconds=20)} for r in ("a", "a", "d", "e", "c")
        ])
    window = Window(t0, t0 + timedelta(seconds=5))
    stats = arm_stats(engine, window, ["1", "2"])
    assert (stats["1"].requests, stats["1"].errors, stats["1"].clicked) == (2, 0, 1)  # two clicks on "a" count once
    assert (stats["2"].requests, stats["2"].errors, stats["2"].clicked) == (2, 1, 1)  # a click on a failed request does not count
    assert stats["2"].ctr == 1.0 and len(stats["2"].latencies_ms) == 1
    early = arm_stats(engine, window, ["1", "2"], clicks_until=t0 + timedelta(seconds=5))
    assert early["1"].clicked == 0  # clicks logged later are not seen yet


def test_shadow_gates_fail_errors_pass_agreement_and_wait_for_data(lockstep_home):
    engine = get_engine()
    t0 = datetime.now(UTC) - timedelta(seconds=30)
    settings = GateSettings(min_samples=20)
    live = [f"id{i}" for i in range(10)]

    def write(version: str, n: int, shadow_ids, error=None, latency=10.0) -> None:
        with engine.begin() as conn:
            for i in range(n):
                rid = f"{version}-{i}"
                conn.execute(insert(request_log).values(request_id=rid, at=t0, model_version="1", query="q", k=10,
                                                        latency_ms=10.0 + (i % 3), status=200, top_ids=live))
                conn.execute(insert(shadow_log).values(request_id=rid, at=t0, live_version="1", shadow_version=version,
                                                       live_top_ids=live, shadow_top_ids=shadow_ids, latency_ms=None if latency is None else latency + (i % 3), error=error))

    write("2", 60, None, error="InjectedFault: boom", latency=None)
    write("3", 60, live[:7] + ["x", "y", "z"])
    write("4", 5, live)
    window = Window(t0 - timedelta(seconds=1), datetime.now(UTC))
    broken = shadow_gates(shadow_stats(engine, window, "2"), settings)
    assert broken[0].verdict is GateVerdict.FAIL and "above the absolute ceiling" in broken[0].reason
    assert broken[2].verdict is GateVerdict.FAIL  # answered nothing, so agreed with nothing
    good = shadow_gates(shadow_stats(engine, window, "3"), settings)
    assert [g.verdict for g in good] == [GateVerdict.PASS] * 3
    assert good[2].figures["mean_overlap"] == pytest.approx(0.7)
    sparse = shadow_gates(shadow_stats(engine, window, "4"), settings)
    assert all(g.verdict is GateVerdict.INCONCLUSIVE for g in sparse)


# --- strategies on synthetic traffic ------------------------------------------------------------------


def test_shadow_phase_stops_a_failing_candidate_at_the_first_look_with_failed_copies(slots):
    engine = get_engine()
    plan = _plan(shadow_seconds=3600)  # the least bake time is no obstacle: failing copies stop it at once
    before = routing.read_generation()

    def failing_copies(_wait: float) -> None:  # what replicas log for a candidate whose every search fails
        with engine.begin() as conn:
            conn.execute(insert(shadow_log), [
                {"request_id": f"s{i}", "at": datetime.now(UTC) - timedelta(milliseconds=1), "live_version": "1",
                 "shadow_version": "2", "live_top_ids": ["a"], "shadow_top_ids": None, "latency_ms": None, "error": "boom"}
                for i in range(40)
            ])

    with pytest.raises(rollout.GateFailed, match="shadow phase"):
        rollout.run_phase("shadow", plan, sleep=failing_copies)
    table = routing.read_table()
    assert table.weights == {"1": 100} and not table.shadows
    assert record.last_failure("r1")["phase"] == "shadow"
    assert all(e.weights == {"1": 100} for e in routing.history() if e.generation > before)  # never served


def test_canary_promotes_an_equal_candidate_through_every_step(slots):
    plan = _plan(min_samples=300)
    traffic = Traffic({"1": 0.3, "2": 0.32}, per_batch=200)
    out = _run("canary", plan.to_dict(), traffic)  # as a DAG task hands it over: the plan's XCom (JSON) form
    assert out["verdict"] == "pass" and out["step"] == "canary 50%"
    assert routing.read_table().weights == {"1": 50, "2": 50}  # the last step below 100 %; finalize does the rest
    steps = [s for s in record.steps("r1") if s["phase"] == "canary"]
    assert [s["step"] for s in steps if s["action"] == "promote"] == ["canary 20%", "canary 50%"]
    assert all(s["gates"] and s["window_start"] for s in steps)
    assert {g["name"] for g in steps[0]["gates"]} == {"error_rate", "latency", "ctr_sequential"}
    for step in steps:  # judged on counts: each arm had its min_samples per look
        assert min(step["figures"]["v1.requests"], step["figures"]["v2.requests"]) >= 300 * step["look"]


def test_a_look_is_judged_on_counts_not_on_the_clock(slots):
    """No traffic, however long it waits: inconclusive; with the counts, at once."""
    plan = _plan(min_samples=100, max_bake_seconds=3600)
    routing.set_weights({"1": 80, "2": 20})
    record.save_state("r1", {"generation": routing.read_generation()})
    first = rollout.tick("canary", plan)  # sets 20 %, nothing logged yet
    assert not first.done and first.wait_seconds == FAST["poll_seconds"]
    again = rollout.tick("canary", plan)
    assert not again.done and not [s for s in record.steps("r1") if s["phase"] == "canary"]  # still baking
    traffic = Traffic({"1": 0.3, "2": 0.3}, per_batch=100)
    looks = 0
    while not [s for s in record.steps("r1") if s["phase"] == "canary"]:
        traffic.batch()
        rollout.tick("canary", plan)
        looks += 1
    judged = [s for s in record.steps("r1") if s["phase"] == "canary"][0]
    assert judged["figures"]["v2.requests"] >= 100 and looks == traffic.batches
    assert judged["figures"]["v2.requests"] < 100 + 40  # judged at the first look that had the counts


def test_canary_rolls_back_a_worse_candidate_at_the_first_step_in_one_transaction(slots):
    plan = _plan(max_extensions=6, min_samples=100)
    before = routing.read_generation()
    with pytest.raises(rollout.GateFailed, match="canary 20%") as failed:
        _run("canary", plan, Traffic({"1": 0.4, "2": 0.05}, per_batch=200))
    assert "ctr_sequential" in str(failed.value) and "significantly worse" in str(failed.value)
    changes = [e for e in reversed(routing.history()) if e.generation > before]
    assert [e.weights for e in changes] == [{"1": 80, "2": 20}, {"1": 100}]  # straight back: no stop in between
    assert not any(s["step"] == "canary 50%" for s in record.steps("r1"))


def test_canary_with_too_little_traffic_extends_then_fails_never_passes(slots):
    plan = _plan(max_extensions=2, max_bake_seconds=0.2)
    with pytest.raises(rollout.GateFailed, match="too little traffic"):
        _run("canary", plan)  # nobody searches
    looks = [(s["look"], s["action"]) for s in record.steps("r1")]
    assert looks == [(1, "extend"), (2, "extend"), (3, "rollback")]
    assert routing.read_table().weights == {"1": 100}


def test_canary_catches_a_candidate_that_errors_during_the_bake(slots):
    plan = _plan(bake_seconds=3600, min_samples=50)
    with pytest.raises(rollout.GateFailed, match="error rate"):
        _run("canary", plan, Traffic({"1": 0.3, "2": 0.3}, errors={"2": 0.5}, per_batch=200))
    assert routing.read_table().weights == {"1": 100}


def test_ab_test_promotes_a_better_candidate_at_its_horizon(slots):
    plan = _plan(strategy="ab", ab_split=50, ab_samples_per_arm=300, ab_max_seconds=600)
    step = _run("ab", plan, Traffic({"1": 0.2, "2": 0.35}, per_batch=160))
    assert step["verdict"] == "pass" and step["action"] == "promote"
    assert step["figures"]["ctr_fixed.cand_n"] >= 300 and step["figures"]["ctr_fixed.diff"] > 0.05


def test_ab_test_that_misses_its_horizon_fails_instead_of_deciding_on_too_little(slots):
    plan = _plan(strategy="ab", ab_samples_per_arm=10_000, ab_max_seconds=0.3)
    with pytest.raises(rollout.GateFailed, match="horizon was not reached"):
        _run("ab", plan)
    assert routing.read_table().weights == {"1": 100}


def test_bandit_moves_traffic_to_the_better_version_and_stops_on_a_winner(slots):
    plan = _plan(strategy="bandit", bandit_min_exposures=50, bandit_floor=0.1, bandit_max_seconds=600)
    step = _run("bandit", plan, Traffic({"1": 0.1, "2": 0.5}, per_batch=120))
    assert step["verdict"] == "pass"
    assert step["figures"]["bandit.prob_best.2"] >= 0.95
    assert {g["name"] for g in step["gates"]} == {"bandit", "error_rate", "latency"}


def test_bandit_keeps_the_champion_when_the_candidate_is_worse(slots):
    plan = _plan(strategy="bandit", bandit_min_exposures=30, bandit_floor=0.1, bandit_threshold=0.999, bandit_max_seconds=600)
    with pytest.raises(rollout.GateFailed, match="failed the bandit phase"):
        _run("bandit", plan, Traffic({"1": 0.3, "2": 0.15}, per_batch=20))
    weights = [e.weights for e in routing.history() if e.reason and "bandit look" in e.reason]
    assert weights and weights[0]["1"] > 50  # traffic moved to the better version before the end
    assert all(w["2"] >= 10 for w in weights)  # floor 10 %: the loser kept learning
    assert routing.read_table().weights == {"1": 100}


def test_bandit_obeys_its_guard_gates_whatever_the_clicks_say(slots):
    """A candidate that wins every click but answers three times slower fails on latency, like a canary."""
    plan = _plan(strategy="bandit", bandit_min_exposures=50, bandit_max_seconds=600)
    with pytest.raises(rollout.GateFailed, match="guard gate failed: .*latency"):
        _run("bandit", plan, Traffic({"1": 0.1, "2": 0.6}, latency={"1": 10.0, "2": 30.0}, per_batch=120))
    assert routing.read_table().weights == {"1": 100}
    failure = record.last_failure("r1")
    assert failure["figures"]["bandit.prob_best.2"] > 0.5  # the clicks favoured it


def test_pure_strategies_replay_the_same_decision_from_the_same_inputs():
    from lockstep.rollout import strategies
    from lockstep.rollout.analysis import ArmStats

    config = rollout.RolloutConfig.from_params({**FAST, "min_samples": 50})
    cand = ArmStats("2", requests=200, errors=0, clicked=60, latencies_ms=tuple(10.0 + i % 5 for i in range(200)))
    champ = ArmStats("1", requests=800, errors=0, clicked=240, latencies_ms=tuple(10.0 + i % 5 for i in range(800)))
    first = strategies.canary({"index": 0, "look": 1}, (cand, champ), (cand, champ), 1.0, config)
    again = strategies.canary({"index": 0, "look": 1}, (cand, champ), (cand, champ), 1.0, config)
    assert first == again and first.judged
    few = ArmStats("2", requests=10, clicked=3, latencies_ms=(10.0,) * 10)
    assert strategies.canary({"index": 0, "look": 1}, (few, champ), (few, champ), 5.0, config).move is strategies.Move.WAIT
    late = strategies.canary({"index": 0, "look": 2}, (few, champ), (few, champ), 61.0, config)
    assert late.move is strategies.Move.FAIL and "too little traffic" in late.reason  # the safety net never passes
    bandit = strategies.bandit({"look": 3}, (cand, champ), 10.0, config)
    assert bandit == strategies.bandit({"look": 3}, (cand, champ), 10.0, config)  # seeded by the look


# --- operator authority ------------------------------------------------------------------------------------


def test_a_manual_routing_change_during_a_canary_stops_it_as_overridden(slots):
    """Reproduction: a manual `lockstep routing set` during a canary was undone at the next step."""
    from lockstep.core.alerts import recent_alerts

    plan = _plan(min_samples=100)
    record.save_state("r1", {"generation": routing.read_generation()})
    traffic = Traffic({"1": 0.3, "2": 0.3}, per_batch=100)
    assert not rollout.tick("canary", plan).done  # canary 20 %
    routing.set_weights({"1": 90, "2": 10}, reason="hold at 10 % while we look at the logs", actor="alice")
    for _ in range(5):
        traffic.batch()
    with pytest.raises(rollout.RolloutOverridden, match="alice"):
        rollout.tick("canary", plan)
    assert routing.read_table().weights == {"1": 90, "2": 10}  # left as the operator set it
    assert routing.history(limit=1)[0].actor == "alice"
    assert record.get("r1")["status"] == "overridden"
    assert recent_alerts()[-1]["event"] == "overridden"
    out = rollout.rollback(plan)  # the rollback task that follows the failed canary task
    assert out["rolled_back"] is False and out["overridden"]
    assert routing.read_table().weights == {"1": 90, "2": 10}
    assert routing.read_table().slot("2").state == "live"  # not drained either


def test_an_index_build_during_a_canary_is_not_an_override(slots, tmp_path):
    plan = _plan(min_samples=300)
    record.save_state("r1", {"generation": routing.read_generation()})
    traffic = Traffic({"1": 0.3, "2": 0.3}, per_batch=200)
    assert not rollout.tick("canary", plan).done
    _slot("3", tmp_path)  # another version's slot registered: generation moves, traffic does not
    out = _run("canary", plan, traffic)
    assert out["verdict"] == "pass" and record.get("r1")["status"] == "running"


def test_routing_compare_and_set_refuses_a_stale_writer(slots):
    generation = routing.set_weights({"1": 80, "2": 20}, actor="lockstep_rollout")
    routing.set_weights({"1": 100}, actor="bob", reason="stop it")
    with pytest.raises(routing.RoutingConflict, match="by bob") as conflict:
        routing.set_weights({"1": 50, "2": 50}, actor="lockstep_rollout", expect_generation=generation)
    assert conflict.value.expected == generation and [c.actor for c in conflict.value.changes] == ["bob"]
    assert routing.read_table().weights == {"1": 100}  # nothing written
    assert routing.foreign_changes(generation, "lockstep_rollout")[0].reason == "stop it"
    mine = routing.set_weights({"1": 70, "2": 30}, actor="lockstep_rollout", expect_generation=routing.read_generation())
    assert routing.set_weights({"1": 60, "2": 40}, actor="lockstep_rollout", expect_generation=mine) == mine + 1


def test_bad_parameters_are_refused_with_the_reason(lockstep_home):
    with pytest.raises(rollout.RolloutError, match="strategy 'linear'"):
        rollout.RolloutConfig.from_params({"strategy": "linear"})
    with pytest.raises(rollout.RolloutError, match="ending at 100"):
        rollout.RolloutConfig.from_params({"canary_steps": [5, 50]})
    config = rollout.RolloutConfig.from_params({"model_version": "3", "bake_seconds": 2, "serving_url": " http://a:1/, http://b:2"})
    assert config.bake_seconds == 2 and config.serving_urls == ["http://a:1", "http://b:2"]


# --- verification ----------------------------------------------------------------------------------------


def test_verify_fails_when_the_table_or_a_replica_does_not_serve_the_candidate(slots):
    plan = _plan(verify_timeout_seconds=1, serving_url="")
    with pytest.raises(rollout.VerificationFailed, match="reads back"):
        rollout.verify(plan, {"generation": 1})
    routing.set_weights({"2": 100})
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    started = time.monotonic()
    with pytest.raises(rollout.VerificationFailed, match="127.0.0.1:9 did not serve v2"):
        rollout.verify(plan, {"generation": routing.read_generation()}, urls=[dead])
    assert 1 <= time.monotonic() - started < 5
    assert record.steps("r1")[-1]["verdict"] == "fail"
    assert rollout.verify(plan, {"generation": routing.read_generation()})["verdict"] == "pass"  # table only
    assert record.get("r1")["status"] == "promoted"


@pytest.mark.slow
def test_verify_serving_probes_a_live_replica(lockstep_home, tmp_path):
    from tests.serving.conftest import FAST as SERVING_FAST
    from tests.serving.conftest import deploy
    from tests.serving.harness import serve

    d = deploy(f"sqlite:///{tmp_path / 'serving.db'}", tmp_path)
    routing.set_weights({"1": 100}, engine=d.engine)
    with serve(d.app(config=SERVING_FAST)) as server:
        generation = routing.set_weights({"2": 100}, engine=d.engine)
        took = rollout.verify_serving("2", generation, server.url, 10, engine=d.engine)
        assert took[server.url] < 10
        with pytest.raises(rollout.VerificationFailed, match="not v1 at 100"):
            rollout.verify_serving("1", generation, server.url, 1, engine=d.engine)


# --- with a registry: start, review, finalize, rollback, retention --------------------------------------


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory):
    """A migrated MLflow store with versions 1 and 2 (creating it takes seconds; a copy none)."""
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry
    from tests.model.test_registry import synthetic_texts

    folder = tmp_path_factory.mktemp("rollout-mlflow")
    registry = Registry(f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "art")
    for dim, seed in ((8, 0), (12, 1)):
        embedder = TextEmbedder(dim=dim, min_df=1).fit(synthetic_texts(seed=seed))
        registry.log_and_register(embedder, params={}, metrics={"ndcg_at_10": 0.3 + dim / 100}, snapshot_seq=0)
    return folder / "mlflow.db"


@pytest.fixture
def world(slots, lockstep_home, registry_template):
    """Slots v1 and v2, and a registry where v1 is champion."""
    from lockstep.model.registry import Registry

    shutil.copy(registry_template, lockstep_home / "mlflow.db")
    registry = Registry()
    registry.promote_champion("1", reason="first")
    return registry



@pytest.mark.slow
def test_start_checks_the_slots_and_skips_a_version_that_already_is_champion(world, slots):
    salt = routing.read_table().salt
    plan = rollout.start("r1", "2", None, {**FAST, "strategy": "blue_green"})
    assert plan.noop is False and plan.baseline_version == "1" and plan.strategy == "blue_green"
    assert routing.read_table().salt != salt  # sticky users reshuffled for this rollout
    assert "ndcg_at_10" in plan.review_markdown and "| 0.42 | 0.38 |" in plan.review_markdown
    assert plan.generation == routing.read_generation()
    assert rollout.start("r2", "1", None, FAST).noop is True
    assert record.get("r2")["status"] == "skipped"
    routing.set_state("2", "retired")
    with pytest.raises(rollout.RolloutError, match="slot is retired"):
        rollout.start("r3", None, {"model_version": "2"}, FAST)


@pytest.mark.slow
def test_review_takes_whichever_answer_comes_first(world):
    from lockstep.model.registry import Review

    plan = _plan(require_approval=True, approval_timeout_seconds=0.5)
    alice = Review("approved", "alice", "2026-01-02T03:04:05+00:00", "airflow")
    step = rollout.wait_for_review(plan, registry=world, external=lambda: alice)
    assert step["verdict"] == "pass" and "approved by alice via airflow" in step["reason"]
    assert step["figures"]["reviewer"] == "alice" and step["figures"]["review_via"] == "airflow"
    tags = world.get_version("2").tags  # the form's decision and reviewer, written on the version
    assert (tags["lockstep.review"], tags["lockstep.review.by"], tags["lockstep.review.via"]) == ("approved", "alice", "airflow")
    world.set_tags("2", {"lockstep.review": ""})  # undecided again
    with pytest.raises(rollout.ReviewTimeout):
        rollout.wait_for_review(plan, registry=world, external=lambda: None)
    with pytest.raises(rollout.ReviewTimeout):  # an approval that names no reviewer is not taken
        rollout.wait_for_review(plan, registry=world, external=lambda: "approved")
    world.set_review("2", "rejected", by="bob")
    with pytest.raises(rollout.ReviewRejected, match="rejected in review by bob via mlflow"):
        rollout.wait_for_review(plan, registry=world, external=lambda: alice)  # a rejection wins
    assert rollout.wait_for_review(_plan("r2"), registry=world)["verdict"] == "info"  # approval not required


@pytest.mark.slow
def test_rollback_returns_traffic_in_one_transaction_and_rejects_the_candidate(world):
    from lockstep.core.alerts import recent_alerts

    plan = _plan()
    routing.set_weights({"1": 75, "2": 25})
    before = routing.read_generation()
    record.record_step("r1", "canary 25%", "canary", "fail", action="rollback", reason="error_rate: candidate 9 %",
                       gates=[], figures={"v2.errors": 9})
    out = rollout.rollback(plan, failed_tasks=["canary"])
    changes = [e for e in reversed(routing.history()) if e.generation > before]
    assert changes[0].weights == {"1": 100}  # one change, straight to the champion
    assert len(changes) == 3 and all(c.weights == {"1": 100} for c in changes)  # then drain and retire
    assert routing.read_table().slot("2").state == "retired"
    info = world.get_version("2")
    assert info.status == "rejected" and info.tags["lockstep.rejected_reason"] == "canary 25%: error_rate: candidate 9 %"
    assert info.tags["lockstep.rejected.v2.errors"] == "9"
    assert out["rolled_back"] and out["commit_seconds"] < 1
    assert record.get("r1")["status"] == "rolled_back"
    assert recent_alerts()[-1]["event"] == "rollback"
    assert rollout.rollback(plan)["rolled_back"]  # a retried rollback task is harmless
    assert rollout.rollback(None)["rolled_back"] is False


def _passed(plan: rollout.RolloutPlan) -> rollout.RolloutPlan:
    """Record the strategy's pass, as the canary task would have at its last step."""
    record.record_step(plan.rollout_id, "canary 50%", "canary", "pass", action="promote", weight=50, reason="all gates passed")
    return plan


@pytest.mark.slow
def test_finalize_promotes_only_after_a_promoting_strategy_passed(world):
    """Reproduction: a strategy=shadow run reached finalize and moved alias champion."""
    shadow = _plan("s1", strategy="shadow")
    record.record_step("s1", "shadow", "shadow", "pass", action="promote", reason="shadow gates passed")
    with pytest.raises(rollout.RolloutError, match="'shadow' never promotes"):
        rollout.finalize(shadow, registry=world)
    canary = _plan("c1")
    record.record_step("c1", "canary 20%", "canary", "inconclusive", action="extend", reason="too little data")
    with pytest.raises(rollout.RolloutError, match="canary phase has not passed"):
        rollout.finalize(canary, registry=world)
    assert world.version_for_alias("champion").version == "1" and routing.read_table().weights == {"1": 100}


@pytest.mark.slow
def test_start_refuses_when_the_champion_alias_and_the_routing_table_disagree(world):
    """Reproduction: start forced the alias's version to 100 % after a failed rollback left them apart."""
    routing.set_weights({"2": 100}, actor="alice", reason="manual switch")
    with pytest.raises(rollout.RolloutError, match=r"alias champion is v1 but the routing table sends \{'2': 100\}.*alice"):
        rollout.start("r9", "2", None, FAST)
    assert routing.read_table().weights == {"2": 100} and record.get("r9") is None


@pytest.mark.slow
def test_lockstep_rollback_during_a_canary_wins(world):
    """Reproduction: lockstep_rollback during a canary was undone at the next step."""
    plan = rollout.start("r1", "2", None, {**FAST, "min_samples": 100})
    assert not rollout.tick("canary", plan).done and routing.read_table().weights == {"1": 80, "2": 20}
    back = rollout.rollback_to_previous("customers complain", to_version="1", registry=world)
    assert back["to_version"] == "1"
    with pytest.raises(rollout.RolloutOverridden, match="lockstep_rollback"):
        rollout.tick("canary", plan)
    assert routing.read_table().weights == {"1": 100}
    assert record.get("r1")["status"] == "overridden"
    with pytest.raises(rollout.RolloutOverridden):
        rollout.finalize(_passed(plan), registry=world)  # nor can a later task promote it
    assert world.version_for_alias("champion").version == "1"


@pytest.mark.slow
def test_failed_verification_after_finalize_rolls_the_champion_alias_back(world):
    plan = _passed(_plan(verify_timeout_seconds=1))
    final = rollout.finalize(plan, registry=world)
    assert world.version_for_alias("champion").version == "2" and final["previous_champion"] == "1"
    assert "lockstep.replaced_at" in world.get_version("1").tags
    with pytest.raises(rollout.VerificationFailed):
        rollout.verify(plan, final, urls=["http://127.0.0.1:9"])
    rollout.rollback(plan, registry=world)
    assert routing.read_table().weights == {"1": 100}
    assert world.version_for_alias("champion").version == "1"
    assert world.get_version("2").status == "rejected" and "127.0.0.1:9" in world.get_version("2").tags["lockstep.rejected_reason"]


@pytest.mark.slow
def test_retention_retires_the_previous_champion_unless_it_serves_again(world, slots):
    plan = _passed(_plan())
    final = rollout.finalize(plan, registry=world)
    index = Path(routing.read_table().slot("1").index_location)
    # a manual rollback during the window keeps v1
    back = rollout.rollback_to_previous("bad results", registry=world)
    assert back["to_version"] == "1" and routing.read_table().weights == {"1": 100}
    assert world.get_version("2").tags["lockstep.rolled_back_reason"] == "bad results"
    assert rollout.retire_previous(plan, final, registry=world)["retired"] is None and index.is_dir()
    # promoted again by a new rollout, the window passes: v1 is retired and its index deleted
    plan = _passed(_plan("r2"))
    final = rollout.finalize(plan, registry=world)
    out = rollout.retire_previous(plan, final, registry=world)
    assert out == {"retired": "1", "index_deleted": True, "reason": out["reason"]} and not index.exists()
    assert routing.read_table().slot("1").state == "retired"
    with pytest.raises(rollout.RolloutError, match="cannot roll back to v1: slot state retired"):
        rollout.rollback_to_previous("again", registry=world)
    with pytest.raises(rollout.RolloutError, match="say why"):
        rollout.rollback_to_previous(" ", registry=world)
