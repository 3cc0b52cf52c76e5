"""A realistic Lockstep history for the page's tests: one promotion, one rollback.

Written through the real routing functions and the rollout tables, as the DAGs would,
so the page is tested on what it will really read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lockstep.core import alerts
from lockstep.store import routing, schema
from lockstep.store.db import get_engine

FINGERPRINTS = {
    "1": "sha256:1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809",
    "2": "sha256:2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a",
    "3": "sha256:3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b",
}
ROLLBACK_REASON = "rollback: latency gate failed at canary 25% (p95 +41% vs version 2)"


def seed(index_root: str = "/srv/lockstep/indexes") -> dict[str, Any]:
    """Fill the configured Lockstep database; returns what a test can check against."""
    for v in ("1", "2", "3"):
        routing.register_slot(v, f"models:/lockstep-embedder/{v}", f"{index_root}/v{v}", FINGERPRINTS[v], routing.READY)
    routing.set_weights({"1": 100}, reason="version 1 is the first champion", actor="lockstep_rollout")

    promoted = _rollout(
        "manual__2026-01-10T08:00:00", "2", "1", "canary",
        weights=[(0, "shadow"), (5, "canary 5%"), (25, "canary 25%"), (100, "finalize")],
        failing_step=None,
    )
    routing.set_state("1", routing.RETIRED, note="replaced by version 2")
    alerts.alert("drift_detected", "query drift: domain-classifier AUC 0.71 > 0.55", {"auc": 0.71})
    rolled_back = _rollout(
        "asset_triggered__2026-01-12T09:30:00", "3", "2", "canary",
        weights=[(0, "shadow"), (5, "canary 5%"), (25, "canary 25%")],
        failing_step="canary 25%",
    )
    alerts.alert("rollback", f"version 3 rolled back: {ROLLBACK_REASON}", {"model_version": "3"})
    return {"promoted": promoted, "rolled_back": rolled_back}


def _rollout(rollout_id: str, cand: str, base: str, strategy: str, *, weights: list[tuple[int, str]], failing_step: str | None) -> str:
    engine = get_engine()
    started = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            schema.rollouts.insert().values(
                rollout_id=rollout_id, model_version=cand, baseline_version=base, strategy=strategy,
                status="running", started_at=started, config={"steps": [w for w, _ in weights]},
            )
        )
    status, reason = "promoted", f"version {cand} promoted to 100%"
    for weight, step in weights:
        if step == "shadow":
            routing.set_weights({base: 100}, shadow=[cand], reason=f"shadow {cand}", actor="lockstep_rollout", new_salt=True)
        elif weight == 100:
            routing.set_weights({cand: 100}, shadow=[], reason=f"promote version {cand}", actor="lockstep_rollout")
        else:
            routing.set_weights({base: 100 - weight, cand: weight}, shadow=[], reason=step, actor="lockstep_rollout")
        fails = step == failing_step
        gates = _gates(step, fails)
        _step(rollout_id, step, weight, gates, action="rollback" if fails else ("promote" if weight < 100 else None))
        if fails:
            routing.set_weights({base: 100}, shadow=[], reason=ROLLBACK_REASON, actor="lockstep_rollout")
            status, reason = "rolled_back", ROLLBACK_REASON
            break
    with engine.begin() as conn:
        conn.execute(
            schema.rollouts.update()
            .where(schema.rollouts.c.rollout_id == rollout_id)
            .values(status=status, ended_at=datetime.now(UTC), reason=reason)
        )
    return rollout_id


def _gate(name: str, verdict: str, reason: str, figures: dict[str, float]) -> dict[str, Any]:
    """A gate's answer in the shape of ``lockstep.rollout.gates.GateResult.to_dict()`` (without
    importing scipy, which the gates need and these tests do not)."""
    return {"name": name, "verdict": verdict, "reason": reason, "figures": figures}


def _gates(step: str, fails: bool) -> list[dict[str, Any]]:
    if step == "shadow":
        return [_gate("shadow_overlap", "pass", "top-10 overlap 0.83 >= 0.6", {"overlap_at_10": 0.8312, "n": 1204})]
    if step == "finalize":
        return []
    latency = (
        _gate("latency", "fail", "p95 latency +41% over baseline, beyond the 20% tolerance",
                   {"p95_ms_candidate": 38.2, "p95_ms_baseline": 27.1, "hl_shift_ms": 9.84, "p_value": 0.0004})
        if fails
        else _gate("latency", "pass", "p95 within 20% of baseline",
                        {"p95_ms_candidate": 26.4, "p95_ms_baseline": 27.0, "hl_shift_ms": -0.31, "p_value": 0.41})
    )
    return [
        _gate("error_rate", "pass", "0 errors in 512 requests", {"errors": 0, "requests": 512, "upper_bound": 0.0058}),
        latency,
        _gate("ctr_sequential", "inconclusive" if fails else "pass", "always-valid p 0.31 (100 needed per arm)" if fails else "CTR not worse (p 0.62)",
                   {"ctr_candidate": 0.214, "ctr_baseline": 0.209, "p_value": 0.62 if not fails else 0.31}),
    ]


def _step(rollout_id: str, step: str, weight: int, gates: list[dict[str, Any]], *, action: str | None) -> None:
    verdicts = {g["verdict"] for g in gates}
    verdict = "fail" if "fail" in verdicts else ("inconclusive" if "inconclusive" in verdicts else ("pass" if gates else "info"))
    with get_engine().begin() as conn:
        conn.execute(
            schema.rollout_steps.insert().values(
                rollout_id=rollout_id, step=step, phase=step.split()[0], look=1, weight=weight, verdict=verdict,
                action=action, reason=None if verdict != "fail" else "latency gate failed", gates=gates,
                figures={"requests_candidate": 512 if weight else 0}, at=datetime.now(UTC),
            )
        )
