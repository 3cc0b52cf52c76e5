"""The lift of the current champion over the long-term holdback, per day, with a confidence interval.

The unit is the **user-day**: one user's searches on one UTC day in one arm, clicked when
any of them got a click. A user who searches five times a day counts once, so a heavy
user cannot outweigh a hundred light ones, and user-days of one arm are close to
independent draws (the click-through of a user-day is a proportion).

Arms, per day:

- **holdback**: user-days answered by the holdback rule (request-log rows flagged
  ``holdback``), whatever version that was;
- **champion**: user-days outside the holdback answered by that day's champion, the
  version that served the most user-days outside the holdback that day (the champion
  after a promotion; a canary's candidate only if it had more than half the users).

Requests without a user id and pinned requests are left out of both.

``lift = CTR_champion / CTR_holdback - 1``. Its interval is the delta method on the log
of the ratio of two independent proportions (Katz et al., 1978):
``se(log r) = sqrt(1/c_c - 1/n_c + 1/c_h - 1/n_h)``, ``exp(log r +- z se) - 1``; it is
asymmetric, as a ratio's interval should be, and undefined while either arm has no
click (then only the point estimate, if any, is given).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from scipy.stats import norm
from sqlalchemy import Engine

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.store.routing import Holdback, read_holdback, version_key
from lockstep.store.serving_logs import UserDay, Window, user_days

DEFAULT_DAYS = 30  # the serving logs' default retention (LOCKSTEP_LOG_RETENTION_DAYS)


class HoldbackReportError(LockstepError, ValueError):
    """A report asked for with inputs it cannot use."""


@dataclass(frozen=True)
class DayLift:
    """One day of the report: both arms' user-days and clicked user-days, and the lift."""

    day: date
    champion_version: str | None
    holdback_versions: tuple[str, ...]
    champion_user_days: int
    champion_clicked: int
    holdback_user_days: int
    holdback_clicked: int
    lift: float | None
    low: float | None
    high: float | None
    partial: bool = False  # today: the day is not over yet

    @property
    def ctr_champion(self) -> float | None:
        return self.champion_clicked / self.champion_user_days if self.champion_user_days else None

    @property
    def ctr_holdback(self) -> float | None:
        return self.holdback_clicked / self.holdback_user_days if self.holdback_user_days else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(day=self.day.isoformat(), holdback_versions=list(self.holdback_versions),
                   ctr_champion=self.ctr_champion, ctr_holdback=self.ctr_holdback)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DayLift:
        """The inverse of ``to_dict`` (a DAG hands the report to the next task as JSON)."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in names}
        return cls(**{**values, "day": date.fromisoformat(data["day"]),
                      "holdback_versions": tuple(data.get("holdback_versions") or ())})


@dataclass(frozen=True)
class LiftReport:
    """The lift per day over a window of days, oldest first."""

    days: tuple[DayLift, ...]
    confidence: float
    holdback: Holdback | None
    generated_at: datetime = field(default_factory=clock.now)

    @property
    def latest(self) -> DayLift | None:
        """The newest day with a lift (a complete day first, today's partial one if none)."""
        with_lift = [d for d in self.days if d.lift is not None]
        complete = [d for d in with_lift if not d.partial]
        return (complete or with_lift or [None])[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "confidence": self.confidence,
            "holdback": self.holdback.to_dict() if self.holdback else None,
            "days": [d.to_dict() for d in self.days],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiftReport:
        """The inverse of ``to_dict`` (the holdback's salt is never in it, so it comes back empty)."""
        held = data.get("holdback")
        holdback = None if not held else Holdback(
            model_version=held["model_version"], percent=float(held["percent"]), salt="",
            set_at=clock.utc_or_none(held.get("set_at")), set_by=held.get("set_by"),
        )
        return cls(days=tuple(DayLift.from_dict(d) for d in data.get("days") or ()),
                   confidence=float(data["confidence"]), holdback=holdback,
                   generated_at=clock.utc(data["generated_at"]))


# --- the report -------------------------------------------------------------------------------


def lift_report(
    engine: Engine,
    *,
    days: int = DEFAULT_DAYS,
    confidence: float = 0.95,
    now: datetime | str | None = None,
) -> LiftReport:
    """The lift of each day's champion over the holdback for the last ``days`` UTC days (today included)."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise HoldbackReportError(f"days must be a whole number of days, at least 1; got {days!r}")
    if not 0 < confidence < 1:
        raise HoldbackReportError(f"confidence must be between 0 and 1 (e.g. 0.95); got {confidence!r}")
    now = clock.utc(now) if now is not None else clock.now()
    today = now.date()
    start = datetime.combine(today - timedelta(days=days - 1), time(), tzinfo=now.tzinfo)
    units = user_days(engine, Window(start, now), clicks_until=now)
    lifts = daily_lifts(units, confidence=confidence, today=today)
    return LiftReport(days=tuple(lifts), confidence=confidence, holdback=read_holdback(engine), generated_at=now)


def daily_lifts(units: Iterable[UserDay], *, confidence: float = 0.95, today: date | None = None) -> list[DayLift]:
    """Fold user-days into one ``DayLift`` per day that has any, oldest first."""
    by_day: dict[date, list[UserDay]] = defaultdict(list)
    for unit in units:
        by_day[unit.day].append(unit)
    return [_day_lift(day, by_day[day], confidence, partial=day == today) for day in sorted(by_day)]


def ratio_interval(
    clicked_a: int, n_a: int, clicked_b: int, n_b: int, confidence: float = 0.95
) -> tuple[float | None, float | None, float | None]:
    """(lift, low, high) of ``p_a / p_b - 1`` by the delta method on the log ratio.

    None for the lift when ``b`` has no clicks (no ratio); None for the bounds also when
    ``a`` has none (the log ratio's variance is infinite).
    """
    for name, clicked, n in (("a", clicked_a, n_a), ("b", clicked_b, n_b)):
        if n < 0 or not 0 <= clicked <= n:
            raise HoldbackReportError(f"arm {name}: {clicked} clicked of {n} user-days is not a proportion")
    if n_a == 0 or n_b == 0 or clicked_b == 0:
        return None, None, None
    ratio = (clicked_a / n_a) / (clicked_b / n_b)
    if clicked_a == 0:
        return ratio - 1.0, None, None
    se = math.sqrt(1 / clicked_a - 1 / n_a + 1 / clicked_b - 1 / n_b)
    z = float(norm.ppf(0.5 + confidence / 2))
    centre = math.log(ratio)
    return ratio - 1.0, math.exp(centre - z * se) - 1.0, math.exp(centre + z * se) - 1.0


# --- internals -----------------------------------------------------------------------------------


def _day_lift(day: date, units: Sequence[UserDay], confidence: float, *, partial: bool) -> DayLift:
    held = [u for u in units if u.holdback]
    outside = [u for u in units if not u.holdback]
    champion = _champion(outside)
    chosen = [u for u in outside if u.model_version == champion]
    c_n, c_clicked = len(chosen), sum(u.clicked for u in chosen)
    h_n, h_clicked = len(held), sum(u.clicked for u in held)
    lift, low, high = ratio_interval(c_clicked, c_n, h_clicked, h_n, confidence)
    return DayLift(
        day=day, champion_version=champion,
        holdback_versions=tuple(sorted({u.model_version for u in held}, key=version_key)),
        champion_user_days=c_n, champion_clicked=c_clicked, holdback_user_days=h_n, holdback_clicked=h_clicked,
        lift=lift, low=low, high=high, partial=partial,
    )


def _champion(outside: Sequence[UserDay]) -> str | None:
    """The version with the most user-days outside the holdback (ties: the newer version)."""
    counts = Counter(u.model_version for u in outside)
    if not counts:
        return None
    return max(counts, key=lambda v: (counts[v], version_key(v)))
