"""Sharded builds: embed a snapshot shard by shard into partial indexes, then merge them.

A partial index is scratch work keyed by the model fingerprint, the snapshot sequence
and a hash of its records, so a retried task reuses finished work and never mixes in
work of another model or snapshot. A shard in progress is checkpointed in chunks
(``shard_checkpoint``), reports its progress and obeys a pause of its load
(``load_progress``), and embeds each distinct text once. The merge holds the growing
index and one shard, never all vectors twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core import clock
from lockstep.core.atomic import atomic_path, atomic_write
from lockstep.core.config.embedding import DEFAULT_CHECKPOINT_SECONDS, checkpoint_seconds_setting
from lockstep.core.errors import (
    IndexIntegrityError,
    LockstepError,
    UnsafePathError,
)
from lockstep.core.faults import maybe_hang
from lockstep.index import mirror
from lockstep.index.embed_settings import FAST_BATCH, batch_size_for
from lockstep.index.kinds import IVF_TRAIN_PER_CELL, TRAINED_KINDS, ivf_cells
from lockstep.index.load_progress import DONE, FAILED, PAUSED, RUNNING, ShardProgress
from lockstep.index.shard_checkpoint import ShardCheckpoint
from lockstep.index.vector_index import IndexSpec, VectorIndex
from lockstep.store.records import Record

EMBED_BATCH = FAST_BATCH  # texts per model call of a fast family (``embed_settings.batch_size_for`` decides)
CHECKPOINT_EVERY_S = DEFAULT_CHECKPOINT_SECONDS  # a shard's vectors are checkpointed this often: a dead worker loses at most this much work
CHECKPOINT_MAX_TEXTS = 65_536  # ... or after this many texts (bounds the vectors held between checkpoints: 64 MB at 256-d)
PAUSE_POLL_S = 5.0  # how often a paused shard looks at the pause flag again


class LoadPaused(LockstepError):
    """A shard waited at its checkpoint longer than it may while its load is paused."""


@dataclass(frozen=True)
class ShardPacing:
    """How a shard paces itself: checkpoint interval, pause polling, the clocks (tests pass fakes)."""

    checkpoint_s: float = field(default_factory=checkpoint_seconds_setting)  # LOCKSTEP_CHECKPOINT_SECONDS
    poll_s: float = PAUSE_POLL_S
    pause_timeout_s: float | None = None  # None: wait while paused (the DAG task's execution_timeout bounds it)
    monotonic: Callable[[], float] = clock.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class ShardResult:
    shard: int
    path: str
    count: int
    skipped: bool  # True when an existing partial index matched and was reused


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def build_shard(
    embedder: Any,
    records: Sequence[Record],
    shard: int,
    shards_dir: str | Path,
    *,
    fingerprint: str,
    snapshot_seq: int,
) -> ShardResult:
    """Embed one shard of records into a partial index (see ``build_shard_columns``)."""
    return build_shard_columns(
        embedder, [r.id for r in records], [r.text for r in records], shard, shards_dir,
        fingerprint=fingerprint, snapshot_seq=snapshot_seq,
    )


def build_shard_columns(
    embedder: Any,
    ids: Sequence[str],
    texts: Sequence[str],
    shard: int,
    shards_dir: str | Path,
    *,
    fingerprint: str,
    snapshot_seq: int,
    batch_size: int | None = None,
    progress: ShardProgress | None = None,
    pacing: ShardPacing | None = None,
) -> ShardResult:
    """Embed one shard into a partial index, unless a matching one already exists.

    A partial index is keyed by the model fingerprint, the snapshot sequence and a hash
    of its records' ids and texts, so a retried or re-run task reuses finished work and
    never mixes work from another model or snapshot. Vectors are written chunk by
    chunk, so a shard never holds its TF-IDF matrix whole.

    Identical texts in the shard are embedded once, their vector copied to every record
    that has them. The shard is embedded ``batch_size`` texts per model call (None: the
    setting or the model's hint, ``embed_settings.batch_size_for``), checkpointed in
    chunks (``shard_checkpoint``: a worker that dies loses at most the chunk in hand),
    reports each batch to ``progress`` (None: the load's file for this shard, when the
    shard belongs to a registered load) and waits at a checkpoint while the load is
    paused (``pacing``: how often it checks, and for how long at most).
    """
    if len(ids) != len(texts):
        raise LockstepError(f"shard {shard}: {len(ids)} ids but {len(texts)} texts")
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    digests = [hashlib.sha256(text.encode()).digest() for text in texts]
    key = _shard_key(ids, digests, fingerprint, snapshot_seq)
    vec_path, meta_path = shard_paths(shards_dir, shard)
    _pull_shard(vec_path, meta_path)  # a retry on another host reuses or resumes what the first one stored
    tracker = progress if progress is not None else ShardProgress.for_shard(shards_dir, shard, len(ids))
    if _reusable(vec_path, meta_path, key):
        if tracker is not None:
            tracker.set_state(DONE)
        return ShardResult(shard, str(vec_path), len(ids), skipped=True)
    batch = batch_size or batch_size_for(embedder)
    if batch < 1:
        raise LockstepError(f"shard {shard}: the embed batch must be at least 1 text, got {batch}")
    try:
        checksum = _embed_to_npy(embedder, texts, digests, vec_path, key, batch, tracker, pacing or ShardPacing())
    except LoadPaused:
        raise
    except BaseException as exc:
        if tracker is not None:
            tracker.set_state(FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    meta = {"key": key, "crc32": checksum, "ids": list(ids), "count": len(ids)}
    atomic_write(meta_path, json.dumps(meta, separators=(",", ":")).encode())
    mirror.push(vec_path)
    mirror.push(meta_path)  # last: a shard with metadata in the store is whole there
    shutil.rmtree(vec_path.with_suffix(".parts"), ignore_errors=True)  # the checkpoint's chunks: assembled now
    mirror.delete(vec_path.with_suffix(".parts"))
    if tracker is not None:
        tracker.set_state(DONE)
    return ShardResult(shard, str(vec_path), len(ids), skipped=False)


MAX_SHARD = 999_999  # far above any build (tens of shards at 1M records): a bound on a value from a DAG


def shard_paths(shards_dir: str | Path, shard: int) -> tuple[Path, Path]:
    """The vectors (.npy) and metadata (.json: ids, key, checksum) of one partial index.

    ``shard`` arrives from a DAG's task mapping, so it must be an int in 0..``MAX_SHARD``.
    """
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard <= MAX_SHARD:
        raise UnsafePathError(f"shard number {shard!r} must be an integer from 0 to {MAX_SHARD}")
    stem = Path(shards_dir) / f"shard-{shard:05d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def shard_files(shards_dir: str | Path, shards: Iterable[int]) -> list[Path]:
    """The vector files of these shard numbers in ``shards_dir``: what a merge reads.

    Rebuilt from the shard numbers rather than taken from a task's result, so a path
    handed along between tasks can never make the merge read a file elsewhere.
    """
    return [shard_paths(shards_dir, shard)[0] for shard in shards]


def pulled_shard_files(shards_dir: str | Path, shards: Iterable[int]) -> list[Path]:
    """``shard_files``, each shard pulled into this host's cache first (shards embedded elsewhere)."""
    for shard in shards:
        for path in shard_paths(shards_dir, shard):
            mirror.pull(path)
    return shard_files(shards_dir, shards)


def _pull_shard(vec_path: Path, meta_path: Path) -> None:
    """A finished shard, else its checkpoint, from the object store (no-op for a local store)."""
    if mirror.remote() is None or meta_path.exists():
        return
    if mirror.pull(meta_path):
        mirror.pull(vec_path)
    else:
        mirror.pull_tree(vec_path.with_suffix(".parts"))


def merge_shards(shard_paths: Iterable[str | Path], spec: IndexSpec | None = None) -> VectorIndex:
    """Merge partial indexes into one index of the configured type, checking each shard.

    One shard at a time is read, checked and added, then freed: the merge holds the
    growing index plus one shard, never all vectors twice. An IVF index is first
    trained (and filled) on an evenly spread sample of every shard, then the rest is added.
    """
    spec = spec or IndexSpec()
    paths = sorted(Path(p) for p in shard_paths)
    total = sum(_shard_meta(p)["count"] for p in paths)
    if total == 0:
        raise IndexIntegrityError("nothing to merge: the snapshot has no records")
    if spec.kind in TRAINED_KINDS:
        return _merge_trained(paths, spec, total)
    index: VectorIndex | None = None
    for ids, vectors in _iter_shards(paths):
        if index is None:
            index = VectorIndex.build(ids, vectors, spec)
        else:
            index.add(ids, vectors)
        del vectors
    assert index is not None
    return index


def build_index(
    embedder: Any,
    records: Sequence[Record],
    work_dir: str | Path,
    *,
    fingerprint: str,
    snapshot_seq: int,
    spec: IndexSpec | None = None,
    shard_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> VectorIndex:
    """Embed records shard by shard and merge (small in-memory sets: tests, harnesses)."""
    shards_dir = Path(work_dir) / "shards"
    paths = []
    for shard, (start, end) in enumerate(shard_bounds(len(records), shard_size)):
        result = build_shard(
            embedder, records[start:end], shard, shards_dir, fingerprint=fingerprint, snapshot_seq=snapshot_seq
        )
        paths.append(result.path)
        if progress is not None:
            progress(end - start)
    return merge_shards(paths, spec)


def clear_shards(location: str | Path) -> None:
    """Remove a version's scratch folder; a ``shards`` that is a symlink loses the link only."""
    shards_dir = mirror.working_dir(location) / "shards"
    mirror.delete(shards_dir)
    if shards_dir.is_symlink():
        shards_dir.unlink()  # never follow it: whatever it points to is not this version's
    elif shards_dir.exists():
        shutil.rmtree(shards_dir)


def _merge_trained(paths: list[Path], spec: IndexSpec, total: int) -> VectorIndex:
    """IVF types: train the cells on a sample spread over all shards, then add everything else."""
    nlist = spec.nlist or ivf_cells(total)
    spec = replace(spec, nlist=nlist)
    stride = max(1, total // min(total, IVF_TRAIN_PER_CELL * nlist))
    sample_ids: list[str] = []
    sample_blocks: list[np.ndarray] = []
    offset = 0
    for ids, vectors in _iter_shards(paths):
        rows = _sampled_rows(offset, len(ids), stride)
        sample_ids.extend(ids[i] for i in rows)
        sample_blocks.append(vectors[rows])
        offset += len(ids)
    index = VectorIndex.build(sample_ids, np.vstack(sample_blocks), spec)
    del sample_blocks, sample_ids
    offset = 0
    for ids, vectors in _iter_shards(paths):
        keep = np.setdiff1d(np.arange(len(ids)), _sampled_rows(offset, len(ids), stride))
        if len(keep):
            index.add([ids[i] for i in keep], vectors[keep])
        offset += len(ids)
    return index


def _sampled_rows(offset: int, n: int, stride: int) -> np.ndarray:
    """Rows of a shard (starting at global row ``offset``) whose global row is a multiple of ``stride``."""
    first = (-offset) % stride
    return np.arange(first, n, stride)


def _iter_shards(paths: list[Path]) -> Iterator[tuple[list[str], np.ndarray]]:
    """Each non-empty partial index as (ids, vectors), checked against its metadata."""
    for path in paths:
        meta = _shard_meta(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise IndexIntegrityError(f"partial index {path} is missing; rerun its shard") from exc
        if _crc32(data) != meta.get("crc32"):
            raise IndexIntegrityError(f"partial index {path} fails its checksum; rerun its shard")
        vectors = _npy_load(data)
        del data
        if len(meta["ids"]) != len(vectors):
            raise IndexIntegrityError(f"partial index {path} has {len(vectors)} vectors for {len(meta['ids'])} ids")
        if len(vectors):
            yield meta["ids"], vectors


def _shard_meta(path: Path) -> dict[str, Any]:
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"partial index {path} has no metadata {meta_path.name}; rerun its shard") from exc
    except ValueError as exc:
        raise IndexIntegrityError(f"partial index metadata {meta_path} is not valid JSON; rerun its shard") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("ids"), list) or not isinstance(meta.get("count"), int):
        raise IndexIntegrityError(f"partial index metadata {meta_path} lacks ids or count; rerun its shard")
    return meta


def _reusable(vec_path: Path, meta_path: Path, key: str) -> bool:
    """A finished partial index of exactly this work (same key, intact vectors)."""
    if not (meta_path.exists() and vec_path.exists()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("key") == key and _crc32_file(vec_path) == meta.get("crc32")


def _embed_to_npy(embedder: Any, texts: Sequence[str], digests: list[bytes], path: Path, key: str, batch: int,
                  tracker: ShardProgress | None, pacing: ShardPacing) -> str:
    """Embed the distinct texts chunk by chunk into the checkpoint, then assemble the .npy (atomically); its CRC-32.

    A partial index is scratch work read back once by the merge: CRC-32 catches a torn or
    corrupted file at twice the speed of sha256, which at a million vectors saves seconds.
    """
    first_rows, inverse = _distinct(digests)
    distinct = [texts[i] for i in first_rows]
    rows_upto = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(distinct)))]) if texts else np.zeros(1)
    checkpoint = ShardCheckpoint.open(path, key, len(distinct))
    done = checkpoint.done()
    if tracker is not None:
        tracker.start(done=int(rows_upto[done]), unique=len(distinct), checkpointed=done)
    _embed_distinct(embedder, distinct, done, batch, checkpoint, tracker, pacing, rows_upto)
    chunks = checkpoint.chunks()
    if texts and len(distinct) == len(texts) and len(chunks) == 1 and chunks[0][1] == len(texts):
        os.replace(chunks[0][2], path)  # one chunk of every row in order: it is the shard's file (fsynced when written)
        return _crc32_file(path)
    with atomic_path(path) as tmp:
        if not texts:
            with open(tmp, "wb") as fh:  # a file object: np.save would add ".npy" to a path
                np.save(fh, np.zeros((0, 1), np.float32), allow_pickle=False)
        else:
            _assemble(checkpoint, inverse, tmp)
    return _crc32_file(path)


def _embed_distinct(embedder: Any, distinct: list[str], done: int, batch: int, checkpoint: ShardCheckpoint,
                    tracker: ShardProgress | None, pacing: ShardPacing, rows_upto: np.ndarray) -> None:
    """Embed ``distinct[done:]`` a batch per model call; a chunk is checkpointed every ``pacing.checkpoint_s``."""
    pending: list[np.ndarray] = []
    pending_from = done
    last = pacing.monotonic()

    def flush() -> None:
        nonlocal pending, pending_from, last
        if pending:
            block = np.vstack(pending)
            checkpoint.write_chunk(pending_from, block)
            pending_from += len(block)
            pending = []
        last = pacing.monotonic()

    for start in range(done, len(distinct), batch):
        if tracker is not None and tracker.paused():
            flush()
            _wait_while_paused(tracker, pacing)
        texts = distinct[start : start + batch]
        vectors = np.asarray(embedder.transform(list(texts)), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise LockstepError(f"the model returned {vectors.shape} vectors for {len(texts)} texts")
        pending.append(vectors)
        end = start + len(texts)
        checkpoint_now = pacing.monotonic() - last >= pacing.checkpoint_s or end - pending_from >= CHECKPOINT_MAX_TEXTS
        if checkpoint_now:
            flush()
        if tracker is not None:  # a checkpoint is always told: the file never says less than is safe on disk
            tracker.advance(done=int(rows_upto[end]), embedded=end, force=checkpoint_now)
        if checkpoint_now and end < len(distinct):
            maybe_hang("reembed.checkpoint")  # game days: a worker that stops mid-shard, to be killed
    flush()


def _wait_while_paused(tracker: ShardProgress, pacing: ShardPacing) -> None:
    """Wait at a checkpoint while the load is paused, polling the flag; ``LoadPaused`` past ``pacing.pause_timeout_s``."""
    tracker.set_state(PAUSED)
    since = pacing.monotonic()
    while tracker.paused():
        if pacing.pause_timeout_s is not None and pacing.monotonic() - since >= pacing.pause_timeout_s:
            raise LoadPaused(f"shard {tracker.shard} is paused at its checkpoint ({tracker.state.get('done', 0)} of "
                             f"{tracker.total} records done); resume the load and run the shard again to go on")
        pacing.sleep(pacing.poll_s)
    tracker.set_state(RUNNING)


def _distinct(digests: list[bytes]) -> tuple[list[int], np.ndarray]:
    """The row of each distinct text's first occurrence, and for every row the number of its distinct text.

    Texts are numbered in order of first occurrence, so with no text repeated row i is text i.
    """
    number: dict[bytes, int] = {}
    inverse = np.fromiter((number.setdefault(d, len(number)) for d in digests), dtype=np.int64, count=len(digests))
    if len(number) == len(digests):
        return list(range(len(digests))), inverse
    return np.unique(inverse, return_index=True)[1].tolist(), inverse


def _assemble(checkpoint: ShardCheckpoint, inverse: np.ndarray, tmp: Path) -> None:
    """Write every row's vector (its distinct text's) from the checkpoint's chunks into an .npy at ``tmp``."""
    chunks = checkpoint.chunks()
    n_distinct = int(inverse.max()) + 1
    if not chunks or chunks[-1][1] != n_distinct:
        raise IndexIntegrityError(f"the checkpoint of {checkpoint.folder.name} is incomplete; rerun its shard")
    in_order = n_distinct == len(inverse)  # no text repeated: row i is distinct text i
    order = None if in_order else np.argsort(inverse, kind="stable")
    sorted_numbers = None if order is None else inverse[order]
    out = None
    for start, vectors in checkpoint.read():
        if out is None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(inverse), vectors.shape[1]))
        if order is None:
            out[start : start + len(vectors)] = vectors
            continue
        lo, hi = np.searchsorted(sorted_numbers, [start, start + len(vectors)])
        rows = order[lo:hi]
        out[rows] = vectors[inverse[rows] - start]
    assert out is not None
    out.flush()
    del out


def _shard_key(ids: Sequence[str], digests: Sequence[bytes], fingerprint: str, snapshot_seq: int) -> str:
    """The work of a shard: model, snapshot, and each record's id and sha256 of its text."""
    h = hashlib.sha256(f"{fingerprint}|{snapshot_seq}|{len(ids)}".encode())
    for rid, digest in zip(ids, digests, strict=True):
        h.update(rid.encode())
        h.update(b"\0")
        h.update(digest)
    return h.hexdigest()


def _npy_load(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)


def _crc32(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def _crc32_file(path: Path, block: int = 1 << 22) -> str:
    value = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"
