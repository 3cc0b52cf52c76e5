"""Lockstep's systems, search and recommender, behind one protocol (``System``).

``current()`` is the only reader of the system setting (``LOCKSTEP_SYSTEM``, through
``lockstep.core.config``): the DAGs, the CLI and the serving app's factory ask it for the
system and then call the system's parts, so no pipeline compares a system's name.
"""

from __future__ import annotations

from lockstep.core.config import SYSTEMS, Settings, settings
from lockstep.core.errors import ConfigurationError
from lockstep.systems.protocol import Probe, System
from lockstep.systems.recommender import RecommenderSystem
from lockstep.systems.search import SearchSystem

_SYSTEMS: dict[str, System] = {s.name: s for s in (SearchSystem(), RecommenderSystem())}
assert tuple(_SYSTEMS) == SYSTEMS, "every name in core.config.SYSTEMS has a System here"


def by_name(name: str) -> System:
    """The system called ``name``; ConfigurationError naming the systems there are."""
    try:
        return _SYSTEMS[name]
    except KeyError:
        raise ConfigurationError(f"{name!r} is not a system; use one of: {', '.join(SYSTEMS)}") from None


def current(config: Settings | None = None) -> System:
    """The system this deployment runs (``LOCKSTEP_SYSTEM``, default search)."""
    return by_name((config or settings()).system)


def create_app(deployment: Settings | None = None, **options):
    """The serving app of the current system (uvicorn's factory; ``options`` as ``lockstep.serving.create_app``)."""
    from lockstep.serving.app import create_app as serving_app

    deployment = deployment or Settings.from_env()
    return serving_app(deployment, parts=current(deployment).serving_parts(), **options)


def load_dashboard(engine=None, **options):
    """The Lockstep page's data for the current system (``lockstep.ops.dashboard.load_dashboard``)."""
    from lockstep.ops.dashboard import load_dashboard as load

    return load(engine, system=current(), **options)


__all__ = ["Probe", "RecommenderSystem", "SearchSystem", "System", "by_name", "create_app", "current", "load_dashboard"]
