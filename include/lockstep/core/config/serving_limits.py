"""The serving replica's limits (``ServingLimits``; used by lockstep.serving.limits and .runner)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lockstep.core.config.environment import environment
from lockstep.core.config.values import count_setting, seconds_setting

DEFAULT_SERVING_MAX_CONCURRENCY = 64  # requests one replica works on at once; more get 503
DEFAULT_SERVING_REQUEST_TIMEOUT = 10.0  # seconds before a request not yet answered gets 504
DEFAULT_SERVING_GRACEFUL_TIMEOUT = 20.0  # seconds in-flight requests get after SIGTERM (compose waits 30)
DEFAULT_SERVING_FEEDBACK_WAITING = 16  # clicks that may wait at once for another replica's log


@dataclass(frozen=True)
class ServingLimits:
    """How much one serving replica takes on, and how long it gives a request or a shutdown.

    Without them a flood queued without bound (each waiting request holding memory and a
    socket), a stuck request was never answered, and a replica told to stop waited for its
    connections until Docker killed it, losing the request log rows still in its buffer.
    """

    max_concurrency: int = DEFAULT_SERVING_MAX_CONCURRENCY  # LOCKSTEP_SERVING_MAX_CONCURRENCY
    request_timeout: float = DEFAULT_SERVING_REQUEST_TIMEOUT  # LOCKSTEP_SERVING_REQUEST_TIMEOUT_S; 0: none
    graceful_timeout: float = DEFAULT_SERVING_GRACEFUL_TIMEOUT  # LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S
    feedback_waiting: int = DEFAULT_SERVING_FEEDBACK_WAITING  # LOCKSTEP_SERVING_FEEDBACK_WAITING; 0: none

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingLimits:
        env = dict(environment() if env is None else env)
        return cls(
            max_concurrency=count_setting(env, "LOCKSTEP_SERVING_MAX_CONCURRENCY", DEFAULT_SERVING_MAX_CONCURRENCY, least=1),
            request_timeout=seconds_setting(env, "LOCKSTEP_SERVING_REQUEST_TIMEOUT_S", DEFAULT_SERVING_REQUEST_TIMEOUT),
            graceful_timeout=seconds_setting(env, "LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S", DEFAULT_SERVING_GRACEFUL_TIMEOUT),
            feedback_waiting=count_setting(env, "LOCKSTEP_SERVING_FEEDBACK_WAITING", DEFAULT_SERVING_FEEDBACK_WAITING, least=0),
        )
