"""The Lockstep page as server-rendered HTML (Jinja2, autoescaped, no JavaScript)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from lockstep.ops.dashboard import Dashboard

TEMPLATES = Path(__file__).resolve().parent / "templates"


def render_page(dashboard: Dashboard | None, *, error: str | None = None, user: str | None = None) -> str:
    """The whole page; ``dashboard`` is None when the Lockstep database could not be read."""
    return _env().get_template("lockstep.html").render(d=dashboard, error=error, user=user)


def fmt_number(value: Any) -> str:
    """Figures at a glance: 4 significant digits, integers as integers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer() and abs(value) < 1e12):
        return f"{int(value):,}"
    return f"{value:.4g}"


def fmt_time(value: datetime | str | None) -> str:
    """UTC times in one format; ISO strings (the alert log's) are parsed first."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_number
    env.filters["time"] = fmt_time
    env.filters["svg"] = Markup  # the charts are built from escaped parts in lockstep.ops.dashboard
    return env
