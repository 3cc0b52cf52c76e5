"""A rollout's canary policy and its gate thresholds: the steps, the bakes, and what a step's verdicts lead to.

``CanaryPolicy`` turns the combined verdict of a step's gates into an action (PROMOTE,
EXTEND or ROLLBACK); ``GateThresholds`` carries the per-gate thresholds the strategies
pass to the gate functions (``lockstep.rollout.gates``). Both take their defaults from
``RolloutConfig`` (``lockstep.rollout.config``), the one place a rollout's defaults are
written, and are built from one rollout's settings by ``of(config)``: the config does
not import them, so the import runs one way (config, then gates, then policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lockstep.rollout.config import DEFAULTS
from lockstep.rollout.gates import Action, GateResult, GateVerdict, combine
from lockstep.rollout.statistics import GateError, check_canary_policy

if TYPE_CHECKING:
    from lockstep.rollout.config import RolloutConfig


@dataclass(frozen=True)
class GateThresholds:
    """The per-gate thresholds a rollout passes to the gate functions.

    The defaults are RolloutConfig's (``lockstep.rollout.config``), the one place a
    rollout's defaults are written.
    """

    max_abs_error_increase: float = DEFAULTS["max_error_increase"]
    max_error_rate: float = DEFAULTS["max_error_rate"]
    latency_tolerance: float = DEFAULTS["latency_tolerance"]
    latency_confidence: float = DEFAULTS["latency_confidence"]
    min_overlap: float = DEFAULTS["min_overlap"]
    non_inferiority_margin: float = DEFAULTS["ctr_margin"]

    @classmethod
    def of(cls, config: RolloutConfig) -> GateThresholds:
        """The thresholds one rollout's settings give its gates."""
        return cls(
            max_abs_error_increase=config.max_error_increase,
            max_error_rate=config.max_error_rate,
            latency_tolerance=config.latency_tolerance,
            latency_confidence=config.latency_confidence,
            min_overlap=config.min_overlap,
            non_inferiority_margin=config.ctr_margin,
        )


@dataclass(frozen=True)
class CanaryPolicy:
    """Traffic steps (percent), how long each bakes, and what to do with the gates' verdicts.

    INCONCLUSIVE extends the bake of the current step up to ``max_extensions`` times, then
    rolls back: a rollout that cannot show the candidate is safe does not go on for ever.
    The defaults are RolloutConfig's.
    """

    steps: tuple[int, ...] = DEFAULTS["canary_steps"]
    bake_seconds: float = DEFAULTS["bake_seconds"]
    min_samples: int = DEFAULTS["min_samples"]
    max_extensions: int = DEFAULTS["max_extensions"]
    alpha: float = DEFAULTS["alpha"]
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        object.__setattr__(self, "steps", steps)
        check_canary_policy(steps, self.bake_seconds, self.min_samples, self.max_extensions, self.alpha)

    @classmethod
    def of(cls, config: RolloutConfig) -> CanaryPolicy:
        """The policy of one rollout: its steps, bakes and gate thresholds."""
        return cls(
            steps=config.canary_steps, bake_seconds=config.bake_seconds, min_samples=config.min_samples,
            max_extensions=config.max_extensions, alpha=config.alpha, thresholds=GateThresholds.of(config),
        )

    def weight(self, step_index: int) -> int:
        self._check_step(step_index)
        return self.steps[step_index]

    def is_final(self, step_index: int) -> bool:
        self._check_step(step_index)
        return step_index == len(self.steps) - 1

    def next_action(self, step_index: int, results: Iterable[GateResult], extensions_used: int) -> Action:
        """PROMOTE to the next step (at the final step: the rollout is complete), EXTEND the
        bake, or ROLLBACK. No results at all count as inconclusive, never as a pass."""
        self._check_step(step_index)
        if extensions_used < 0:
            raise GateError(f"extensions_used must be 0 or more, got {extensions_used!r}")
        verdict = combine(results).verdict
        if verdict is GateVerdict.FAIL:
            return Action.ROLLBACK
        if verdict is GateVerdict.INCONCLUSIVE:
            return Action.EXTEND if extensions_used < self.max_extensions else Action.ROLLBACK
        return Action.PROMOTE

    def _check_step(self, step_index: int) -> None:
        if not 0 <= step_index < len(self.steps):
            raise GateError(f"step_index {step_index!r} is outside the {len(self.steps)} steps {self.steps!r}")
