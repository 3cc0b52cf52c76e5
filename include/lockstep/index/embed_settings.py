"""How a bulk re-embed drives its model: texts per call, worker processes and threads per worker.

A model family says what it costs through optional attributes of the ``Embedder``
(``lockstep.model.contract``): ``COST`` ("fast" or "slow", read by ``embed_cost``: a model
that says nothing is slow), ``BATCH_SIZE_HINT`` (texts per call it works best with, read by
``batch_size_hint``) and ``set_threads(n)`` (the threads its runtime may use, called when
present), so any model works.

The rule for processes and threads: a fast built-in family (TF-IDF: single-threaded) runs
one worker process per core (``LOCKSTEP_REEMBED_WORKERS``, ``build.default_workers``); a
slow one (a transformer with its own thread pool) runs one process with every core as its
threads, unless told otherwise, and never more processes x threads than the cores this
process may run on (``os.sched_getaffinity``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from lockstep.core.config.embedding import embed_batch_setting, embed_threads_setting
from lockstep.model.contract import FAST, SLOW, batch_size_hint

FAST_BATCH = 8192  # texts per call of a fast model that names no hint: bounds TF-IDF's sparse matrix in memory

__all__ = ["FAST", "FAST_BATCH", "SLOW", "apply_threads", "batch_size_for", "slow_workers",
           "threads_per_worker", "usable_cores"]


def batch_size_for(embedder: Any, env=None) -> int:
    """Texts per model call: ``LOCKSTEP_EMBED_BATCH`` when above 0, else the model's ``BATCH_SIZE_HINT``."""
    setting = embed_batch_setting(env)
    return setting if setting > 0 else batch_size_hint(embedder)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, env=None, cores: int | None = None) -> int:
    """Threads each of ``workers`` processes gives its model: ``LOCKSTEP_EMBED_THREADS``, else its share of the cores.

    Never more than the cores divided by the workers, so processes x threads stay within
    the cores even when the setting asks for more.
    """
    cores = cores or usable_cores()
    share = max(1, cores // max(1, workers))
    wanted = embed_threads_setting(env)
    return min(wanted, share) if wanted > 0 else share


def slow_workers(wanted: int | None, n_shards: int, env=None, cores: int | None = None) -> int:
    """Worker processes for a slow model: 1 (every core as its threads) unless ``wanted`` says otherwise.

    ``wanted``: ``LOCKSTEP_REEMBED_WORKERS`` when set. With ``LOCKSTEP_EMBED_THREADS`` set,
    at most cores // threads processes; never more processes than cores or shards.
    """
    cores = cores or usable_cores()
    threads = embed_threads_setting(env)
    most = max(1, cores // threads) if threads > 0 else cores
    chosen = wanted if wanted is not None else (most if threads > 0 else 1)
    return max(1, min(chosen, most, max(1, n_shards)))


def apply_threads(embedder: Any, threads: int) -> None:
    """Hand the model its thread count through ``set_threads(n)`` when it has one (a fast family has none)."""
    setter = getattr(embedder, "set_threads", None)
    if callable(setter):
        with contextlib.suppress(NotImplementedError):
            setter(int(threads))
