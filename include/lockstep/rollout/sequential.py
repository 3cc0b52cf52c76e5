"""Click-through rate looked at repeatedly: the mixture SPRT and ``SequentialCTR``, figures in, figures out.

The mixture SPRT p-value and its always-valid interval (``msprt_p_value``,
``always_valid_ci``) and ``SequentialCTR``, which keeps the looks of one rollout
(peeking at a fixed-horizon test at every step inflates the false-rollback rate far
above alpha). The user is the unit (issue 22): ``SequentialCTR.update_users`` takes
per-user sums (``ClusterSums``) and feeds the mSPRT the difference of the ratios with
its delta-method variance (``msprt_p_value_moments``, ``always_valid_ci_moments``); the
per-impression ``update`` is kept for saved tests of old rollouts and for benchmarks of
the old test. Like ``lockstep.rollout.statistics`` (the tests looked at once), nothing
here decides: ``lockstep.rollout.gates.SequentialCTRTest`` turns these figures into a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from lockstep.rollout.statistics import (
    GateError,
    count_problem,
    ratio_moments,
    require_positive,
    require_unit_open,
)
from lockstep.store.log_stats import ClusterSums, difference_design_effect

# Mixture variance of the mSPRT prior on the difference of click-through rates: tau = 0.01
# (one percentage point). The test has the most power for effects near tau; set it to
# the size of change you care about.
DEFAULT_TAU2 = 1e-4


def msprt_p_value(
    cand_clicks: Any, cand_n: Any, base_clicks: Any, base_n: Any, tau2: float = DEFAULT_TAU2
) -> Any:
    """The mSPRT p-value 1 / Lambda of H0: equal rates, at one look (vectorised).

    Normal approximation with a N(0, tau2) mixture over the difference (Johari, Pekelis,
    Walsh 2017, "Always valid inference"): with the pooled variance s2 of the observed
    difference d, Lambda = sqrt(s2 / (s2 + tau2)) * exp(tau2 d^2 / (2 s2 (s2 + tau2))).
    The always-valid p-value is the running minimum over looks (``SequentialCTR``
    keeps it). Missing, NaN or degenerate inputs give 1: no evidence.
    """
    require_positive("tau2", tau2)
    xc, nc, xb, nb = (np.asarray(v, dtype=float) for v in (cand_clicks, cand_n, base_clicks, base_n))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pooled = (xc + xb) / (nc + nb)
        s2 = pooled * (1 - pooled) * (1 / nc + 1 / nb)
        diff = xc / nc - xb / nb
    p = msprt_p_value_moments(diff, s2, tau2)
    p = np.where((nc > 0) & (nb > 0), p, 1.0)
    return float(p) if p.ndim == 0 else p


def msprt_p_value_moments(diff: Any, variance: Any, tau2: float = DEFAULT_TAU2) -> Any:
    """The mSPRT p-value of H0: no difference, from an observed difference and its variance (vectorised).

    ``msprt_p_value`` passes the pooled binomial variance; the user-level test passes the
    delta-method variance of two per-user ratios, which is the whole change of issue 22:
    the same always-valid statistic with the variance of the unit that was randomised.
    NaN, zero or infinite variances give 1: no evidence.
    """
    require_positive("tau2", tau2)
    d, v = np.asarray(diff, dtype=float), np.asarray(variance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))
        p = np.minimum(1.0, np.exp(-log_lr))
    p = np.where((v > 0) & np.isfinite(v) & np.isfinite(p), p, 1.0)
    return float(p) if p.ndim == 0 else p


def always_valid_ci(
    cand_clicks: Any,
    cand_n: Any,
    base_clicks: Any,
    base_n: Any,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
) -> tuple[Any, Any]:
    """The always-valid (1 - alpha) interval for cand_rate - base_rate at one look (vectorised).

    It is the set of differences theta0 the mSPRT would not reject; intersecting it over
    looks (``SequentialCTR.confidence_interval``) keeps simultaneous coverage. The
    variance uses Agresti-Caffo adjusted rates so that zero clicks do not collapse it;
    unusable inputs give the uninformative (-1, 1).
    """
    require_unit_open("alpha", alpha)
    require_positive("tau2", tau2)
    xc, nc, xb, nb = (np.asarray(v, dtype=float) for v in (cand_clicks, cand_n, base_clicks, base_n))
    with np.errstate(divide="ignore", invalid="ignore"):
        adj_c = (xc + 1) / (nc + 2)
        adj_b = (xb + 1) / (nb + 2)
        v = adj_c * (1 - adj_c) / (nc + 2) + adj_b * (1 - adj_b) / (nb + 2)
        diff = xc / nc - xb / nb
    diff = np.where((nc > 0) & (nb > 0), diff, np.nan)
    return always_valid_ci_moments(diff, v, alpha, tau2)


def always_valid_ci_moments(diff: Any, variance: Any, alpha: float = 0.05, tau2: float = DEFAULT_TAU2) -> tuple[Any, Any]:
    """The always-valid (1 - alpha) interval of a difference from its estimate and variance (vectorised).

    Unusable inputs (NaN, zero variance) give the uninformative (-1, 1).
    """
    require_unit_open("alpha", alpha)
    require_positive("tau2", tau2)
    d, v = np.asarray(diff, dtype=float), np.asarray(variance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((v + tau2) / v)))
    usable = np.isfinite(d) & np.isfinite(half) & (v > 0)
    low = np.where(usable, np.clip(d - half, -1, 1), -1.0)
    high = np.where(usable, np.clip(d + half, -1, 1), 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


@dataclass(frozen=True)
class SequentialLook:
    """Cumulative counts at one look (of a per-impression test)."""

    cand_clicks: int
    cand_n: int
    base_clicks: int
    base_n: int


@dataclass(frozen=True)
class UserLook:
    """Cumulative per-user sums of both arms at one look (of a per-user test)."""

    cand: ClusterSums
    base: ClusterSums


UNITS = ("user", "impression")


class SequentialCTR:
    """A click-through comparison that may be looked at after every batch of traffic.

    Two units, fixed by the first update and kept in the saved state:

    - ``update_users`` (the rollout's): each look is the cumulative per-user sums of both
      arms since the rollout's start (``ClusterSums``; a user spans looks, so sums are
      never added across looks), and the mSPRT is fed the difference of the ratios with
      its delta-method variance. This is the test's unit since issue 22.
    - ``update`` (per impression): adds the counts observed since the previous update
      and uses the pooled binomial variance. It is what saved tests of rollouts begun
      before issue 22 hold, so they resume with the same p-value; and what the
      benchmarks compare against.

    The always-valid p-value is the running minimum of the per-look mSPRT p-values, so it
    never goes up and stopping at whatever look first crosses alpha keeps the
    false-decision rate at alpha. Looks start once both arms have ``burn_in``
    impressions (and, per user, two users each), because the normal approximation is
    poor before that and an early fluke would be locked in for good. The verdict on these
    figures is ``lockstep.rollout.gates.SequentialCTRTest.analyse``.
    """

    def __init__(self, tau2: float = DEFAULT_TAU2, burn_in: int = 100, name: str = "ctr_sequential",
                 unit: str | None = None):
        require_positive("tau2", tau2)
        if burn_in < 1:
            raise GateError(f"burn_in must be at least 1, got {burn_in!r}")
        if unit is not None and unit not in UNITS:
            raise GateError(f"unit must be one of {UNITS} (or None: set by the first update), got {unit!r}")
        self.tau2 = tau2
        self.burn_in = burn_in
        self.name = name
        self.unit = unit
        self.cand_clicks = self.cand_n = self.base_clicks = self.base_n = 0
        self.cand_sums = self.base_sums = ClusterSums()
        self._looks: list[SequentialLook] = []
        self._user_looks: list[UserLook] = []
        self._problem: str | None = None

    @property
    def looks(self) -> tuple[SequentialLook, ...] | tuple[UserLook, ...]:
        return tuple(self._user_looks) if self.unit == "user" else tuple(self._looks)

    @property
    def problem(self) -> str | None:
        """Why the last update was refused, or None when it was added."""
        return self._problem

    @property
    def cand_rate(self) -> float:
        """The candidate's rate as tested (per user: capped clicks over capped impressions)."""
        if self.unit == "user":
            return self.cand_sums.ratio
        return self.cand_clicks / self.cand_n if self.cand_n else math.nan

    @property
    def base_rate(self) -> float:
        if self.unit == "user":
            return self.base_sums.ratio
        return self.base_clicks / self.base_n if self.base_n else math.nan

    def update(self, cand_clicks: float, cand_n: float, base_clicks: float, base_n: float) -> None:
        """Add new per-impression counts. Missing or impossible counts are not added; the gate on
        this test cannot PASS until a good update arrives (it can still FAIL on earlier evidence)."""
        self._set_unit("impression")
        problem = count_problem("candidate", cand_clicks, cand_n, "clicks", "impressions") or count_problem(
            "baseline", base_clicks, base_n, "clicks", "impressions"
        )
        if problem:
            self._problem = problem
            return
        self._problem = None
        self.cand_clicks += int(cand_clicks)
        self.cand_n += int(cand_n)
        self.base_clicks += int(base_clicks)
        self.base_n += int(base_n)
        if min(self.cand_n, self.base_n) >= self.burn_in:
            self._looks.append(SequentialLook(self.cand_clicks, self.cand_n, self.base_clicks, self.base_n))

    def update_users(self, cand: ClusterSums, base: ClusterSums) -> None:
        """Take the cumulative per-user sums of both arms since the start: one look once burnt in."""
        self._set_unit("user")
        for arm, sums in (("candidate", cand), ("baseline", base)):
            if not isinstance(sums, ClusterSums):
                self._problem = f"{arm} per-user sums are missing"
                return
            if sums.x > sums.n or sums.raw_x > sums.raw_n:
                self._problem = f"{arm} has {sums.raw_x} clicks out of only {sums.raw_n} impressions"
                return
        self._problem = None
        self.cand_sums, self.base_sums = cand, base
        self.cand_clicks, self.cand_n, self.base_clicks, self.base_n = cand.raw_x, cand.raw_n, base.raw_x, base.raw_n
        if min(cand.raw_n, base.raw_n) >= self.burn_in and min(cand.clusters, base.clusters) >= 2:
            self._user_looks.append(UserLook(cand, base))

    @property
    def p_value(self) -> float:
        if not self.looks:
            return 1.0
        return float(np.min(msprt_p_value_moments(*self._moments(), tau2=self.tau2)))

    def confidence_interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """The running intersection of the per-look always-valid intervals."""
        if not self.looks:
            return -1.0, 1.0
        if self.unit == "user":
            lows, highs = always_valid_ci_moments(*self._moments(), alpha=alpha, tau2=self.tau2)
        else:
            lows, highs = always_valid_ci(*self._columns(), alpha=alpha, tau2=self.tau2)
        low, high = float(np.max(lows)), float(np.min(highs))
        if low > high:  # possible only with probability <= alpha; fall back to the latest look
            low, high = float(lows[-1]), float(highs[-1])
        return low, high

    @property
    def design_effect(self) -> float:
        """How much the per-user variance of the latest look exceeds the binomial one (1 per impression)."""
        if self.unit != "user" or not self._user_looks:
            return 1.0
        last = self._user_looks[-1]
        return difference_design_effect(last.cand, last.base)

    def to_state(self) -> dict[str, Any]:
        """Plain JSON of everything the test has seen, so a rollout can resume it in another process.

        A per-user test saves the sums of every look (nine numbers per arm), so a resumed
        rollout computes the very same p-value.
        """
        state: dict[str, Any] = {
            "tau2": self.tau2, "burn_in": self.burn_in, "name": self.name, "problem": self._problem,
            "unit": self.unit,
            "counts": [self.cand_clicks, self.cand_n, self.base_clicks, self.base_n],
            "looks": [[k.cand_clicks, k.cand_n, k.base_clicks, k.base_n] for k in self._looks],
        }
        if self.unit == "user":
            state["sums"] = [self.cand_sums.to_list(), self.base_sums.to_list()]
            state["user_looks"] = [[k.cand.to_list(), k.base.to_list()] for k in self._user_looks]
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """The test ``to_state`` saved (of this class), with the same looks, so the same always-valid p-value.

        A state saved before issue 22 has no ``unit``: it is a per-impression test and
        resumes as one (its p-value must not change mid-rollout), fed per impression.
        """
        try:
            unit = state.get("unit") or ("impression" if state.get("looks") or any(state["counts"]) else None)
            test = cls(tau2=float(state["tau2"]), burn_in=int(state["burn_in"]), name=str(state["name"]), unit=unit)
            test.cand_clicks, test.cand_n, test.base_clicks, test.base_n = (int(v) for v in state["counts"])
            test._looks = [SequentialLook(*(int(v) for v in look)) for look in state["looks"]]
            if unit == "user":
                test.cand_sums, test.base_sums = (ClusterSums.from_list(v) for v in state["sums"])
                test._user_looks = [UserLook(ClusterSums.from_list(c), ClusterSums.from_list(b)) for c, b in state["user_looks"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GateError(f"not a saved sequential CTR test ({type(exc).__name__}: {exc}): {dict(state)!r}"[:500]) from exc
        test._problem = state.get("problem")
        return test

    def _set_unit(self, unit: str) -> None:
        if self.unit is None:
            self.unit = unit
        elif self.unit != unit:
            raise GateError(
                f"this sequential test counts per {self.unit}; it cannot take per-{unit} counts "
                f"({'update_users' if self.unit == 'user' else 'update'} feeds it)"
            )

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per look: the difference of the rates and its variance (delta-method per user, pooled per impression)."""
        if self.unit == "user":
            pairs = np.array([ratio_moments(k.cand, k.base) for k in self._user_looks], dtype=float)
            return pairs[:, 0], pairs[:, 1]
        xc, nc, xb, nb = self._columns()
        pooled = (xc + xb) / (nc + nb)
        return xc / nc - xb / nb, pooled * (1 - pooled) * (1 / nc + 1 / nb)

    def _columns(self) -> tuple[np.ndarray, ...]:
        data = np.array([(k.cand_clicks, k.cand_n, k.base_clicks, k.base_n) for k in self._looks], dtype=float)
        return data[:, 0], data[:, 1], data[:, 2], data[:, 3]
