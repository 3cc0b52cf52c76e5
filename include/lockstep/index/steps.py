"""Re-embedding every record into a new index version while live writes keep flowing.

The order is what makes it safe (issue: no write lost, no delete resurrected):

1. ``prepare_slot``: the new slot is registered in state ``loading`` *before* the
   snapshot. Every write from then on is in the change log, which is the slot's feed.
2. ``snapshot``: all live records as of sequence S, streamed in one read transaction
   into a parquet file with one row group per shard (shard size from the record count).
3. ``embed`` for each shard (the DAG maps over shards): reads only its row group,
   embeds in batches straight into a partial index, reused on retry when its key
   (fingerprint, S, ids and texts) matches. Cost grows with records, not shards x records.
4. ``merge``: add the partial indexes one at a time (never two full copies), then
   apply every change after S in order; the last change of each record wins, so a
   delete after S stays deleted.
5. ``validate_built_index``: ids equal the store's at the applied sequence, stored
   vectors equal fresh embeddings of current text (sample), recall@10 against exact
   search for approximate types, fingerprint equals the registered model's.
6. ``publish``: save (atomic manifest), mark the slot ``ready``, tag the MLflow version.

A failure anywhere leaves the slot in ``loading`` (never ``ready``), with the reason
in its note; a rerun starts over and reuses the finished shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core.errors import LockstepError
from lockstep.index.storage import (
    Manifest,
    build_shard_columns,
    catch_up,
    clear_shards,
    index_location,
    merge_shards,
    save_index,
    update_manifest,
)
from lockstep.index.vector_index import IndexSpec, VectorIndex, choose_spec, measure_recall
from lockstep.store.records import RecordStore, SnapshotChunk


class IndexValidationError(LockstepError):
    """A built index does not hold exactly what the record store holds."""


@dataclass(frozen=True)
class SlotPlan:
    model_name: str
    model_version: str
    model_uri: str
    fingerprint: str
    location: str


@dataclass(frozen=True)
class IndexValidation:
    ok: bool
    checks: dict[str, bool]
    figures: dict[str, float]
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def plan_slot(registry, version: str | int) -> SlotPlan:
    """Resolve a model version in the registry (a clear error if it does not exist)."""
    info = registry.get_version(version)
    return SlotPlan(
        model_name=registry.model_name,
        model_version=str(info.version),
        model_uri=f"models:/{registry.model_name}/{info.version}",
        fingerprint=info.fingerprint,
        location=str(index_location(registry.model_name, info.version)),
    )


# --- shard size ----------------------------------------------------------------------------------

DEFAULT_TARGET_SHARDS = 16  # Airflow costs ~3 s per task: tens of shards at 1M records, not hundreds
MIN_SHARD_SIZE = 5_000
MAX_SHARD_SIZE = 250_000  # bounds one embed task's memory (vectors and the TF-IDF of one batch)


def shard_size_for(
    n_records: int,
    target_shards: int = DEFAULT_TARGET_SHARDS,
    *,
    min_size: int = MIN_SHARD_SIZE,
    max_size: int = MAX_SHARD_SIZE,
) -> int:
    """Records per shard so a snapshot of ``n_records`` splits into about ``target_shards`` shards.

    Clamped so a small store is not split into tasks that cost more to schedule than to
    run, and a huge one gets more shards rather than shards too large for one task.
    """
    if target_shards < 1:
        raise LockstepError(f"target shard count must be at least 1, got {target_shards}")
    return max(min_size, min(max_size, -(-max(n_records, 1) // target_shards)))


# --- steps (each is one task of lockstep_reembed; JSON in, JSON out) ---------------------------


def prepare_requested(requested: str | None, asset_extra: dict[str, Any] | None, registry=None, engine=None) -> dict[str, Any]:
    """``prepare`` for the version a DAG run asks for (Param, asset event, else alias challenger)."""
    from lockstep.model.registry import Registry, requested_version

    registry = registry or Registry()
    return prepare(requested_version(requested, asset_extra, registry, purpose="index"), registry, engine)


def prepare(version: str | int, registry=None, engine=None) -> dict[str, Any]:
    """Register the slot as a write target (state ``loading``) before any snapshot."""
    from lockstep.model.registry import Registry
    from lockstep.store import routing

    registry = registry or Registry()
    plan = plan_slot(registry, version)
    routing.register_slot(
        plan.model_version, plan.model_uri, plan.location, plan.fingerprint, state="loading", engine=engine
    )
    # One download from the registry; every shard task then loads this local copy.
    registry.load_embedder(plan.model_version).save(_model_file(plan))
    return asdict(plan)


def snapshot(
    plan: dict[str, Any],
    shard_size: int | None = None,
    store: RecordStore | None = None,
    *,
    target_shards: int = DEFAULT_TARGET_SHARDS,
) -> dict[str, Any]:
    """Snapshot at sequence S into a parquet file beside the shards: one row group per shard.

    The store is streamed (never a list of every record), and each shard task later
    reads only its own row group. ``shard_size`` None: chosen from the record count.
    """
    store = store or RecordStore()
    size = shard_size or shard_size_for(store.count(), target_shards)
    shards_dir = Path(plan["location"]) / "shards"
    counts, seq = write_snapshot(store, shards_dir, size)
    return {
        "seq": seq,
        "records": sum(counts),
        "shards": list(range(len(counts))),
        "shard_size": size,
        "file": _snapshot_name(seq, size),
    }


def embed(plan: dict[str, Any], snap: dict[str, Any], shard: int, embedder=None) -> dict[str, Any]:
    """Embed one shard (its row group of the snapshot only) into a partial index."""
    from lockstep.core.faults import maybe_fail

    p = SlotPlan(**plan)
    embedder = embedder or _load_embedder(p)
    chunk = read_snapshot_shard(_snapshot_path(p, snap), shard)
    result = build_shard_columns(
        embedder,
        chunk.ids,
        chunk.texts,
        shard,
        Path(p.location) / "shards",
        fingerprint=p.fingerprint,
        snapshot_seq=snap["seq"],
    )
    maybe_fail("reembed.embed", shard)  # after the output exists: a retry must reuse, not duplicate
    return asdict(result)


def merge(plan: dict[str, Any], snap: dict[str, Any], shards: list[dict[str, Any]], spec: dict[str, Any] | None = None,
          store: RecordStore | None = None, embedder=None) -> dict[str, Any]:
    """Merge the partial indexes, catch up every change after S, save (slot stays ``loading``)."""
    p = SlotPlan(**plan)
    _, manifest = _merge_and_save(p, snap, shards, spec, store or RecordStore(), embedder or _load_embedder(p))
    return {"applied_seq": manifest.applied_seq, "records": manifest.record_count, "index_sha256": manifest.index_sha256}


def validate(plan: dict[str, Any], *, sample_size: int = 200, min_recall: float = 0.95,
             store: RecordStore | None = None, embedder=None, engine=None) -> dict[str, Any]:
    """Load the saved index (checksums verified), catch up to the head, check it, save again."""
    from lockstep.index.storage import load_index

    p = SlotPlan(**plan)
    loaded = load_index(p.location, expected_fingerprint=p.fingerprint, model_label=f"{p.model_name} v{p.model_version}")
    return _validate_and_save(
        p, loaded.index, loaded.applied_seq, store or RecordStore(), embedder or _load_embedder(p),
        sample_size=sample_size, min_recall=min_recall, engine=engine,
    )


def publish(plan: dict[str, Any], promote_if_first: bool = True, registry=None, engine=None) -> dict[str, Any]:
    """Mark the slot ready, tag the MLflow version, and make a first model the champion."""
    from lockstep.index.storage import read_manifest
    from lockstep.model.registry import Registry
    from lockstep.store import routing

    p = SlotPlan(**plan)
    registry = registry or Registry()
    manifest = read_manifest(p.location)
    clear_shards(p.location)
    routing.set_state(p.model_version, "ready", note=f"index built: {manifest.record_count} records", engine=engine)
    registry.set_tags(
        p.model_version,
        {
            "lockstep.index_location": p.location,
            "lockstep.index_type": manifest.index_type,
            "lockstep.index_sha256": manifest.index_sha256,
            "lockstep.index_records": manifest.record_count,
            "lockstep.index_applied_seq": manifest.applied_seq,
        },
    )
    became = False
    if promote_if_first and registry.version_for_alias("champion") is None:
        routing.set_weights({p.model_version: 100}, reason="first champion", actor="lockstep", engine=engine)
        registry.promote_champion(p.model_version, reason="first valid model with a built index")
        became = True
    return {
        "model_version": p.model_version,
        "fingerprint": p.fingerprint,
        "index_location": p.location,
        "records": manifest.record_count,
        "applied_seq": manifest.applied_seq,
        "became_champion": became,
    }


def resolve_spec(spec: dict[str, Any] | None, n_records: int, dim: int) -> IndexSpec:
    """The index spec of a build: as given, or (None, or kind "auto") chosen from the record count."""
    spec = dict(spec or {})
    if spec.get("kind", "auto") == "auto":
        return choose_spec(n_records, dim)
    return IndexSpec.from_dict(spec)


def _merge_and_save(
    p: SlotPlan, snap: dict[str, Any], shards: list[dict[str, Any]], spec: dict[str, Any] | None,
    store: RecordStore, embedder,
) -> tuple[VectorIndex, Manifest]:
    expected = set(snap["shards"])
    got = {s["shard"] for s in shards}
    if got != expected:
        raise LockstepError(f"shards missing from the merge: {sorted(expected - got)}")
    index = merge_shards([s["path"] for s in shards], resolve_spec(spec, snap["records"], embedder.dim_))
    applied = catch_up(index, embedder, store, snap["seq"])
    manifest = save_index(
        index, p.location, model_name=p.model_name, model_version=p.model_version,
        fingerprint=p.fingerprint, applied_seq=max(applied, snap["seq"]),
    )
    return index, manifest


def _validate_and_save(
    p: SlotPlan, index: VectorIndex, applied_seq: int, store: RecordStore, embedder, *,
    sample_size: int, min_recall: float, engine=None,
) -> dict[str, Any]:
    """Validate an index against the store; save it if catch-up changed it, else only its manifest."""
    from lockstep.store import routing

    result, applied = validate_built_index(
        index, applied_seq, embedder, store,
        expected_fingerprint=p.fingerprint, sample_size=sample_size, min_recall=min_recall,
    )
    if not result.ok:
        note = "validation failed: " + "; ".join(result.problems)
        routing.set_state(p.model_version, "loading", note=note[:2000], engine=engine)
        raise IndexValidationError(f"index of {p.model_name} v{p.model_version} failed validation: " + "; ".join(result.problems))
    extra = {"validation": result.figures}
    if applied != applied_seq:
        save_index(
            index, p.location, model_name=p.model_name, model_version=p.model_version,
            fingerprint=p.fingerprint, applied_seq=applied, extra=extra,
        )
    else:
        update_manifest(p.location, extra=extra)
    return {"ok": True, "applied_seq": applied, "figures": result.figures, "checks": result.checks}


# --- validation ------------------------------------------------------------------------------


def validate_built_index(
    index: VectorIndex,
    applied_seq: int,
    embedder,
    store: RecordStore,
    *,
    expected_fingerprint: str,
    sample_size: int = 200,
    min_recall: float = 0.95,
    seed: int = 0,
    chunk_size: int = 20_000,
) -> tuple[IndexValidation, int]:
    """Check the index against the record store; catches up to the store's head first.

    The store's ids are streamed once (then the texts of a seeded sample), inside one read
    transaction whose sequence is what the index is caught up to, so both sides are
    compared at the same state however long the check takes and whatever is written
    meanwhile. Returns the validation and the sequence the index now reflects.
    """
    checks: dict[str, bool] = {}
    figures: dict[str, float] = {}
    problems: list[str] = []
    checks["fingerprint"] = embedder.fingerprint == expected_fingerprint
    if not checks["fingerprint"]:
        problems.append(f"model fingerprint {embedder.fingerprint} differs from the registered {expected_fingerprint}")
    with store.stream_snapshot(chunk_size, texts=False) as truth:
        applied_seq = max(applied_seq, catch_up(index, embedder, store, applied_seq, until=truth.seq))
        seen = _compare_ids(index, truth.chunks, _sample_rows(len(index), sample_size, seed))
        texts = truth.texts_of(seen.sample_ids)
    extra = len(index) - seen.matched
    figures.update(record_count=float(len(index)), store_count=float(seen.store_count))
    checks["record_count"] = len(index) == seen.store_count
    checks["id_set"] = not seen.missing and extra == 0
    if not checks["id_set"]:
        problems.append(
            f"id sets differ: {seen.missing} records missing from the index (e.g. {seen.missing_examples}), "
            f"{extra} extra (e.g. {_extra_examples(index, store) if extra else []})"
        )
    if seen.sample_ids:
        fresh = embedder.transform([texts[i] for i in seen.sample_ids])
        max_diff = float(np.abs(index.vectors_of(seen.sample_ids) - fresh).max())
        figures["sample_max_abs_diff"] = max_diff
        checks["sample_vectors"] = max_diff < 1e-4
        if not checks["sample_vectors"]:
            problems.append(f"stored vectors differ from fresh embeddings of current text by up to {max_diff:.3g}")
        if index.spec.kind != "flat":
            recall = measure_recall(index, fresh, k=10)
            figures["recall_at_10"] = recall
            checks["recall_at_10"] = recall >= min_recall
            if not checks["recall_at_10"]:
                problems.append(f"recall@10 against exact search is {recall:.3f}, below {min_recall}")
    return IndexValidation(ok=all(checks.values()), checks=checks, figures=figures, problems=problems), applied_seq


@dataclass
class _IdComparison:
    store_count: int = 0
    matched: int = 0
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)


def _compare_ids(index: VectorIndex, chunks: Iterator[SnapshotChunk], sample_rows: np.ndarray) -> _IdComparison:
    """One pass over the store's ids: which the index lacks, and which of the sampled rows it has."""
    out = _IdComparison()
    wanted = iter(sample_rows.tolist())
    next_row = next(wanted, None)
    for chunk in chunks:
        for rid in chunk.ids:
            present = rid in index
            if present:
                out.matched += 1
            else:
                out.missing += 1
                if len(out.missing_examples) < 3:
                    out.missing_examples.append(rid)
            if next_row == out.store_count:
                if present:
                    out.sample_ids.append(rid)
                next_row = next(wanted, None)
            out.store_count += 1
    return out


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample of ``size`` out of about ``n`` rows."""
    if n <= 0 or size <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(size, n), replace=False))


def _extra_examples(index: VectorIndex, store: RecordStore, limit: int = 3) -> list[str]:
    """A few indexed ids the store no longer has (only computed when validation already failed)."""
    found: list[str] = []
    ids = index.ids
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        live = store.get_many(chunk)
        found.extend(i for i in chunk if i not in live)
        if len(found) >= limit:
            break
    return sorted(found)[:limit]


# --- the whole path in one process (lockstep index build) -------------------------------------


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
    embedder = _load_embedder(p)  # the local copy prepare just wrote: no second download
    clock.lap("prepare")
    snap = snapshot(plan, shard_size, store, target_shards=target_shards)
    clock.lap("snapshot")
    workers = default_workers(snap["records"], len(snap["shards"])) if workers is None else max(1, workers)
    shards = _embed_all(plan, snap, embedder, workers, progress)
    clock.lap("embed")
    index, manifest = _merge_and_save(p, snap, shards, spec.to_dict() if spec else None, store, embedder)
    clock.lap("merge")
    checked = _validate_and_save(
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
WORKERS_ENV = "LOCKSTEP_REEMBED_WORKERS"
WORKER_NICE = 10  # embedding workers yield the CPU to serving replicas and writers on the same machine


def default_workers(n_records: int, n_shards: int) -> int:
    """Embedding processes for the in-process build: one unless ``LOCKSTEP_REEMBED_WORKERS`` says more.

    Measured on the 2-core machine (docs/benchmarks.md, "Scale: 1M records"): with the
    cores shared, two worker processes embedded slower than one (4.3 s against 2.7 s for
    80k records), and one process runs at the raw model's speed. On a machine with idle
    cores set the variable (e.g. to the core count); scaling out goes through the DAG's
    mapped shards on more Airflow workers.
    """
    wanted = int(os.environ.get(WORKERS_ENV, "1") or 1)
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


# --- the snapshot file: one parquet row group per shard ----------------------------------------


def write_snapshot(store: RecordStore, shards_dir: str | Path, shard_size: int) -> tuple[list[int], int]:
    """Stream the store's live records into ``snapshot-<seq>-<shard_size>.parquet``, a row group per shard.

    Returns the row count of each shard and the snapshot's sequence. A file already
    written for the same sequence and shard size (a retried task) is reused. Memory
    holds one shard's ids and texts at a time.
    """
    import pyarrow.parquet as pq

    with store.stream_snapshot(shard_size) as stream:
        path = Path(shards_dir) / _snapshot_name(stream.seq, shard_size)
        if path.exists():
            meta = pq.ParquetFile(path).metadata
            counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        else:
            counts = _write_row_groups(path, stream.chunks)
    if not counts:
        raise LockstepError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    return counts, stream.seq


def read_snapshot_shard(path: str | Path, shard: int) -> SnapshotChunk:
    """The ids and texts of one shard: only its row group is read from the file."""
    import pyarrow.parquet as pq

    with _open_snapshot(Path(path)) as fh:
        parquet = pq.ParquetFile(fh)
        if not 0 <= shard < parquet.num_row_groups:
            raise LockstepError(f"shard {shard} does not exist: snapshot {path} has {parquet.num_row_groups} shards")
        table = parquet.read_row_group(shard, columns=["id", "text"])
    return SnapshotChunk(table.column("id").to_pylist(), table.column("text").to_pylist())


def _write_row_groups(path: Path, chunks: Iterator[SnapshotChunk]) -> list[int]:
    """Each chunk becomes one row group; the file appears only when complete (atomic rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lockstep.core.atomic import atomic_path

    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    counts: list[int] = []
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, use_dictionary=False, compression="snappy")
        try:
            for chunk in chunks:
                table = pa.table({"id": chunk.ids, "text": chunk.texts}, schema=schema)
                writer.write_table(table, row_group_size=max(len(chunk), 1))
                counts.append(len(chunk))
        finally:
            writer.close()
        if not counts:
            raise LockstepError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    return counts


def _open_snapshot(path: Path):
    """The snapshot file opened for reading (a seam: tests count the bytes a shard reads)."""
    try:
        return open(path, "rb")  # noqa: SIM115 - returned to a with-block in the caller
    except FileNotFoundError as exc:
        raise LockstepError(f"snapshot {path} is missing: rerun the snapshot task") from exc


def _snapshot_name(seq: int, shard_size: int) -> str:
    return f"snapshot-{seq}-{shard_size}.parquet"


def _snapshot_path(plan: SlotPlan, snap: dict[str, Any]) -> Path:
    return Path(plan.location) / "shards" / snap.get("file", _snapshot_name(snap["seq"], snap["shard_size"]))


# --- helpers -----------------------------------------------------------------------------------


def _model_file(plan: SlotPlan) -> Path:
    return Path(plan.location) / "shards" / "model.joblib"


def _load_embedder(plan: SlotPlan):
    """The local copy made by ``prepare`` (checked against the plan's fingerprint), else the registry.

    Cached per process: a worker that embeds several shards loads the model once.
    """
    key = (str(_model_file(plan)), plan.fingerprint)
    cached = _EMBEDDERS.get(key)
    if cached is not None:
        return cached
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry

    path = _model_file(plan)
    model = TextEmbedder.load(path) if path.exists() else None
    if model is None or model.fingerprint != plan.fingerprint:
        model = Registry().load_embedder(plan.model_version)
    _EMBEDDERS.clear()
    _EMBEDDERS[key] = model
    return model


_EMBEDDERS: dict[tuple[str, str], Any] = {}
