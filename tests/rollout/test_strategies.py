"""The rollout strategies as pure functions, driven look by look from hand-made counts.

Each case gives a strategy its saved state, the arms' counts and the seconds elapsed,
and checks the move it decides (and the reason, which goes into the rollout record).
No database, no clock, no unseeded randomness: the bandit's draws are seeded by the
look number, so every decision here replays exactly.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from lockstep.rollout import steps
from lockstep.rollout.analysis import ArmStats, ShadowStats
from lockstep.rollout.gates import GateVerdict, SequentialCTRTest
from lockstep.rollout.strategies import Bake, Decision, Move, ab, bandit, canary, shadow, too_little

CAND, CHAMP = "2", "1"


def config(**overrides: Any) -> steps.RolloutConfig:
    """Small numbers so the cases stay readable: 50 answered requests per arm per look."""
    base = dict(canary_steps=(1, 5, 25, 50, 100), min_samples=50, bake_seconds=10.0, max_bake_seconds=100.0, max_extensions=2,
                ab_samples_per_arm=1000, ab_max_seconds=600.0,
                bandit_min_exposures=100, bandit_interval_seconds=30.0, bandit_max_seconds=3600.0, bandit_floor=0.05)
    return steps.RolloutConfig(**{**base, **overrides})


def arm(version: str, requests: int, clicked: int = 0, errors: int = 0, latency_ms: float = 10.0) -> ArmStats:
    """One version's traffic: a latency per answered request, spread a little and deterministic."""
    answered = requests - errors
    return ArmStats(version, requests=requests, errors=errors, clicked=clicked,
                    latencies_ms=tuple(latency_ms + (i % 7) * 0.5 for i in range(answered)))


def pair(n: int, cand_ctr: float, champ_ctr: float, **cand: Any) -> tuple[ArmStats, ArmStats]:
    return arm(CAND, n, round(n * cand_ctr), **cand), arm(CHAMP, n, round(n * champ_ctr))


def said(decision: Decision) -> str:
    """The decision's reason and each gate's own reason (a pass names only the count of gates)."""
    return " | ".join([decision.reason, *(r.reason for r in decision.results)])


def assert_pure(strategy, state: dict[str, Any], *args: Any) -> Decision:
    """Run a strategy and check it neither changed its inputs nor depends on anything else."""
    before = copy.deepcopy(state)
    first = strategy(state, *args)
    assert state == before, "a strategy must not change the state it was given"
    assert strategy(copy.deepcopy(before), *args) == first, "the same inputs must give the same decision"
    return first


# --- Bake ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "elapsed", "expected"),
    [
        ({"1": 50, "2": 50}, 10.0, "ready"),  # both arms have their share and the least time passed
        ({"1": 500, "2": 49}, 10.0, "wait"),  # one arm short: the other's plenty does not help
        ({"1": 50, "2": 50}, 9.9, "wait"),  # counts are in but the least bake time is not over
        ({"1": 50, "2": 49}, 100.0, "timeout"),  # the safety net
        ({"1": 50, "2": 50}, 500.0, "ready"),  # the counts arrived: late is still ready, never a timeout
        ({}, 0.0, "wait"),
    ],
)
def test_a_bake_is_judged_on_counts_with_the_clock_only_as_safety_net(counts, elapsed, expected):
    assert Bake(need=50, min_seconds=10.0, max_seconds=100.0).status(counts, elapsed) == expected


@pytest.mark.parametrize(("look", "move", "next_look"), [(1, Move.EXTEND, 2), (2, Move.EXTEND, 3), (3, Move.FAIL, 3)])
def test_too_little_traffic_extends_until_the_last_extension_then_fails(look, move, next_look):
    state = {"look": look, "index": 1}
    decision = too_little(state, {f"v{CAND}": 7, f"v{CHAMP}": 70}, 100, 120.4, config())
    assert (decision.move, decision.state, decision.judged) == (move, {"look": next_look, "index": 1}, True)
    assert decision.reason.startswith("too little traffic: answered requests v2: 7, v1: 70 after 120 s, need 100 each")
    assert decision.weights is None and decision.verdict is GateVerdict.INCONCLUSIVE  # never a pass


# --- canary ----------------------------------------------------------------------------------------

EQUAL_BIG = pair(20_000, 0.30, 0.30)  # enough traffic to show non-inferiority
EQUAL_SMALL = pair(200, 0.30, 0.30)  # counts are in, evidence is not
WORSE = pair(2_000, 0.15, 0.30)

CANARY_CASES = {
    # name: (state, step arms, total arms, elapsed, expected move, reason fragment)
    "still baking: too few requests": ({}, pair(30, 0.3, 0.3), pair(30, 0.3, 0.3), 5.0, Move.WAIT, "baking: answered"),
    "counts in, least time not over": ({}, EQUAL_BIG, EQUAL_BIG, 9.0, Move.WAIT, "need 50 each"),
    "no counts by max_bake_seconds": ({}, pair(30, 0.3, 0.3), pair(30, 0.3, 0.3), 100.0, Move.EXTEND, "too little traffic"),
    "no counts at the last look": ({"look": 3}, pair(30, 0.3, 0.3), pair(30, 0.3, 0.3), 100.0, Move.FAIL, "after 3 looks"),
    "errors fail at once, before the bake": (
        {}, pair(100, 0.3, 0.3, errors=30), pair(100, 0.3, 0.3, errors=30), 0.0, Move.FAIL, "above the absolute ceiling"),
    "significantly worse click-through": ({}, WORSE, WORSE, 20.0, Move.FAIL, "significantly worse"),
    "inconclusive extends": ({}, EQUAL_SMALL, EQUAL_SMALL, 20.0, Move.EXTEND, "not enough evidence"),
    "inconclusive after the last extension": (
        {"look": 3}, pair(200 * 3, 0.3, 0.3), EQUAL_SMALL, 20.0, Move.FAIL, "not enough evidence"),
    "three times slower": (
        {}, (arm(CAND, 20_000, 6_000, latency_ms=30.0), EQUAL_BIG[1]), EQUAL_BIG, 20.0, Move.FAIL, "significantly slower"),
    "safe: next step": ({}, EQUAL_BIG, EQUAL_BIG, 20.0, Move.ADVANCE, "all 3 gates passed"),
    "safe at the step before 100 %": ({"index": 3}, EQUAL_BIG, EQUAL_BIG, 20.0, Move.PASS, "all 3 gates passed"),
}


@pytest.mark.parametrize("case", CANARY_CASES)
def test_canary_table(case):
    state, step, total, elapsed, move, fragment = CANARY_CASES[case]
    decision = assert_pure(canary, state, step, total, elapsed, config())
    assert decision.move is move, decision.reason
    assert fragment in said(decision)
    assert decision.judged is (move is not Move.WAIT)


def test_canary_advances_to_the_next_step_weights_and_resets_the_look():
    decision = canary({"look": 2}, EQUAL_BIG, EQUAL_BIG, 20.0, config(canary_steps=(1, 5, 25, 50, 100)))
    assert decision.move is Move.ADVANCE and decision.verdict is GateVerdict.PASS
    assert decision.weights == {CHAMP: 95, CAND: 5}
    assert (decision.state["index"], decision.state["look"]) == (1, 1)
    assert [r.name for r in decision.results] == ["error_rate", "latency", "ctr_sequential"]


def test_canary_steps_come_from_the_config():
    decision = canary({"index": 0}, EQUAL_BIG, EQUAL_BIG, 20.0, config(canary_steps=(10, 40, 100)))
    assert decision.weights == {CHAMP: 60, CAND: 40}
    last = canary({"index": 1}, EQUAL_BIG, EQUAL_BIG, 20.0, config(canary_steps=(10, 40, 100)))
    assert last.move is Move.PASS and last.weights is None


def test_canary_needs_more_requests_at_each_later_look_of_a_step():
    """``min_samples`` per look, cumulative within a step: look 2 needs twice as many."""
    counts = pair(120, 0.3, 0.3)
    assert canary({"look": 2}, counts, counts, 20.0, config()).move is not Move.WAIT
    assert canary({"look": 3}, counts, counts, 20.0, config()).move is Move.WAIT  # 120 < 3 x 50


def test_canary_keeps_its_sequential_test_in_the_state_and_counts_each_request_once():
    """Looking again at the same totals adds nothing to the CTR test: the state remembers what it saw."""
    first = canary({}, EQUAL_SMALL, EQUAL_SMALL, 20.0, config())
    assert first.state["seen"] == {"cand_clicks": 60, "cand_n": 200, "base_clicks": 60, "base_n": 200}
    again = canary(first.state, EQUAL_SMALL, EQUAL_SMALL, 20.0, config())
    test = SequentialCTRTest.from_state(again.state["ctr"])
    assert (test.cand_n, test.base_n, test.cand_clicks) == (200, 200, 60)
    more = pair(400, 0.3, 0.3)
    later = canary(first.state, EQUAL_SMALL, more, 20.0, config())
    assert SequentialCTRTest.from_state(later.state["ctr"]).cand_n == 400  # only the 200 new ones were added


# --- shadow ----------------------------------------------------------------------------------------


def copies(n: int, *, errors: int = 0, agree: float = 1.0, live_n: int | None = None, slower: float = 1.0) -> ShadowStats:
    """``n`` shadow copies beside ``live_n`` live answers; ``agree`` of each top-10 is shared with live."""
    live_n = n if live_n is None else live_n
    keep = round(10 * agree)
    live = tuple(tuple(f"d{q}-{j}" for j in range(10)) for q in range(n))
    shadow_ids = tuple(
        None if q < errors else tuple(list(live[q][:keep]) + [f"x{q}-{j}" for j in range(10 - keep)]) for q in range(n)
    )
    return ShadowStats(
        CAND, copies=n, errors=errors, live_top_ids=live, shadow_top_ids=shadow_ids,
        shadow_latencies_ms=tuple(slower * (10.0 + (i % 7) * 0.5) for i in range(n - errors)),
        live_latencies_ms=tuple(10.0 + (i % 7) * 0.5 for i in range(live_n)),
        live_requests=live_n, live_errors=0,
    )


SHADOW_CASES = {
    # name: (state, stats, elapsed, config overrides, expected move, reason fragment)
    "every copy failed: stop at once": ({}, copies(60, errors=60), 0.0, {}, Move.FAIL, "above the absolute ceiling"),
    "too few copies": ({}, copies(20), 50.0, {}, Move.WAIT, "20 of 50 shadow copies"),
    "copies in, least time not over": ({}, copies(60), 5.0, {}, Move.WAIT, "60 of 50 shadow copies"),
    "shadow_seconds overrides the bake": ({}, copies(60), 5.0, {"shadow_seconds": 1.0}, Move.PASS, "all 3 gates passed"),
    "no copies by max_bake_seconds": ({}, copies(20), 100.0, {}, Move.EXTEND, "too little traffic"),
    "agrees and as fast": ({}, copies(60), 10.0, {}, Move.PASS, "all 3 gates passed"),
    "disagrees with live": ({}, copies(60, agree=0.1), 10.0, {}, Move.FAIL, "shadow disagrees with live"),
    "three times slower": ({}, copies(200, slower=3.0), 10.0, {}, Move.FAIL, "significantly slower"),
    "live side too thin: extend": ({}, copies(60, live_n=10), 10.0, {}, Move.EXTEND, "too little data"),
    "live side too thin at the last look": (
        {"look": 3}, copies(150, live_n=10), 10.0, {}, Move.FAIL, "too little data"),
}


@pytest.mark.parametrize("case", SHADOW_CASES)
def test_shadow_table(case):
    state, stats, elapsed, overrides, move, fragment = SHADOW_CASES[case]
    decision = assert_pure(shadow, state, stats, elapsed, config(**overrides))
    assert decision.move is move, decision.reason
    assert fragment in said(decision)
    assert decision.weights is None  # a shadow phase never moves live traffic


def test_a_shadow_timeout_reason_reads_as_a_sentence():
    decision = shadow({}, copies(20), 100.0, config())
    assert "vshadow" not in decision.reason and "shadow copies: 20" in decision.reason


# --- A/B -------------------------------------------------------------------------------------------

AB_CASES = {
    # name: (arms, elapsed, expected move, reason fragment)
    "collecting": (pair(400, 0.3, 0.3), 100.0, Move.WAIT, "of 6000 each"),
    "horizon missed": (pair(400, 0.3, 0.3), 600.0, Move.FAIL, "the A/B horizon was not reached in 600 s"),
    "errors stop it early": (pair(400, 0.3, 0.3, errors=100), 1.0, Move.FAIL, "above the absolute ceiling"),
    "better at the horizon": (pair(6000, 0.33, 0.30), 100.0, Move.PASS, "significantly better"),
    "worse at the horizon": (pair(6000, 0.27, 0.30), 100.0, Move.FAIL, "significantly worse"),
    "equal at the horizon: non-inferior": (pair(6000, 0.30, 0.30), 100.0, Move.PASS, "non-inferior"),
    "a bit worse: no verdict is a fail": (pair(6000, 0.29, 0.30), 100.0, Move.FAIL, "not enough evidence"),
    "horizon reached late still counts": (pair(6000, 0.30, 0.30), 5000.0, Move.PASS, "non-inferior"),
}


@pytest.mark.parametrize("case", AB_CASES)
def test_ab_table(case):
    arms, elapsed, move, fragment = AB_CASES[case]
    decision = assert_pure(ab, {"started": 1}, arms, elapsed, config(strategy="ab", ab_samples_per_arm=6000))
    assert decision.move is move, decision.reason
    assert fragment in said(decision)
    assert decision.state == {"started": 1} and decision.weights is None


def test_ab_judges_its_one_look_with_the_guard_gates_and_the_fixed_test():
    decision = ab({}, pair(1000, 0.36, 0.30), 100.0, config(strategy="ab"))
    assert decision.move is Move.PASS
    assert [r.name for r in decision.results] == ["error_rate", "latency", "ctr_fixed"]
    assert decision.results[-1].figures["cand_n"] == 1000


# --- bandit ----------------------------------------------------------------------------------------

BANDIT_CASES = {
    # name: (state, arms, elapsed, expected move, reason fragment)
    "too few exposures": ({}, pair(80, 0.3, 0.3), 40.0, Move.WAIT, "need 100 each"),
    "not due yet": ({"look": 2, "last_look_at": 30.0}, pair(400, 0.3, 0.3), 50.0, Move.WAIT, "a look every 30 s"),
    "no exposures by the deadline": ({}, pair(80, 0.3, 0.3), 3600.0, Move.FAIL, "no winner within 3600 s"),
    "errors stop it early": ({}, pair(400, 0.3, 0.3, errors=100), 1.0, Move.FAIL, "above the absolute ceiling"),
    "candidate clearly best": ({}, pair(400, 0.50, 0.25), 30.0, Move.PASS, "guard gates passed"),
    "champion clearly best": ({}, pair(400, 0.15, 0.30), 30.0, Move.FAIL, "baseline is best"),
    "leaning: reweight": ({}, pair(400, 0.30, 0.25), 30.0, Move.ADVANCE, "no clear winner yet"),
    "even: weights unchanged": ({}, pair(400, 0.25, 0.25), 30.0, Move.EXTEND, "no clear winner yet"),
    "no winner by the deadline": ({}, pair(400, 0.25, 0.25), 3600.0, Move.FAIL, "no winner within 3600 s"),
    "clicks win but three times slower": (
        {}, (arm(CAND, 400, 200, latency_ms=30.0), arm(CHAMP, 400, 100)), 30.0, Move.FAIL, "guard gate failed: "),
}


@pytest.mark.parametrize("case", BANDIT_CASES)
def test_bandit_table(case):
    state, arms, elapsed, move, fragment = BANDIT_CASES[case]
    decision = assert_pure(bandit, state, arms, elapsed, config(strategy="bandit"))
    assert decision.move is move, decision.reason
    assert fragment in said(decision)


def test_a_bandit_look_replays_exactly_and_moves_the_state_on():
    arms = pair(400, 0.30, 0.25)
    cfg = config(strategy="bandit")
    first = bandit({"look": 4}, arms, 120.0, cfg)
    assert first == bandit({"look": 4}, arms, 120.0, cfg)  # seeded by the look number
    assert first.state == {"look": 5, "last_look_at": 120.0, "weights": first.weights}
    assert first.results[0].figures["prob_best.2"] == bandit({"look": 4}, arms, 500.0, cfg).results[0].figures["prob_best.2"]


def test_bandit_weights_sum_to_100_and_keep_the_floor_for_the_loser():
    arms = pair(400, 0.31, 0.25)
    decision = bandit({}, arms, 30.0, config(strategy="bandit", bandit_floor=0.1, bandit_threshold=0.999))
    assert decision.move is Move.ADVANCE
    assert sum(decision.weights.values()) == 100
    assert decision.weights[CAND] > decision.weights[CHAMP] >= 10


def test_bandit_weights_that_would_not_change_extend_instead_of_rewriting_the_table():
    arms, cfg = pair(400, 0.30, 0.25), config(strategy="bandit")
    moved = bandit({"look": 2}, arms, 60.0, cfg)
    assert moved.move is Move.ADVANCE
    same = bandit({"look": 2, "weights": moved.weights}, arms, 60.0, cfg)
    assert same.move is Move.EXTEND and same.weights is None
    assert same.state["weights"] == moved.weights  # kept for the next look


def test_a_bandit_winner_still_waits_for_its_guard_gates():
    """Clicks say the candidate is best, but too few latencies to judge it: no pass yet."""
    cand = ArmStats(CAND, requests=400, clicked=200, latencies_ms=(10.0,) * 20)
    champ = arm(CHAMP, 400, 100)
    decision = bandit({}, (cand, champ), 30.0, config(strategy="bandit"))
    assert decision.results[0].verdict is GateVerdict.PASS  # the bandit's own verdict
    assert decision.move is Move.ADVANCE, decision.reason  # traffic leans its way, the phase goes on
    assert decision.weights == {CAND: 95, CHAMP: 5}  # P(best) ~1 above the 5 % floor of the champion
    assert "latency: too little data" in decision.reason


def test_a_look_on_other_arms_versions_uses_their_names():
    """Strategies work on whatever versions they are given: nothing assumes '1' and '2'."""
    cand, champ = replace(EQUAL_BIG[0], version="17"), replace(EQUAL_BIG[1], version="9")
    decision = canary({}, (cand, champ), (cand, champ), 20.0, config())
    assert decision.weights == {"9": 95, "17": 5}
