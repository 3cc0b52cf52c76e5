"""The plan of one rollout: what ``start`` decided, handed to every later task.

Airflow passes it between tasks as XCom, which must be JSON: ``to_dict`` gives the plain
object (the keys the DAG's templates read, e.g. ``model_version`` and
``review_markdown``), ``from_dict`` reads it back and checks it. Inside the library the
plan is always a ``RolloutPlan``; the step functions accept either form (``as_plan``),
because a DAG task hands them what XCom gave it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lockstep.rollout.config import RolloutConfig, RolloutError

REQUIRED = ("rollout_id", "model_version", "baseline_version", "config")


@dataclass(frozen=True)
class RolloutPlan:
    """Who rolls out against whom, how (the config), and what start found.

    ``noop`` marks a candidate that already is the champion (``reason`` says so); the
    rest of the run is skipped. ``generation`` is the routing generation start wrote.
    """

    rollout_id: str
    model_version: str
    baseline_version: str
    config: RolloutConfig = field(default_factory=RolloutConfig)
    started_at: str = ""
    noop: bool = False
    reason: str | None = None
    generation: int | None = None
    review_markdown: str = ""
    drift: Mapping[str, Any] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return self.config.strategy

    def to_dict(self) -> dict[str, Any]:
        """The JSON object Airflow keeps as the start task's XCom."""
        return {
            "rollout_id": self.rollout_id, "model_version": self.model_version, "baseline_version": self.baseline_version,
            "strategy": self.strategy, "config": self.config.to_dict(), "started_at": self.started_at,
            "noop": self.noop, "reason": self.reason, "generation": self.generation,
            "review_markdown": self.review_markdown, "drift": dict(self.drift),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        """Read a plan back from ``to_dict``'s object; a missing key names what is wrong."""
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise RolloutError(f"the rollout plan lacks {', '.join(missing)}: pass the output of the start task, got keys {sorted(data)}")
        config = RolloutConfig.from_params(data["config"])
        if data.get("strategy") not in (None, config.strategy):
            raise RolloutError(f"the rollout plan says strategy {data['strategy']!r} but its config says {config.strategy!r}")
        generation = data.get("generation")
        return cls(
            rollout_id=str(data["rollout_id"]), model_version=str(data["model_version"]),
            baseline_version=str(data["baseline_version"]), config=config, started_at=str(data.get("started_at") or ""),
            noop=bool(data.get("noop", False)), reason=data.get("reason"),
            generation=None if generation is None else int(generation),
            review_markdown=str(data.get("review_markdown") or ""), drift=dict(data.get("drift") or {}),
        )


def as_plan(plan: RolloutPlan | Mapping[str, Any]) -> RolloutPlan:
    """The plan as a RolloutPlan, whether a step got it from the library or from XCom."""
    return plan if isinstance(plan, RolloutPlan) else RolloutPlan.from_dict(plan)


__all__ = ["RolloutPlan", "as_plan"]
