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
- Click and error statistics are per user (``ClusterSums``, see ``lockstep.store.log_stats``):
  one query groups the window's requests by version and user (a request without a user
  id is its own cluster), caps each user at ``cap`` units and sums, so no per-request
  row reaches Python for them. Latencies are still read per request, at most
  ``latency_cap`` per user.

Everything here reads; nothing writes (``lockstep.serving.logs`` writes the logs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Float,
    and_,
    case,
    cast,
    distinct,
    false,
    func,
    literal,
    select,
)

from lockstep.core.clock import utc
from lockstep.store.db import in_chunks
from lockstep.store.log_stats import (
    ANSWERED,
    LATENCY_CAP,
    SERVER_ERROR,
    USER_CAP,
    ArmStats,
    ClickThrough,
    ClusterSums,
    ShadowStats,
    Window,
    is_impression,
    is_server_error,
    require_cap,
)
from lockstep.store.schema import feedback_log, request_log, shadow_log

__all__ = [
    "ArmStats", "ClickThrough", "ClusterSums", "ShadowStats", "UserDay", "Window",
    "arm_stats", "click_through", "counted", "impression", "queries", "shadow_stats", "unpinned", "user_days",
    "user_sums",
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
    engine: Engine, window: Window, versions: Iterable[str], *, clicks_until: datetime | None = None,
    cap: int | None = USER_CAP, latency_cap: int | None = LATENCY_CAP,
) -> dict[str, ArmStats]:
    """Requests, server errors, clicked impressions, latencies and per-user sums per version in the window.

    ``cap`` caps each user's impressions (and requests) in the per-user sums; ``latency_cap``
    keeps at most that many latencies per user (the first, by time), so no single client
    dominates the latency test. None means no cap.
    """
    require_cap("cap", cap)
    require_cap("latency_cap", latency_cap)
    wanted = [str(v) for v in versions]
    in_window = _requests_in(window, request_log.c.model_version.in_(wanted))
    with engine.connect() as conn:
        rows = conn.execute(
            select(request_log.c.model_version, request_log.c.status, request_log.c.latency_ms, _unit())
            .where(in_window).order_by(request_log.c.at, request_log.c.request_id)
        ).all()
        clicked = dict(conn.execute(_clicked_by_version(in_window, clicks_until)).all())
        sums = _user_sums(conn, in_window, clicks_until, cap)
    requests: dict[str, int] = dict.fromkeys(wanted, 0)
    errors: dict[str, int] = dict.fromkeys(wanted, 0)
    declined: dict[str, int] = dict.fromkeys(wanted, 0)
    latencies: dict[str, list[float]] = {v: [] for v in wanted}
    per_unit: dict[tuple[str, str], int] = {}
    for version, status, latency, unit in rows:
        requests[version] += 1
        if is_server_error(status):
            errors[version] += 1
            continue
        seen = per_unit.get((version, unit), 0)
        if latency_cap is None or seen < latency_cap:
            latencies[version].append(float(latency))
            per_unit[(version, unit)] = seen + 1
        if not is_impression(status):
            declined[version] += 1
    empty = (ClusterSums(), ClusterSums())
    return {
        v: ArmStats(v, requests[v], errors[v], int(clicked.get(v, 0)), tuple(latencies[v]), declined[v],
                    *sums.get(v, empty))
        for v in wanted
    }


def user_sums(
    engine: Engine, window: Window, versions: Iterable[str], *, clicks_until: datetime | None = None,
    cap: int | None = USER_CAP,
) -> dict[str, tuple[ClusterSums, ClusterSums]]:
    """Per version: the per-user sums of (clicked, impressions) and of (errors, requests), in one query."""
    require_cap("cap", cap)
    wanted = [str(v) for v in versions]
    with engine.connect() as conn:
        sums = _user_sums(conn, _requests_in(window, request_log.c.model_version.in_(wanted)), clicks_until, cap)
    empty = (ClusterSums(), ClusterSums())
    return {v: sums.get(v, empty) for v in wanted}


def click_through(
    engine: Engine, version: str, window: Window, *, clicks_until: datetime | None = None,
    cap: int | None = USER_CAP,
) -> ClickThrough:
    """Impressions and clicked impressions of one version in the window, with their per-user sums."""
    require_cap("cap", cap)
    in_window = _requests_in(window, request_log.c.model_version == str(version))
    with engine.connect() as conn:
        impressions = conn.execute(
            select(func.count()).select_from(request_log).where(in_window, impression())
        ).scalar()
        clicks = conn.execute(_clicked_by_version(in_window, clicks_until)).all()
        sums = _user_sums(conn, in_window, clicks_until, cap)
    clusters = sums.get(str(version), (ClusterSums(), ClusterSums()))[0]
    return ClickThrough(impressions=int(impressions or 0), clicks=sum(int(n) for _, n in clicks), clusters=clusters)


def queries(engine: Engine, window: Window) -> list[str]:
    """The text of every unpinned search in the window, oldest first (blank ones left out)."""
    stmt = (
        select(request_log.c.query)
        .where(_requests_in(window), request_log.c.query.is_not(None))
        .order_by(request_log.c.at)
    )
    with engine.connect() as conn:
        return [q for q in conn.execute(stmt).scalars() if q and q.strip()]


def recent_queries(engine: Engine, limit: int) -> list[str]:
    """Up to ``limit`` distinct query texts of the newest unpinned searches (validation's logged queries).

    Added for issue 26: an index is validated on the queries its users send, when the
    request log has some. An empty or missing log gives none.
    """
    from sqlalchemy import func, inspect

    if limit < 1 or not inspect(engine).has_table(request_log.name):
        return []
    newest = func.max(request_log.c.at)
    stmt = (
        select(request_log.c.query)
        .where(unpinned(), request_log.c.query.is_not(None))
        .group_by(request_log.c.query)
        .order_by(newest.desc())
        .limit(limit)
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


def _unit() -> ColumnElement[str]:
    """The cluster of a request: its user, or the request itself when it has no user id.

    The prefixes keep a user id that happens to equal some request id apart from it.
    """
    return func.coalesce(literal("u:") + request_log.c.user_id, literal("r:") + request_log.c.request_id).label("unit")


def _user_sums(
    conn: Any, in_window: ColumnElement[bool], clicks_until: datetime | None, cap: int | None
) -> dict[str, tuple[ClusterSums, ClusterSums]]:
    """(clicks, impressions) and (errors, requests) sums over users, per version: ONE query.

    The inner queries flag each request and fold them per (version, user); the outer one
    caps each user and sums per version, so the database returns a row per version, not
    per request. (The user key is computed once, in the innermost query, so PostgreSQL
    sees one grouping expression.)
    """
    on_click = [feedback_log.c.request_id == request_log.c.request_id, feedback_log.c.event == "click"]
    if clicks_until is not None:
        on_click.append(feedback_log.c.at <= utc(clicks_until))
    was_clicked = select(feedback_log.c.id).where(*on_click).exists()
    answered = impression()
    per_request = (
        select(
            request_log.c.model_version.label("version"),
            _unit(),
            case((answered, 1), else_=0).label("n"),
            case((and_(answered, was_clicked), 1), else_=0).label("x"),
            case((request_log.c.status >= SERVER_ERROR, 1), else_=0).label("e"),
        )
        .where(in_window)
        .subquery()
    )
    per_user = (
        select(
            per_request.c.version, per_request.c.unit,
            func.sum(per_request.c.n).label("n"), func.sum(per_request.c.x).label("x"),
            func.count().label("r"), func.sum(per_request.c.e).label("e"),
        )
        .group_by(per_request.c.version, per_request.c.unit)
        .subquery()
    )
    columns = [*_capped_sums(per_user.c.x, per_user.c.n, cap, "c"), *_capped_sums(per_user.c.e, per_user.c.r, cap, "e")]
    stmt = select(per_user.c.version, *columns).group_by(per_user.c.version)
    result: dict[str, tuple[ClusterSums, ClusterSums]] = {}
    for row in conn.execute(stmt):
        values = [0 if v is None else v for v in row[1:]]
        result[str(row[0])] = (_sums(values[:9]), _sums(values[9:]))
    return result


def _capped_sums(x: Any, n: Any, cap: int | None, prefix: str) -> list[Any]:
    """The nine ``ClusterSums`` aggregates of per-user (x, n), each user capped at ``cap`` trials."""
    x_float = cast(x, Float)
    if cap is None:
        n_c, x_c, cut = cast(n, Float), x_float, literal(0)
    else:
        n_c = case((n > cap, cast(literal(cap), Float)), else_=cast(n, Float))
        x_c = case((n > cap, x_float * cap / cast(n, Float)), else_=x_float)
        cut = case((n > cap, 1), else_=0)
    return [
        func.sum(case((n > 0, 1), else_=0)).label(f"{prefix}_k"),
        func.sum(x_c).label(f"{prefix}_x"), func.sum(n_c).label(f"{prefix}_n"),
        func.sum(x_c * x_c).label(f"{prefix}_xx"), func.sum(n_c * n_c).label(f"{prefix}_nn"),
        func.sum(x_c * n_c).label(f"{prefix}_xn"),
        func.sum(x).label(f"{prefix}_raw_x"), func.sum(n).label(f"{prefix}_raw_n"), func.sum(cut).label(f"{prefix}_cut"),
    ]


def _sums(values: Sequence[Any]) -> ClusterSums:
    """A ClusterSums from the nine aggregates (drivers return int, float or Decimal)."""
    k, x, n, xx, nn, xn, raw_x, raw_n, cut = values
    return ClusterSums(int(k), float(x), float(n), float(xx), float(nn), float(xn), int(raw_x), int(raw_n), int(cut))


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
    for chunk in in_chunks(request_ids, CHUNK):
        live.update(
            (rid, (int(status), float(latency)))
            for rid, status, latency in conn.execute(
                select(request_log.c.request_id, request_log.c.status, request_log.c.latency_ms).where(
                    request_log.c.request_id.in_(chunk), counted()
                )
            )
        )
    return live
