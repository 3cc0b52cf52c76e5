"""Simulated users who differ: their own click propensity, heavy-tailed activity, some anonymous.

Real traffic is not a crowd of identical users each searching as often as the next: a
few users make a hundred times the requests of most, some click far more than others,
and some requests carry no user id at all. Gates that count impressions as if they were
independent are fooled by such traffic (a heavy user's clicks move an arm's CTR), so the
simulators default to a ``heterogeneous`` population that looks like it:

- **propensity**: each user's click probability is the click model's (by relevance and
  rank) times the user's own multiplier, drawn from Beta(a, b) scaled to mean 1
  (default Beta(2, 8), i.e. a per-user base rate around 0.2 with a spread of 0.12);
- **activity**: each user's share of the requests is proportional to a Pareto weight
  (shape ``pareto_shape``, default 1.16: about 80 % of the requests from 20 % of the
  users), capped at ``activity_cap`` times the median weight so one user cannot take
  the whole stream;
- **anonymous**: a request carries no user id with probability ``anonymous`` (its
  clicker is a passer-by with a fresh propensity of the same distribution).

The population (propensities and weights) is drawn once from one
``numpy.random.Generator`` seeded by ``seed``: the same seed gives the same users. Who
sends each request is drawn from the caller's own seeded ``random.Random`` stream
(``Population.visit``), so a simulator's worker threads need no shared generator.
``uniform`` is the old world, kept for tests that want it: every user alike (propensity
1), equally active, none anonymous, and ``visit`` draws exactly as before
(``rng.randrange(users)``), so seeded runs replay.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, field

import numpy as np

from lockstep.core.errors import LockstepError

POPULATIONS = ("uniform", "heterogeneous")
DEFAULT_PARETO_SHAPE = 1.16  # the 80/20 rule: a fifth of the users make about 80 % of the requests
DEFAULT_ACTIVITY_CAP = 100.0  # the most active user makes at most 100x the median user's requests
DEFAULT_ANONYMOUS = 0.1  # share of requests without a user id
DEFAULT_PROPENSITY = (2.0, 8.0)  # Beta(a, b) of the per-user click rate, scaled to mean 1


class PopulationError(LockstepError, ValueError):
    """A population setting that cannot describe users (a negative share, an unknown kind)."""


@dataclass(frozen=True)
class Visitor:
    """Who sends one request: a user (``index`` into the population) or an anonymous passer-by."""

    user_id: str | None
    propensity: float
    index: int | None = None


@dataclass(frozen=True)
class Population:
    """``users`` simulated users: per-user click propensity (mean 1) and activity weights."""

    kind: str
    propensity: tuple[float, ...]
    weights: tuple[float, ...]
    anonymous: float = 0.0
    propensity_shape: tuple[float, float] = DEFAULT_PROPENSITY
    user_prefix: str = "user"
    _cumulative: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def draw(
        cls,
        users: int,
        kind: str = "heterogeneous",
        *,
        seed: int = 0,
        pareto_shape: float = DEFAULT_PARETO_SHAPE,
        activity_cap: float = DEFAULT_ACTIVITY_CAP,
        anonymous: float = DEFAULT_ANONYMOUS,
        propensity_shape: tuple[float, float] = DEFAULT_PROPENSITY,
        user_prefix: str = "user",
    ) -> Population:
        """Draw a population from one generator seeded by ``seed`` (``uniform``: every user alike)."""
        _check(users, kind, pareto_shape, activity_cap, anonymous, propensity_shape, user_prefix)
        if kind == "uniform":
            return cls("uniform", (1.0,) * users, (1.0,) * users, 0.0, propensity_shape, user_prefix)
        rng = np.random.default_rng(seed)
        a, b = propensity_shape
        propensity = rng.beta(a, b, size=users) / (a / (a + b))
        weights = rng.pareto(pareto_shape, size=users) + 1.0  # classic Pareto, minimum 1
        weights = np.minimum(weights, activity_cap * float(np.median(weights)))
        return cls("heterogeneous", tuple(map(float, propensity)), tuple(map(float, weights)), anonymous,
                   propensity_shape, user_prefix)

    @classmethod
    def uniform(cls, users: int, user_prefix: str = "user") -> Population:
        return cls.draw(users, "uniform", user_prefix=user_prefix)

    def __post_init__(self) -> None:
        if len(self.propensity) != len(self.weights) or not self.weights:
            raise PopulationError("a population needs one propensity and one activity weight per user, and a user")
        object.__setattr__(self, "_cumulative", tuple(itertools.accumulate(self.weights)))

    @property
    def users(self) -> int:
        return len(self.weights)

    def user_id(self, index: int) -> str:
        return f"{self.user_prefix}-{index}"

    def visit(self, rng: random.Random) -> Visitor:
        """Who sends the next request, drawn from ``rng`` (users by activity weight, some anonymous)."""
        if self.kind == "uniform":  # the old draw, so seeded uniform runs replay as before
            index = rng.randrange(self.users)
            return Visitor(self.user_id(index), 1.0, index)
        if self.anonymous and rng.random() < self.anonymous:
            a, b = self.propensity_shape
            return Visitor(None, rng.betavariate(a, b) / (a / (a + b)))
        index = min(bisect.bisect_right(self._cumulative, rng.random() * self._cumulative[-1]), self.users - 1)
        return Visitor(self.user_id(index), self.propensity[index], index)

    def request_shares(self) -> tuple[float, ...]:
        """Each user's expected share of the requests that carry a user id."""
        total = self._cumulative[-1]
        return tuple(w / total for w in self.weights)

    def describe(self) -> str:
        """One line for a command's output: who the users are."""
        if self.kind == "uniform":
            return f"{self.users} uniform users (equal activity and click propensity, none anonymous)"
        shares = sorted(self.request_shares(), reverse=True)
        top = sum(shares[: max(1, self.users // 100)])
        return (f"{self.users} heterogeneous users (top 1 % make {top:.0%} of the identified requests; "
                f"propensity Beta{self.propensity_shape} scaled to mean 1; {self.anonymous:.0%} of requests anonymous)")


def _check(users: int, kind: str, pareto_shape: float, activity_cap: float, anonymous: float,
           propensity_shape: tuple[float, float], user_prefix: str) -> None:
    """Refuse settings that describe no population, naming the setting."""
    if kind not in POPULATIONS:
        raise PopulationError(f"users-like {kind!r} is not one of {', '.join(POPULATIONS)}")
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise PopulationError(f"users must be a whole number of at least 1, got {users!r}")
    if not (math.isfinite(pareto_shape) and pareto_shape > 0):
        raise PopulationError(f"pareto_shape must be a positive number, got {pareto_shape!r}")
    if not (math.isfinite(activity_cap) and activity_cap >= 1):
        raise PopulationError(f"activity_cap must be at least 1 (times the median user's activity), got {activity_cap!r}")
    if not (0 <= anonymous < 1):
        raise PopulationError(f"anonymous must be a share in [0, 1), got {anonymous!r}")
    if len(propensity_shape) != 2 or not all(math.isfinite(v) and v > 0 for v in propensity_shape):
        raise PopulationError(f"propensity_shape must be two positive Beta parameters (a, b), got {propensity_shape!r}")
    if not user_prefix or not user_prefix.replace("-", "").replace("_", "").isalnum():
        raise PopulationError(f"user_prefix must be letters, digits, '-' or '_', got {user_prefix!r}")
