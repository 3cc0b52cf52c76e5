"""Progressive delivery of a model version: the steps of ``lockstep_rollout`` as library calls.

A rollout takes a candidate whose index is built (slot ``ready``) from 0 to 100 % of
traffic, or back. Each function below is one Airflow task, or (``tick``) one look of a
task that waits: it takes and returns plain JSON (the ``plan`` made by ``start`` travels
between them), changes traffic only through the routing table (one transaction per
change), and writes every analysis to ``lockstep_rollout_steps`` so the figures and
verdicts outlive the serving logs.

The order is: ``start`` -> review -> shadow -> one strategy (canary, ab, bandit — each
run look by look with ``tick`` —, ``run_blue_green`` or ``shadow_only``) -> ``finalize``
-> ``verify`` -> ``retire_previous`` after the rollback window. Any failure goes to
``rollback``. Only canary, ab, bandit and blue_green lead to ``finalize``; ``shadow``
never promotes.

The waiting phases decide with the pure functions of ``lockstep.rollout.strategies``
(state and counts in, decision out); ``tick`` reads the logs, applies the decision and
keeps the phase's state in the rollout record between looks, so the DAG's deferrable
tasks hold no worker while they wait.

Three habits make a bad candidate cheap and keep operators in charge:

- A step that sees a gate fail returns all traffic to the champion itself, in one
  transaction, *before* it raises: the time from a failed gate to 100 % on the champion
  does not include the scheduler's reaction time. The rollback task then does the
  bookkeeping (reject tag with reason and figures, drain and retire the slot, alert).
- At every look the error rate is checked, so a candidate that starts failing is stopped
  at once rather than at the end of the bake.
- Every traffic change is a compare-and-set against the routing generation the rollout
  wrote last. If someone else changed the traffic (``lockstep routing set``,
  ``lockstep_rollback``), the rollout stops as overridden and leaves the traffic alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from lockstep.core.errors import LockstepError
from lockstep.rollout import record, strategies
from lockstep.rollout.analysis import (
    GateSettings,
    Window,
    arm_stats,
    now,
    shadow_stats,
    summary_figures,
    utc,
)
from lockstep.rollout.gates import Action, CanaryPolicy, GateError, GateThresholds, Verdict
from lockstep.rollout.strategies import Decision, Move
from lockstep.store import routing

log = logging.getLogger("lockstep.rollout")

STRATEGIES = ("canary", "shadow", "ab", "bandit", "blue_green")
# The strategies that end in finalize (100 % and alias champion); "shadow" never promotes.
PROMOTING_STRATEGIES = ("canary", "ab", "bandit", "blue_green")
ACTOR = "lockstep_rollout"
# The Airflow pool every lockstep_rollout task runs in (``lockstep up`` creates it): rollouts
# never take more worker slots than the pool has, whatever else is running.
ROLLOUT_POOL = "lockstep_rollout"
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


class RolloutOverridden(RolloutError):
    """Someone else changed the traffic during the rollout; it stopped and left the traffic as they set it."""


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutConfig:
    """Everything a rollout can be told; each field is a Param of ``lockstep_rollout``.

    Times are seconds, so a demonstration rollout runs end to end in minutes; the
    defaults suit a real service with steady traffic.
    """

    strategy: str = "canary"
    canary_steps: tuple[int, ...] = (1, 5, 25, 50, 100)
    bake_seconds: float = 60.0  # the least time a step bakes; it is judged once both arms have their counts
    shadow_seconds: float | None = None  # None: the same as bake_seconds
    max_bake_seconds: float = 1800.0  # a look without its counts by then is "too little traffic" (extend or fail)
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
    # A deferral shorter than ~10 s can race the executor's report of the deferring
    # process under a real scheduler (the task is then marked failed); see the runbook.
    poll_seconds: float = 15.0
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
        if not self.max_bake_seconds > 0:
            raise RolloutError(f"max_bake_seconds must be positive (the safety net of a bake), got {self.max_bake_seconds!r}")
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
    def shadow_bake_seconds(self) -> float:
        return self.bake_seconds if self.shadow_seconds is None else self.shadow_seconds

    @property
    def serving_urls(self) -> list[str]:
        """The replicas to probe (comma-separated in the Param; empty: do not probe)."""
        return [u.strip().rstrip("/") for u in (self.serving_url or "").split(",") if u.strip()]


def config_of(plan: Mapping[str, Any]) -> RolloutConfig:
    return RolloutConfig.from_params(plan.get("config"))


# --- start and review --------------------------------------------------------------------------


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
    from lockstep.model.registry import requested_version as resolve_requested

    candidate = resolve_requested(requested_version, asset_extra, registry, purpose="roll out")
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
    _require_alias_and_routing_agree(champion, table, engine)

    record.begin(rollout_id, candidate, champion, config.strategy, config.to_dict(), engine=engine)
    generation = _route(base, {champion: 100}, [], f"rollout {rollout_id} of v{candidate}: start (new sticky salt)",
                        engine, new_salt=True, check=False)
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


def _require_alias_and_routing_agree(champion: str, table: routing.RoutingTable, engine: Engine) -> None:
    """Refuse to start when alias champion and the routing table tell different stories.

    That happens after a failed rollback or a manual change; a rollout would otherwise
    force the alias's version to 100 % and undo whatever the operator did.
    """
    if table.weights == {champion: 100}:
        return
    last = next(iter(routing.history(limit=1, engine=engine)), None)
    changed = f"; last change: generation {last.generation} by {last.actor or 'an unnamed writer'} ({last.reason})" if last else ""
    raise RolloutError(
        f"alias champion is v{champion} but the routing table sends {table.weights or 'no traffic'} "
        f"(generation {table.generation}{changed}). Settle which version serves before a rollout: "
        f"`lockstep routing set {champion}=100` to follow the alias, or lockstep_rollback / "
        "Registry.promote_champion to make the alias follow the traffic"
    )


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


# --- the executor: one look at a time ------------------------------------------------------------
#
# The phases that wait for traffic or for a person (review, shadow, canary, A/B, bandit) are
# run one look at a time: ``tick`` reads the phase's saved state, looks at the logs, applies
# the strategy's decision (``lockstep.rollout.strategies``) and saves the state again. The
# DAG calls it from a deferrable task, so between two looks no worker slot is held; the
# blocking ``run_phase`` loop is for library use and tests.

WAITING_PHASES = ("review", "shadow", "canary", "ab", "bandit")


@dataclass(frozen=True)
class Tick:
    """One look's outcome: the phase is done (with its result), or look again after ``wait_seconds``."""

    done: bool
    result: dict[str, Any] | None = None
    wait_seconds: float = 0.0


def tick(
    phase: str,
    plan: Mapping[str, Any],
    *,
    engine: Engine | None = None,
    registry: Any = None,
    external: Callable[[], str | None] | None = None,
) -> Tick:
    """One look of a waiting phase; never sleeps.

    First checks that nobody else changed the traffic since the rollout's last change
    (else RolloutOverridden: recorded, alerted, traffic left alone). A failed gate
    returns all traffic to the champion in one transaction before GateFailed is raised.
    """
    if phase not in WAITING_PHASES:
        raise RolloutError(f"phase {phase!r} is not one of {', '.join(WAITING_PHASES)}")
    engine = engine or _engine()
    rid = plan["rollout_id"]
    state = record.load_state(rid, engine=engine)
    _stop_if_overridden(plan, state, engine)
    handler = _LOOKS[phase]
    outcome, phase_state = handler(plan, config_of(plan), state.get(phase), engine=engine, registry=registry, external=external)
    state = record.load_state(rid, engine=engine)  # a traffic change in the look saved its generation
    state[phase] = phase_state
    record.save_state(rid, state, engine=engine)
    return outcome


def run_phase(
    phase: str,
    plan: Mapping[str, Any],
    *,
    engine: Engine | None = None,
    registry: Any = None,
    external: Callable[[], str | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Look after look until the phase is done (blocking: for library use and tests, not for a DAG task)."""
    while True:
        outcome = tick(phase, plan, engine=engine, registry=registry, external=external)
        if outcome.done:
            return outcome.result or {}
        sleep(outcome.wait_seconds)


def wait_for_review(plan: Mapping[str, Any], *, registry: Any = None, external: Callable[[], str | None] | None = None,
                    engine: Engine | None = None) -> dict[str, Any]:
    """Wait for a reviewer; raise ReviewRejected or ReviewTimeout (both lead to rollback)."""
    return run_phase("review", plan, engine=engine, registry=registry, external=external)


def run_shadow(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    return run_phase("shadow", plan, engine=engine)


def run_canary(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    return run_phase("canary", plan, engine=engine)


def run_ab(plan: Mapping[str, Any], *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    return run_phase("ab", plan, engine=engine, registry=registry)


def run_bandit(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    return run_phase("bandit", plan, engine=engine)


# --- review --------------------------------------------------------------------------------------


def _review_look(plan, config: RolloutConfig, ps, *, engine: Engine, registry: Any, external, **_) -> tuple[Tick, dict]:
    """Whichever answer comes first: the Airflow form (``external``) or the MLflow tag; or the timeout."""
    rid = plan["rollout_id"]
    if not config.require_approval:
        step = record.record_step(rid, "review", "review", "info", reason="no approval required (require_approval is false)", engine=engine)
        return Tick(True, step), {}
    registry = registry or _registry()
    if ps is None:
        record.record_step(rid, "review", "review", "info", engine=engine, reason=(
            f"waiting up to {config.approval_timeout_seconds:.0f} s for a reviewer: Airflow Required Actions, "
            f"or tag lockstep.review on v{plan['model_version']} in MLflow"))
        ps = {"started": _clock()}
    decision = check_review(plan, registry=registry, external=external)
    waited = _clock() - ps["started"]
    figures = {"waited_seconds": waited}
    if decision == "approved":
        return Tick(True, record.record_step(rid, "review", "review", "pass", reason=f"approved after {waited:.0f} s",
                                             figures=figures, engine=engine)), ps
    if decision == "rejected" or waited >= config.approval_timeout_seconds:
        error = ReviewRejected if decision == "rejected" else ReviewTimeout
        reason = (f"v{plan['model_version']} was rejected in review" if decision == "rejected"
                  else f"no review decision within {config.approval_timeout_seconds:.0f} s")
        record.record_step(rid, "review", "review", "fail", reason=reason, figures=figures, action=Action.ROLLBACK, engine=engine)
        raise error(reason, phase="review", figures=figures)
    return Tick(False, wait_seconds=config.poll_seconds), ps


# --- shadow --------------------------------------------------------------------------------------


def _shadow_look(plan, config: RolloutConfig, ps, *, engine: Engine, **_) -> tuple[Tick, dict]:
    """Mirror live traffic to the candidate; users never see its answers."""
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    if ps is None:
        _route(plan, {champ: 100}, [cand], f"rollout {rid}: shadow v{cand}", engine)
        ps = _fresh({"look": 1})
    window = Window(_at(ps["started"]), _window_end(config))
    stats = shadow_stats(engine, window, cand)
    decision = strategies.shadow(ps, stats, _clock() - ps["look_started"], config)
    figures = {**summary_figures(decision.results), "copies": stats.copies, "shadow_errors": stats.errors}
    outcome, ps = _apply(plan, "shadow", "shadow", decision, ps, figures, 0, window, engine)
    if decision.move is Move.PASS:
        _route(plan, {champ: 100}, [], f"rollout {rid}: shadow passed", engine)
    return outcome, ps


def shadow_only(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    """Strategy ``shadow``: the candidate was judged on mirrored traffic only and stays ready."""
    engine = engine or _engine()
    reason = f"v{plan['model_version']} passed the shadow phase; strategy 'shadow' moves no live traffic"
    record.finish(plan["rollout_id"], record.SHADOW_ONLY, reason, engine=engine)
    return record.record_step(plan["rollout_id"], "shadow only", "shadow", "info", reason=reason, engine=engine)


# --- canary --------------------------------------------------------------------------------------


def _canary_look(plan, config: RolloutConfig, ps, *, engine: Engine, **_) -> tuple[Tick, dict]:
    """The traffic steps below 100 %: each bakes until both arms have their counts, then is judged.

    Errors and latency are judged on the step's own window, click-through on all canary
    traffic so far with a sequential test valid however many looks it gets. The final
    100 % is ``finalize``'s (no baseline is left to compare with at 100 %).
    """
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    steps = config.canary_steps
    if ps is None:
        if steps[0] >= 100:
            step = record.record_step(rid, "canary", "canary", "pass", weight=100, action=Action.PROMOTE,
                                      reason="canary_steps has no step below 100 %: straight to finalize", engine=engine)
            return Tick(True, step), {}
        _route(plan, {champ: 100 - steps[0], cand: steps[0]}, [], f"rollout {rid}: canary {steps[0]}%", engine)
        ps = _fresh({"index": 0, "look": 1})
        ps["step_started"] = ps["started"]
    weight = steps[int(ps["index"])]
    end = _window_end(config)
    window = Window(_at(ps["step_started"]), end)
    arms = arm_stats(engine, window, [cand, champ])
    total = arm_stats(engine, Window(_at(ps["started"]), end), [cand, champ], clicks_until=now())
    decision = strategies.canary(ps, (arms[cand], arms[champ]), (total[cand], total[champ]), _clock() - ps["look_started"], config)
    figures = summary_figures(decision.results, arms[cand], arms[champ])
    outcome, new = _apply(plan, f"canary {weight}%", "canary", decision, ps, figures, weight, window, engine)
    if decision.move is Move.ADVANCE:
        new["step_started"] = new["look_started"]
    return outcome, new


# --- A/B -----------------------------------------------------------------------------------------


def _ab_look(plan, config: RolloutConfig, ps, *, engine: Engine, registry: Any, **_) -> tuple[Tick, dict]:
    """A frozen split with sticky users until each arm has its planned sample; one test at the end.

    The decision is the rule (pass promotes; fail or inconclusive keeps the champion) or,
    with ``ab_decision='reviewer'``, a reviewer's tag ``lockstep.ab_decision`` on the
    version, given the figures written beside it.
    """
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    if ps is None:
        _route(plan, {champ: 100 - config.ab_split, cand: config.ab_split}, [], f"rollout {rid}: A/B {config.ab_split}%", engine)
        ps = _fresh({})
    if ps.get("reviewer_since") is not None:
        return _ab_reviewer_look(plan, config, ps, engine, registry or _registry())
    window = Window(_at(ps["started"]), _window_end(config))
    arms = arm_stats(engine, window, [cand, champ], clicks_until=now())
    decision = strategies.ab(ps, (arms[cand], arms[champ]), _clock() - ps["started"], config)
    figures = summary_figures(decision.results, arms[cand], arms[champ])
    if config.ab_decision == "reviewer" and decision.results and decision.verdict is not Verdict.FAIL:
        registry = registry or _registry()
        registry.set_tags(cand, {f"lockstep.ab.{k}": v for k, v in list(figures.items())[:40]})
        record.record_step(rid, "A/B", "ab", decision.verdict, weight=config.ab_split, reason=f"waiting for tag {TAG_AB_DECISION}: {decision.reason}",
                           gates=decision.results, figures=figures, window=(window.start, window.end), engine=engine)
        return Tick(False, wait_seconds=config.poll_seconds), {**ps, "reviewer_since": _clock(), "figures": figures}
    return _apply(plan, "A/B", "ab", decision, ps, figures, config.ab_split, window, engine)


def _ab_reviewer_look(plan, config: RolloutConfig, ps: dict, engine: Engine, registry: Any) -> tuple[Tick, dict]:
    rid, cand = plan["rollout_id"], plan["model_version"]
    raw = (registry.get_version(cand).tags.get(TAG_AB_DECISION) or "").strip().lower()
    if raw in ("approved", "approve", "promote"):
        step = record.record_step(rid, "A/B decision", "ab", "pass", action=Action.PROMOTE, reason="the reviewer chose the candidate", engine=engine)
        return Tick(True, step), ps
    timed_out = _clock() - ps["reviewer_since"] >= config.approval_timeout_seconds
    if raw in ("rejected", "reject", "rollback") or timed_out:
        reason = "no A/B decision in time" if timed_out and not raw else "the reviewer kept the champion"
        _abort_traffic(plan, f"A/B: {reason}", engine)
        record.record_step(rid, "A/B decision", "ab", "fail", action=Action.ROLLBACK, reason=reason, engine=engine)
        error = ReviewTimeout if reason.startswith("no A/B") else ReviewRejected
        raise error(f"{reason} after the A/B test", phase="ab", figures=ps.get("figures"))
    return Tick(False, wait_seconds=config.poll_seconds), ps


# --- bandit --------------------------------------------------------------------------------------


def _bandit_look(plan, config: RolloutConfig, ps, *, engine: Engine, **_) -> tuple[Tick, dict]:
    """Thompson sampling over click-through, with the canary's guard gates (error rate, latency).

    Weights start even; each look moves traffic in proportion to the probability of being
    best (never below the floor). It ends when either version is best with probability >=
    threshold and the guards pass, when a guard gate fails, or at ``bandit_max_seconds``.
    """
    rid, cand, champ = plan["rollout_id"], plan["model_version"], plan["baseline_version"]
    if ps is None:
        weights = {champ: 50, cand: 50}
        _route(plan, weights, [], f"rollout {rid}: bandit start", engine)
        ps = _fresh({"look": 1, "weights": weights, "last_look_at": 0.0})
    window = Window(_at(ps["started"]), _window_end(config))
    arms = arm_stats(engine, window, [cand, champ], clicks_until=now())
    decision = strategies.bandit(ps, (arms[cand], arms[champ]), _clock() - ps["started"], config)
    weight = int(ps["weights"][cand])
    figures = {**summary_figures(decision.results, arms[cand], arms[champ]), "weight_candidate": weight}
    return _apply(plan, "bandit", "bandit", decision, ps, figures, weight, window, engine)


# --- applying a decision -------------------------------------------------------------------------


def _apply(plan, step: str, phase: str, decision: Decision, ps: dict, figures: dict, weight: int, window: Window,
           engine: Engine) -> tuple[Tick, dict]:
    """Record a judged look, move traffic as decided, and say when to look again."""
    config, rid = config_of(plan), plan["rollout_id"]
    if decision.move is Move.WAIT:
        return Tick(False, wait_seconds=config.poll_seconds), decision.state
    action = {Move.PASS: Action.PROMOTE, Move.FAIL: Action.ROLLBACK, Move.EXTEND: Action.EXTEND,
              Move.ADVANCE: Action.PROMOTE if phase == "canary" else Action.EXTEND}[decision.move]
    verdict = Verdict.FAIL if decision.move is Move.FAIL else decision.verdict
    row = record.record_step(rid, step, phase, verdict, look=int(ps.get("look", 1)), weight=weight, action=action,
                             reason=decision.reason, gates=decision.results, figures=figures,
                             window=(window.start, window.end), engine=engine)
    if decision.move is Move.FAIL:
        _abort_traffic(plan, f"{step}: {decision.reason}", engine)
        raise GateFailed(f"v{plan['model_version']} failed the {step} phase: {decision.reason}", phase=phase, figures=figures)
    if decision.move is Move.PASS:
        return Tick(True, row), decision.state
    if decision.move is Move.ADVANCE and decision.weights:
        cand_weight = decision.weights.get(plan["model_version"], 0)
        label = f"canary {cand_weight}%" if phase == "canary" else f"{phase} look {ps.get('look', 1)}: {decision.weights}"
        _route(plan, decision.weights, [], f"rollout {rid}: {label}", engine)
    return Tick(False, wait_seconds=config.poll_seconds), {**decision.state, "look_started": _clock()}


_LOOKS: dict[str, Callable[..., tuple[Tick, dict]]] = {
    "review": _review_look, "shadow": _shadow_look, "canary": _canary_look, "ab": _ab_look, "bandit": _bandit_look,
}


# --- operator authority --------------------------------------------------------------------------


def _route(plan: Mapping[str, Any], weights: Mapping[str, int], shadow: Sequence[str], reason: str, engine: Engine,
           *, new_salt: bool = False, check: bool = True) -> int:
    """Change traffic as the rollout, compare-and-set against the generation it wrote last.

    Anyone else's traffic change since then (``lockstep routing set``, ``lockstep_rollback``)
    makes this raise RolloutOverridden and write nothing.
    """
    rid = plan["rollout_id"]
    state = record.load_state(rid, engine=engine)
    expected = state.get("generation") if check else None
    try:
        generation = routing.set_weights(dict(weights), shadow=list(shadow), reason=reason[:2000], actor=ACTOR,
                                         new_salt=new_salt, expect_generation=expected, engine=engine)
    except routing.RoutingConflict as exc:
        raise _overridden(plan, exc.changes, engine) from exc
    state["generation"] = generation
    record.save_state(rid, state, engine=engine)
    return generation


def _stop_if_overridden(plan: Mapping[str, Any], state: Mapping[str, Any], engine: Engine) -> None:
    """Raise RolloutOverridden when someone else changed the traffic since the rollout's last change."""
    if (record.get(plan["rollout_id"], engine=engine) or {}).get("status") == record.OVERRIDDEN:
        raise RolloutOverridden(f"rollout {plan['rollout_id']} was overridden; it changes no traffic any more")
    expected = state.get("generation")
    if expected is None:
        return
    changes = routing.foreign_changes(int(expected), ACTOR, engine=engine)
    if changes:
        raise _overridden(plan, changes, engine)


def _overridden(plan: Mapping[str, Any], changes: Sequence[routing.HistoryEntry], engine: Engine) -> RolloutOverridden:
    """Record (once) and alert that the rollout stopped because someone else moved the traffic."""
    rid, cand = plan["rollout_id"], plan["model_version"]
    last = changes[-1] if changes else None
    who = f"{last.actor or 'an unnamed writer'} at generation {last.generation} ({last.reason or 'no reason given'})" if last else "someone"
    now_serving = last.weights if last else {}
    reason = (f"overridden by {who}: traffic is now {now_serving or 'unchanged'}; the rollout of v{cand} stopped "
              "and left the traffic as set")
    current = record.get(rid, engine=engine)
    if current is not None and current["status"] != record.OVERRIDDEN:
        figures = {"generation": last.generation if last else None, "weights": now_serving}
        record.record_step(rid, "overridden", "override", "info", reason=reason, figures=figures, engine=engine)
        record.finish(rid, record.OVERRIDDEN, reason, figures, engine=engine)
        from lockstep.core.alerts import alert

        alert("overridden", f"rollout of v{cand} stopped: {reason}", {"rollout_id": rid, "candidate": cand,
                                                                       "champion": plan["baseline_version"], **figures})
    log.warning("rollout %s: %s", rid, reason)
    return RolloutOverridden(reason)


def _fresh(values: dict[str, Any]) -> dict[str, Any]:
    moment = _clock()
    return {**values, "started": moment, "look_started": moment}


def _clock() -> float:
    """Wall-clock seconds: the state is read back by another process, so no monotonic clock."""
    return time.time()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)


def _window_end(config: RolloutConfig) -> datetime:
    """Analyse up to ``log_flush_seconds`` ago: the replicas' log writers have flushed that far."""
    return _at(_clock() - config.log_flush_seconds)


# --- blue-green, finalize, verify ----------------------------------------------------------------


def run_blue_green(plan: Mapping[str, Any], *, engine: Engine | None = None) -> dict[str, Any]:
    """One atomic switch from 0 to 100 %; the champion stays loaded for the rollback window."""
    engine = engine or _engine()
    rid, cand = plan["rollout_id"], plan["model_version"]
    _stop_if_overridden(plan, record.load_state(rid, engine=engine), engine)
    generation = _route(plan, {cand: 100}, [], f"rollout {rid}: blue-green switch to v{cand}", engine)
    return record.record_step(rid, "blue-green switch", "blue_green", "info", weight=100, action=Action.PROMOTE,
                              reason=f"all traffic to v{cand} in one transaction", figures={"generation": generation}, engine=engine)


def finalize(plan: Mapping[str, Any], *, engine: Engine | None = None, registry: Any = None) -> dict[str, Any]:
    """100 % to the candidate; alias ``champion`` moves to it (the old one is tagged replaced)."""
    config, engine, registry = config_of(plan), engine or _engine(), registry or _registry()
    rid, cand = plan["rollout_id"], plan["model_version"]
    _stop_if_overridden(plan, record.load_state(rid, engine=engine), engine)
    _require_strategy_passed(plan, config, engine)
    table = routing.read_table(engine)
    if table.weights == {cand: 100} and not table.shadows:
        generation = table.generation
    else:
        generation = _route(plan, {cand: 100}, [], f"rollout {rid}: final traffic update to v{cand}", engine)
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
    from lockstep.core.alerts import alert

    alert("promoted", f"v{cand} is the champion at 100 % (rollout {rid})", {"rollout_id": rid, "previous": previous_version})
    return out


def _require_strategy_passed(plan: Mapping[str, Any], config: RolloutConfig, engine: Engine) -> None:
    """Finalize only after a promoting strategy recorded a pass as its last word (defence in depth).

    The DAG already runs finalize only downstream of the promoting strategies; this
    check makes a wiring mistake fail loudly instead of promoting the candidate.
    """
    phase = {"canary": "canary", "ab": "ab", "bandit": "bandit", "blue_green": "blue_green"}.get(config.strategy)
    if phase is None:
        raise RolloutError(f"strategy {config.strategy!r} never promotes: finalize must not run for it")
    status = (record.get(plan["rollout_id"], engine=engine) or {}).get("status")
    if status != record.RUNNING:
        raise RolloutError(f"rollout {plan['rollout_id']} is {status or 'not recorded'}, not running: nothing to finalize")
    steps = [s for s in record.steps(plan["rollout_id"], engine=engine) if s["phase"] == phase]
    if not steps or steps[-1]["action"] != Action.PROMOTE or steps[-1]["verdict"] not in ("pass", "info"):
        last = f"{steps[-1]['step']}: {steps[-1]['verdict']}/{steps[-1]['action']}" if steps else "no step recorded"
        raise RolloutError(f"the {config.strategy} phase has not passed ({last}); finalize refuses to promote v{plan['model_version']}")


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
    current = record.get(rid, engine=engine) or {}
    if current.get("status") == record.OVERRIDDEN:
        return {"rolled_back": False, "overridden": True, "reason": current.get("reason") or "overridden"}
    failure = record.last_failure(rid, engine=engine)
    if reason is None and failure:
        reason = f"{failure['step']}: {failure['reason']}"
    if reason is None:
        reason = f"task(s) {', '.join(failed_tasks)} failed" if failed_tasks else "a rollout task failed"
    if figures is None:
        figures = _failed_gate_figures(failure)
    started = time.perf_counter()
    try:
        generation = _abort_traffic(plan, reason, engine)
    except RolloutOverridden as exc:  # an operator moved the traffic: theirs to decide now
        return {"rolled_back": False, "overridden": True, "reason": str(exc)}
    commit_seconds = time.perf_counter() - started

    champion_now = registry.version_for_alias("champion")
    if champion_now is not None and champion_now.version == cand:
        registry.promote_champion(champ, reason=f"rollback of v{cand}: {reason}"[:200])
    registry.reject(cand, reason[:5000], dict(list(figures.items())[:MAX_REJECT_FIGURES]))
    _retire_slot(cand, f"rolled back: {reason}", config.drain_seconds, engine)

    from lockstep.core.alerts import alert

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
    deleted, why_kept = _delete_index(slot.index_location)
    registry.set_tags(previous, {TAG_RETIRED_AT: now().isoformat(timespec="seconds"), "lockstep.index_deleted": str(deleted).lower()})
    reason = f"v{previous} retired" + (f"; index {slot.index_location} deleted" if deleted else f"; index kept ({why_kept})")
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
    from lockstep.core.alerts import alert

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
    """Champion at 100 %, no shadow, in one transaction (nothing written if already so).

    Compare-and-set like every rollout change: if an operator moved the traffic, it is
    theirs and RolloutOverridden is raised instead.
    """
    champ, rid = plan["baseline_version"], plan["rollout_id"]
    _stop_if_overridden(plan, record.load_state(rid, engine=engine), engine)
    table = routing.read_table(engine)
    if table.weights == {champ: 100} and not table.shadows:
        return table.generation
    generation = _route(plan, {champ: 100}, [], f"rollout {rid}: rollback: {reason}", engine)
    log.warning("rollout %s: all traffic back on v%s (generation %d): %s", rid, champ, generation, reason)
    return generation


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


def _delete_index(location: str) -> tuple[bool, str]:
    """Delete a retired index version, only inside LOCKSTEP_INDEX_STORE; (deleted, why kept)."""
    from lockstep.index.storage import UnsafeIndexPathError, delete_index_version

    try:
        return delete_index_version(location), "it was already gone"
    except UnsafeIndexPathError as exc:
        log.warning("retention keeps %s: %s", location, exc)
        return False, str(exc)


def _from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _engine() -> Engine:
    from lockstep.store.db import get_engine

    return get_engine()


def _registry() -> Any:
    from lockstep.model.registry import Registry

    return Registry()


__all__ = [
    "PROMOTING_STRATEGIES", "ROLLOUT_POOL", "STRATEGIES", "WAITING_PHASES", "GateFailed", "ReviewRejected", "ReviewTimeout",
    "RolloutConfig", "RolloutError", "RolloutOverridden", "Tick", "VerificationFailed",
    "check_review", "config_of", "finalize", "retire_previous", "rollback", "rollback_to_previous",
    "run_ab", "run_bandit", "run_blue_green", "run_canary", "run_phase", "run_shadow", "shadow_only", "start", "tick", "verify",
    "verify_serving", "wait_for_review",
]
