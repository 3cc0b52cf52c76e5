"""The whole re-embed in one process (``lockstep index build``): the DAG's steps in order.

Shards are embedded by a pool of worker processes (``LOCKSTEP_REEMBED_WORKERS``) at a
lower CPU priority, so serving replicas and writers on the same machine keep their share.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from lockstep.core.config import REEMBED_WORKERS_ENV, embedding_processes
from lockstep.index.snapshot import DEFAULT_TARGET_SHARDS
from lockstep.index.steps import (
    SlotPlan,
    embed,
    load_embedder,
    merge_and_save,
    prepare,
    publish,
    snapshot,
    validate_and_save,
)
from lockstep.index.vector_index import IndexSpec
from lockstep.store.records import RecordStore


def reembed_version(
    store: RecordStore,
    registry,
    version: str | int,
    *,
    spec: IndexSpec | None = None,
    shard_size: int | None = None,
    target_shards: int = DEFAULT_TARGET_SHARDS,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    promote_if_first: bool = True,
    sample_size: int = 200,
    min_recall: float = 0.95,
) -> dict[str, Any]:
    """Every step of the re-embed DAG in a row, sharing one loaded model.

    ``spec`` None: the index type follows the record count (``vector_index.choose_spec``:
    exact below ``LOCKSTEP_ANN_THRESHOLD``, HNSW above).

    Shards are embedded by ``workers`` processes (default ``default_workers``: this one
    process); the merged index is validated in memory rather than reloaded from the
    files just written.
    """
    clock = _Stopwatch()
    plan = prepare(version, registry)
    p = SlotPlan(**plan)
    embedder = load_embedder(p)  # the local copy prepare just wrote: no second download
    clock.lap("prepare")
    snap = snapshot(plan, shard_size, store, target_shards=target_shards)
    clock.lap("snapshot")
    workers = default_workers(snap["records"], len(snap["shards"])) if workers is None else max(1, workers)
    shards = _embed_all(plan, snap, embedder, workers, progress)
    clock.lap("embed")
    index, manifest = merge_and_save(p, snap, shards, spec.to_dict() if spec else None, store, embedder)
    clock.lap("merge")
    checked = validate_and_save(
        p, index, manifest.applied_seq, store, embedder, sample_size=sample_size, min_recall=min_recall
    )
    del index
    clock.lap("validate")
    published = publish(plan, promote_if_first, registry)
    clock.lap("publish")
    return {
        **published,
        "snapshot_seq": snap["seq"],
        "shards": len(shards),
        "shard_size": snap["shard_size"],
        "workers": workers,
        "reused_shards": sum(s["skipped"] for s in shards),
        "merged_applied_seq": manifest.applied_seq,
        "validation": checked["figures"],
        "seconds": clock.laps,
    }


class _Stopwatch:
    """Seconds per step of a build, for the outcome (where the time of a large build goes)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


PARALLEL_MIN_RECORDS = 50_000  # below this, starting worker processes costs more than it saves
WORKERS_ENV = REEMBED_WORKERS_ENV
WORKER_NICE = 10  # embedding workers yield the CPU to serving replicas and writers on the same machine


def default_workers(n_records: int, n_shards: int) -> int:
    """Embedding processes for the in-process build: every core, unless ``LOCKSTEP_REEMBED_WORKERS`` says otherwise.

    Measured at 1M records on the 2-core machine once it was quiet (docs/benchmarks.md,
    "Scale: 1M records"): two workers embed in 19.7 s where one process takes 41.6 s, so
    the build runs at 1.01x the raw model's single-process speed instead of 0.61x. On a
    machine whose cores are busy with serving, set the variable to 1 (the workers also run
    niced, so serving keeps its share either way). Small builds stay in one process:
    starting workers costs more than it saves.
    """
    wanted = embedding_processes()
    if wanted <= 1 or n_records < PARALLEL_MIN_RECORDS or n_shards < 2:
        return 1
    return min(wanted, n_shards)


def _embed_all(plan: dict[str, Any], snap: dict[str, Any], embedder, workers: int,
               progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """Embed every shard, in this process or in ``workers`` spawned processes (each loads the local model copy)."""
    results: list[dict[str, Any]] = []
    if workers <= 1:
        for shard in snap["shards"]:
            results.append(embed(plan, snap, shard, embedder))
            if progress is not None:
                progress(results[-1]["count"])
        return results
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_all_start_methods, get_context

    method = "fork" if "fork" in get_all_start_methods() else "spawn"  # fork: workers inherit the loaded model
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method), initializer=_lower_priority) as pool:
        futures = [pool.submit(embed, plan, snap, shard) for shard in snap["shards"]]
        for future in as_completed(futures):
            results.append(future.result())
            if progress is not None:
                progress(results[-1]["count"])
    return sorted(results, key=lambda r: r["shard"])


def _lower_priority() -> None:
    """Run an embedding worker at a lower CPU priority: a bulk re-embed is background work."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
