"""The lift chart as a plain SVG string: one point per day, its interval as a bar.

For the Lockstep page in Airflow (which embeds it as it is, like the traffic chart of
``lockstep.ops.dashboard``) and the MLflow run's artifacts. The x axis is days (a day
without user-days is a gap), the y axis is the lift in percent with a line at 0 (the
champion no better than the holdback); each day's point is coloured by its champion
version and the label says which one.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from lockstep.holdback.report import DayLift, LiftReport
from lockstep.store.routing import version_key

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def lift_chart_svg(report: LiftReport, *, title: str = "Lift of the champion over the holdback", width: int = 900,
                   height: int = 260) -> str:
    """The report's daily lift with its interval; a short message when no day has a lift yet."""
    days = [d for d in report.days if d.lift is not None]
    if not days:
        reason = "no holdback set" if report.holdback is None else "no day with clicks in both arms yet"
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="lockstep-chart" width="{width}" height="60" '
            f'role="img" aria-label="{_attr(title)}: {reason}">'
            f'<text x="8" y="34" font-size="13" fill="#666">{_text(title)}: {reason}.</text></svg>'
        )
    left, right, top, bottom = 56, 16, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = _y_range(days)
    first = days[0].day
    span = max(1, (days[-1].day - first).days + 1)

    def x(day_lift: DayLift) -> float:
        return round(left + plot_w * ((day_lift.day - first).days + 0.5) / span, 1)

    def y(value: float) -> float:
        return round(top + plot_h * (hi - value) / (hi - lo), 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lockstep-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_attr(title)}">',
        f"<title>{_text(title)}</title>",
        '<g class="grid" stroke="#e3e3e3" stroke-width="1" font-size="11" fill="#555" text-anchor="end">',
    ]
    for tick in _ticks(lo, hi):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick)}" y2="{y(tick)}"/>')
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4}" stroke="none">{tick * 100:+.0f}%</text>')
    out.append("</g>")
    out.append(f'<line class="zero" x1="{left}" x2="{width - right}" y1="{y(0)}" y2="{y(0)}" stroke="#333" stroke-width="1.2"/>')
    label_every = max(1, round(len(days) / 10))
    out.append('<g class="x-axis" font-size="10" fill="#555" text-anchor="middle">')
    for i, d in enumerate(days):
        if i % label_every == 0 or i == len(days) - 1:
            out.append(f'<text x="{x(d)}" y="{height - bottom + 16}">{d.day.strftime("%m-%d")}</text>')
    out.append("</g>")
    versions = sorted({d.champion_version or "?" for d in days}, key=version_key)
    for d in days:
        colour = _colour(d.champion_version or "?", versions)
        tip = (f"{d.day.isoformat()}: champion v{d.champion_version} lift {d.lift * 100:+.1f}%"
               + (f" ({report.confidence:.0%} CI {d.low * 100:+.1f}% to {d.high * 100:+.1f}%)" if d.low is not None else "")
               + f"; CTR {d.ctr_champion:.3f} ({d.champion_user_days} user-days) vs holdback {d.ctr_holdback:.3f}"
               + f" ({d.holdback_user_days})" + (" - today, partial" if d.partial else ""))
        if d.low is not None and d.high is not None:
            out.append(f'<line class="interval" x1="{x(d)}" x2="{x(d)}" y1="{y(max(d.low, lo))}" y2="{y(min(d.high, hi))}" '
                       f'stroke="{colour}" stroke-width="2" opacity="0.45"/>')
        fill = "#fff" if d.partial else colour
        out.append(f'<circle class="lift" data-day="{d.day.isoformat()}" data-lift="{d.lift:.6f}" cx="{x(d)}" '
                   f'cy="{y(min(max(d.lift, lo), hi))}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="1.5">'
                   f"<title>{_text(tip)}</title></circle>")
    out.append('<g class="legend" font-size="12">')
    legend_x = left
    for version in versions:
        out.append(f'<rect x="{legend_x}" y="8" width="12" height="12" fill="{_colour(version, versions)}"/>')
        out.append(f'<text x="{legend_x + 16}" y="18" fill="#333">champion v{_text(version)}</text>')
        legend_x += 36 + 7 * len(f"champion v{version}")
    out.append("</g></svg>")
    return "".join(out)


def _y_range(days: Sequence[DayLift]) -> tuple[float, float]:
    """A range holding 0 and every point and interval, capped at -100 % .. +200 %."""
    values = [0.0] + [v for d in days for v in (d.lift, d.low, d.high) if v is not None]
    lo, hi = max(-1.0, min(values)), min(2.0, max(values))
    pad = max(0.02, (hi - lo) * 0.08)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float) -> list[float]:
    step = next(s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0) if (hi - lo) / s <= 8)
    first = int(lo / step) * step
    return [round(first + i * step, 4) for i in range(20) if lo <= first + i * step <= hi]


def _colour(version: str, versions: Sequence[str]) -> str:
    return PALETTE[versions.index(version) % len(PALETTE)]


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)
