"""How often the rollout gates roll back a good candidate, and how often they catch a bad one.

Run: .venv/bin/python benchmarks/gate_simulation.py [--runs 20000] [--seed 0]
     .venv/bin/python benchmarks/gate_simulation.py --users all [--user-runs 400] [--seed 0]   (about 2 minutes)

Every figure is a Monte Carlo estimate printed with its standard error. The click-through
simulations are vectorised over runs (numpy), so tens of thousands of runs take seconds;
the latency and error-rate gates run once per simulated rollout and use fewer runs.

``--users`` runs the user-level comparison instead (issue 22): the rollout's OWN
``SequentialCTRTest`` (built by ``analysis.sequential_ctr`` and judged by ``analyse``
with the rollout's settings, as a canary look does) and ``fixed_sample_ab_test``, fed
per impression (the old test) and per user (``update_users`` with ``ClusterSums``,
capped at ``USER_CAP`` as the serving-log reader caps them), side by side on the same
simulated traffic. ``homogeneous`` is the old world (every user the same CTR 0.2, one
request stream); ``heterogeneous`` is real traffic as ``lockstep.ops.population`` draws
it: per-user CTR from Beta(2, 8) (mean 0.2), Pareto activity (shape 1.16, capped at 100x
the median user), 10 % of requests anonymous (each its own cluster); ``heavy`` is that
world with five times the traffic per user. Users are split
50/50 as the sticky hash splits them. Rates are printed with 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from lockstep.rollout.analysis import GateSettings, sequential_ctr
from lockstep.rollout.config import DEFAULTS
from lockstep.rollout.gates import (
    GateVerdict,
    error_rate_gate,
    fixed_sample_ab_test,
    latency_gate,
)
from lockstep.rollout.policy import GateThresholds
from lockstep.rollout.sequential import DEFAULT_TAU2, always_valid_ci, msprt_p_value
from lockstep.rollout.statistics import required_sample_size, wilson_interval
from lockstep.store.log_stats import USER_CAP, ClusterSums

ALPHA = 0.05
BURN_IN = 100


def simulate_ctr(rng, rate_cand, rate_base, per_look, looks, runs):
    cand = rng.binomial(per_look, rate_cand, size=(runs, looks)).cumsum(axis=1)
    base = rng.binomial(per_look, rate_base, size=(runs, looks)).cumsum(axis=1)
    return cand, base, per_look * np.arange(1, looks + 1)


def sequential(cand, base, n, tau2=DEFAULT_TAU2):
    """Stop at the first look whose always-valid p < alpha: (rejected, failed, stop_fraction)."""
    p = np.where(n >= BURN_IN, msprt_p_value(cand, n, base, n, tau2=tau2), 1.0)
    crossed = np.minimum.accumulate(p, axis=1) < ALPHA
    rejected = crossed.any(axis=1)
    first = np.where(rejected, crossed.argmax(axis=1), n.size - 1)
    rows = np.arange(cand.shape[0])
    failed = rejected & (cand[rows, first] < base[rows, first])
    return rejected, failed, (first + 1) / n.size


def z_rejections(cand, base, n):
    pooled = (cand + base) / (2 * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (cand - base) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    return np.abs(np.nan_to_num(z)) > stats.norm.ppf(1 - ALPHA / 2)


def rate(flags) -> str:
    flags = np.asarray(flags, dtype=float)
    p = flags.mean()
    return f"{p:6.4f} +- {math.sqrt(p * (1 - p) / flags.size):.4f}"


def ctr_aa(rng, runs, looks):
    print(f"\n== Click-through A/A: CTR 0.10 on both arms, {looks} looks of 1000 per arm, {runs} runs")
    cand, base, n = simulate_ctr(rng, 0.10, 0.10, 1000, looks, runs)
    rejected, failed, _ = sequential(cand, base, n)
    peeks = z_rejections(cand, base, n)
    print(f"alpha                                       {ALPHA:.4f}")
    print(f"sequential (mSPRT) false rollback (FAIL)    {rate(failed)}")
    print(f"sequential (mSPRT) any rejection            {rate(rejected)}")
    print(f"fixed z-test, one look at the end           {rate(peeks[:, -1])}")
    print(f"fixed z-test peeked at every look           {rate(peeks.any(axis=1))}   <- why peeking is banned")
    print(f"fixed z-test peeked, false rollback (FAIL)  {rate((peeks & (cand < base)).any(axis=1))}")


def ctr_power(rng, runs, looks):
    print(f"\n== Click-through power: CTR 0.09 vs 0.10 (-10 % relative), {looks} looks, {runs} runs")
    print(f"(a fixed-horizon z-test needs {required_sample_size(0.10, -0.10)} per arm for 80 % power)")
    print("per arm  sequential power   mean share of traffic used   fixed z-test at the end")
    for total in (10_000, 20_000, 30_000, 40_000, 60_000):
        cand, base, n = simulate_ctr(rng, 0.09, 0.10, total // looks, looks, runs)
        _, failed, used = sequential(cand, base, n)
        fixed = z_rejections(cand[:, -1], base[:, -1], n[-1]) & (cand[:, -1] < base[:, -1])
        print(f"{total:7d}  {rate(failed)}   {used.mean():6.2f}                      {rate(fixed)}")


def ctr_tau(rng, runs, looks):
    print(f"\n== Mixture scale tau (DEFAULT_TAU2 = {DEFAULT_TAU2:g}, tau = {math.sqrt(DEFAULT_TAU2):g}); 30k per arm")
    print("tau      A/A false rollback    power (0.09 vs 0.10)")
    for tau in (0.003, 0.005, 0.01, 0.02, 0.05):
        aa = sequential(*simulate_ctr(rng, 0.10, 0.10, 1500, looks, runs), tau2=tau**2)[1]
        power = sequential(*simulate_ctr(rng, 0.09, 0.10, 1500, looks, runs), tau2=tau**2)[1]
        print(f"{tau:<7g}  {rate(aa)}     {rate(power)}")


def ctr_coverage(rng, runs, looks):
    print(f"\n== Always-valid 95 % interval, simultaneous coverage over {looks} looks, 0.09 vs 0.10, {runs} runs")
    cand, base, n = simulate_ctr(rng, 0.09, 0.10, 1000, looks, runs)
    low, high = always_valid_ci(cand, n, base, n, alpha=ALPHA)
    print(f"covers -0.01 at every look                  {rate(((low <= -0.01) & (high >= -0.01)).all(axis=1))}")


def latency(rng, runs):
    print(f"\n== Latency gate (lognormal, median 60 ms, 300 requests per arm, 98 %, tolerance 20 %), {runs} runs")
    print("candidate slowdown   FAIL rate")
    for scale in (1.0, 1.1, 1.25, 1.5):
        fails = [
            latency_gate(
                scale * rng.lognormal(math.log(60), 0.5, 300), rng.lognormal(math.log(60), 0.5, 300)
            ).verdict
            is GateVerdict.FAIL
            for _ in range(runs)
        ]
        print(f"x{scale:<19}  {rate(fails)}")


def error_rate(rng, runs):
    print(f"\n== Error-rate gate (2000 requests per arm, baseline 1 %), {runs} runs")
    print("candidate rate  tolerance  FAIL rate")
    for cand_rate, tolerance in ((0.01, 0.0), (0.01, 0.01), (0.02, 0.0), (0.03, 0.01), (0.04, 0.01)):
        fails = [
            error_rate_gate(
                rng.binomial(2000, cand_rate), 2000, rng.binomial(2000, 0.01), 2000, max_abs_increase=tolerance
            ).verdict
            is GateVerdict.FAIL
            for _ in range(runs)
        ]
        print(f"{cand_rate:<14.2%}  {tolerance:<9.2%}  {rate(fails)}")


# --------------------------------------------------------------------------- users, not requests

BASE_CTR = 0.2
PROPENSITY = (2.0, 8.0)  # Beta of the per-user CTR (mean 0.2), as lockstep.ops.population draws it
PARETO_SHAPE = 1.16  # activity: about 80 % of the requests from 20 % of the users
ACTIVITY_CAP = 100.0  # the most active user makes at most 100x the median user's requests
ANONYMOUS = 0.1  # share of requests without a user id


@dataclass(frozen=True)
class World:
    """Who sends the traffic of one simulated rollout, and how much of it."""

    name: str
    users_per_arm: int
    impressions_per_look: int  # per arm
    looks: int = 20
    heterogeneous: bool = True


@dataclass
class Tally:
    """Per-run outcomes of one test (old or new) in one scenario."""

    rolled_back: list[bool] = field(default_factory=list)
    promoted: list[bool] = field(default_factory=list)
    fixed_fail: list[bool] = field(default_factory=list)
    deff: list[float] = field(default_factory=list)


def arm_traffic(rng: np.random.Generator, world: World, effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative per-user (clicks, impressions) at every look, and the anonymous ones' per-look totals.

    Returns (clicks, impressions) of shape (looks, users), cumulative over looks, and the
    anonymous (clicks, impressions) of each look (each anonymous impression is a cluster).
    """
    users, looks, per_look = world.users_per_arm, world.looks, world.impressions_per_look
    if world.heterogeneous:
        ctr = rng.beta(*PROPENSITY, users) * effect
        weight = rng.pareto(PARETO_SHAPE, users) + 1.0
        weight = np.minimum(weight, ACTIVITY_CAP * np.median(weight))
        identified = per_look * (1 - ANONYMOUS)
    else:
        ctr = np.full(users, BASE_CTR * effect)
        weight = np.ones(users)
        identified = per_look
    rate = identified * weight / weight.sum()
    n = rng.poisson(rate, size=(looks, users))
    x = rng.binomial(n, ctr)
    anon_n = np.full(looks, per_look - int(round(identified)))
    anon_x = rng.binomial(anon_n, BASE_CTR * effect)
    return x.cumsum(axis=0), n.cumsum(axis=0), anon_x.cumsum(), anon_n.cumsum()


def look_sums(x: np.ndarray, n: np.ndarray, anon_x: int, anon_n: int, cap: int | None) -> ClusterSums:
    """The ClusterSums of one arm at one look, capped as ``serving_logs`` caps them (vectorised)."""
    seen = n > 0
    x, n = x[seen].astype(float), n[seen].astype(float)
    n_c = np.minimum(n, cap) if cap is not None else n
    x_c = x * n_c / n
    return ClusterSums(
        int(seen.sum()) + int(anon_n), float(x_c.sum() + anon_x), float(n_c.sum() + anon_n),
        float((x_c * x_c).sum() + anon_x), float((n_c * n_c).sum() + anon_n), float((x_c * n_c).sum() + anon_x),
        int(x.sum() + anon_x), int(n.sum() + anon_n), int((n_c < n).sum()),
    )


def one_rollout(rng: np.random.Generator, world: World, effect: float, settings: GateSettings, old: Tally, new: Tally,
                cap: int | None = USER_CAP) -> None:
    """One rollout: both tests look at the same traffic after every look, as a canary does."""
    cx, cn, cax, can = arm_traffic(rng, world, effect)
    bx, bn, bax, ban = arm_traffic(rng, world, 1.0)
    tests = {"old": sequential_ctr(settings), "new": sequential_ctr(settings)}
    verdicts: dict[str, list[GateVerdict]] = {"old": [], "new": []}
    previous = (0, 0, 0, 0)
    for t in range(world.looks):
        cand, base = look_sums(cx[t], cn[t], cax[t], can[t], cap), look_sums(bx[t], bn[t], bax[t], ban[t], cap)
        totals = (cand.raw_x, cand.raw_n, base.raw_x, base.raw_n)
        tests["old"].update(*(now - before for now, before in zip(totals, previous, strict=True)))
        previous = totals
        tests["new"].update_users(cand, base)
        for key, test in tests.items():
            if verdicts[key] and verdicts[key][-1] is GateVerdict.FAIL:
                continue  # rolled back at an earlier look
            verdicts[key].append(test.analyse(alpha=settings.alpha, min_samples=settings.min_samples,
                                              non_inferiority_margin=settings.thresholds.non_inferiority_margin).verdict)
    margin = settings.thresholds.non_inferiority_margin
    fixed = {
        "old": fixed_sample_ab_test(cand.raw_x, cand.raw_n, base.raw_x, base.raw_n, non_inferiority_margin=margin),
        "new": fixed_sample_ab_test(cand.raw_x, cand.raw_n, base.raw_x, base.raw_n, non_inferiority_margin=margin,
                                    cand_clusters=cand, base_clusters=base),
    }
    for key, tally in (("old", old), ("new", new)):
        tally.rolled_back.append(GateVerdict.FAIL in verdicts[key])
        tally.promoted.append(verdicts[key][-1] is GateVerdict.PASS)
        tally.fixed_fail.append(fixed[key].verdict is GateVerdict.FAIL)
    new.deff.append(tests["new"].design_effect)


def wilson(flags: list[bool]) -> str:
    k, n = int(sum(flags)), len(flags)
    low, high = wilson_interval(k, n)
    return f"{k / n:6.1%} [{low:5.1%}, {high:5.1%}]"


def users_scenario(rng: np.random.Generator, world: World, effect: float, runs: int, settings: GateSettings,
                   cap: int | None) -> tuple[Tally, Tally]:
    old, new = Tally(), Tally()
    for _ in range(runs):
        one_rollout(rng, world, effect, settings, old, new, cap)
    return old, new


def users_comparison(rng: np.random.Generator, runs: int, worlds: list[World], cap: int | None = USER_CAP) -> None:
    """Old (per impression) vs new (per user) gates, A/A and a -10 % candidate, with 95 % Wilson intervals."""
    settings = GateSettings(min_samples=100, alpha=ALPHA, thresholds=GateThresholds(), ctr_tau=DEFAULTS["ctr_tau"])
    print(f"\n== Users, not requests: {runs} seeded rollouts per row, {worlds[0].looks} looks, alpha {ALPHA}, "
          f"burn-in/min_samples {settings.min_samples}, tau {settings.ctr_tau}, margin "
          f"{settings.thresholds.non_inferiority_margin}, user cap {cap}")
    print("world                              users/arm  impr/arm  candidate  test  rollback (seq.)        "
          "promoted (seq.)        fixed-horizon FAIL     design effect")
    for world in worlds:
        for label, effect in (("A/A", 1.0), ("-10 %", 0.9)):
            started = time.perf_counter()
            old, new = users_scenario(rng, world, effect, runs, settings, cap)
            for key, tally in (("old", old), ("new", new)):
                deff = f"{np.mean(new.deff):5.2f}" if key == "new" else "  -  "
                print(f"{world.name:<34} {world.users_per_arm:9d}  {world.impressions_per_look * world.looks:8d}  "
                      f"{label:<9}  {key:<4}  {wilson(tally.rolled_back)}  {wilson(tally.promoted)}  "
                      f"{wilson(tally.fixed_fail)}  {deff}")
            print(f"{'':34} ({time.perf_counter() - started:.0f} s)")


USER_WORLDS = {
    "homogeneous": [World("same CTR 0.2, one request stream", 1500, 300, heterogeneous=False)],
    "heterogeneous": [
        World("heterogeneous, demo size", 1500, 300),
        World("heterogeneous, 20k users per arm", 20_000, 4000),
    ],
    # the same users with five times the traffic each (20 impressions per user): the more
    # a user searches, the more their clicks correlate, and the worse counting impressions is
    "heavy": [World("heterogeneous, 20 impressions/user", 1500, 1500)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000, help="click-through runs per scenario")
    parser.add_argument("--gate-runs", type=int, default=1000, help="runs per latency / error-rate scenario")
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", choices=[*USER_WORLDS, "all"], default=None,
                        help="run only the user-level comparison (issue 22) in this world")
    parser.add_argument("--user-runs", type=int, default=400, help="rollouts per row of the user-level comparison")
    parser.add_argument("--cap", type=int, default=USER_CAP, help="impressions one user may carry (0: no cap)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    if args.users:
        names = list(USER_WORLDS) if args.users == "all" else [args.users]
        users_comparison(rng, args.user_runs, [w for name in names for w in USER_WORLDS[name]], args.cap or None)
        print(f"\n({time.perf_counter() - started:.1f} s, seed {args.seed})")
        return
    ctr_aa(rng, args.runs, args.looks)
    ctr_power(rng, max(args.runs // 4, 100), args.looks)
    ctr_tau(rng, max(args.runs // 4, 100), args.looks)
    ctr_coverage(rng, max(args.runs // 4, 100), args.looks)
    latency(rng, args.gate_runs)
    error_rate(rng, args.gate_runs)
    print(f"\n({time.perf_counter() - started:.1f} s, seed {args.seed})")


if __name__ == "__main__":
    main()
