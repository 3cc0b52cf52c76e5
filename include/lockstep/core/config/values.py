"""Parsing one setting's value: seconds and whole numbers, a bad one named in the error."""

from __future__ import annotations

from collections.abc import Mapping


def seconds_setting(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration in seconds from ``env[name]`` (empty: ``default``); 0 means no limit."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds (0 or more; 0 turns the limit off)")
    return value


def count_setting(env: Mapping[str, str], name: str, default: int, *, least: int, most: int | None = None) -> int:
    """A whole number from ``env[name]`` (empty: ``default``), at least ``least`` and at most ``most``.

    Bounded where a value could do harm (tries of a failing alert channel hold the task
    that alerts).
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < least or (most is not None and int(raw) > most):
        from lockstep.core.errors import ConfigurationError

        bounds = f", at least {least}" if most is None else f" from {least} to {most}"
        raise ConfigurationError(f"{name}={raw!r} must be a whole number{bounds}")
    return int(raw)
