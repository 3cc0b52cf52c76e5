"""A seeded simulation of the long-term holdback: three promotions, and the lift over time.

Simulated days run against a real Lockstep database (SQLite in a temporary folder): the
real routing table (slots, ``set_holdback``, the canary's ``set_weights`` with a new salt
at each rollout; the salts are drawn from the seed, not from ``secrets``) decides every request through ``RoutingTable.choose``, and each request
is written to the request log as a serving replica writes it (``holdback`` flag
included), its click to the feedback log. The report is the real ``lift_report``. What
is simulated is the traffic itself: no model is loaded and no query is searched.

The world: ``users`` users, each active on a day with probability ``active``; an active
user searches 1 to 4 times, and clicks a search with probability ``ctr[version] * m``,
where ``m`` (uniform 0.5 .. 1.5) is the user's own propensity. The holdback is set on
version 1 before the first day; each promotion is a canary day at 20 % then 100 %. The
true user-day lift of each day's champion is computed from the same population, so the
chart shows the estimate and its interval against the truth.

``python -m lockstep.ops.holdback_simulation --out docs/holdback-lift.png`` (or
``benchmarks/holdback_simulation.py``) writes the chart and prints the daily table.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, update

from lockstep.holdback.report import LiftReport, lift_report
from lockstep.store import routing
from lockstep.store.schema import feedback_log, request_log, routing_state
from lockstep.store.schema import holdback as holdback_table

START = datetime(2026, 1, 5, tzinfo=UTC)
SEARCHES = (1, 2, 3, 4)


@dataclass(frozen=True)
class SimulationConfig:
    """The simulated world; the defaults are what docs/holdback-lift.png shows."""

    users: int = 6000
    holdback_percent: float = 10.0
    days: int = 36
    promotions: tuple[tuple[int, str], ...] = ((6, "2"), (16, "3"), (26, "4"))  # (canary day, version)
    ctr: Mapping[str, float] = field(default_factory=lambda: {"1": 0.20, "2": 0.22, "3": 0.245, "4": 0.27})
    active: float = 0.4
    seed: int = 7


@dataclass(frozen=True)
class SimulationResult:
    report: LiftReport
    true_lift: dict[date, float]  # the expected user-day lift of each day's champion
    promotions: tuple[tuple[date, str], ...]
    requests: int


def simulate(config: SimulationConfig, engine: Engine) -> SimulationResult:
    """Run the simulated days against ``engine`` (an empty Lockstep database) and report the lift."""
    rng = random.Random(config.seed)
    propensity = {f"u{i:05d}": rng.uniform(0.5, 1.5) for i in range(config.users)}
    for version in sorted(config.ctr, key=routing.version_key):
        routing.register_slot(version, f"models:/simulated/{version}", f"/simulated/v{version}", f"sha256:{version}",
                              state="ready", engine=engine)
    routing.set_weights({"1": 100}, new_salt=True, engine=engine)
    routing.set_holdback("1", config.holdback_percent, actor="simulation", engine=engine)
    _seed_salts(engine, rng, holdback=True)
    plan = _routing_plan(config)
    champion, requests, true_lift = "1", 0, {}
    for day in range(config.days):
        if day in plan:
            weights = plan[day]
            routing.set_weights(weights, new_salt=len(weights) > 1, reason="simulated rollout", engine=engine)
            _seed_salts(engine, rng, holdback=False)
            champion = max(weights, key=lambda v: weights[v])
        table = routing.read_table(engine)
        requests += _one_day(START + timedelta(days=day), table, propensity, config, rng, engine)
        true_lift[(START + timedelta(days=day)).date()] = _expected_user_day_ctr(config.ctr[champion], propensity) / \
            _expected_user_day_ctr(config.ctr["1"], propensity) - 1
    # as of midnight after the last day: every simulated day is complete (the report's "today" has no rows)
    report = lift_report(engine, days=config.days + 1, now=START + timedelta(days=config.days))
    promoted = tuple(((START + timedelta(days=d)).date(), v) for d, v in config.promotions)
    return SimulationResult(report, true_lift, promoted, requests)


def plot(result: SimulationResult, out: Path) -> Path:
    """The estimated lift per day with its interval, the true lift, and the promotions (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d for d in result.report.days if d.lift is not None]
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    x = [d.day for d in days]
    ax.errorbar(x, [100 * d.lift for d in days],
                yerr=[[100 * (d.lift - d.low) for d in days], [100 * (d.high - d.lift) for d in days]],
                fmt="o", ms=4, capsize=2, color="#1f77b4", ecolor="#9ecae1",
                label=f"estimated lift, {result.report.confidence:.0%} CI (user-days)")
    truth = sorted(result.true_lift.items())
    ax.step([d for d, _ in truth], [100 * v for _, v in truth], where="mid", color="#d62728", ls="--",
            label="true lift of the champion")
    for day, version in result.promotions:
        ax.axvline(day, color="#999", lw=0.8)
        ax.annotate(f"canary v{version}", (day, ax.get_ylim()[1]), textcoords="offset points", xytext=(3, -12),
                    fontsize=8, color="#555")
    ax.axhline(0, color="#333", lw=0.8)
    ax.set_ylabel("lift over the holdback (%)")
    held = result.report.holdback
    ax.set_title(f"Champion vs. long-term holdback ({held.percent:g} % of users on v{held.model_version}); "
                 f"seeded simulation, {result.requests:,} requests")
    ax.legend(loc="lower right", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/holdback-lift.png"))
    parser.add_argument("--seed", type=int, default=SimulationConfig.seed)
    args = parser.parse_args(argv)
    from lockstep.holdback.steps import format_table
    from lockstep.store.db import dispose_engines, get_engine

    with tempfile.TemporaryDirectory(prefix="lockstep-holdback-sim-") as tmp:
        engine = get_engine(f"sqlite:///{Path(tmp) / 'lockstep.db'}")
        result = simulate(SimulationConfig(seed=args.seed), engine)
        dispose_engines()
    plot(result, args.out)
    print(format_table(result.report))
    covered = sum(d.low <= result.true_lift[d.day] <= d.high for d in result.report.days if d.low is not None)
    rated = sum(d.low is not None for d in result.report.days)
    print(f"{result.requests:,} requests; the interval holds the true lift on {covered} of {rated} days; chart: {args.out}")
    return {"requests": result.requests, "covered": covered, "days": rated}


# --- internals ---------------------------------------------------------------------------------


def _seed_salts(engine: Engine, rng: random.Random, *, holdback: bool) -> None:
    """Replace the random salts just drawn with seeded ones, so a seed gives the same run.

    Serving draws salts with ``secrets``; only the simulation needs them repeatable.
    """
    with engine.begin() as conn:
        conn.execute(update(routing_state).values(salt=f"{rng.getrandbits(64):016x}"))
        if holdback:
            conn.execute(update(holdback_table).values(salt=f"{rng.getrandbits(64):016x}"))


def _routing_plan(config: SimulationConfig) -> dict[int, dict[str, int]]:
    """Day -> weights: each promotion is a 20 % canary day, then 100 % the day after."""
    plan: dict[int, dict[str, int]] = {}
    current = "1"
    for day, version in config.promotions:
        plan[day] = {current: 80, version: 20}
        plan[day + 1] = {version: 100}
        current = version
    return plan


def _one_day(start: datetime, table: routing.RoutingTable, propensity: Mapping[str, float], config: SimulationConfig,
             rng: random.Random, engine: Engine) -> int:
    """Every active user's searches of one day, routed by ``table`` and logged as a replica logs them."""
    requests, clicks = [], []
    for user, m in propensity.items():
        if rng.random() >= config.active:
            continue
        slot = table.choose(user)
        held = table.held_back(user) == slot.model_version
        for _ in range(rng.choice(SEARCHES)):
            at = start + timedelta(seconds=rng.uniform(0, 86_000))
            rid = f"{start:%m%d}-{len(requests)}"
            requests.append({"request_id": rid, "at": at, "model_version": slot.model_version, "user_id": user,
                             "query": "simulated", "k": 10, "latency_ms": 1.0, "status": 200, "top_ids": ["r"],
                             "replica": "simulation", "pinned": False, "holdback": held})
            if rng.random() < config.ctr[slot.model_version] * m:
                clicks.append({"request_id": rid, "record_id": "r", "event": "click", "at": at + timedelta(seconds=5)})
    with engine.begin() as conn:
        conn.execute(insert(request_log), requests)
        if clicks:
            conn.execute(insert(feedback_log), clicks)
    return len(requests)


def _expected_user_day_ctr(ctr: float, propensity: Mapping[str, float]) -> float:
    """P(an active user-day has a click) over this population and 1-4 searches."""
    total = sum(1 - (1 - ctr * m) ** n for m in propensity.values() for n in SEARCHES)
    return total / (len(propensity) * len(SEARCHES))


if __name__ == "__main__":  # pragma: no cover
    main()
