"""How long a load will take, before it starts: the model's speed measured on a sample, projected.

``lockstep index plan`` embeds a sample of the records (after a warm-up call that is not
counted: the first call of a model pays for lazy set-up) with the version's model, in
the build's own batches and threads, and projects the load from that rate: the time for
1, 2 and N worker processes, the index size on disk and the build's peak memory.

The projection is linear in the cores the workers use (processes x threads, never more
than the cores): measured for TF-IDF at 1M records on 2 cores (docs/benchmarks.md, two
workers 1.01x the raw model) and an upper bound for a transformer, whose threads scale
less than linearly (MiniLM int8: 1 thread ~14 texts/s, 2 threads ~20/s). The rate that
was measured is reported beside each projection, so the reader sees what is measured and
what is projected.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Sequence
from typing import Any

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.index.embed_settings import (
    FAST,
    apply_threads,
    batch_size_for,
    threads_per_worker,
    usable_cores,
)
from lockstep.index.snapshot import DEFAULT_TARGET_SHARDS, shard_size_for
from lockstep.index.vector_index import choose_spec
from lockstep.model.contract import embed_cost

DEFAULT_SAMPLE = 128  # texts timed: a few seconds for a transformer at ~20 texts/s, milliseconds for TF-IDF
WARMUP = 8  # texts of the untimed first call
MAX_SAMPLE = 10_000
ID_BYTES = 12  # a record id's share of the ids file beyond its characters (quotes, comma, label)


def measure_rate(embedder: Any, texts: Sequence[str], *, batch_size: int, warmup: int = WARMUP,
                 monotonic: Callable[[], float] = clock.monotonic) -> float:
    """Texts per second of ``embedder`` on ``texts`` in batches of ``batch_size``.

    The first ``warmup`` texts go to an untimed first call (a model's first call pays for
    lazy set-up); the rest are timed (all of them, when there are no more than ``warmup``).
    """
    if not texts:
        raise LockstepError("no texts to time the model on: the record store is empty (lockstep corpus load --demo)")
    timed = list(texts[warmup:]) if len(texts) > warmup else list(texts)
    if warmup > 0:
        embedder.transform(list(texts[:warmup]))
    start = monotonic()
    for i in range(0, len(timed), batch_size):
        embedder.transform(timed[i : i + batch_size])
    seconds = monotonic() - start
    if seconds <= 0:
        raise LockstepError(f"{len(timed)} texts embedded in no measurable time: time a larger sample (--sample)")
    return len(timed) / seconds


def estimate_load(
    embedder: Any,
    sample: Sequence[str],  # the warm-up texts first (``WARMUP``), then the timed ones
    n_records: int,
    *,
    workers: Sequence[int] | None = None,
    id_chars: float = 16.0,
    target_shards: int = DEFAULT_TARGET_SHARDS,
    cores: int | None = None,
    monotonic: Callable[[], float] = clock.monotonic,
) -> dict[str, Any]:
    """The measured rate of ``embedder`` on ``sample`` and the projected load of ``n_records`` for each worker count.

    The sample is embedded as one worker of the build would (its batch size, every core
    as its threads for a slow model, one thread for a fast one). ``id_chars``: the
    average record id's length, for the ids file.
    """
    if n_records < 0:
        raise LockstepError(f"the record count must not be negative, got {n_records}")
    cores = cores or usable_cores()
    workers = sorted({int(w) for w in (workers or (1, 2, cores))})
    if workers[0] < 1:
        raise LockstepError(f"worker counts must be at least 1, got {workers[0]}")
    cost = embed_cost(embedder)
    batch = batch_size_for(embedder)
    measured_threads = 1 if cost == FAST else threads_per_worker(1, cores=cores)
    apply_threads(embedder, measured_threads)
    rss_before = _peak_rss()
    rate = measure_rate(embedder, sample, batch_size=batch, monotonic=monotonic)
    model_bytes = max(_peak_rss() - rss_before, 0)
    dim = int(embedder.dim_)
    spec = choose_spec(n_records, dim)
    shard_size = shard_size_for(n_records, target_shards)
    index_bytes = _index_bytes(n_records, dim, spec.kind, spec.hnsw_m, id_chars)
    return {
        "records": n_records, "sample_texts": max(len(sample) - WARMUP, 0) or len(sample), "cost": cost, "batch_size": batch, "dim": dim,
        "cores": cores, "measured": {"texts_per_second": round(rate, 2), "threads": measured_threads},
        "workers": [_projection(n_records, rate, measured_threads, w, cost, cores) for w in workers],
        "index_type": spec.kind, "index_bytes": index_bytes, "shard_size": shard_size,
        "shards": max(1, -(-n_records // shard_size)),
        "peak_memory_bytes": _peak_memory(index_bytes, shard_size, dim, batch, model_bytes),
        "projection": "linear in the cores the workers use (processes x threads <= cores); measured once on the sample",
    }


def _projection(n: int, rate: float, measured_threads: int, workers: int, cost: str, cores: int) -> dict[str, Any]:
    threads = 1 if cost == FAST else threads_per_worker(workers, cores=cores)
    used = min(cores, workers * threads)
    projected = rate * used / measured_threads
    return {"workers": workers, "threads_per_worker": threads, "cores_used": used,
            "texts_per_second": round(projected, 2), "seconds": round(n / projected, 1)}


def _index_bytes(n: int, dim: int, kind: str, hnsw_m: int, id_chars: float) -> int:
    """The index on disk: the vectors (float32), HNSW's links (~2M neighbours a vector) or ivfpq's codes
    (dim/8 bytes a vector), and the ids file."""
    vectors = n * dim * 4
    graph = n * hnsw_m * 2 * 4 if kind == "hnsw" else n * (dim // 8) if kind == "ivfpq" else 0
    return int(vectors + graph + n * (id_chars + ID_BYTES))


def _peak_memory(index_bytes: int, shard_size: int, dim: int, batch: int, model_bytes: int) -> int:
    """The build's peak: the merged index plus one shard's vectors (the merge), plus the model and one batch."""
    return int(index_bytes + shard_size * dim * 4 + model_bytes + batch * dim * 4)


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sample_texts(store: Any, size: int = DEFAULT_SAMPLE) -> tuple[list[str], float]:
    """The first ``size`` texts of the store's snapshot after ``WARMUP`` more for the warm-up call, and the ids' average length."""
    if not 1 <= size <= MAX_SAMPLE:
        raise LockstepError(f"the sample must be 1 to {MAX_SAMPLE} texts, got {size}")
    with store.stream_snapshot(size + WARMUP) as stream:
        chunk = next(iter(stream.chunks), None)
    if chunk is None or not chunk.texts:
        raise LockstepError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    ids = chunk.ids
    return list(chunk.texts), sum(map(len, ids)) / len(ids)
