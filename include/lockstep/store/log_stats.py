"""What the serving logs say about one version over a time window, as plain values.

``lockstep.store.serving_logs`` reads these from the database; the rollout's statistics
and strategies (which must stay free of any database) and the drift check take them in.

**Impressions and clicks, defined once.** The serving replicas log every search they
answer and every search a model version failed; a request rejected before any model
saw it (bad input, 4xx) is not logged at all.

- A *request* is any logged, unpinned search: the denominator of the error rate.
- A *server error* is a logged status of 500 or more: the model version failed.
- An *impression* is a search answered with a result list: a 2xx status (the app logs
  200). Only a result list can be clicked, so only impressions are the denominator of
  the click-through rate.
- A *click* is an impression with at least one click event (however many records of
  the list were clicked). So clicks never exceed impressions.

**The unit is the user, not the impression (issue 22).** Routing is sticky per user, so
the unit of randomisation is the user, and one user's impressions are not independent
trials: a heavy user who clicks a lot moves an arm's CTR by far more than a binomial
variance allows. Every click gate therefore reads ``ClusterSums``: per arm, six sums over
*clusters* (a user; a request without a user id is a cluster of its own) from which the
delta-method variance of the ratio clicks / impressions follows (Deng, Knoblich, Lu
2018). One cluster's weight is capped (``USER_CAP`` impressions, see ``ClusterSums``), so
one heavy or hostile client cannot decide a rollout alone. The error rate is a ratio
metric over the same clusters (errors / requests) and is read the same way.

Until issue 11 the rollout counted every non-5xx request as an impression and the drift
check only status 200; with the statuses the app logs (200 and 500) both give the same
numbers, but a 4xx row (an older replica, another writer) would have been an impression
that could never be clicked and pulled a version's CTR down. Both now use the
definition above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime

from lockstep.core.clock import utc

SERVER_ERROR = 500  # a logged status at or above this is a server error
ANSWERED = (200, 300)  # [low, high): the statuses of a search answered with a result list
# The most impressions (for the CTR) or requests (for the error rate) one user carries in a
# rollout's analysis window; a heavier user counts as USER_CAP units at their own rate.
# 50 is a few times what a typical user of the demo makes over a whole rollout, so it
# touches only the heavy tail (about 1 % of users in the benchmark's world).
USER_CAP = 50
# The most latencies one user contributes to a latency test (the first ones, by time).
LATENCY_CAP = 20


def is_server_error(status: int) -> bool:
    """A logged status the model version is to blame for."""
    return status >= SERVER_ERROR


def is_impression(status: int) -> bool:
    """A logged status of a search answered with a result list (see the module docstring)."""
    return ANSWERED[0] <= status < ANSWERED[1]


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", utc(self.start))
        object.__setattr__(self, "end", utc(self.end))

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def require_cap(label: str, cap: int | None) -> int | None:
    """A per-user cap is a whole number of at least 1 (or None: no cap); it enters SQL."""
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"{label} must be a whole number of at least 1 (or None for no cap), got {cap!r}")
    return cap


@dataclass(frozen=True)
class ClusterSums:
    """The sufficient statistics of a ratio metric x / n randomised by cluster (user).

    For each cluster i (a user, or a request without a user id) with x_i successes
    (clicked impressions, or errors) out of n_i trials (impressions, or requests), the
    sums over clusters: ``clusters`` K, ``x`` = sum x_i, ``n`` = sum n_i, ``xx`` = sum
    x_i^2, ``nn`` = sum n_i^2, ``xn`` = sum x_i n_i. These six give the ratio R = x / n and
    its delta-method variance (``variance``), and they add up over arms but not over time
    (a user spans looks), so a rollout reads them cumulatively from its start.

    **The cap.** A cluster with more than ``cap`` trials counts as ``cap`` trials at its
    own rate: n_i' = min(n_i, cap), x_i' = x_i n_i' / n_i. So no cluster carries more than
    cap / n of an arm's weight, and a client that clicks only one arm's results moves
    that arm's rate by at most that share. The six sums are of the capped values;
    ``raw_x`` and ``raw_n`` are the uncapped totals and ``capped`` counts the clusters cut.
    """

    clusters: int = 0
    x: float = 0.0
    n: float = 0.0
    xx: float = 0.0
    nn: float = 0.0
    xn: float = 0.0
    raw_x: int = 0
    raw_n: int = 0
    capped: int = 0

    @classmethod
    def of(cls, units: Iterable[tuple[float, float]], cap: int | None = USER_CAP) -> ClusterSums:
        """The sums of per-cluster (x_i, n_i) pairs, capped as the database reader caps them.

        The serving-log reader computes the same sums in SQL; this is for simulations and
        tests (and a reference to check the SQL against). Clusters with n_i = 0 are no
        cluster of this metric (a user whose only requests failed has no impressions).
        """
        require_cap("cap", cap)
        sums = [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0]
        for x_i, n_i in units:
            if n_i <= 0:
                continue
            if not 0 <= x_i <= n_i:
                raise ValueError(f"a cluster has {x_i} successes out of {n_i} trials")
            n_c = min(n_i, cap) if cap is not None else n_i
            x_c = x_i * n_c / n_i
            for j, value in enumerate((1, x_c, n_c, x_c * x_c, n_c * n_c, x_c * n_c, x_i, n_i, int(n_c < n_i))):
                sums[j] += value
        return cls(int(sums[0]), *(float(v) for v in sums[1:6]), int(sums[6]), int(sums[7]), int(sums[8]))

    @classmethod
    def per_trial(cls, successes: int, trials: int) -> ClusterSums:
        """Every trial its own cluster: what the old impression-level tests assumed."""
        return cls(int(trials), float(successes), float(trials), float(successes), float(trials), float(successes),
                   int(successes), int(trials), 0)

    @property
    def empty(self) -> bool:
        return self.clusters == 0

    @property
    def ratio(self) -> float:
        return self.x / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """The delta-method variance of the ratio, with the small-sample K / (K - 1) factor.

        Var(R) ~ K / (K - 1) * sum (x_i - R n_i)^2 / n^2 = K / (K - 1) * (xx - 2 R xn +
        R^2 nn) / n^2. NaN with fewer than two clusters: one user alone says nothing about
        the spread between users.
        """
        if self.clusters < 2 or self.n <= 0:
            return math.nan
        r = self.x / self.n
        spread = max(0.0, self.xx - 2 * r * self.xn + r * r * self.nn)
        return self.clusters / (self.clusters - 1) * spread / (self.n * self.n)

    @property
    def binomial_variance(self) -> float:
        """R (1 - R) / n: the variance if every trial were independent."""
        r = self.ratio
        return r * (1 - r) / self.n if self.n > 0 else math.nan

    @property
    def design_effect(self) -> float:
        """Var_delta / Var_binomial, at least 1: how many trials are worth one independent one.

        1 when either variance is zero or undefined (no clicks at all, one cluster): then
        nothing is known about the clustering, and the binomial counts stand.
        """
        delta, binomial = self.variance, self.binomial_variance
        if not (math.isfinite(delta) and math.isfinite(binomial)) or delta <= 0 or binomial <= 0:
            return 1.0
        return max(1.0, delta / binomial)

    def effective_counts(self) -> tuple[float, float]:
        """(successes, trials) divided by the design effect: binomial counts with the user-level variance.

        What the Beta posteriors of the bandit and the Agresti-Caffo error test take in.
        """
        deff = self.design_effect
        return self.x / deff, self.n / deff

    def to_list(self) -> list[float]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> ClusterSums:
        """The sums ``to_list`` wrote; ValueError when they cannot be sums of clusters."""
        names = [f.name for f in fields(cls)]
        if len(values) != len(names):
            raise ValueError(f"cluster sums need {len(names)} values ({', '.join(names)}), got {len(values)}")
        numbers = [float(v) for v in values]
        if not all(math.isfinite(v) and v >= 0 for v in numbers):
            raise ValueError(f"cluster sums must be finite and non-negative, got {list(values)!r}")
        return cls(int(numbers[0]), *numbers[1:6], int(numbers[6]), int(numbers[7]), int(numbers[8]))

    def figures(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}users": self.clusters, f"{prefix}capped_users": self.capped,
                f"{prefix}design_effect": self.design_effect}


def difference_design_effect(a: ClusterSums, b: ClusterSums) -> float:
    """The design effect of a difference of two arms' ratios: (Var_a + Var_b) / (Bin_a + Bin_b), at least 1.

    What the per-user variance of the difference costs against the binomial one: the
    sequential and fixed-horizon CTR tests and the drift check report it. 1 when the
    per-user variance is undefined or the binomial one is not positive.
    """
    delta = a.variance + b.variance
    binomial = a.binomial_variance + b.binomial_variance
    if not (math.isfinite(delta) and binomial > 0):
        return 1.0
    return max(1.0, delta / binomial)


@dataclass(frozen=True)
class ArmStats:
    """One version's traffic in a window.

    ``declined`` counts requests that were neither answered nor a server error (non-2xx
    statuses below 500): they count in the error rate's denominator but are no impression.
    """

    version: str
    requests: int = 0
    errors: int = 0
    clicked: int = 0  # impressions with at least one click
    latencies_ms: tuple[float, ...] = ()  # of every request that is not a server error (LATENCY_CAP per user)
    declined: int = 0
    # Per-user sums of (clicked, impressions) and of (errors, requests); empty when the
    # counts did not come from the logs (then the gates fall back to impression-level counts).
    clusters: ClusterSums = field(default_factory=ClusterSums)
    error_clusters: ClusterSums = field(default_factory=ClusterSums)

    @property
    def impressions(self) -> int:
        return self.requests - self.errors - self.declined

    @property
    def answered(self) -> int:
        """The impressions (the name the rollout's strategies use)."""
        return self.impressions

    @property
    def ctr(self) -> float:
        return self.clicked / self.impressions if self.impressions else float("nan")

    def figures(self) -> dict[str, float]:
        return {"requests": self.requests, "errors": self.errors, "clicked": self.clicked, "ctr": self.ctr}


@dataclass(frozen=True)
class ShadowStats:
    """The shadow copies of one version in a window, paired with the live answers."""

    version: str
    copies: int = 0
    errors: int = 0
    live_top_ids: tuple[tuple[str, ...], ...] = ()
    shadow_top_ids: tuple[tuple[str, ...] | None, ...] = ()
    shadow_latencies_ms: tuple[float, ...] = ()
    live_latencies_ms: tuple[float, ...] = ()
    live_requests: int = 0
    live_errors: int = 0


@dataclass(frozen=True)
class ClickThrough:
    """Impressions and clicks of one version in one window (the drift check's CTR input)."""

    impressions: int = 0
    clicks: int = 0
    clusters: ClusterSums = field(default_factory=ClusterSums)  # per-user sums of (clicks, impressions)
