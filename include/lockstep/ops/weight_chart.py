"""The weight-over-time chart of the Lockstep page: each version's traffic share after every routing change, as SVG.

Drawn by hand (a few dozen elements) so the page needs no plotting library and no script;
a version keeps its colour in every chart of the page.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from lockstep.store.routing import version_key

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class WeightPoint:
    """The live weights right after one routing change."""

    generation: int
    at: datetime
    weights: dict[str, int]
    shadow: tuple[str, ...]
    reason: str | None
    actor: str | None


def weight_chart_svg(
    points: Sequence[WeightPoint],
    *,
    versions: Sequence[str] | None = None,
    title: str = "Traffic weights",
    width: int = 900,
    height: int = 240,
) -> str:
    """A step chart of each version's traffic share, one column per routing change.

    Columns are changes, not clock time: a rollout alternates long bakes with instant
    moves (a rollback takes a second after an hour of canary), and a time axis would
    squeeze the moves that matter into one pixel. Each column is labelled with its time.
    """
    points = weight_changes(points)
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="lockstep-chart" width="{width}" height="60" '
            f'role="img" aria-label="{escape_attr(title)}: no routing changes yet">'
            f'<text x="8" y="34" font-size="13" fill="#666">No routing changes yet.</text></svg>'
        )
    names = list(versions) if versions else []
    for p in points:
        names.extend(v for v in list(p.weights) + list(p.shadow) if v not in names)
    names = sorted(dict.fromkeys(names), key=version_key)

    left, right, top, bottom = 44, 16, 28, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    step_x = plot_w / len(points)

    def x(i: float) -> float:
        return round(left + i * step_x, 1)

    def y(weight: float) -> float:
        return round(top + plot_h * (1 - weight / 100), 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lockstep-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape_attr(title)}">',
        f"<title>{escape_text(title)}</title>",
        '<g class="grid" stroke="#e3e3e3" stroke-width="1">',
    ]
    for tick in (0, 25, 50, 75, 100):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick)}" y2="{y(tick)}"/>')
    out.append("</g>")
    out.append('<g class="y-axis" font-size="11" fill="#555" text-anchor="end">')
    for tick in (0, 25, 50, 75, 100):
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4}">{tick}%</text>')
    out.append("</g>")

    label_every = max(1, round(len(points) / 8))
    out.append('<g class="x-axis" font-size="10" fill="#555" text-anchor="middle">')
    for i, p in enumerate(points):
        if i % label_every == 0 or i == len(points) - 1:
            out.append(f'<text x="{x(i + 0.5)}" y="{height - bottom + 16}">{escape_text(clock_text(p.at))}</text>')
            out.append(f'<text x="{x(i + 0.5)}" y="{height - bottom + 29}" fill="#999">g{p.generation}</text>')
    out.append("</g>")

    for version in names:
        colour = version_colour(version)
        weights = [p.weights.get(version, 0) for p in points]
        if not any(weights) and not any(version in p.shadow for p in points):
            continue
        path = [f"M{x(0)},{y(weights[0])}"]
        for i in range(len(weights)):
            path.append(f"H{x(i + 1)}")
            if i + 1 < len(weights):
                path.append(f"V{y(weights[i + 1])}")
        out.append(
            f'<path class="series" data-version="{escape_attr(version)}" data-weights="{",".join(map(str, weights))}" '
            f'd="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="2.5"/>'
        )
        for i, (p, w) in enumerate(zip(points, weights, strict=True)):
            shadow = version in p.shadow
            tip = f"version {version}: {w}%{' (shadow)' if shadow else ''} at generation {p.generation}, {clock_text(p.at)}"
            if p.reason:
                tip += f" - {p.reason}"
            fill = "#fff" if shadow else colour
            out.append(
                f'<circle cx="{x(i + 0.5)}" cy="{y(w)}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="1.5">'
                f"<title>{escape_text(tip)}</title></circle>"
            )

    out.append('<g class="legend" font-size="12">')
    legend_x = left
    for version in names:
        colour = version_colour(version)
        out.append(f'<rect x="{legend_x}" y="8" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{legend_x + 16}" y="18" fill="#333">version {escape_text(version)}</text>')
        legend_x += 28 + 7 * len(f"version {version}")
    out.append("</g></svg>")
    return "".join(out)


def version_colour(version: str) -> str:
    """A version keeps its colour in every chart on the page (v2 is not blue here, red there)."""
    if version.isdigit():
        return PALETTE[(int(version) - 1) % len(PALETTE)]
    return PALETTE[int(hashlib.blake2b(version.encode(), digest_size=2).hexdigest(), 16) % len(PALETTE)]


def weight_changes(points: Sequence[WeightPoint]) -> list[WeightPoint]:
    """Only the changes that moved traffic or shadowing (a slot registered moves neither)."""
    kept: list[WeightPoint] = []
    for p in points:
        if not kept or (p.weights, p.shadow) != (kept[-1].weights, kept[-1].shadow):
            kept.append(p)
    return kept


def clock_text(at: datetime) -> str:
    return at.strftime("%m-%d %H:%M:%S")


def escape_text(value: str) -> str:
    return html.escape(value, quote=False)


def escape_attr(value: str) -> str:
    return html.escape(value, quote=True)
