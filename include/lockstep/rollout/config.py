"""What a rollout can be told, in one place: ``RolloutConfig`` and the errors a rollout raises.

Each field of ``RolloutConfig`` carries its default, a title, a section of the trigger
form and a description (``dataclasses.field(metadata=...)``) plus the JSON schema of its
value. Everything else takes its defaults from here:

- the Params of ``lockstep_rollout`` (``lockstep.rollout.operator.rollout_params``), so the
  trigger form shows these very titles, sections, descriptions and defaults;
- the gate thresholds, the canary policy and the log analysis' settings
  (``lockstep.rollout.policy.GateThresholds``, ``CanaryPolicy`` and
  ``lockstep.rollout.analysis.GateSettings`` read ``DEFAULTS``, and each builds itself
  from one rollout's config with ``of(config)``);
- the demo and ``LOCKSTEP_ROLLOUT_DEFAULTS``, which are validated as overrides of it
  (``overrides_from_json``).

Kept free of heavy imports (the DAG file reads it when it is parsed) and below the gates
(they import it, never the other way): a config checks its canary steps with
``lockstep.rollout.statistics.check_canary_policy``, the check ``CanaryPolicy`` makes,
imported when a config is made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from lockstep.core.errors import LockstepError
from lockstep.store.log_stats import USER_CAP

STRATEGIES = ("canary", "shadow", "ab", "bandit", "blue_green")
# The strategies that end in finalize (100 % and alias champion); "shadow" never promotes.
PROMOTING_STRATEGIES = ("canary", "ab", "bandit", "blue_green")
# The Airflow pool every lockstep_rollout task runs in (``lockstep up`` creates it): rollouts
# never take more worker slots than the pool has, whatever else is running.
ROLLOUT_POOL = "lockstep_rollout"
# The Airflow review form expires (resolves as Reject) after this long, so no review may wait longer.
APPROVAL_TIMEOUT_MAX_SECONDS = 24 * 3600.0

# The sections of the trigger form, in the order the form shows them.
STRATEGY = "Strategy"
REVIEW = "Review"
TRAFFIC = "Traffic steps and bakes"
GATES = "Gates"
AB = "A/B test"
BANDIT = "Bandit"
VERIFY = "Verify and retire"
TIMING = "Timing"
SECTIONS = (STRATEGY, REVIEW, TRAFFIC, GATES, AB, BANDIT, VERIFY, TIMING)


class RolloutError(LockstepError):
    """A rollout cannot start or go on; the message says what to fix."""


class GateFailed(RolloutError):
    """A gate (or a review, or the verification) decided against the candidate."""

    def __init__(self, message: str, *, phase: str, figures: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.figures = dict(figures or {})


class ReviewRejected(GateFailed):
    """A reviewer rejected the candidate."""


class ReviewTimeout(GateFailed):
    """No reviewer decided within the approval timeout."""


class VerificationFailed(GateFailed):
    """After the final traffic update the serving API did not answer with the candidate."""


class RolloutOverridden(RolloutError):
    """Someone else changed the traffic during the rollout; it stopped and left the traffic as they set it."""


def setting(default: Any, title: str, section: str, description: str, **schema: Any) -> Any:
    """A field of RolloutConfig: its default, and what the trigger form shows (``schema``: JSON schema)."""
    return field(default=default, metadata={"title": title, "section": section, "description": description, "schema": schema})


def _seconds(default: float, title: str, section: str, description: str, minimum: float = 0) -> Any:
    return setting(default, title, section, description, type="number", minimum=minimum)


@dataclass(frozen=True)
class RolloutConfig:
    """Everything a rollout can be told; each field is a Param of ``lockstep_rollout``.

    Times are seconds, so a demonstration rollout runs end to end in minutes; the
    defaults suit a real service with steady traffic. Fields are in the order of the
    trigger form's sections.
    """

    strategy: str = setting(
        "canary", "Strategy", STRATEGY,
        "canary: traffic steps with gates; shadow: mirrored traffic only, no promotion; ab: fixed split and "
        "fixed-sample test; bandit: Thompson sampling on click-through; blue_green: one switch after the shadow phase.",
        enum=list(STRATEGIES),
        values_display={"canary": "Canary (traffic steps with gates)", "shadow": "Shadow only (never promotes)",
                        "ab": "A/B test (fixed split and sample)", "bandit": "Bandit (Thompson sampling on click-through)",
                        "blue_green": "Blue-green (one switch after the shadow phase)"},
    )
    require_approval: bool = setting(
        False, "Require a reviewer's approval", REVIEW,
        "Wait for a reviewer (Airflow Required Actions or MLflow tag lockstep.review) before any traffic moves.",
        type="boolean",
    )
    approval_timeout_seconds: float = setting(
        3600.0, "Review timeout (s)", REVIEW,
        "How long to wait for a review decision before rolling back (at most 24 h).",
        type="number", minimum=1, maximum=APPROVAL_TIMEOUT_MAX_SECONDS,
    )
    canary_steps: tuple[int, ...] = setting(
        (1, 5, 25, 50, 100), "Canary steps (%)", TRAFFIC,
        "Candidate traffic percent per canary step, increasing, ending at 100.",
        type="array", items={"type": "integer", "minimum": 1, "maximum": 100},
    )
    bake_seconds: float = _seconds(
        60.0, "Least bake time (s)", TRAFFIC,
        "The least time each canary step (and the shadow phase) takes traffic; it is judged once both versions "
        "also have min_samples answered requests.",
    )
    max_bake_seconds: float = _seconds(
        1800.0, "Longest bake (s)", TRAFFIC,
        "Safety net of a bake: a look without its min_samples by then counts as too little traffic "
        "(extends, or fails after max_extensions; never passes).", 1,
    )
    shadow_seconds: float | None = setting(
        None, "Shadow bake (s)", TRAFFIC, "Bake of the shadow phase; empty: bake_seconds.",
        type=["null", "number"], minimum=0,
    )
    max_extensions: int = setting(
        2, "Extensions of an inconclusive bake", TRAFFIC,
        "How many times an inconclusive step bakes again before it fails.", type="integer", minimum=0,
    )
    min_samples: int = setting(
        50, "Fewest requests per version", GATES,
        "Fewest requests per version before any gate may pass (fewer: inconclusive).", type="integer", minimum=1,
    )
    alpha: float = setting(
        0.05, "Test level (alpha)", GATES, "False-rollback rate of each statistical test.",
        type="number", exclusiveMinimum=0, exclusiveMaximum=1,
    )
    max_error_rate: float = setting(
        0.05, "Highest error rate", GATES, "Error rate above which the candidate fails whatever the champion does.",
        type="number", exclusiveMinimum=0, maximum=1,
    )
    max_error_increase: float = setting(
        0.01, "Tolerated error-rate increase", GATES, "Tolerated absolute error-rate increase over the champion.",
        type="number", minimum=0,
    )
    latency_tolerance: float = setting(
        0.2, "Tolerated latency shift", GATES,
        "Tolerated latency shift as a share of the champion's median (Kayenta-style).", type="number", minimum=0,
    )
    latency_confidence: float = setting(
        0.98, "Latency test confidence", GATES, "Confidence of the Mann-Whitney latency test.",
        type="number", exclusiveMinimum=0, exclusiveMaximum=1,
    )
    min_overlap: float = setting(
        0.2, "Least shadow overlap", GATES, "Least mean overlap@k of the shadow's top-k with live in the shadow phase.",
        type="number", minimum=0, maximum=1,
    )
    ctr_tau: float = setting(
        0.02, "Click-through effect size", GATES,
        "Click-through difference the sequential test is tuned to detect (mSPRT mixture scale).",
        type="number", exclusiveMinimum=0, maximum=1,
    )
    ctr_margin: float = setting(
        0.02, "Click-through margin", GATES, "Non-inferiority margin: the largest CTR drop that still passes.",
        type="number", minimum=0, maximum=1,
    )
    user_cap: int = setting(
        USER_CAP, "Most weight of one user", GATES,
        "The click and error gates judge users, not requests: a user with more impressions (requests) than this "
        "in the analysed window counts as this many, at their own rate, so one heavy or hostile client cannot "
        "decide a rollout alone.",
        type="integer", minimum=1,
    )
    ab_split: int = setting(
        50, "Candidate share (%)", AB, "A/B: the candidate's share of traffic, percent (frozen, sticky users).",
        type="integer", minimum=1, maximum=99,
    )
    ab_samples_per_arm: int = setting(
        1000, "Requests per version", AB, "A/B: fixed horizon, answered requests per version.", type="integer", minimum=1,
    )
    ab_max_seconds: float = _seconds(3600.0, "Longest A/B test (s)", AB, "A/B: stop at this age even if the horizon is not reached.", 1)
    ab_decision: str = setting(
        "rule", "Who decides", AB,
        "A/B: decide by the test (rule) or by the tag lockstep.ab_decision on the version (reviewer).",
        enum=["rule", "reviewer"], values_display={"rule": "The test (rule)", "reviewer": "A reviewer (tag lockstep.ab_decision)"},
    )
    bandit_interval_seconds: float = _seconds(30.0, "Reweighting interval (s)", BANDIT, "Bandit: seconds between reweightings.", 0.1)
    bandit_floor: float = setting(
        0.05, "Least share per version", BANDIT, "Bandit: least traffic share each version keeps.",
        type="number", exclusiveMinimum=0, maximum=0.5,
    )
    bandit_threshold: float = setting(
        0.95, "Winning probability", BANDIT, "Bandit: P(best) that ends the rollout.",
        type="number", exclusiveMinimum=0, exclusiveMaximum=1,
    )
    bandit_min_exposures: int = setting(
        100, "Requests before reweighting", BANDIT, "Bandit: answered requests per version before reweighting.",
        type="integer", minimum=1,
    )
    bandit_max_seconds: float = _seconds(3600.0, "Longest bandit (s)", BANDIT, "Bandit: no winner by then keeps the champion.", 1)
    serving_url: str = setting(
        "http://127.0.0.1:8000", "Serving replicas", VERIFY,
        "Serving replicas to verify, each directly, comma-separated (default: LOCKSTEP_SERVING_URLS); "
        "empty: check the routing table only.",
        type="string",
    )
    verify_timeout_seconds: float = _seconds(
        30.0, "Verification timeout (s)", VERIFY, "How long the serving API may take to answer with the new version.", 1,
    )
    rollback_window_seconds: float = _seconds(
        3600.0, "Rollback window (s)", VERIFY,
        "How long the previous champion stays loaded for an instant rollback before it is retired.",
    )
    drain_seconds: float = _seconds(2.0, "Drain time (s)", VERIFY, "How long a rejected or retired slot drains before it is retired.")
    # A deferral shorter than ~10 s can race the executor's report of the deferring
    # process under a real scheduler (the task is then marked failed); see the runbook.
    poll_seconds: float = _seconds(
        15.0, "Time between looks (s)", TIMING,
        "Time between two looks while baking and waiting (no worker is held in between). Keep it >= 10 s under a "
        "real scheduler: a shorter deferral can race the executor and fail the look.", 0.05,
    )
    log_flush_seconds: float = _seconds(
        1.0, "Log flush delay (s)", TIMING,
        "How far behind now an analysed window ends, so the replicas' log writers have flushed it.",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "canary_steps", tuple(int(s) for s in self.canary_steps))
        if self.strategy not in STRATEGIES:
            raise RolloutError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.ab_decision not in ("rule", "reviewer"):
            raise RolloutError(f"ab_decision must be 'rule' or 'reviewer', got {self.ab_decision!r}")
        if not 1 <= self.ab_split <= 99:
            raise RolloutError(f"ab_split is the candidate's percent of traffic, 1..99; got {self.ab_split!r}")
        if not 0 < self.bandit_floor <= 0.5:
            raise RolloutError(f"bandit_floor must be in (0, 0.5]: every arm keeps that share; got {self.bandit_floor!r}")
        if isinstance(self.user_cap, bool) or not isinstance(self.user_cap, int) or self.user_cap < 1:
            raise RolloutError(f"user_cap must be a whole number of impressions of at least 1, got {self.user_cap!r}")
        if not self.ctr_tau > 0:
            raise RolloutError(f"ctr_tau must be positive (the CTR difference to detect), got {self.ctr_tau!r}")
        if not self.poll_seconds > 0:
            raise RolloutError(f"poll_seconds must be positive, got {self.poll_seconds!r}")
        if not self.max_bake_seconds > 0:
            raise RolloutError(f"max_bake_seconds must be positive (the safety net of a bake), got {self.max_bake_seconds!r}")
        from lockstep.rollout.statistics import (  # numpy and scipy: not at parse time
            GateError,
            check_canary_policy,
        )

        try:
            check_canary_policy(self.canary_steps, self.bake_seconds, self.min_samples, self.max_extensions, self.alpha)
        except GateError as exc:
            raise RolloutError(f"rollout parameters: {exc}") from exc

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> RolloutConfig:
        """Take the fields this class knows from DAG Params (others, like model_version, are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(params or {}).items() if k in known and v is not None}
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # an unknown field, or canary_steps that are not numbers
            raise RolloutError(f"rollout parameters: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["canary_steps"] = list(self.canary_steps)
        return out

    @property
    def shadow_bake_seconds(self) -> float:
        return self.bake_seconds if self.shadow_seconds is None else self.shadow_seconds

    @property
    def serving_urls(self) -> list[str]:
        """The replicas to probe (comma-separated in the Param; empty: do not probe)."""
        return [u.strip().rstrip("/") for u in (self.serving_url or "").split(",") if u.strip()]


# Every field's default, by name: what GateThresholds, CanaryPolicy and the Params start from.
DEFAULTS: Mapping[str, Any] = MappingProxyType({f.name: f.default for f in fields(RolloutConfig)})


def overrides_from_json(raw: str | None, source: str = "LOCKSTEP_ROLLOUT_DEFAULTS") -> dict[str, Any]:
    """Defaults a deployment (or the demo) sets for a rollout: a JSON object of RolloutConfig fields.

    Read when the DAG file is parsed, so a typo fails there, naming the field, rather
    than in the middle of a rollout; ``source`` names where the text came from. The
    values are checked against each field's schema by ``operator.rollout_params`` (and
    as a whole by RolloutConfig when a rollout starts), so nothing heavy is imported here.
    """
    try:
        values = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise RolloutError(f"{source} is not valid JSON ({exc}): {raw[:200]!r}") from exc
    if not isinstance(values, dict):
        raise RolloutError(f"{source} must be a JSON object of rollout settings, got {str(raw)[:200]!r}")
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise RolloutError(f"{source} names no rollout setting {', '.join(map(repr, unknown))}; known: {', '.join(DEFAULTS)}")
    return values


__all__ = [
    "AB", "APPROVAL_TIMEOUT_MAX_SECONDS", "BANDIT", "DEFAULTS", "GATES", "PROMOTING_STRATEGIES", "REVIEW", "ROLLOUT_POOL", "SECTIONS",
    "STRATEGIES", "STRATEGY", "TIMING", "TRAFFIC", "VERIFY", "GateFailed", "ReviewRejected", "ReviewTimeout",
    "RolloutConfig", "RolloutError", "RolloutOverridden", "VerificationFailed", "overrides_from_json", "setting",
]
