"""Sharded builds: embed a snapshot shard by shard into partial indexes, then merge them.

A partial index is scratch work keyed by the model fingerprint, the snapshot sequence
and a hash of its records, so a retried task reuses finished work and never mixes in
work of another model or snapshot. The merge holds the growing index and one shard,
never all vectors twice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core.atomic import atomic_path, atomic_write
from lockstep.core.errors import (
    IndexIntegrityError,
    LockstepError,
    UnsafePathError,
)
from lockstep.index.vector_index import IndexSpec, VectorIndex
from lockstep.store.records import Record

EMBED_BATCH = 8192  # texts per model call while embedding a shard: bounds the TF-IDF matrix in memory


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
    batch_size: int = EMBED_BATCH,
) -> ShardResult:
    """Embed one shard into a partial index, unless a matching one already exists.

    A partial index is keyed by the model fingerprint, the snapshot sequence and a hash
    of its records' ids and texts, so a retried or re-run task reuses finished work and
    never mixes work from another model or snapshot. Vectors are written batch by
    batch into the file, so a shard never holds its TF-IDF matrix whole.
    """
    if len(ids) != len(texts):
        raise LockstepError(f"shard {shard}: {len(ids)} ids but {len(texts)} texts")
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    key = _shard_key(ids, texts, fingerprint, snapshot_seq)
    vec_path, meta_path = shard_paths(shards_dir, shard)
    if _reusable(vec_path, meta_path, key):
        return ShardResult(shard, str(vec_path), len(ids), skipped=True)
    checksum = _embed_to_npy(embedder, texts, vec_path, batch_size)
    meta = {"key": key, "crc32": checksum, "ids": list(ids), "count": len(ids)}
    atomic_write(meta_path, json.dumps(meta, separators=(",", ":")).encode())
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
    if spec.kind == "ivf":
        return _merge_ivf(paths, spec, total)
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
    shards_dir = Path(location) / "shards"
    if shards_dir.is_symlink():
        shards_dir.unlink()  # never follow it: whatever it points to is not this version's
    elif shards_dir.exists():
        shutil.rmtree(shards_dir)


def _merge_ivf(paths: list[Path], spec: IndexSpec, total: int) -> VectorIndex:
    """IVF: train the cells on a sample spread over all shards, then add everything else."""
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


IVF_TRAIN_PER_CELL = 39  # FAISS warns below 39 training points per cell


def ivf_cells(n: int) -> int:
    """IVF cells for ``n`` vectors: about 4*sqrt(n), with at least 39 vectors per cell."""
    return max(1, min(int(4 * np.sqrt(max(n, 1))), max(1, n // IVF_TRAIN_PER_CELL)))


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


def _embed_to_npy(embedder: Any, texts: Sequence[str], path: Path, batch_size: int) -> str:
    """Embed ``texts`` batch by batch into an .npy file (written atomically); returns its CRC-32.

    A partial index is scratch work read back once by the merge: CRC-32 catches a torn or
    corrupted file at twice the speed of sha256, which at a million vectors saves seconds.
    """
    with atomic_path(path) as tmp:
        if not texts:
            np.save(tmp, np.zeros((0, 1), np.float32), allow_pickle=False)
        else:
            first = np.asarray(embedder.transform(list(texts[:batch_size])), dtype=np.float32)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), first.shape[1]))
            out[: len(first)] = first
            for start in range(len(first), len(texts), batch_size):
                out[start : start + batch_size] = embedder.transform(list(texts[start : start + batch_size]))
            out.flush()
            del out
    return _crc32_file(path)


def _shard_key(ids: Sequence[str], texts: Sequence[str], fingerprint: str, snapshot_seq: int) -> str:
    h = hashlib.sha256(f"{fingerprint}|{snapshot_seq}|{len(ids)}".encode())
    for rid, text in zip(ids, texts, strict=True):
        h.update(rid.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(text.encode()).digest())
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
