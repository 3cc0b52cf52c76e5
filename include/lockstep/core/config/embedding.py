"""How a bulk re-embed drives its model: texts per model call and threads per worker process.

``LOCKSTEP_EMBED_BATCH``: texts per model call while a shard is embedded (0 or unset: the
model's own ``batch_size_hint``, else 8192 for a fast built-in family and 32 for a slow
one: a transformer's memory grows with the batch, TF-IDF's per-call cost does not).
``LOCKSTEP_EMBED_THREADS``: threads each embedding worker process gives its model (0 or
unset: the cores divided among the worker processes, so processes x threads never exceed
the cores). ``LOCKSTEP_CHECKPOINT_SECONDS``: how often a shard in progress stores its
vectors (default 10; 0: after every batch), the most work a dead worker loses. Read by
``lockstep.index.embed_settings`` and ``lockstep.index.shards``.
"""

from __future__ import annotations

from collections.abc import Mapping

from lockstep.core.config.environment import environment
from lockstep.core.config.values import count_setting, seconds_setting

EMBED_BATCH_ENV = "LOCKSTEP_EMBED_BATCH"
EMBED_THREADS_ENV = "LOCKSTEP_EMBED_THREADS"
CHECKPOINT_SECONDS_ENV = "LOCKSTEP_CHECKPOINT_SECONDS"
DEFAULT_CHECKPOINT_SECONDS = 10.0
MAX_EMBED_BATCH = 1_000_000
MAX_EMBED_THREADS = 1024


def embed_batch_setting(env: Mapping[str, str] | None = None) -> int:
    """``LOCKSTEP_EMBED_BATCH``: texts per model call; 0 (the default) lets the model family decide."""
    return count_setting(environment() if env is None else env, EMBED_BATCH_ENV, 0, least=0, most=MAX_EMBED_BATCH)


def checkpoint_seconds_setting(env: Mapping[str, str] | None = None) -> float:
    """``LOCKSTEP_CHECKPOINT_SECONDS``: seconds between a shard's checkpoints (0: after every model call)."""
    return seconds_setting(environment() if env is None else env, CHECKPOINT_SECONDS_ENV, DEFAULT_CHECKPOINT_SECONDS)


def embed_threads_setting(env: Mapping[str, str] | None = None) -> int:
    """``LOCKSTEP_EMBED_THREADS``: threads per embedding worker; 0 (the default) divides the cores among the workers."""
    return count_setting(environment() if env is None else env, EMBED_THREADS_ENV, 0, least=0, most=MAX_EMBED_THREADS)


def reembed_workers_asked(env: Mapping[str, str] | None = None) -> int | None:
    """``LOCKSTEP_REEMBED_WORKERS`` when it is set (checked as ``embedding_processes`` checks it), else None.

    A slow model runs one process with every core unless this is set.
    """
    from lockstep.core.config.settings import REEMBED_WORKERS_ENV, embedding_processes

    env = environment() if env is None else env
    return embedding_processes(env) if (env.get(REEMBED_WORKERS_ENV) or "").strip() else None
