"""The one reader of the serving logs: requests, shadow copies and clicks over a window.

The serving replicas log every answered search (``lockstep_request_log``), every shadow
copy (``lockstep_shadow_log``) and every click (``lockstep_feedback_log``). The rollout
gates and the drift check read them only through this module, so an impression and a
click mean the same thing to both (defined in ``lockstep.store.log_stats``: an
impression is a search answered with a result list, a click an impression with at least
one click event). Three rules hold for every reader here:

- Pinned requests never count: any client can pin a version (``X-Lockstep-Pin``), so
  pinned traffic would let a client steer a gate or the drift check.
- Holdback requests never count either (the long-term holdback group, issue 13): they are
  frozen on an old version and belong to no rollout. Only ``user_days`` reads them, for
  the holdback's lift report.
- Clicks arrive after their request: a request in the window counts its clicks up to
  ``clicks_until`` (the moment of the analysis), not just up to the window's end.
- Windows are half-open, ``[start, end)``, in UTC.

Everything here reads; nothing writes (``lockstep.serving.logs`` writes the logs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, distinct, false, func, select

from lockstep.core.clock import utc
from lockstep.store.log_stats import (
    ANSWERED,
    ArmStats,
    ClickThrough,
    ShadowStats,
    Window,
    is_impression,
    is_server_error,
)
from lockstep.store.schema import feedback_log, request_log, shadow_log

__all__ = [
    "ArmStats", "ClickThrough", "ShadowStats", "UserDay", "Window",
    "arm_stats", "click_through", "counted", "impression", "queries", "shadow_stats", "unpinned", "user_days",
]

CHUNK = 500  # request ids per IN (...) list: well under every driver's parameter limit


def unpinned() -> ColumnElement[bool]:
    """The request-log rows that may count in statistics: not pinned by the client."""
    return request_log.c.pinned == false()


def counted() -> ColumnElement[bool]:
    """The request-log rows that count in gate, drift and bandit statistics: not pinned, not holdback."""
    return and_(unpinned(), request_log.c.holdback == false())


def impression() -> ColumnElement[bool]:
    """The request-log rows that are impressions (see ``lockstep.store.log_stats``)."""
    return and_(request_log.c.status >= ANSWERED[0], request_log.c.status < ANSWERED[1])


def arm_stats(
    engine: Engine, window: Window, versions: Iterable[str], *, clicks_until: datetime | None = None
) -> dict[str, ArmStats]:
    """Requests, server errors, clicked impressions and latencies per version in the window."""
    wanted = [str(v) for v in versions]
    in_window = _requests_in(window, request_log.c.model_version.in_(wanted))
    with engine.connect() as conn:
        rows = conn.execute(
            select(request_log.c.model_version, request_log.c.status, request_log.c.latency_ms).where(in_window)
        ).all()
        clicked = dict(conn.execute(_clicked_by_version(in_window, clicks_until)).all())
    requests: dict[str, int] = dict.fromkeys(wanted, 0)
    errors: dict[str, int] = dict.fromkeys(wanted, 0)
    declined: dict[str, int] = dict.fromkeys(wanted, 0)
    latencies: dict[str, list[float]] = {v: [] for v in wanted}
    for version, status, latency in rows:
        requests[version] += 1
        if is_server_error(status):
            errors[version] += 1
            continue
        latencies[version].append(float(latency))
        if not is_impression(status):
            declined[version] += 1
    return {
        v: ArmStats(v, requests[v], errors[v], int(clicked.get(v, 0)), tuple(latencies[v]), declined[v])
        for v in wanted
    }


def click_through(
    engine: Engine, version: str, window: Window, *, clicks_until: datetime | None = None
) -> ClickThrough:
    """Impressions and clicked impressions of one version in the window, counted in the database."""
    in_window = _requests_in(window, request_log.c.model_version == str(version))
    with engine.connect() as conn:
        impressions = conn.execute(
            select(func.count()).select_from(request_log).where(in_window, impression())
        ).scalar()
        clicks = conn.execute(_clicked_by_version(in_window, clicks_until)).all()
    return ClickThrough(impressions=int(impressions or 0), clicks=sum(int(n) for _, n in clicks))


def queries(engine: Engine, window: Window) -> list[str]:
    """The text of every unpinned search in the window, oldest first (blank ones left out)."""
    stmt = (
        select(request_log.c.query)
        .where(_requests_in(window), request_log.c.query.is_not(None))
        .order_by(request_log.c.at)
    )
    with engine.connect() as conn:
        return [q for q in conn.execute(stmt).scalars() if q and q.strip()]


def shadow_stats(engine: Engine, window: Window, version: str) -> ShadowStats:
    """The shadow copies of ``version`` in the window, each paired with its live request."""
    version = str(version)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                shadow_log.c.request_id, shadow_log.c.live_top_ids, shadow_log.c.shadow_top_ids,
                shadow_log.c.latency_ms, shadow_log.c.error,
            ).where(
                shadow_log.c.shadow_version == version,
                shadow_log.c.at >= window.start,
                shadow_log.c.at < window.end,
            ).order_by(shadow_log.c.id)
        ).all()
        live = _live_answers(conn, [r.request_id for r in rows])
    live_ids: list[tuple[str, ...]] = []
    shadow_ids: list[tuple[str, ...] | None] = []
    shadow_ms: list[float] = []
    live_ms: list[float] = []
    errors = live_errors = 0
    for row in rows:
        failed = row.error is not None or row.shadow_top_ids is None
        errors += failed
        live_ids.append(tuple(row.live_top_ids or ()))
        shadow_ids.append(None if failed else tuple(row.shadow_top_ids))
        if not failed and row.latency_ms is not None:
            shadow_ms.append(float(row.latency_ms))
        status_latency = live.get(row.request_id)
        if status_latency is not None:
            status, latency = status_latency
            if is_server_error(status):
                live_errors += 1
            else:
                live_ms.append(latency)
    return ShadowStats(
        version=version, copies=len(rows), errors=errors,
        live_top_ids=tuple(live_ids), shadow_top_ids=tuple(shadow_ids),
        shadow_latencies_ms=tuple(shadow_ms), live_latencies_ms=tuple(live_ms),
        live_requests=len(live), live_errors=live_errors,
    )


@dataclass(frozen=True)
class UserDay:
    """One user's impressions on one UTC day in one arm: the holdback's unit of click-through."""

    day: date
    user_id: str
    model_version: str
    holdback: bool
    impressions: int
    clicked: bool


def user_days(engine: Engine, window: Window, *, clicks_until: datetime | None = None) -> list[UserDay]:
    """Every (UTC day, user, version, holdback flag) with impressions in the window, unpinned.

    A user-day is clicked when any of its impressions got a click (up to
    ``clicks_until``): a user who searched five times that day counts once. Requests
    without a user id are left out (they cannot be counted per user). Rows are read in
    pages and folded as they come, so memory follows user-days, not requests.
    """
    on_click = [feedback_log.c.request_id == request_log.c.request_id, feedback_log.c.event == "click"]
    if clicks_until is not None:
        on_click.append(feedback_log.c.at <= utc(clicks_until))
    stmt = select(
        request_log.c.at, request_log.c.user_id, request_log.c.model_version, request_log.c.holdback,
        select(feedback_log.c.id).where(*on_click).exists().label("clicked"),
    ).where(
        request_log.c.at >= window.start, request_log.c.at < window.end, unpinned(), impression(),
        request_log.c.user_id.is_not(None),
    )
    folded: dict[tuple[date, str, str, bool], list[int]] = {}
    with engine.connect() as conn:
        for at, user, version, held, clicked in conn.execution_options(yield_per=CHUNK).execute(stmt):
            key = (utc(at).date(), user, version, bool(held))
            unit = folded.setdefault(key, [0, 0])
            unit[0] += 1
            unit[1] |= bool(clicked)
    return [UserDay(day, user, version, held, n, bool(c)) for (day, user, version, held), (n, c) in sorted(folded.items())]


# --- internals --------------------------------------------------------------------------------


def _requests_in(window: Window, *more: ColumnElement[bool]) -> ColumnElement[bool]:
    """The counted (unpinned, not holdback) request-log rows of the window (and ``more`` conditions)."""
    return and_(request_log.c.at >= window.start, request_log.c.at < window.end, counted(), *more)


def _clicked_by_version(in_window: ColumnElement[bool], clicks_until: datetime | None) -> Any:
    """(version, impressions with at least one click) for the requests ``in_window`` selects."""
    on_click = [feedback_log.c.request_id == request_log.c.request_id, feedback_log.c.event == "click"]
    if clicks_until is not None:
        on_click.append(feedback_log.c.at <= utc(clicks_until))
    return (
        select(request_log.c.model_version, func.count(distinct(request_log.c.request_id)))
        .select_from(request_log.join(feedback_log, and_(*on_click)))
        .where(in_window, impression())
        .group_by(request_log.c.model_version)
    )


def _live_answers(conn: Any, request_ids: Sequence[str]) -> dict[str, tuple[int, float]]:
    """(status, latency) of the unpinned live requests among ``request_ids``."""
    live: dict[str, tuple[int, float]] = {}
    for chunk in _chunks(request_ids, CHUNK):
        live.update(
            (rid, (int(status), float(latency)))
            for rid, status, latency in conn.execute(
                select(request_log.c.request_id, request_log.c.status, request_log.c.latency_ms).where(
                    request_log.c.request_id.in_(chunk), counted()
                )
            )
        )
    return live


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
