"""The process environment, and the readers of the settings that are one variable each.

This module (with the rest of ``lockstep.core.config``) is the only place that reads the
environment (``tests/core/test_environment_reads.py`` fails on a read anywhere else), so
every variable Lockstep understands is named here or beside its settings class. Each
reader takes ``env`` (default: the process environment, read when called) so a test can
hand it a plain dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

Env = Mapping[str, str]

API_TOKEN_ENV = "LOCKSTEP_API_TOKEN"
TRACKING_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"  # MLflow's own login variable
SCHEDULES_ENV = "LOCKSTEP_SCHEDULES"
SERVING_URLS_ENV = "LOCKSTEP_SERVING_URLS"
DEFAULT_SERVING_URLS = "http://127.0.0.1:8000"  # the embedded stack's one replica
ROLLOUT_DEFAULTS_ENV = "LOCKSTEP_ROLLOUT_DEFAULTS"
CACHE_DIR_ENV = "LOCKSTEP_CACHE_DIR"
SERVING_WORKERS_ENV = "LOCKSTEP_SERVING_WORKERS"
ANN_THRESHOLD_ENV = "LOCKSTEP_ANN_THRESHOLD"
BUILD_BUDGET_ENV = "LOCKSTEP_INDEX_BUILD_BUDGET"
FAULTS_ENV = "LOCKSTEP_FAULTS"


def environment() -> Env:
    """The process environment as it is now (``os.environ``, read-only by convention).

    For readers that take a whole mapping (``Settings.from_env``, ``RetentionSettings``)
    and for a child process's environment (``lockstep.ops.stack``).
    """
    return os.environ


def _env(env: Env | None) -> Env:
    return os.environ if env is None else env


def api_token(env: Env | None = None) -> str | None:
    """``LOCKSTEP_API_TOKEN``: the serving API's bearer token (None: unset or empty)."""
    return _env(env).get(API_TOKEN_ENV) or None


def tracking_username(env: Env | None = None) -> str | None:
    """``MLFLOW_TRACKING_USERNAME``: the MLflow login, the default name of a reviewer."""
    return _env(env).get(TRACKING_USERNAME_ENV) or None


def schedules_on(env: Env | None = None) -> bool:
    """False when ``LOCKSTEP_SCHEDULES=off``; ``on`` (the default) or ``off``, anything else is an error."""
    setting = _env(env).get(SCHEDULES_ENV, "on").strip().lower()
    if setting not in ("on", "off"):
        raise ValueError(f"LOCKSTEP_SCHEDULES must be 'on' or 'off', got {setting!r}")
    return setting == "on"


def serving_urls(env: Env | None = None) -> str:
    """``LOCKSTEP_SERVING_URLS``: every serving replica, comma-separated; else the embedded stack's one."""
    return _env(env).get(SERVING_URLS_ENV, "").strip() or DEFAULT_SERVING_URLS


def rollout_defaults_json(env: Env | None = None) -> str | None:
    """``LOCKSTEP_ROLLOUT_DEFAULTS`` as given (a JSON object of RolloutConfig fields), None when unset."""
    return _env(env).get(ROLLOUT_DEFAULTS_ENV)


def cache_dir_override(env: Env | None = None) -> str | None:
    """``LOCKSTEP_CACHE_DIR``: a download cache shared between homes (None: ``$LOCKSTEP_HOME/cache``)."""
    return _env(env).get(CACHE_DIR_ENV) or None


def serving_workers(env: Env | None = None) -> int:
    """``LOCKSTEP_SERVING_WORKERS``: uvicorn worker processes of one serving replica (default 1)."""
    raw = _env(env).get(SERVING_WORKERS_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{SERVING_WORKERS_ENV}={raw!r} must be a whole number of processes, at least 1")
    return int(raw)


def ann_threshold_setting(default: int, env: Env | None = None) -> int:
    """``LOCKSTEP_ANN_THRESHOLD``: records from which an approximate index is chosen (``_`` allowed: 200_000)."""
    raw = _env(env).get(ANN_THRESHOLD_ENV, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{ANN_THRESHOLD_ENV}={raw!r} must be a whole number of records (e.g. 200000)")
    return value


def build_budget_setting(default: float, env: Env | None = None) -> float:
    """``LOCKSTEP_INDEX_BUILD_BUDGET``: seconds the ``auto`` index may take to build (``index.frontier``); 0: no limit."""
    from lockstep.core.config.values import seconds_setting

    value = seconds_setting(_env(env), BUILD_BUDGET_ENV, default)
    return value if value > 0 else float("inf")


def faults_spec(env: Env | None = None) -> str | None:
    """``LOCKSTEP_FAULTS``: the fault points to fire (``lockstep.core.faults``); None when unset."""
    return _env(env).get(FAULTS_ENV)
