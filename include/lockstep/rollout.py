"""Progressive delivery of a model version: the steps of ``lockstep_rollout`` as library calls.

A rollout takes a candidate whose index is built (slot ``ready``) from 0 to 100 % of
traffic, or back. Each function below is one Airflow task: it takes and returns plain
JSON (the ``plan`` made by ``start`` travels between them), changes traffic only
through the routing table (one transaction per change), and writes every analysis to
``lockstep_rollout_steps`` so the figures and verdicts outlive the serving logs.

The order is: ``start`` -> ``wait_for_review`` -> ``run_shadow`` -> one strategy
(``run_canary``, ``run_ab``, ``run_bandit``, ``run_blue_green`` or ``shadow_only``) ->
``finalize`` -> ``verify`` -> ``retire_previous`` after the rollback window. Any
failure goes to ``rollback``.

Two habits make a bad candidate cheap:

- A step that sees a gate fail returns all traffic to the champion itself, in one
  transaction, *before* it raises: the time from a failed gate to 100 % on the champion
  does not include the scheduler's reaction time. The rollback task then does the
  bookkeeping (reject tag with reason and figures, drain and retire the slot, alert).
- While a step bakes, its error rate is checked at every poll, so a candidate that
  starts failing is stopped at once rather than at the end of the bake.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from . import rollout_record as record
from . import routing
from .errors import LockstepError
from .gates import (
    Action,
    CanaryPolicy,
    GateError,
    GateResult,
    GateThresholds,
    Verdict,
    bandit_decision,
    combine,
    error_rate_gate,
    thompson_weights,
    to_percent_weights,
)
from .rollout_analysis import (
    ArmStats,
    GateSettings,
    Window,
    ab_gate,
    arm_stats,
    ctr_look,
    guard_gates,
    now,
    sequential_ctr,
    shadow_gates,
    shadow_stats,
    summary_figures,
    utc,
)

log = logging.getLogger("lockstep.rollout")

STRATEGIES = ("canary", "shadow", "ab", "bandit", "blue_green")
ACTOR = "lockstep_rollout"
TAG_AB_DECISION = "lockstep.ab_decision"
TAG_RETIRED_AT = "lockstep.retired_at"
TAG_ROLLED_BACK = "lockstep.rolled_back_reason"
PROBE_QUERY = "lockstep verification probe"
PROBE_ANSWERS = 3
MAX_REJECT_FIGURES = 30


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


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutConfig:
    """Everything a rollout can be told; each field is a Param of ``lockstep_rollout``.

    Times are seconds, so a demonstration rollout runs end to end in minutes; the
    defaults suit a real service with steady traffic.
    """

    strategy: str = "canary"
    canary_steps: tuple[int, ...] = (1, 5, 25, 50, 100)
    bake_seconds: float = 60.0
    shadow_seconds: float | None = None  # None: the same as bake_seconds
    min_samples: int = 50
    max_extensions: int = 2
    alpha: float = 0.05
    max_error_rate: float = 0.05
    max_error_increase: float = 0.01
    latency_tolerance: float = 0.2
    latency_confidence: float = 0.98
    min_overlap: float = 0.2
    ctr_tau: float = 0.02
    ctr_margin: float = 0.02
    require_approval: bool = False
    approval_timeout_seconds: float = 3600.0
    ab_split: int = 50
    ab_samples_per_arm: int = 1000
    ab_max_seconds: float = 3600.0
    ab_decision: str = "rule"
    bandit_interval_seconds: float = 30.0
    bandit_floor: float = 0.05
    bandit_threshold: float = 0.95
    bandit_min_exposures: int = 100
    bandit_max_seconds: float = 3600.0
    serving_url: str = "http://127.0.0.1:8000"
    verify_timeout_seconds: float = 30.0
    rollback_window_seconds: float = 3600.0
    poll_seconds: float = 1.0
    log_flush_seconds: float = 1.0
    drain_seconds: float = 2.0

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
        if not self.ctr_tau > 0:
            raise RolloutError(f"ctr_tau must be positive (the CTR difference to detect), got {self.ctr_tau!r}")
        if not self.poll_seconds > 0:
            raise RolloutError(f"poll_seconds must be positive, got {self.poll_seconds!r}")
        try:
            self.policy()
            self.gate_settings()
        except GateError as exc:
            raise RolloutError(f"rollout parameters: {exc}") from exc

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> RolloutConfig:
        """Take the fields this class knows from DAG Params (others, like model_version, are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(params or {}).items() if k in known and v is not None}
        try:
            return cls(**values)
        except TypeError as exc:
            raise RolloutError(f"rollout parameters: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["canary_steps"] = list(self.canary_steps)
        return out

    @property
    def thresholds(self) -> GateThresholds:
        return GateThresholds(
            max_abs_error_increase=self.max_error_increase,
            max_error_rate=self.max_error_rate,
            latency_tolerance=self.latency_tolerance,
            latency_confidence=self.latency_confidence,
            min_overlap=self.min_overlap,
            non_inferiority_margin=self.ctr_margin,
        )

    def gate_settings(self) -> GateSettings:
        return GateSettings(min_samples=self.min_samples, alpha=self.alpha, thresholds=self.thresholds, ctr_tau=self.ctr_tau)

    def policy(self) -> CanaryPolicy:
        return CanaryPolicy(
            steps=self.canary_steps, bake_seconds=self.bake_seconds, min_samples=self.min_samples,
            max_extensions=self.max_extensions, alpha=self.alpha, thresholds=self.thresholds,
        )

    @property
    def serving_urls(self) -> list[str]:
        """The replicas to probe (comma-separated in the Param; empty: do not probe)."""
        return [u.strip().rstrip("/") for u in (self.serving_url or "").split(",") if u.strip()]


def config_of(plan: Mapping[str, Any]) -> RolloutConfig:
    return RolloutConfig.from_params(plan.get("config"))


# --- start and review --------------------------------------------------------------------------


def resolve_candidate(requested: str | int | None, asset_extra: Mapping[str, Any] | None, registry: Any) -> str:
    """The version to roll out: the Param, else the triggering index-ready event, else alias challenger."""
    if requested not in (None, ""):
        return str(requested).strip()
    if asset_extra and asset_extra.get("model_version"):
        return str(asset_extra["model_version"])
    challenger = registry.version_for_alias("challenger")
    if challenger is None:
        raise RolloutError(
            "no model version to roll out: pass Param model_version, or train one and build its index "
            "(alias 'challenger' is unset)"
        )
    return challenger.version


def start(
    rollout_id: str,
    requested_version: str | int | None = None,
    asset_extra: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    registry: Any = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Check the candidate is ready and the champion live; record the rollout; reshuffle sticky users.

    Returns the plan every later step takes. A candidate that already is the champion
    gives ``noop: True`` (the DAG skips the rest): the first version becomes champion
    when its index is built, and its index-ready event still starts a rollout.
    """
    registry = registry or _registry()
    engine = engine or _engine()
    config = RolloutConfig.from_params(params)
    candidate = resolve_candidate(requested_version, asset_extra, registry)
    registry.get_version(candidate)  # a clear error if it does not exist
    champion_info = registry.version_for_alias("champion")
    if champion_info is None:
        raise RolloutError(
            "there is no champion to compare with: the first version becomes champion when its index is built "
            "(lockstep_reembed with promote_if_first), or set it with Registry.promote_champion"
        )
    champion = champion_info.version
    base = {"rollout_id": rollout_id, "model_version": candidate, "baseline_version": champion,
            "strategy": config.strategy, "config": config.to_dict(), "started_at": now().isoformat()}
    table = routing.read_table(engine)
    if candidate == champion:
        reason = f"v{candidate} already is the champion; nothing to roll out"
        record.begin(rollout_id, candidate, champion, config.strategy, config.to_dict(), engine=engine)
        record.finish(rollout_id, record.SKIPPED, reason, engine=engine)
        return {**base, "noop": True, "reason": reason}
    _require_slot(table, candidate, "candidate", ("ready", "live"), "build its index first (lockstep_reembed)")
    _require_slot(table, champion, "champion", ("ready", "live"), "return traffic to a loaded version first")

    generation = routing.set_weights(
        {champion: 100}, shadow=[], reason=f"rollout {rollout_id} of v{candidate}: start (new sticky salt)",
        actor=ACTOR, new_salt=True, engine=engine,
    )
    record.begin(rollout_id, candidate, champion, config.strategy, config.to_dict(), engine=engine)
    cand_info = registry.get_version(candidate)
    drift = drift_context(registry)
    review = review_markdown(cand_info, champion_info, drift)
    record.record_step(
        rollout_id, "start", "start", "info",
        reason=f"v{candidate} against champion v{champion}, strategy {config.strategy}",
        figures={**{f"candidate.{k}": v for k, v in cand_info.eval_figures.items()},
                 **{f"champion.{k}": v for k, v in champion_info.eval_figures.items()}},
        engine=engine,
    )
    return {**base, "noop": False, "generation": generation, "review_markdown": review, "drift": drift}


def review_markdown(candidate: Any, champion: Any, drift: Mapping[str, Any]) -> str:
    """What a reviewer sees (Airflow's Required Actions page): figures side by side, and drift."""
    cand_fig, champ_fig = candidate.eval_figures, champion.eval_figures
    lines = [
        f"## Roll out v{candidate.version} (champion: v{champion.version})",
        "",
        "| figure | candidate | champion |",
        "|---|---|---|",
    ]
    for key in sorted(set(cand_fig) | set(champ_fig)):
        lines.append(f"| {key} | {_fmt(cand_fig.get(key))} | {_fmt(champ_fig.get(key))} |")
    lines += ["", "### Drift context"]
    if drift.get("status"):
        lines.append(f"latest drift check: {drift.get('status')} (drifted: {drift.get('drifted')}) {drift.get('summary', '')}")
    else:
        lines.append("no drift check has run yet")
    lines += ["", "Approve here, or set the tag `lockstep.review` = `approved` / `rejected` on the version in MLflow."]
    return "\n".join(lines)


def drift_context(registry: Any) -> dict[str, Any]:
    """The latest drift check logged to MLflow (``lockstep_drift``); {} when there is none."""
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri)
        experiment = client.get_experiment_by_name("lockstep-drift")
        if experiment is None:
            return {}
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    except Exception as exc:  # the review must not fail because the drift record is unreadable
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if not runs:
        return {}
    tags = runs[0].data.tags
    return {
        "run_id": runs[0].info.run_id,
        "status": tags.get("lockstep.drift_status"),
        "drifted": tags.get("lockstep.drifted"),
        "champion_version": tags.get("lockstep.champion_version"),
        "summary": (tags.get("mlflow.note.content") or "")[:500],
    }


def check_review(plan: Mapping[str, Any], *, registry: Any = None, external: Callable[[], str | None] | None = None) -> str | None:
    """'approved', 'rejected' or None: the Airflow UI answer (``external``) or the MLflow tag.

    Both are read at every look; a rejection from either side wins over an approval.
    """
    registry = registry or _registry()
    answers = [registry.review_decision(plan["model_version"])]
    if external is not None:
        answers.append(external())
    if "rejected" in answers:
        return "rejected"
    return "approved" if "approved" in answers else None


def wait_for_review(
    plan: Mapping[str, Any],
    *,
    registry: Any = None,
    external: Callable[[], str | None] | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Wait for a reviewer; raise ReviewRejected or ReviewTimeout (both lead to rollback)."""
    config = config_of(plan)
    rid = plan["rollout_id"]
    engine = engine or _engine()
    if not config.require_approval:
        return record.record_step(rid, "review", "review", "info", reason="no approval required (require_approval is false)", engine=engine)
    registry = registry or _registry()
    record.record_step(rid, "review", "review", "info", engine=engine, reason=(
        f"waiting up to {config.approval_timeout_seconds:.0f} s for a reviewer: Airflow Required Actions, "
        f"or tag lockstep.review on v{plan['model_version']} in MLflow"))
    started = time.monotonic()
    while True:
        decision = check_review(plan, registry=registry, external=external)
        waited = time.monotonic() - started
        if decision == "approved":
            return record.record_step(rid, "review", "review", "pass", reason=f"approved after {waited:.0f} s", figures={"waited_seconds": waited}, engine=engine)
        if decision == "rejected":
            reason = f"v{plan['model_version']} was rejected in review"
            record.record_step(rid, "review", "review", "fail", reason=reason, figures={"waited_seconds": waited}, action="rollback", engine=engine)
            raise ReviewRejected(reason, phase="review", figures={"waited_seconds": waited})
        if waited >= config.approval_timeout_seconds:
            reason = f"no review decision within {config.approval_timeout_seconds:.0f} s"
            record.record_step(rid, "review", "review", "fail", reason=reason, figures={"waited_seconds": waited}, action="rollback", engine=engine)
            raise ReviewTimeout(reason, phase="review", figures={"waited_seconds": waited})
        time.sleep(config.poll_seconds)


# --- shadow -----------------------------------------------------------------------------------


def run_shadow(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    """Mirror live traffic to the candidate and gate on its errors, latency and top-k overlap.

    Users never see the candidate's answers. Inconclusive (too few copies) extends the
    bake up to ``max_extensions`` times, then fails.
    """
    config, engine = config_of(plan), engine or _engine()
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    settings = config.gate_settings()
    bake = config.bake_seconds if config.shadow_seconds is None else config.shadow_seconds
    routing.set_weights({champ: 100}, shadow=[cand], reason=f"rollout {rid}: shadow v{cand}", actor=ACTOR, engine=engine)
    started = now()

    def watch() -> list[GateResult]:
        stats = shadow_stats(engine, Window(started, now()), cand)
        return [shadow_gates(stats, settings)[0]]

    for look in range(1, config.max_extensions + 2):
        early = _bake(bake, config, watch)
        end = _settle(config)
        stats = shadow_stats(engine, Window(started, end), cand)
        results = early or shadow_gates(stats, settings)
        verdict = combine(results, "shadow").verdict
        figures = {**summary_figures(results), "copies": stats.copies, "shadow_errors": stats.errors}
        last = look == config.max_extensions + 1
        action = _action(verdict, last)
        step = record.record_step(
            rid, "shadow", "shadow", verdict, look=look, weight=0, action=action, reason=combine(results).reason,
            gates=results, figures=figures, window=(started, end), engine=engine,
        )
        if action == Action.PROMOTE:
            routing.set_weights({champ: 100}, shadow=[], reason=f"rollout {rid}: shadow passed", actor=ACTOR, engine=engine)
            return step
        if action == Action.ROLLBACK:
            _abort_traffic(plan, f"shadow phase: {step['reason']}", engine)
            raise GateFailed(f"v{cand} failed the shadow phase: {step['reason']}", phase="shadow", figures=figures)
    raise AssertionError("unreachable")  # pragma: no cover


def shadow_only(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    """Strategy ``shadow``: the candidate was judged on mirrored traffic only and stays ready."""
    engine = engine or _engine()
    reason = f"v{plan['model_version']} passed the shadow phase; strategy 'shadow' moves no live traffic"
    record.finish(plan["rollout_id"], record.SHADOW_ONLY, reason, engine=engine)
    return record.record_step(plan["rollout_id"], "shadow only", "shadow", "info", reason=reason, engine=engine)


# --- canary -----------------------------------------------------------------------------------


def run_canary(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    """Walk the traffic steps below 100 %: set the weight, bake, compare with the champion.

    Every step is judged on its own window for errors and latency, and on all canary
    traffic so far for click-through, with a sequential test that stays valid however
    many looks it gets. The final 100 % is ``finalize``'s (there is no baseline left to
    compare with at 100 %).
    """
    config, engine = config_of(plan), engine or _engine()
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    policy, settings = config.policy(), config.gate_settings()
    ctr = sequential_ctr(settings)
    seen: dict[str, int] = {}
    canary_started = now()
    steps: list[dict[str, Any]] = []
    for index, weight in enumerate(policy.steps):
        if weight >= 100:
            break
        routing.set_weights({champ: 100 - weight, cand: weight}, shadow=[], reason=f"rollout {rid}: canary {weight}%", actor=ACTOR, engine=engine)
        step_started = now()

        def watch(started=step_started) -> list[GateResult]:
            arms = arm_stats(engine, Window(started, now()), [cand, champ])
            return _early_errors(arms[cand], arms[champ], settings)

        for extensions in range(config.max_extensions + 1):
            early = _bake(config.bake_seconds, config, watch)
            end = _settle(config)
            arms = arm_stats(engine, Window(step_started, end), [cand, champ])
            total = arm_stats(engine, Window(canary_started, end), [cand, champ], clicks_until=now())
            results = early or [*guard_gates(arms[cand], arms[champ], settings), ctr_look(ctr, total[cand], total[champ], seen, settings)]
            action = policy.next_action(index, results, extensions)
            step = record.record_step(
                rid, f"canary {weight}%", "canary", combine(results).verdict, look=extensions + 1, weight=weight,
                action=action, reason=combine(results).reason, gates=results,
                figures=summary_figures(results, arms[cand], arms[champ]), window=(step_started, end), engine=engine,
            )
            if action == Action.PROMOTE:
                steps.append(step)
                break
            if action == Action.ROLLBACK:
                _abort_traffic(plan, f"canary {weight}%: {step['reason']}", engine)
                raise GateFailed(f"v{cand} failed at canary {weight}%: {step['reason']}", phase="canary", figures=step["figures"])
    return {"phase": "canary", "steps": [s["step"] for s in steps], "verdict": "pass"}


# --- A/B --------------------------------------------------------------------------------------


def run_ab(plan: Mapping[str, Any], *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    """A frozen split with sticky users until each arm has its planned sample (or time runs out).

    One fixed-sample test at the end (no peeking at it on the way: only the error rate
    is watched). The decision is the rule (pass promotes; fail or inconclusive keeps
    the champion) or, with ``ab_decision='reviewer'``, a reviewer's tag
    ``lockstep.ab_decision`` on the version, given the figures written beside it.
    """
    config, engine = config_of(plan), engine or _engine()
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    settings = config.gate_settings()
    routing.set_weights({champ: 100 - config.ab_split, cand: config.ab_split}, shadow=[], reason=f"rollout {rid}: A/B {config.ab_split}%", actor=ACTOR, engine=engine)
    started = now()
    clock = time.monotonic()
    while True:
        time.sleep(config.poll_seconds)
        arms = arm_stats(engine, Window(started, now()), [cand, champ])
        early = _early_errors(arms[cand], arms[champ], settings)
        if early:
            _fail_step(plan, "A/B", "ab", early, arms, (started, now()), config.ab_split, engine)
        if min(arms[cand].answered, arms[champ].answered) >= config.ab_samples_per_arm or time.monotonic() - clock >= config.ab_max_seconds:
            break
    end = _settle(config)
    arms = arm_stats(engine, Window(started, end), [cand, champ], clicks_until=now())
    results = [*guard_gates(arms[cand], arms[champ], settings), ab_gate(arms[cand], arms[champ], settings, config.min_samples)]
    verdict = combine(results, "ab").verdict
    figures = summary_figures(results, arms[cand], arms[champ])
    if verdict is Verdict.FAIL or config.ab_decision == "rule":
        if verdict is not Verdict.PASS:
            _fail_step(plan, "A/B", "ab", results, arms, (started, end), config.ab_split, engine)
        return record.record_step(rid, "A/B", "ab", verdict, weight=config.ab_split, action=Action.PROMOTE, reason=combine(results).reason,
                                  gates=results, figures=figures, window=(started, end), engine=engine)
    return _reviewer_decides(plan, results, figures, (started, end), config, engine, registry or _registry())


def _reviewer_decides(plan, results, figures, window, config, engine, registry) -> dict[str, Any]:
    rid, cand = plan["rollout_id"], plan["model_version"]
    registry.set_tags(cand, {f"lockstep.ab.{k}": v for k, v in list(figures.items())[:40]})
    record.record_step(rid, "A/B", "ab", combine(results).verdict, weight=config.ab_split, reason=f"waiting for tag {TAG_AB_DECISION}: {combine(results).reason}",
                       gates=results, figures=figures, window=window, engine=engine)
    started = time.monotonic()
    while time.monotonic() - started < config.approval_timeout_seconds:
        raw = (registry.get_version(cand).tags.get(TAG_AB_DECISION) or "").strip().lower()
        if raw in ("approved", "approve", "promote"):
            return record.record_step(rid, "A/B decision", "ab", "pass", action=Action.PROMOTE, reason="the reviewer chose the candidate", engine=engine)
        if raw in ("rejected", "reject", "rollback"):
            _abort_traffic(plan, "A/B: the reviewer kept the champion", engine)
            record.record_step(rid, "A/B decision", "ab", "fail", action=Action.ROLLBACK, reason="the reviewer kept the champion", engine=engine)
            raise ReviewRejected("the reviewer kept the champion after the A/B test", phase="ab", figures=figures)
        time.sleep(config.poll_seconds)
    _abort_traffic(plan, "A/B: no reviewer decision", engine)
    record.record_step(rid, "A/B decision", "ab", "fail", action=Action.ROLLBACK, reason="no A/B decision in time", engine=engine)
    raise ReviewTimeout(f"no {TAG_AB_DECISION} tag within {config.approval_timeout_seconds:.0f} s", phase="ab", figures=figures)


# --- bandit -----------------------------------------------------------------------------------


def run_bandit(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    """Thompson sampling over click-through: reweight every interval, keep a floor, stop on a winner.

    Weights start even; once both arms have ``bandit_min_exposures`` answered requests
    each interval moves traffic in proportion to the probability of being best (never
    below the floor, so the loser keeps learning and the champion stays warm). It ends
    when either version is best with probability >= threshold; no winner by
    ``bandit_max_seconds`` keeps the champion.
    """
    config, engine = config_of(plan), engine or _engine()
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    settings = config.gate_settings()
    weights = {champ: 50, cand: 50}
    routing.set_weights(weights, shadow=[], reason=f"rollout {rid}: bandit start", actor=ACTOR, engine=engine)
    started = now()
    clock = time.monotonic()
    look = 0

    def watch() -> list[GateResult]:
        arms = arm_stats(engine, Window(started, now()), [cand, champ])
        return _early_errors(arms[cand], arms[champ], settings)

    while True:
        look += 1
        early = _bake(config.bandit_interval_seconds, config, watch)
        end = _settle(config)
        arms = arm_stats(engine, Window(started, end), [cand, champ], clicks_until=now())
        if early:
            _fail_step(plan, "bandit", "bandit", early, arms, (started, end), weights[cand], engine, look=look)
        clicks = {v: arms[v].clicked for v in (cand, champ)}
        trials = {v: arms[v].answered for v in (cand, champ)}
        decision = bandit_decision(clicks, trials, candidate=cand, baseline=champ, threshold=config.bandit_threshold,
                                   min_exposures=config.bandit_min_exposures, seed=look)
        results = [decision, *guard_gates(arms[cand], arms[champ], settings)]
        figures = {**summary_figures(results, arms[cand], arms[champ]), "weight_candidate": weights[cand]}
        timed_out = time.monotonic() - clock >= config.bandit_max_seconds
        if decision.verdict is Verdict.FAIL or (timed_out and decision.verdict is not Verdict.PASS):
            why = decision.reason if decision.verdict is Verdict.FAIL else f"no winner within {config.bandit_max_seconds:.0f} s: {decision.reason}"
            record.record_step(rid, "bandit", "bandit", "fail", look=look, weight=weights[cand], action=Action.ROLLBACK, reason=why,
                               gates=results, figures=figures, window=(started, end), engine=engine)
            _abort_traffic(plan, f"bandit: {why}", engine)
            raise GateFailed(f"v{cand} lost the bandit: {why}", phase="bandit", figures=figures)
        if decision.verdict is Verdict.PASS:
            return record.record_step(rid, "bandit", "bandit", "pass", look=look, weight=weights[cand], action=Action.PROMOTE,
                                      reason=decision.reason, gates=results, figures=figures, window=(started, end), engine=engine)
        if min(trials.values()) >= config.bandit_min_exposures:
            new = to_percent_weights(thompson_weights(clicks, trials, floor=config.bandit_floor, seed=look))
            if new != weights:
                weights = new
                routing.set_weights(weights, shadow=[], reason=f"rollout {rid}: bandit look {look}", actor=ACTOR, engine=engine)
        record.record_step(rid, "bandit", "bandit", "inconclusive", look=look, weight=weights[cand], action=Action.EXTEND,
                           reason=decision.reason, gates=results, figures=figures, window=(started, end), engine=engine)


# --- blue-green, finalize, verify ----------------------------------------------------------------


def run_blue_green(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    """One atomic switch from 0 to 100 %; the champion stays loaded for the rollback window."""
    engine = engine or _engine()
    rid, cand = plan["rollout_id"], plan["model_version"]
    generation = routing.set_weights({cand: 100}, shadow=[], reason=f"rollout {rid}: blue-green switch to v{cand}", actor=ACTOR, engine=engine)
    return record.record_step(rid, "blue-green switch", "blue_green", "info", weight=100, reason=f"all traffic to v{cand} in one transaction",
                              figures={"generation": generation}, engine=engine)


def finalize(plan: Mapping[str, Any], *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    """100 % to the candidate; alias ``champion`` moves to it (the old one is tagged replaced)."""
    config, engine, registry = config_of(plan), engine or _engine(), registry or _registry()
    rid, cand = plan["rollout_id"], plan["model_version"]
    table = routing.read_table(engine)
    if table.weights == {cand: 100} and not table.shadows:
        generation = table.generation
    else:
        generation = routing.set_weights({cand: 100}, shadow=[], reason=f"rollout {rid}: final traffic update to v{cand}", actor=ACTOR, engine=engine)
    previous = registry.promote_champion(cand, reason=f"rollout {rid} ({config.strategy})")
    log.info("rollout %s: v%s at 100 %% and champion (generation %d)", rid, cand, generation)
    previous_version = previous.version if previous is not None else plan["baseline_version"]
    retire_after = now().timestamp() + config.rollback_window_seconds
    out = {
        "generation": generation,
        "previous_champion": previous_version,
        "retire_after": utc(_from_timestamp(retire_after)).isoformat(),
    }
    record.record_step(rid, "finalize", "finalize", "info", weight=100, reason=f"v{cand} at 100 % and champion; v{previous_version} kept warm",
                       figures={"generation": generation}, engine=engine)
    from .alerts import alert

    alert("promoted", f"v{cand} is the champion at 100 % (rollout {rid})", {"rollout_id": rid, "previous": previous_version})
    return out


def verify(
    plan: Mapping[str, Any],
    final: Mapping[str, Any],
    *,
    engine: Engine | None = None,
    urls: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Read the routing table back, then probe every serving replica until it answers with the candidate.

    Anything else by ``verify_timeout_seconds`` raises VerificationFailed, and the
    rollback runs.
    """
    config, engine = config_of(plan), engine or _engine()
    rid, cand = plan["rollout_id"], plan["model_version"]
    serving = ",".join(config.serving_urls if urls is None else urls)
    try:
        seconds = verify_serving(cand, int(final.get("generation") or 0), serving, config.verify_timeout_seconds,
                                 poll=config.poll_seconds, engine=engine)
    except VerificationFailed as exc:
        record.record_step(rid, "verify", "verify", "fail", action=Action.ROLLBACK, reason=str(exc), engine=engine)
        raise
    figures = {f"seconds.{u}": t for u, t in seconds.items()}
    record.finish(rid, record.PROMOTED, f"v{cand} serves 100 % and answers on {len(seconds)} replica(s)", figures, engine=engine)
    return record.record_step(rid, "verify", "verify", "pass", weight=100, reason=f"routing table and {len(seconds)} replica(s) serve v{cand}",
                              figures=figures, engine=engine)


def verify_serving(
    version: str,
    generation: int,
    serving_url: str,
    timeout: float,
    *,
    poll: float = 0.2,
    engine: Engine | None = None,
) -> dict[str, float]:
    """Check ``version`` serves 100 %: in the routing table, then on every replica in ``serving_url``.

    A replica must report ``generation`` (or a newer one) and answer plain searches (no
    pin) with the version ``PROBE_ANSWERS`` times in a row. Returns the seconds each
    replica took; raises VerificationFailed naming the first one that did not follow.
    """
    version = str(version)
    table = routing.read_table(engine or _engine())
    slot = table.slot(version)
    if slot is None or slot.weight != 100 or slot.state != routing.LIVE:
        raise VerificationFailed(
            f"the routing table reads back {table.weights} (generation {table.generation}), not v{version} at 100 %",
            phase="verify",
        )
    urls = [u.strip().rstrip("/") for u in (serving_url or "").split(",") if u.strip()]
    deadline = time.monotonic() + timeout
    took: dict[str, float] = {}
    import httpx

    with httpx.Client(timeout=5.0) as client:
        for url in urls:
            seconds, problem = _probe(client, url, version, max(generation, 0), deadline, poll)
            if problem:
                raise VerificationFailed(f"{url} did not serve v{version} within {timeout:.0f} s: {problem}", phase="verify")
            took[url] = seconds
    return took


def _probe(client: Any, url: str, version: str, generation: int, deadline: float, poll: float) -> tuple[float, str | None]:
    """Seconds until ``url`` serves ``version``, or the last problem seen when time ran out."""
    started = time.monotonic()
    problem = "no answer yet"
    while True:
        try:
            table = client.get(f"{url}/routing").json()
            slot = next((s for s in table.get("slots", []) if s.get("model_version") == version), None)
            if table.get("generation", -1) < generation:
                problem = f"replica is at generation {table.get('generation')}, waiting for {generation}"
            elif slot is None or slot.get("weight") != 100 or slot.get("loaded") is False:
                problem = f"replica holds v{version} as {slot}"
            else:
                answered = []
                for i in range(PROBE_ANSWERS):
                    response = client.post(f"{url}/search", json={"query": PROBE_QUERY, "k": 1, "user_id": f"lockstep-verify-{i}"})
                    answered.append(response.json().get("model_version") if response.status_code == 200 else f"HTTP {response.status_code}")
                if all(a == version for a in answered):
                    return time.monotonic() - started, None
                problem = f"searches answered by {answered}, not v{version}"
        except Exception as exc:  # connection refused, bad JSON: keep probing until the deadline
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return time.monotonic() - started, problem
        time.sleep(min(poll, 0.2))


# --- rollback and retention -------------------------------------------------------------------


def rollback(
    plan: Mapping[str, Any] | None,
    reason: str | None = None,
    figures: Mapping[str, Any] | None = None,
    *,
    failed_tasks: Sequence[str] = (),
    engine: Engine | None = None,
    registry: Any = None,
) -> dict[str, Any]:
    """All traffic back to the champion in one transaction, then the bookkeeping.

    The candidate is tagged rejected with the reason and the failed gates' figures
    (read from the rollout record when not given), its slot drains and retires, and an
    alert goes out. Safe to run twice (a retried task): each part checks first.
    """
    if not plan or plan.get("noop"):
        return {"rolled_back": False, "reason": "the rollout changed nothing; nothing to roll back"}
    engine, registry = engine or _engine(), registry or _registry()
    config = config_of(plan)
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    failure = record.last_failure(rid, engine=engine)
    if reason is None and failure:
        reason = f"{failure['step']}: {failure['reason']}"
    if reason is None:
        reason = f"task(s) {', '.join(failed_tasks)} failed" if failed_tasks else "a rollout task failed"
    if figures is None:
        figures = _failed_gate_figures(failure)
    started = time.perf_counter()
    generation = _abort_traffic(plan, reason, engine)
    commit_seconds = time.perf_counter() - started

    champion_now = registry.version_for_alias("champion")
    if champion_now is not None and champion_now.version == cand:
        registry.promote_champion(champ, reason=f"rollback of v{cand}: {reason}"[:200])
    registry.reject(cand, reason[:5000], dict(list(figures.items())[:MAX_REJECT_FIGURES]))
    _retire_slot(cand, f"rolled back: {reason}", config.drain_seconds, engine)

    from .alerts import alert

    alert("rollback", f"v{cand} rolled back to v{champ}: {reason}", {"rollout_id": rid, "candidate": cand, "champion": champ,
                                                                       "failed_tasks": list(failed_tasks), "figures": dict(figures)})
    summary = {"generation": generation, "commit_seconds": commit_seconds, "failed_tasks": ", ".join(failed_tasks)}
    record.record_step(rid, "rollback", "rollback", "info", weight=0, reason=reason, figures=summary, engine=engine)
    record.finish(rid, record.ROLLED_BACK, reason, figures, engine=engine)
    return {"rolled_back": True, "reason": reason, "champion": champ, "candidate": cand, **summary}


def retire_previous(plan: Mapping[str, Any], final: Mapping[str, Any], *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    """After the rollback window: retire the previous champion's slot and delete its index.

    Nothing is retired when the previous champion serves again (someone rolled back
    during the window) or the slot is already gone.
    """
    config, engine, registry = config_of(plan), engine or _engine(), registry or _registry()
    rid, previous = plan["rollout_id"], final.get("previous_champion")
    if not previous or previous == plan["model_version"]:
        return {"retired": None, "reason": "no previous champion"}
    champion = registry.version_for_alias("champion")
    slot = routing.read_table(engine).slot(previous)
    if (champion is not None and champion.version == previous) or (slot is not None and slot.weight > 0):
        reason = f"v{previous} serves again (rolled back during the window); kept"
        record.record_step(rid, "retention", "retention", "info", reason=reason, engine=engine)
        return {"retired": None, "reason": reason}
    if slot is None or slot.state == routing.RETIRED:
        return {"retired": None, "reason": f"v{previous} has no loaded slot"}
    _retire_slot(previous, f"replaced by v{plan['model_version']}; rollback window over", config.drain_seconds, engine)
    deleted = _delete_index(slot.index_location)
    registry.set_tags(previous, {TAG_RETIRED_AT: now().isoformat(timespec="seconds"), "lockstep.index_deleted": str(deleted).lower()})
    reason = f"v{previous} retired" + (f"; index {slot.index_location} deleted" if deleted else "; index kept (not a local folder)")
    record.record_step(rid, "retention", "retention", "info", reason=reason, engine=engine)
    return {"retired": previous, "index_deleted": deleted, "reason": reason}


def rollback_to_previous(
    reason: str,
    to_version: str | int | None = None,
    *,
    actor: str = "lockstep_rollback",
    rollback_id: str | None = None,
    engine: Engine | None = None,
    registry: Any = None,
) -> dict[str, Any]:
    """What ``lockstep_rollback`` does: all traffic to the previous (or a named) version at once.

    The previous champion comes from the registry's champion history; its slot must
    still be loaded (it is, for the rollback window after a rollout). The routing
    change is one transaction, then alias ``champion`` moves back and the reason is
    recorded in the routing history, the champion history, a version tag and the
    rollout record.
    """
    if not reason or not str(reason).strip():
        raise RolloutError("say why you roll back (Param reason): it is recorded with the change")
    engine, registry = engine or _engine(), registry or _registry()
    current = registry.version_for_alias("champion")
    table = routing.read_table(engine)
    target = str(to_version).strip() if to_version not in (None, "") else _previous_champion(registry, current, table)
    slot = table.slot(target)
    if slot is None or slot.state not in routing.WEIGHTABLE_STATES:
        state = "no slot" if slot is None else f"slot state {slot.state}"
        ready = [s.model_version for s in table.slots if s.state in routing.WEIGHTABLE_STATES]
        raise RolloutError(
            f"cannot roll back to v{target}: {state} (its index was retired after the rollback window, or never built). "
            f"Versions that can take traffic now: {', '.join(ready) or 'none'}; rebuild v{target}'s index with lockstep_reembed first"
        )
    started = time.perf_counter()
    generation = routing.set_weights({target: 100}, shadow=[], reason=f"manual rollback to v{target}: {reason}", actor=actor, engine=engine)
    commit_seconds = time.perf_counter() - started
    registry.promote_champion(target, reason=f"rollback: {reason}"[:200])
    if current is not None and current.version != target:
        registry.set_tags(current.version, {TAG_ROLLED_BACK: str(reason)[:5000]})
    rid = rollback_id or f"rollback-{now().strftime('%Y%m%dT%H%M%S')}"
    record.begin(rid, target, current.version if current else None, "rollback", {"reason": reason, "to_version": target}, engine=engine)
    record.record_step(rid, "rollback", "rollback", "info", weight=100, reason=reason,
                       figures={"generation": generation, "commit_seconds": commit_seconds}, engine=engine)
    record.finish(rid, record.ROLLED_BACK, reason, {"commit_seconds": commit_seconds}, engine=engine)
    from .alerts import alert

    alert("rollback", f"manual rollback from v{current.version if current else '?'} to v{target}: {reason}", {"rollback_id": rid, "to_version": target})
    return {"rollback_id": rid, "to_version": target, "from_version": current.version if current else None,
            "generation": generation, "commit_seconds": commit_seconds}


# --- helpers ----------------------------------------------------------------------------------


def _previous_champion(registry: Any, current: Any, table: routing.RoutingTable) -> str:
    """The newest champion before the current one, from the registry's champion history."""
    history = [str(e.get("version")) for e in registry.champion_history() if e.get("version")]
    now_version = current.version if current is not None else None
    for version in reversed(history):
        if version != now_version:
            return version
    raise RolloutError(
        f"the champion history has no version before v{now_version}; name one with Param to_version "
        f"(slots: {', '.join(f'v{s.model_version} {s.state}' for s in table.slots) or 'none'})"
    )


def _require_slot(table: routing.RoutingTable, version: str, role: str, states: Sequence[str], advice: str) -> None:
    slot = table.slot(version)
    if slot is None:
        raise RolloutError(f"the {role} v{version} has no serving slot; {advice}")
    if slot.state not in states:
        raise RolloutError(f"the {role} v{version}'s slot is {slot.state}, not {' or '.join(states)}; {advice}")


def _abort_traffic(plan: Mapping[str, Any], reason: str, engine: Engine) -> int:
    """Champion at 100 %, no shadow, in one transaction (nothing written if already so)."""
    champ, rid = plan["baseline_version"], plan["rollout_id"]
    table = routing.read_table(engine)
    if table.weights == {champ: 100} and not table.shadows:
        return table.generation
    generation = routing.set_weights({champ: 100}, shadow=[], reason=f"rollout {rid}: rollback: {reason}"[:2000], actor=ACTOR, engine=engine)
    log.warning("rollout %s: all traffic back on v%s (generation %d): %s", rid, champ, generation, reason)
    return generation


def _fail_step(plan, step, phase, results, arms, window, weight, engine, look: int = 1) -> None:
    figures = summary_figures(results, *arms.values())
    reason = combine(results).reason
    record.record_step(plan["rollout_id"], step, phase, "fail", look=look, weight=weight, action=Action.ROLLBACK, reason=reason,
                       gates=results, figures=figures, window=window, engine=engine)
    _abort_traffic(plan, f"{step}: {reason}", engine)
    raise GateFailed(f"v{plan['model_version']} failed the {step} phase: {reason}", phase=phase, figures=figures)


def _early_errors(cand: ArmStats, base: ArmStats, settings: GateSettings) -> list[GateResult]:
    """The error-rate gate during a bake: returned only when it already fails."""
    t = settings.thresholds
    result = error_rate_gate(
        cand.errors, cand.requests, base.errors, base.requests, max_abs_increase=t.max_abs_error_increase,
        alpha=settings.alpha, min_samples=settings.min_samples, max_error_rate=t.max_error_rate, name="error_rate",
    )
    return [result] if result.verdict is Verdict.FAIL else []


def _bake(seconds: float, config: RolloutConfig, watch: Callable[[], list[GateResult]] | None = None) -> list[GateResult]:
    """Sleep for the bake, polling ``watch``; return its results as soon as it reports a failure."""
    deadline = time.monotonic() + max(0.0, seconds)
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(config.poll_seconds, left))
        if watch is not None:
            early = [r for r in watch() if r.verdict is Verdict.FAIL]
            if early:
                return early
    return []


def _settle(config: RolloutConfig) -> datetime:
    """The window's end is now; then wait for the replicas' log writers to flush it."""
    end = now()
    time.sleep(config.log_flush_seconds)
    return end


def _action(verdict: Verdict, last_look: bool) -> Action:
    if verdict is Verdict.PASS:
        return Action.PROMOTE
    if verdict is Verdict.INCONCLUSIVE and not last_look:
        return Action.EXTEND
    return Action.ROLLBACK


def _failed_gate_figures(failure: Mapping[str, Any] | None) -> dict[str, Any]:
    if not failure:
        return {}
    figures: dict[str, Any] = {}
    for gate in failure.get("gates") or []:
        if gate.get("verdict") != "pass":
            figures.update({f"{gate['name']}.{k}": v for k, v in (gate.get("figures") or {}).items()})
    return figures or dict(failure.get("figures") or {})


def _retire_slot(version: str, note: str, drain_seconds: float, engine: Engine) -> None:
    """draining (replicas stop new requests and unload when idle), then retired."""
    slot = routing.read_table(engine).slot(version)
    if slot is None or slot.state == routing.RETIRED:
        return
    if slot.state != routing.DRAINING:
        routing.set_state(version, routing.DRAINING, note=note[:2000], engine=engine)
    time.sleep(max(0.0, drain_seconds))
    routing.set_state(version, routing.RETIRED, note=note[:2000], engine=engine)


def _delete_index(location: str) -> bool:
    if "://" in location and not location.startswith("file://"):
        return False
    path = Path(location.removeprefix("file://"))
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


def _from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _engine() -> Engine:
    from .db import get_engine

    return get_engine()


def _registry() -> Any:
    from .registry import Registry

    return Registry()


__all__ = [
    "STRATEGIES", "GateFailed", "ReviewRejected", "ReviewTimeout", "RolloutConfig", "RolloutError", "VerificationFailed",
    "check_review", "config_of", "finalize", "resolve_candidate", "retire_previous", "rollback", "rollback_to_previous",
    "run_ab", "run_bandit", "run_blue_green", "run_canary", "run_shadow", "shadow_only", "start", "verify", "verify_serving",
    "wait_for_review",
]
