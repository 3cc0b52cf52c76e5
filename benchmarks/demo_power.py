"""How often the demo's canary rollout promotes a candidate that is at least as good as the champion.

Run: flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/demo_power.py [--runs 4000] [--seed 0] [--users N] [--users-like uniform|heterogeneous] [--only N]   (about 5 minutes)

``lockstep demo`` must end with the better model promoted. Its rollout is judged by the
same gates as any other (error rate, Mann-Whitney latency, always-valid mSPRT
click-through non-inferiority), on live traffic from the simulator, so it can fail by
chance: a false rollback (a gate FAILs a candidate that is no worse), or a step left
INCONCLUSIVE after ``max_extensions`` extensions. This is a seeded Monte Carlo of that
rollout over the real decision code: every look calls ``lockstep.rollout.strategies.canary``
(the pure function the rollout executor calls), with the demo's own settings
(``lockstep.ops.demo.DEMO_ROLLOUT`` and its traffic rate), on simulated traffic:

- requests arrive at the demo's rate and go to the candidate with the step's weight;
  the executor looks every ``poll_seconds``, so a look is judged at the first poll after
  both arms have their ``look x min_samples`` answered requests (as in the demo);
- the requests come from the demo's users (``lockstep.ops.population``, drawn anew for
  every rollout): by default ``heterogeneous``, as the demo's simulator sends them, so a
  few users make most of the requests (Pareto activity, capped), each user clicks at the
  arm's rate times its own propensity (Beta(2, 8) scaled to mean 1; capped at 1), and
  10 % of requests are anonymous. Routing is sticky per user as in serving (a user's
  bucket decides its arm, and the 25 % users stay on the candidate at 50 %); an
  anonymous request goes by weight. Every look gets the per-user sums
  (``log_stats.ClusterSums``, capped as the serving-log reader caps them) the user-level
  gates read. ``--users-like uniform`` is the old world (identical, equally active
  users); no request fails (the demo fails anyway if one does);
- latencies are lognormal with the median and spread measured in the demo (0.8 ms, p99
  about 6x the median: the serving app's own time per search), the candidate's 25 % slower
  (as measured: the drift-driven model has a larger vocabulary).

The power that matters is the worst case over candidates whose true CTR is at least the
champion's: equal rates (a better candidate only passes sooner), at CTR 0.5, where a
click-through has the largest variance. Each figure is printed with a one-sided 95 %
lower confidence bound (Clopper-Pearson), since the claim is "at least 99 %".
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy import stats

from lockstep.ops.demo import DEMO_ROLLOUT, DEMO_TRAFFIC_RATE, DEMO_USERS
from lockstep.ops.population import DEFAULT_ANONYMOUS, DEFAULT_PARETO_SHAPE, POPULATIONS, Population
from lockstep.rollout.steps import RolloutConfig
from lockstep.rollout.strategies import Move, canary
from lockstep.store import log_stats
from lockstep.store.log_stats import ArmStats

# The user-level sums the gates read (issue 22); without them (an older tree) the gates
# count impressions, and so does this benchmark.
ClusterSums = getattr(log_stats, "ClusterSums", None)
USER_CAP = getattr(log_stats, "USER_CAP", None)

CAND, CHAMP = "2", "1"


@dataclass(frozen=True)
class World:
    """What the simulated traffic looks like."""

    ctr_champion: float = 0.5
    ctr_candidate: float = 0.5
    rate: float = DEMO_TRAFFIC_RATE  # answered searches per second, both arms together
    latency_median_ms: float = 0.8  # the serving app's own time per search, as logged (measured in the demo)
    latency_sigma: float = 0.8  # of log latency: p99 about 6x the median, as measured
    candidate_slowdown: float = 1.25  # candidate latencies are multiplied by this (+25 % measured in the demo)
    users: int = DEMO_USERS
    users_like: str = "heterogeneous"
    pareto_shape: float = DEFAULT_PARETO_SHAPE
    anonymous: float = DEFAULT_ANONYMOUS


@dataclass(frozen=True)
class Outcome:
    """One simulated rollout."""

    promoted: bool
    move: str  # pass or fail
    step: str  # where it ended
    gate: str  # the gate that failed or stayed inconclusive ('' when promoted)
    seconds: float  # simulated traffic time the canary took
    looks: int


class _Arm:
    """One arm's traffic in a window, with the per-user sums kept up to date request by request."""

    def __init__(self, latencies: bool = False) -> None:
        self.requests = 0
        self.clicked = 0
        self.latencies: list[float] | None = [] if latencies else None
        self.per_user: dict[int, list[int]] = {}  # user index -> [clicks, impressions]
        self.sums = [0.0] * 9  # ClusterSums' fields: clusters, x, n, xx, nn, xn, raw_x, raw_n, capped

    def add(self, user: int | None, clicked: bool) -> None:
        self.requests += 1
        self.clicked += clicked
        if user is None:  # an anonymous request is a cluster of its own
            self._shift(_contribution(int(clicked), 1), +1)
            return
        counts = self.per_user.setdefault(user, [0, 0])
        if counts[1]:
            self._shift(_contribution(*counts), -1)
        counts[0] += clicked
        counts[1] += 1
        self._shift(_contribution(*counts), +1)

    def _shift(self, contribution: tuple[float, ...], sign: int) -> None:
        for j, value in enumerate(contribution):
            self.sums[j] += sign * value

    def stats(self, version: str) -> ArmStats:
        latencies = tuple(self.latencies or ())
        if ClusterSums is None:
            return ArmStats(version, self.requests, 0, self.clicked, latencies)
        s = self.sums
        clusters = ClusterSums(round(s[0]), *s[1:6], round(s[6]), round(s[7]), round(s[8]))
        # no request fails: the error metric's clusters are the same users with x = 0
        errors = ClusterSums(clusters.clusters, 0.0, s[2], 0.0, s[4], 0.0, 0, round(s[7]), round(s[8]))
        return ArmStats(version, self.requests, 0, self.clicked, latencies, clusters=clusters, error_clusters=errors)


def _contribution(x: int, n: int) -> tuple[float, ...]:
    """One cluster's share of the nine sums, capped at USER_CAP trials as the serving-log reader caps it."""
    n_c = min(n, USER_CAP) if USER_CAP is not None else n
    x_c = x * n_c / n
    return (1.0, x_c, n_c, x_c * x_c, n_c * n_c, x_c * n_c, x, n, float(n_c < n))


def rollout_once(config: RolloutConfig, world: World, rng: random.Random) -> Outcome:
    """One canary rollout of the demo, look by look, through the executor's decision function."""
    state: dict[str, Any] = {"index": 0, "look": 1}
    steps = [s for s in config.canary_steps if s < 100]
    tick = max(config.poll_seconds, 1e-3)
    per_tick = world.rate * tick
    population = Population.draw(world.users, world.users_like, seed=rng.getrandbits(32),
                                 pareto_shape=world.pareto_shape, anonymous=world.anonymous)
    buckets = [rng.random() * 100 for _ in range(population.users)]  # sticky routing: the user's hash bucket
    total = {CAND: _Arm(), CHAMP: _Arm()}
    step = {CAND: _Arm(latencies=True), CHAMP: _Arm(latencies=True)}
    seconds = look_seconds = 0.0
    looks = 0
    carry = 0.0
    while True:
        carry += per_tick
        arrivals, carry = int(carry), carry - int(carry)
        weight = steps[int(state.get("index", 0))]
        for _ in range(arrivals):
            visitor = population.visit(rng)
            point = rng.random() * 100 if visitor.index is None else buckets[visitor.index]
            version = CAND if point >= 100 - weight else CHAMP  # versions in order: the champion's bucket first
            _serve(version, world, rng, visitor.index, visitor.propensity, step[version], total[version])
        seconds += tick
        look_seconds += tick
        decision = canary(state, (step[CAND].stats(CAND), step[CHAMP].stats(CHAMP)),
                          (total[CAND].stats(CAND), total[CHAMP].stats(CHAMP)), look_seconds, config)
        if decision.move is Move.WAIT:
            state = decision.state
            continue
        looks += 1
        where = f"canary {weight}%"
        if decision.move is Move.PASS:
            return Outcome(True, "pass", where, "", seconds, looks)
        if decision.move is Move.FAIL:
            return Outcome(False, "fail", where, _culprit(decision), seconds, looks)
        if decision.move is Move.ADVANCE:
            step = {CAND: _Arm(latencies=True), CHAMP: _Arm(latencies=True)}
        state, look_seconds = decision.state, 0.0


def _serve(version: str, world: World, rng: random.Random, user: int | None, propensity: float, step: _Arm,
           total: _Arm) -> None:
    ctr = world.ctr_candidate if version == CAND else world.ctr_champion
    clicked = rng.random() < min(1.0, ctr * propensity)
    latency = world.latency_median_ms * math.exp(rng.gauss(0.0, world.latency_sigma))
    if version == CAND:
        latency *= world.candidate_slowdown
    for arm in (step, total):
        arm.add(user, clicked)
    step.latencies.append(latency)


def _culprit(decision) -> str:
    """The gates that did not pass in the deciding look ('too little traffic' when none ran)."""
    names = [f"{r.name} {r.verdict}" for r in decision.results if r.verdict != "pass"]
    return ",".join(names) if names else "too little traffic"


def simulate(settings: Mapping[str, Any], world: World, runs: int, seed: int) -> list[Outcome]:
    """``runs`` seeded rollouts with the given rollout settings (a LOCKSTEP_ROLLOUT_DEFAULTS dict)."""
    config = RolloutConfig.from_params(settings)
    rng = random.Random(seed)
    return [rollout_once(config, world, rng) for _ in range(runs)]


def lower_bound(successes: int, runs: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower confidence bound of a proportion."""
    if successes == 0:
        return 0.0
    return float(stats.beta.ppf(1 - confidence, successes, runs - successes + 1))


def report(label: str, outcomes: list[Outcome]) -> str:
    promoted = sum(o.promoted for o in outcomes)
    runs = len(outcomes)
    why = Counter(f"{o.step}: {o.gate}" for o in outcomes if not o.promoted)
    seconds = sorted(o.seconds for o in outcomes)
    median, p99 = seconds[len(seconds) // 2], seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))]
    line = (f"{label:<44} promoted {promoted}/{runs} = {promoted / runs:.4f} "
            f"(95 % lower bound {lower_bound(promoted, runs):.4f}); canary traffic median {median:.0f} s, p99 {p99:.0f} s")
    if why:
        line += "\n" + "\n".join(f"{'':<6}not promoted at {k}: {n}" for k, n in why.most_common(5))
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4000, help="rollouts of the worst case (a quarter of that for the others)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=DEMO_TRAFFIC_RATE, help="searches per second")
    parser.add_argument("--median-ms", type=float, default=World.latency_median_ms)
    parser.add_argument("--sigma", type=float, default=World.latency_sigma)
    parser.add_argument("--users", type=int, default=DEMO_USERS, help="simulated users (the demo's number by default)")
    parser.add_argument("--users-like", choices=POPULATIONS, default="heterogeneous")
    parser.add_argument("--pareto-shape", type=float, default=DEFAULT_PARETO_SHAPE)
    parser.add_argument("--anonymous", type=float, default=DEFAULT_ANONYMOUS)
    parser.add_argument("--only", type=int, default=None, help="run only scenario N (0: the worst case)")
    args = parser.parse_args()
    settings = dict(DEMO_ROLLOUT)
    print(f"demo rollout settings: {settings}")
    print(f"traffic {args.rate:g} searches/s; latency lognormal, median {args.median_ms:g} ms, sigma {args.sigma:g}")
    base = World(rate=args.rate, latency_median_ms=args.median_ms, latency_sigma=args.sigma, users=args.users,
                 users_like=args.users_like, pareto_shape=args.pareto_shape, anonymous=args.anonymous)
    users = Population.draw(args.users, args.users_like, seed=args.seed, pareto_shape=args.pareto_shape,
                            anonymous=args.anonymous)
    gates = f"per-user sums (cap {USER_CAP})" if ClusterSums is not None else "impressions"
    print(f"users: {users.describe()}; gates read {gates}")
    started = time.perf_counter()
    scenarios = [
        ("equal CTR 0.50 (worst case of 'no worse')", base),
        ("equal CTR 0.24 (the demo's measured CTR)", _with(base, 0.24, 0.24)),
        ("candidate +0.03 (0.50 vs 0.47)", _with(base, 0.47, 0.50)),
        ("candidate -0.05 (should mostly roll back)", _with(base, 0.50, 0.45)),
        ("candidate -0.15 (must roll back)", _with(base, 0.50, 0.35)),
    ]
    for i, (label, world) in enumerate(scenarios):
        if args.only is not None and i != args.only:
            continue
        runs = args.runs if i == 0 else max(args.runs // 4, 1)
        print(report(label, simulate(settings, world, runs, args.seed + i)), flush=True)
    print(f"\n({time.perf_counter() - started:.1f} s, seed {args.seed})")


def _with(world: World, champion: float, candidate: float) -> World:
    return dataclasses.replace(world, ctr_champion=champion, ctr_candidate=candidate)


if __name__ == "__main__":
    main()
