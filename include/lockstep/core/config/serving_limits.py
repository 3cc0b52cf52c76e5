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
DEFAULT_WRITE_ACK = "auto"  # applied when every loaded model is fast, else durable (issue 24)
WRITE_ACK_MODES = ("auto", "applied", "durable")
DEFAULT_WRITE_APPLY_TIMEOUT = 10.0  # seconds a write (or a search's min seq) waits for the slots to apply it
DEFAULT_SLOW_SLOT_THREADS = 1  # threads of a slow version's own pool (its searches and query embeds)
DEFAULT_SLOW_SLOT_QUEUE = 32  # queries that may wait for a slow version's pool; one more gets 503


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
    write_ack: str = DEFAULT_WRITE_ACK  # LOCKSTEP_WRITE_ACK: auto | applied | durable
    write_apply_timeout: float = DEFAULT_WRITE_APPLY_TIMEOUT  # LOCKSTEP_WRITE_APPLY_TIMEOUT
    slow_slot_threads: int = DEFAULT_SLOW_SLOT_THREADS  # LOCKSTEP_SLOW_SLOT_THREADS
    slow_slot_queue: int = DEFAULT_SLOW_SLOT_QUEUE  # LOCKSTEP_SLOW_SLOT_QUEUE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingLimits:
        env = dict(environment() if env is None else env)
        return cls(
            max_concurrency=count_setting(env, "LOCKSTEP_SERVING_MAX_CONCURRENCY", DEFAULT_SERVING_MAX_CONCURRENCY, least=1),
            request_timeout=seconds_setting(env, "LOCKSTEP_SERVING_REQUEST_TIMEOUT_S", DEFAULT_SERVING_REQUEST_TIMEOUT),
            graceful_timeout=seconds_setting(env, "LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S", DEFAULT_SERVING_GRACEFUL_TIMEOUT),
            feedback_waiting=count_setting(env, "LOCKSTEP_SERVING_FEEDBACK_WAITING", DEFAULT_SERVING_FEEDBACK_WAITING, least=0),
            write_ack=write_ack_setting(env),
            write_apply_timeout=seconds_setting(env, "LOCKSTEP_WRITE_APPLY_TIMEOUT", DEFAULT_WRITE_APPLY_TIMEOUT),
            slow_slot_threads=count_setting(env, "LOCKSTEP_SLOW_SLOT_THREADS", DEFAULT_SLOW_SLOT_THREADS, least=1, most=64),
            slow_slot_queue=count_setting(env, "LOCKSTEP_SLOW_SLOT_QUEUE", DEFAULT_SLOW_SLOT_QUEUE, least=0),
        )


def write_ack_setting(env: Mapping[str, str]) -> str:
    """``LOCKSTEP_WRITE_ACK``: when a record write is answered (empty: ``auto``)."""
    raw = (env.get("LOCKSTEP_WRITE_ACK") or "").strip().lower()
    if not raw:
        return DEFAULT_WRITE_ACK
    if raw not in WRITE_ACK_MODES:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"LOCKSTEP_WRITE_ACK={raw!r} is not one of {', '.join(WRITE_ACK_MODES)}")
    return raw
