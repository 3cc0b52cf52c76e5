"""The rollout strategies as pure functions: a strategy's state and the arms' counts in, a decision out.

Each function here looks at one moment of a rollout phase and says what to do next:
keep baking, move traffic, bake again (inconclusive), pass or fail. Nothing here reads
a clock, a database or a random source of its own: the executor (``lockstep.rollout.steps``)
reads the logs, passes the counts and the seconds elapsed, applies the decision and
saves the returned state until the next look. So every decision can be replayed from
its inputs, and tests can drive a strategy look by look.

When a look may be judged is decided by counts: each arm needs its share of answered
requests (``min_samples`` per look, cumulative within a step). The clock is only a
safety net: a look that has not got its counts by ``max_bake_seconds`` is judged as
"too little traffic", which extends the bake or fails the candidate, never passes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from lockstep.rollout.analysis import (
    ArmStats,
    GateSettings,
    ShadowStats,
    ab_gate,
    ctr_look,
    guard_gates,
    sequential_ctr,
    shadow_gates,
)
from lockstep.rollout.gates import (
    Action,
    GateResult,
    GateVerdict,
    SequentialCTRTest,
    bandit_decision,
    combine,
    error_rate_gate,
)
from lockstep.rollout.policy import CanaryPolicy
from lockstep.rollout.statistics import effective_arm_counts, thompson_weights, to_percent_weights

if TYPE_CHECKING:
    from lockstep.rollout.config import RolloutConfig


class Move(StrEnum):
    """What the executor does after a look."""

    WAIT = "wait"  # keep baking: the look has not got its counts yet
    ADVANCE = "advance"  # set the decision's weights (next canary step, bandit reweighting)
    EXTEND = "extend"  # inconclusive: bake the same step again (a new look)
    PASS = "pass"  # the phase is won
    FAIL = "fail"  # the phase is lost: traffic goes back to the champion


@dataclass(frozen=True)
class Decision:
    """One look's outcome; ``state`` is the strategy's state to save for the next look."""

    move: Move
    reason: str
    results: tuple[GateResult, ...] = ()
    weights: dict[str, int] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    judged: bool = False  # the gates were computed (a row for the rollout record)

    @property
    def verdict(self) -> GateVerdict:
        return combine(self.results).verdict if self.results else GateVerdict.INCONCLUSIVE


@dataclass(frozen=True)
class Bake:
    """When a look may be judged: when each arm has ``need`` answered requests and at least
    ``min_seconds`` have passed; at ``max_seconds`` without the counts it is too little traffic."""

    need: int
    min_seconds: float
    max_seconds: float

    def status(self, counts: Mapping[str, int], elapsed: float) -> str:
        """'ready', 'wait' or 'timeout' (the safety net: never a pass)."""
        if min(counts.values(), default=0) >= self.need and elapsed >= self.min_seconds:
            return "ready"
        return "timeout" if elapsed >= self.max_seconds else "wait"


def early_errors(cand: ArmStats, base: ArmStats, settings: GateSettings) -> list[GateResult]:
    """The error-rate gate during a bake: returned only when it already fails (checked at every look)."""
    t = settings.thresholds
    result = error_rate_gate(
        cand.errors, cand.requests, base.errors, base.requests, max_abs_increase=t.max_abs_error_increase,
        alpha=settings.alpha, min_samples=settings.min_samples, max_error_rate=t.max_error_rate, name="error_rate",
        cand_clusters=cand.error_clusters, base_clusters=base.error_clusters,
    )
    return [result] if result.verdict is GateVerdict.FAIL else []


def too_little(state: dict[str, Any], counts: Mapping[str, int], need: int, elapsed: float, config: RolloutConfig) -> Decision:
    """The safety net: a look without its counts in time bakes again, or fails after the last extension.

    ``counts`` maps a label ("v3", "shadow copies") to what it answered.
    """
    have = ", ".join(f"{label}: {n}" for label, n in counts.items())
    reason = f"too little traffic: answered requests {have} after {elapsed:.0f} s, need {need} each"
    look = int(state.get("look", 1))
    if look <= config.max_extensions:
        return Decision(Move.EXTEND, reason, state={**state, "look": look + 1}, judged=True)
    return Decision(Move.FAIL, f"{reason} (after {look} looks)", state=state, judged=True)


def posterior_counts(cand: ArmStats, champ: ArmStats) -> tuple[dict[str, int], dict[str, int]]:
    """The bandit's Beta-posterior counts: per-user effective counts, or raw counts when the arms carry no sums."""
    if cand.clusters.empty or champ.clusters.empty:
        return ({cand.version: cand.clicked, champ.version: champ.clicked},
                {cand.version: cand.answered, champ.version: champ.answered})
    return effective_arm_counts({cand.version: cand.clusters, champ.version: champ.clusters})


# --- shadow --------------------------------------------------------------------------------------------


def shadow(state: dict[str, Any], stats: ShadowStats, elapsed: float, config: RolloutConfig) -> Decision:
    """Mirrored traffic: copies' error rate, latency against live, top-k overlap with live."""
    settings = GateSettings.of(config)
    look = int(state.get("look", 1))
    gates = shadow_gates(stats, settings)
    if gates[0].verdict is GateVerdict.FAIL:
        return Decision(Move.FAIL, gates[0].reason, (gates[0],), state=state, judged=True)
    need = look * config.min_samples
    bake = Bake(need, config.shadow_bake_seconds, config.max_bake_seconds)
    status = bake.status({"shadow copies": stats.copies}, elapsed)
    if status == "wait":
        return Decision(Move.WAIT, f"{stats.copies} of {need} shadow copies", state=state)
    if status == "timeout":
        return too_little(state, {"shadow copies": stats.copies}, need, elapsed, config)
    combined = combine(gates, "shadow")
    if combined.verdict is GateVerdict.PASS:
        return Decision(Move.PASS, combined.reason, tuple(gates), state=state, judged=True)
    if combined.verdict is GateVerdict.FAIL or look > config.max_extensions:
        return Decision(Move.FAIL, combined.reason, tuple(gates), state=state, judged=True)
    return Decision(Move.EXTEND, combined.reason, tuple(gates), state={**state, "look": look + 1}, judged=True)


# --- canary --------------------------------------------------------------------------------------------


def canary(
    state: dict[str, Any], step: tuple[ArmStats, ArmStats], total: tuple[ArmStats, ArmStats], elapsed: float, config: RolloutConfig
) -> Decision:
    """One look at a canary step.

    ``step`` is (candidate, champion) over this step's traffic, judged for errors and
    latency; ``total`` is all canary traffic so far, fed to the sequential CTR test
    (saved in the state, so it stays valid however many looks it gets).
    """
    cand, champ = step
    settings, policy = GateSettings.of(config), CanaryPolicy.of(config)
    index, look = int(state.get("index", 0)), int(state.get("look", 1))
    early = early_errors(cand, champ, settings)
    if early:
        return Decision(Move.FAIL, combine(early).reason, tuple(early), state=state, judged=True)
    need = look * config.min_samples
    counts = {cand.version: cand.answered, champ.version: champ.answered}
    status = Bake(need, config.bake_seconds, config.max_bake_seconds).status(counts, elapsed)
    if status == "wait":
        return Decision(Move.WAIT, f"baking: answered {counts}, need {need} each", state=state)
    if status == "timeout":
        return too_little(state, {f"v{v}": n for v, n in counts.items()}, need, elapsed, config)
    test = SequentialCTRTest.from_state(state["ctr"]) if state.get("ctr") else sequential_ctr(settings)
    seen = dict(state.get("seen") or {})
    results = (*guard_gates(cand, champ, settings), ctr_look(test, total[0], total[1], seen, settings))
    new_state = {**state, "ctr": test.to_state(), "seen": seen}
    action = policy.next_action(index, results, look - 1)
    reason = combine(results).reason
    if action == Action.ROLLBACK:
        return Decision(Move.FAIL, reason, results, state=new_state, judged=True)
    if action == Action.EXTEND:
        return Decision(Move.EXTEND, reason, results, state={**new_state, "look": look + 1}, judged=True)
    following = index + 1
    if following >= len(policy.steps) or policy.steps[following] >= 100:
        return Decision(Move.PASS, reason, results, state=new_state, judged=True)
    weight = policy.steps[following]
    weights = {champ.version: 100 - weight, cand.version: weight}
    return Decision(Move.ADVANCE, reason, results, weights, state={**new_state, "index": following, "look": 1}, judged=True)


# --- A/B -----------------------------------------------------------------------------------------------


def ab(state: dict[str, Any], arms: tuple[ArmStats, ArmStats], elapsed: float, config: RolloutConfig) -> Decision:
    """A fixed horizon: one test once each arm has ``ab_samples_per_arm`` answered requests.

    Not reaching the horizon by ``ab_max_seconds`` fails (an underpowered test says nothing);
    only the error rate is watched on the way.
    """
    cand, champ = arms
    settings = GateSettings.of(config)
    early = early_errors(cand, champ, settings)
    if early:
        return Decision(Move.FAIL, combine(early).reason, tuple(early), state=state, judged=True)
    counts = {cand.version: cand.answered, champ.version: champ.answered}
    status = Bake(config.ab_samples_per_arm, 0.0, config.ab_max_seconds).status(counts, elapsed)
    if status == "wait":
        return Decision(Move.WAIT, f"collecting: answered {counts} of {config.ab_samples_per_arm} each", state=state)
    if status == "timeout":
        reason = f"the A/B horizon was not reached in {config.ab_max_seconds:.0f} s: answered {counts}, need {config.ab_samples_per_arm} each"
        return Decision(Move.FAIL, reason, state=state, judged=True)
    results = (*guard_gates(cand, champ, settings), ab_gate(cand, champ, settings, config.min_samples))
    combined = combine(results, "ab")
    move = Move.PASS if combined.verdict is GateVerdict.PASS else Move.FAIL
    return Decision(move, combined.reason, results, state=state, judged=True)


# --- bandit --------------------------------------------------------------------------------------------


def bandit(state: dict[str, Any], arms: tuple[ArmStats, ArmStats], elapsed: float, config: RolloutConfig) -> Decision:
    """Thompson sampling on click-through, held to the same guard gates as a canary.

    The posteriors are per user: each arm's clicks and impressions divided by its design
    effect (``posterior_counts``), so heavy users do not make P(best) surer than the
    evidence. A look comes every ``bandit_interval_seconds`` once both arms have
    ``bandit_min_exposures`` answered requests. The candidate wins only when it is best
    with P >= threshold *and* its error rate and latency pass against the champion; a
    failing guard gate ends the rollout whatever the clicks say. Randomness is seeded by
    the look number, so a look replays exactly.
    """
    cand, champ = arms
    settings = GateSettings.of(config)
    look = int(state.get("look", 1))
    weights = dict(state.get("weights") or {champ.version: 50, cand.version: 50})
    early = early_errors(cand, champ, settings)
    if early:
        return Decision(Move.FAIL, combine(early).reason, tuple(early), state=state, judged=True)
    counts = {cand.version: cand.answered, champ.version: champ.answered}
    timed_out = elapsed >= config.bandit_max_seconds
    due = elapsed - float(state.get("last_look_at", 0.0)) >= config.bandit_interval_seconds
    if min(counts.values()) < config.bandit_min_exposures or not due:
        if timed_out:
            return Decision(Move.FAIL, f"no winner within {config.bandit_max_seconds:.0f} s: answered {counts}", state=state, judged=True)
        return Decision(Move.WAIT, f"answered {counts}; need {config.bandit_min_exposures} each and a look every "
                        f"{config.bandit_interval_seconds:g} s", state=state)
    clicks, trials = posterior_counts(cand, champ)
    decision = bandit_decision(clicks, trials, candidate=cand.version, baseline=champ.version, threshold=config.bandit_threshold,
                               min_exposures=config.bandit_min_exposures, seed=look, exposures=counts)
    guards = guard_gates(cand, champ, settings)
    results = (decision, *guards)
    after = {**state, "look": look + 1, "last_look_at": elapsed}
    failed_guards = [g for g in guards if g.verdict is GateVerdict.FAIL]
    if failed_guards:
        return Decision(Move.FAIL, f"guard gate failed: {combine(failed_guards).reason}", results, state=after, judged=True)
    if decision.verdict is GateVerdict.FAIL:
        return Decision(Move.FAIL, decision.reason, results, state=after, judged=True)
    if decision.verdict is GateVerdict.PASS and all(g.verdict is GateVerdict.PASS for g in guards):
        return Decision(Move.PASS, f"{decision.reason}; guard gates passed", results, state=after, judged=True)
    if timed_out:
        return Decision(Move.FAIL, f"no winner within {config.bandit_max_seconds:.0f} s: {combine(results).reason}", results,
                        state=after, judged=True)
    new = to_percent_weights(thompson_weights(clicks, trials, floor=config.bandit_floor, seed=look))
    reason = f"{combine(results).reason}; weights {new}"
    if new != weights:
        return Decision(Move.ADVANCE, reason, results, new, state={**after, "weights": new}, judged=True)
    return Decision(Move.EXTEND, reason, results, state=after, judged=True)
