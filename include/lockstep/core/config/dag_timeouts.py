"""DAG time limits (used by lockstep.ops.dag_support): defaults per DAG, overridden by one variable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lockstep.core.config.environment import environment

DAG_TIMEOUTS_ENV = "LOCKSTEP_DAG_TIMEOUTS"
_MINUTE, _HOUR = 60.0, 3600.0
# Per DAG: (the longest one task may run, the longest a whole run may take), in seconds, so
# that a hung MLflow, database or broker call fails its task (and alerts) instead of holding a
# worker slot for ever. Generous on 2 cores; the hourly DAGs' runs end before the next hour's.
DEFAULT_DAG_TIMEOUTS: dict[str, tuple[float, float]] = {
    "lockstep_retrain": (2 * _HOUR, 6 * _HOUR),  # weekly: a training of its own per family
    "lockstep_reembed": (2 * _HOUR, 12 * _HOUR),  # one shard or the index build at a time; many shards
    "lockstep_drift": (30 * _MINUTE, 1 * _HOUR),  # hourly
    "lockstep_batch": (1 * _HOUR, 2 * _HOUR),  # hourly at :30, or a promotion
    "lockstep_holdback": (30 * _MINUTE, 2 * _HOUR),  # daily
    "lockstep_maintenance": (1 * _HOUR, 3 * _HOUR),  # daily
    "lockstep_rollback": (15 * _MINUTE, 1 * _HOUR),  # a rollback with its drain and verification
    "lockstep_rollout": (30 * _MINUTE, 7 * 24 * _HOUR),  # one look at a time; review <= 24 h + strategy + window
}
_TIMEOUT_KEYS = ("task", "run")


@dataclass(frozen=True)
class DagTimeouts:
    """One DAG's limits in seconds: ``task`` for each task's ``execution_timeout``, ``run`` for ``dagrun_timeout``."""

    task: float
    run: float


def dag_timeouts(dag_id: str, env: Mapping[str, str] | None = None) -> DagTimeouts:
    """``dag_id``'s limits: ``DEFAULT_DAG_TIMEOUTS``, overridden by ``LOCKSTEP_DAG_TIMEOUTS``.

    The variable is a JSON object of DAG ids to ``{"task": SECONDS, "run": SECONDS}`` (either
    key may be left out), e.g. ``{"lockstep_retrain": {"task": 14400}}``. Read where a DAG
    file is parsed, so set it in the dag-processor's environment. A DAG id, key or value
    that is wrong fails the parse with a message naming it.
    """
    overrides = _timeout_overrides(environment() if env is None else env)
    task, run = DEFAULT_DAG_TIMEOUTS[dag_id]
    own = overrides.get(dag_id, {})
    limits = DagTimeouts(task=own.get("task", task), run=own.get("run", run))
    if limits.task > limits.run:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id}'s task limit ({limits.task:g} s) is longer than "
                                 f"its run limit ({limits.run:g} s); raise 'run' too")
    return limits


def _timeout_overrides(env: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``LOCKSTEP_DAG_TIMEOUTS`` checked: known DAG ids, keys ``task``/``run``, seconds above 0."""
    import json
    import math

    from lockstep.core.errors import ConfigurationError

    raw = (env.get(DAG_TIMEOUTS_ENV) or "").strip()
    if not raw:
        return {}
    example = '{"lockstep_retrain": {"task": 7200, "run": 21600}}'
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{DAG_TIMEOUTS_ENV} is not JSON ({exc}); e.g. {example}") from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"{DAG_TIMEOUTS_ENV} must be a JSON object of DAG ids, e.g. {example}")
    out: dict[str, dict[str, float]] = {}
    for dag_id, limits in parsed.items():
        if dag_id not in DEFAULT_DAG_TIMEOUTS:
            raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id!r} is not a Lockstep DAG; "
                                     f"use one of {', '.join(DEFAULT_DAG_TIMEOUTS)}")
        if not isinstance(limits, dict) or not set(limits) <= set(_TIMEOUT_KEYS):
            raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id!r} needs an object with 'task' and/or 'run' "
                                     f"(seconds), got {limits!r}")
        for key, value in limits.items():
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
            if not ok:
                raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id}.{key}={value!r} must be a number of "
                                         "seconds above 0 (a task without a limit can wait for ever)")
        out[dag_id] = {key: float(value) for key, value in limits.items()}
    return out
