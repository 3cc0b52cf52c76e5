"""How often the rollout gates roll back a good candidate, and how often they catch a bad one.

Run: .venv/bin/python benchmarks/gate_simulation.py [--runs 20000] [--seed 0]

Every figure is a Monte Carlo estimate printed with its standard error. The click-through
simulations are vectorised over runs (numpy), so tens of thousands of runs take seconds;
the latency and error-rate gates run once per simulated rollout and use fewer runs.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats

from lockstep.rollout.gates import Verdict, error_rate_gate, latency_gate
from lockstep.rollout.statistics import (
    DEFAULT_TAU2,
    always_valid_ci,
    msprt_p_value,
    required_sample_size,
)

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
            is Verdict.FAIL
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
            is Verdict.FAIL
            for _ in range(runs)
        ]
        print(f"{cand_rate:<14.2%}  {tolerance:<9.2%}  {rate(fails)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000, help="click-through runs per scenario")
    parser.add_argument("--gate-runs", type=int, default=1000, help="runs per latency / error-rate scenario")
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    ctr_aa(rng, args.runs, args.looks)
    ctr_power(rng, max(args.runs // 4, 100), args.looks)
    ctr_tau(rng, max(args.runs // 4, 100), args.looks)
    ctr_coverage(rng, max(args.runs // 4, 100), args.looks)
    latency(rng, args.gate_runs)
    error_rate(rng, args.gate_runs)
    print(f"\n({time.perf_counter() - started:.1f} s, seed {args.seed})")


if __name__ == "__main__":
    main()
