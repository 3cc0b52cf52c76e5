"""The whole re-embed in one process (``lockstep index build``): the plan's steps in order.

The steps and their order are ``lockstep.index.plan``'s, the same the DAG runs, early
verdict included when a first slice is asked for. Shards are embedded by a pool of
worker processes (``LOCKSTEP_REEMBED_WORKERS``) at a lower CPU priority, so serving
replicas and writers on the same machine keep their share. A fast model (TF-IDF) gets a
process per core; a slow one (a transformer with its own thread pool) one process with
every core as its threads, never more processes x threads than the cores
(``embed_settings``). Progress is told per batch (``progress``), read from the load's
files (``load_progress``) when worker processes embed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockstep.core.config import REEMBED_WORKERS_ENV, embedding_processes
from lockstep.core.config.embedding import reembed_workers_asked
from lockstep.index import plan as reembed_plan
from lockstep.index.embed_settings import (
    FAST,
    apply_threads,
    slow_workers,
    threads_per_worker,
)
from lockstep.index.first_slice import DEFAULT_ACTION, DEFAULT_MARGIN
from lockstep.index.load_progress import load_status, progress_listener
from lockstep.index.snapshot import DEFAULT_TARGET_SHARDS
from lockstep.index.steps import embed
from lockstep.index.vector_index import IndexSpec
from lockstep.model.contract import embed_cost
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
    early_verdict_share: float | None = None,
    early_verdict_action: str = DEFAULT_ACTION,
    early_verdict_margin: float = DEFAULT_MARGIN,
    allow_rejected: bool = False,
) -> dict[str, Any]:
    """Every step of the re-embed plan in a row, sharing one loaded model.

    ``spec`` None: the index type follows the record count (``vector_index.choose_spec``:
    exact below ``LOCKSTEP_ANN_THRESHOLD``, HNSW above).

    Shards are embedded by ``workers`` processes (default ``default_workers``: this one
    process); the merged index is validated in memory rather than reloaded from the
    files just written.

    ``early_verdict_share`` (``lockstep index build`` passes the DAG's default): that
    share of the records, a uniform sample, is embedded first and judged against the
    champion (``early_verdict_action``/``early_verdict_margin`` as in the DAG); a verdict
    ``stop`` ends the build with the load stopped. None: no early verdict.
    """
    clock = _Stopwatch()
    shards = _ShardPool(workers, progress)
    options = reembed_plan.BuildOptions(
        spec=spec, shard_size=shard_size, target_shards=target_shards, promote_if_first=promote_if_first,
        sample_size=sample_size, min_recall=min_recall, early_verdict_share=early_verdict_share,
        early_verdict_action=early_verdict_action, early_verdict_margin=early_verdict_margin,
        allow_rejected=allow_rejected,  # a version its offline evaluation rejected is refused otherwise
    )
    build = reembed_plan.run(reembed_plan.Build(store, registry, version, options, shards), done=clock.lap)
    snap = build.snap
    if build.stopped is not None:
        return {**build.stopped, "early_verdict": build.verdict, "snapshot_seq": snap["seq"], "seconds": clock.laps}
    embedded = [*build.first, *build.rest]
    return {
        **build.published,
        "snapshot_seq": snap["seq"],
        "shards": len(embedded),
        "shard_size": snap["shard_size"],
        "workers": shards.workers,
        "threads_per_worker": shards.threads,
        "reused_shards": sum(s["skipped"] for s in embedded),
        "merged_applied_seq": build.manifest.applied_seq if build.manifest else None,
        "validation": build.checked["figures"],
        "early_verdict": build.verdict,
        "seconds": clock.laps,
    }


@dataclass
class _ShardPool:
    """How this process embeds a step's shards: in a row, or by ``workers`` processes.

    ``workers`` None: ``default_workers`` for the snapshot, chosen at the first step that embeds.
    """

    workers: int | None
    progress: Callable[[int], None] | None
    threads: int | None = None

    def __call__(self, build: reembed_plan.Build, shards: list[int]) -> list[dict[str, Any]]:
        snap = build.snap
        if self.workers is None:
            self.workers = default_workers(snap["records"], len(snap["shards"]), cost=embed_cost(build.embedder))
        self.workers = max(1, self.workers)
        if self.threads is None:
            self.threads = threads_per_worker(self.workers)
            apply_threads(build.embedder, self.threads)
        if not shards:
            return []  # no first slice: no pool started for nothing
        return _embed_all(build.plan, snap, shards, build.embedder, self.workers, self.progress, self.threads)


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


def default_workers(n_records: int, n_shards: int, *, cost: str = FAST) -> int:
    """Embedding processes for the in-process build: every core, unless ``LOCKSTEP_REEMBED_WORKERS`` says otherwise.

    That is for a fast model (``cost`` "fast": TF-IDF, one thread each). A slow model
    (a transformer, whose runtime has its own thread pool) gets one process with every
    core as its threads unless ``LOCKSTEP_REEMBED_WORKERS`` or ``LOCKSTEP_EMBED_THREADS``
    asks otherwise, and never more processes x threads than the cores
    (``embed_settings.slow_workers``).

    Measured at 1M records on the 2-core machine once it was quiet (docs/benchmarks.md,
    "Scale: 1M records"): two workers embed in 19.7 s where one process takes 41.6 s, so
    the build runs at 1.01x the raw model's single-process speed instead of 0.61x. On a
    machine whose cores are busy with serving, set the variable to 1 (the workers also run
    niced, so serving keeps its share either way). Small builds stay in one process:
    starting workers costs more than it saves.
    """
    if cost != FAST:
        return slow_workers(reembed_workers_asked(), n_shards)
    wanted = embedding_processes()
    if wanted <= 1 or n_records < PARALLEL_MIN_RECORDS or n_shards < 2:
        return 1
    return min(wanted, n_shards)


def _embed_all(plan: dict[str, Any], snap: dict[str, Any], shards: list[int], embedder, workers: int,
               progress: Callable[[int], None] | None, threads: int = 1) -> list[dict[str, Any]]:
    """Embed these shards, in this process or in ``workers`` spawned processes (each loads the local model copy).

    In this process, each batch tells ``progress`` its records; with workers, this
    process reads the load's files every ``WATCH_S`` seconds and tells it what is new.
    """
    results: list[dict[str, Any]] = []
    if workers <= 1:
        with progress_listener(progress):
            for shard in shards:
                results.append(embed(plan, snap, shard, embedder))
        return results
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_all_start_methods, get_context

    watch = _LoadWatcher(plan["location"], progress)
    method = "fork" if "fork" in get_all_start_methods() else "spawn"  # fork: workers inherit the loaded model
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method), initializer=_worker_start,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(embed, plan, snap, shard) for shard in shards}
        while pending:
            finished, pending = wait(pending, timeout=WATCH_S, return_when=FIRST_COMPLETED)
            results.extend(future.result() for future in finished)
            watch.tell()
    watch.tell()
    return sorted(results, key=lambda r: r["shard"])


WATCH_S = 1.0  # how often the build reads its workers' progress files for the progress bar


class _LoadWatcher:
    """Tells a progress callback the records the load's workers did since it last looked."""

    def __init__(self, location: str, progress: Callable[[int], None] | None) -> None:
        self.location = location
        self.progress = progress
        self.told = self._done()

    def _done(self) -> int:
        status = load_status(self.location) if self.progress is not None else None
        return status["done"] if status else 0

    def tell(self) -> None:
        if self.progress is None:
            return
        done = self._done()
        if done > self.told:
            self.progress(done - self.told)
            self.told = done


def _worker_start(threads: int) -> None:
    """An embedding worker: a lower CPU priority, and its share of the cores as the model's threads."""
    from lockstep.index.slot_plan import cached_embedders

    _lower_priority()
    for embedder in cached_embedders():  # inherited from the parent by fork
        apply_threads(embedder, threads)


def _lower_priority() -> None:
    """Run an embedding worker at a lower CPU priority: a bulk re-embed is background work."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
