"""The rollout steps as a library: gate analysis from log rows, strategies, verification, rollback.

Traffic here is synthetic: a thread writes request and click rows the way serving
replicas do, with a chosen click-through and error rate per version and a split that
follows the routing table, so every verdict is known in advance. The end-to-end runs
with the real serving app and Airflow are in tests/dags/test_rollout_dags.py.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from lockstep import rollout, routing
from lockstep import rollout_record as record
from lockstep.db import get_engine
from lockstep.gates import Verdict
from lockstep.rollout_analysis import GateSettings, Window, arm_stats, shadow_gates, shadow_stats
from lockstep.schema import feedback_log, request_log, shadow_log

FAST = {
    "bake_seconds": 0.4, "shadow_seconds": 0.4, "min_samples": 30, "max_extensions": 1, "poll_seconds": 0.1,
    "log_flush_seconds": 0.05, "drain_seconds": 0.0, "ctr_tau": 0.1, "ctr_margin": 0.1, "canary_steps": [20, 50, 100],
}


# --- helpers -------------------------------------------------------------------------------------


def _slot(version: str, root: Path, state: str = "ready") -> None:
    location = root / "indexes" / f"v{version}"
    location.mkdir(parents=True, exist_ok=True)
    routing.register_slot(version, f"models:/m/{version}", str(location), f"sha256:{version * 8}", state=state)


def _plan(rollout_id: str = "r1", candidate: str = "2", champion: str = "1", **config) -> dict:
    cfg = rollout.RolloutConfig.from_params({**FAST, **config})
    record.begin(rollout_id, candidate, champion, cfg.strategy, cfg.to_dict())
    return {"rollout_id": rollout_id, "model_version": candidate, "baseline_version": champion,
            "strategy": cfg.strategy, "config": cfg.to_dict(), "noop": False}


@pytest.fixture
def slots(lockstep_home, tmp_path):
    """Slots v1 (champion, 100 %) and v2 (candidate, ready), no registry needed."""
    _slot("1", tmp_path)
    _slot("2", tmp_path)
    routing.set_weights({"1": 100})
    return tmp_path


class Traffic:
    """Writes request rows (split by the routing table) and clicks, like serving replicas."""

    def __init__(self, ctr: dict[str, float], errors: dict[str, float] | None = None, latency: dict[str, float] | None = None,
                 per_tick: int = 40, tick: float = 0.02, seed: int = 0) -> None:
        self.ctr, self.errors, self.latency = ctr, errors or {}, latency or {}
        self.per_tick, self.tick = per_tick, tick
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join()

    def _run(self) -> None:
        engine = get_engine()
        while not self.stop_event.is_set():
            weights = routing.read_table(engine).weights
            requests, clicks = [], []
            now = datetime.now(UTC)
            for _ in range(self.per_tick):
                version = self.rng.choices(list(weights), weights=list(weights.values()))[0]
                rid = uuid.uuid4().hex
                failed = self.rng.random() < self.errors.get(version, 0.0)
                requests.append({"request_id": rid, "at": now, "model_version": version, "user_id": None, "query": "q", "k": 10,
                                 "latency_ms": max(0.1, self.rng.gauss(self.latency.get(version, 10.0), 1.0)),
                                 "status": 500 if failed else 200, "top_ids": [], "replica": "synthetic"})
                if not failed and self.rng.random() < self.ctr.get(version, 0.0):
                    clicks.append({"request_id": rid, "record_id": "r", "event": "click", "at": now})
            with engine.begin() as conn:
                conn.execute(insert(request_log), requests)
                if clicks:
                    conn.execute(insert(feedback_log), clicks)
            time.sleep(self.tick)


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
    assert broken[0].verdict is Verdict.FAIL and "above the absolute ceiling" in broken[0].reason
    assert broken[2].verdict is Verdict.FAIL  # answered nothing, so agreed with nothing
    good = shadow_gates(shadow_stats(engine, window, "3"), settings)
    assert [g.verdict for g in good] == [Verdict.PASS] * 3
    assert good[2].figures["mean_overlap"] == pytest.approx(0.7)
    sparse = shadow_gates(shadow_stats(engine, window, "4"), settings)
    assert all(g.verdict is Verdict.INCONCLUSIVE for g in sparse)


# --- strategies on synthetic traffic ------------------------------------------------------------------


def test_shadow_phase_stops_a_failing_candidate_before_the_bake_ends(slots):
    engine = get_engine()
    plan = _plan(shadow_seconds=30)
    before = routing.read_generation()

    def failing_copies() -> None:  # what replicas log for a candidate whose every search fails
        time.sleep(0.2)
        with engine.begin() as conn:
            conn.execute(insert(shadow_log), [
                {"request_id": f"s{i}", "at": datetime.now(UTC), "live_version": "1", "shadow_version": "2",
                 "live_top_ids": ["a"], "shadow_top_ids": None, "latency_ms": None, "error": "boom"} for i in range(40)
            ])

    threading.Thread(target=failing_copies, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(rollout.GateFailed, match="shadow phase"):
        rollout.run_shadow(plan)
    assert time.monotonic() - started < 5  # the 30 s bake was cut short by the error watch
    table = routing.read_table()
    assert table.weights == {"1": 100} and not table.shadows
    assert record.last_failure("r1")["phase"] == "shadow"
    assert all(e.weights == {"1": 100} for e in routing.history() if e.generation > before)  # never served


def test_canary_promotes_an_equal_candidate_through_every_step(slots):
    plan = _plan()
    with Traffic({"1": 0.3, "2": 0.32}):
        out = rollout.run_canary(plan)
    assert out["steps"] == ["canary 20%", "canary 50%"]
    assert routing.read_table().weights == {"1": 50, "2": 50}  # the last step below 100 %; finalize does the rest
    steps = [s for s in record.steps("r1") if s["phase"] == "canary"]
    assert all(s["gates"] and s["window_start"] for s in steps)
    assert {g["name"] for g in steps[0]["gates"]} == {"error_rate", "latency", "ctr_sequential"}


def test_canary_rolls_back_a_worse_candidate_at_the_first_step_in_one_transaction(slots):
    plan = _plan(max_extensions=6)
    before = routing.read_generation()
    with Traffic({"1": 0.4, "2": 0.05}, per_tick=60), pytest.raises(rollout.GateFailed, match="canary 20%") as failed:
        rollout.run_canary(plan)
    assert "ctr_sequential" in str(failed.value) and "significantly worse" in str(failed.value)
    changes = [e for e in reversed(routing.history()) if e.generation > before]
    assert [e.weights for e in changes] == [{"1": 80, "2": 20}, {"1": 100}]  # straight back: no stop in between
    assert not any(s["step"] == "canary 50%" for s in record.steps("r1"))


def test_canary_with_too_little_traffic_extends_then_fails(slots):
    plan = _plan(max_extensions=2)
    with pytest.raises(rollout.GateFailed, match="too little data"):
        rollout.run_canary(plan)  # nobody searches
    looks = [(s["look"], s["action"]) for s in record.steps("r1")]
    assert looks == [(1, "extend"), (2, "extend"), (3, "rollback")]
    assert routing.read_table().weights == {"1": 100}


def test_canary_catches_a_candidate_that_errors_during_the_bake(slots):
    plan = _plan(bake_seconds=30)
    started = time.monotonic()
    with Traffic({"1": 0.3, "2": 0.3}, errors={"2": 0.5}), pytest.raises(rollout.GateFailed, match="error rate"):
        rollout.run_canary(plan)
    assert time.monotonic() - started < 10
    assert routing.read_table().weights == {"1": 100}


def test_ab_test_promotes_a_better_candidate_at_its_horizon(slots):
    plan = _plan(strategy="ab", ab_split=50, ab_samples_per_arm=300, ab_max_seconds=20)
    with Traffic({"1": 0.2, "2": 0.35}, per_tick=80):
        step = rollout.run_ab(plan)
    assert step["verdict"] == "pass" and step["action"] == "promote"
    assert step["figures"]["ctr_fixed.cand_n"] >= 300 and step["figures"]["ctr_fixed.diff"] > 0.05


def test_bandit_moves_traffic_to_the_better_version_and_stops_on_a_winner(slots):
    plan = _plan(strategy="bandit", bandit_interval_seconds=0.3, bandit_min_exposures=50, bandit_floor=0.1, bandit_max_seconds=20)
    with Traffic({"1": 0.1, "2": 0.5}, per_tick=60):
        step = rollout.run_bandit(plan)
    assert step["verdict"] == "pass"
    assert step["figures"]["bandit.prob_best.2"] >= 0.95


def test_bandit_keeps_the_champion_when_the_candidate_is_worse(slots):
    plan = _plan(strategy="bandit", bandit_interval_seconds=0.3, bandit_min_exposures=30, bandit_floor=0.1,
                 bandit_threshold=0.999, bandit_max_seconds=20)
    with Traffic({"1": 0.3, "2": 0.15}, per_tick=5), pytest.raises(rollout.GateFailed, match="lost the bandit"):
        rollout.run_bandit(plan)
    weights = [e.weights for e in routing.history() if e.reason and "bandit look" in e.reason]
    assert weights and weights[0]["1"] > 50  # traffic moved to the better version before the end
    assert all(w["2"] >= 10 for w in weights)  # floor 10 %: the loser kept learning
    assert routing.read_table().weights == {"1": 100}


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
    from lockstep.embedding import TextEmbedder
    from lockstep.registry import Registry
    from tests.test_registry import synthetic_texts

    folder = tmp_path_factory.mktemp("rollout-mlflow")
    registry = Registry(f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "art")
    for dim, seed in ((8, 0), (12, 1)):
        embedder = TextEmbedder(dim=dim, min_df=1).fit(synthetic_texts(seed=seed))
        registry.log_and_register(embedder, params={}, metrics={"ndcg_at_10": 0.3 + dim / 100}, snapshot_seq=0)
    return folder / "mlflow.db"


@pytest.fixture
def world(slots, lockstep_home, registry_template):
    """Slots v1 and v2, and a registry where v1 is champion."""
    from lockstep.registry import Registry

    shutil.copy(registry_template, lockstep_home / "mlflow.db")
    registry = Registry()
    registry.promote_champion("1", reason="first")
    return registry



@pytest.mark.slow
def test_start_checks_the_slots_and_skips_a_version_that_already_is_champion(world, slots):
    salt = routing.read_table().salt
    plan = rollout.start("r1", "2", None, {**FAST, "strategy": "blue_green"})
    assert plan["noop"] is False and plan["baseline_version"] == "1" and plan["strategy"] == "blue_green"
    assert routing.read_table().salt != salt  # sticky users reshuffled for this rollout
    assert "ndcg_at_10" in plan["review_markdown"] and "| 0.42 | 0.38 |" in plan["review_markdown"]
    assert rollout.start("r2", "1", None, FAST)["noop"] is True
    assert record.get("r2")["status"] == "skipped"
    routing.set_state("2", "retired")
    with pytest.raises(rollout.RolloutError, match="slot is retired"):
        rollout.start("r3", None, {"model_version": "2"}, FAST)


@pytest.mark.slow
def test_review_takes_whichever_answer_comes_first(world):
    plan = _plan(require_approval=True, approval_timeout_seconds=0.5)
    assert rollout.wait_for_review(plan, registry=world, external=lambda: "approved")["verdict"] == "pass"
    with pytest.raises(rollout.ReviewTimeout):
        rollout.wait_for_review(plan, registry=world, external=lambda: None)
    world.set_review("2", "rejected")
    with pytest.raises(rollout.ReviewRejected):
        rollout.wait_for_review(plan, registry=world, external=lambda: "approved")  # a rejection wins
    assert rollout.wait_for_review(_plan("r2"), registry=world)["verdict"] == "info"  # approval not required


@pytest.mark.slow
def test_rollback_returns_traffic_in_one_transaction_and_rejects_the_candidate(world):
    from lockstep.alerts import recent_alerts

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


@pytest.mark.slow
def test_failed_verification_after_finalize_rolls_the_champion_alias_back(world):
    plan = _plan(verify_timeout_seconds=1)
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
    plan = _plan()
    final = rollout.finalize(plan, registry=world)
    index = Path(routing.read_table().slot("1").index_location)
    # a manual rollback during the window keeps v1
    back = rollout.rollback_to_previous("bad results", registry=world)
    assert back["to_version"] == "1" and routing.read_table().weights == {"1": 100}
    assert world.get_version("2").tags["lockstep.rolled_back_reason"] == "bad results"
    assert rollout.retire_previous(plan, final, registry=world)["retired"] is None and index.is_dir()
    # promoted again, the window passes: v1 is retired and its index deleted
    final = rollout.finalize(plan, registry=world)
    out = rollout.retire_previous(plan, final, registry=world)
    assert out == {"retired": "1", "index_deleted": True, "reason": out["reason"]} and not index.exists()
    assert routing.read_table().slot("1").state == "retired"
    with pytest.raises(rollout.RolloutError, match="cannot roll back to v1: slot state retired"):
        rollout.rollback_to_previous("again", registry=world)
    with pytest.raises(rollout.RolloutError, match="say why"):
        rollout.rollback_to_previous(" ", registry=world)
