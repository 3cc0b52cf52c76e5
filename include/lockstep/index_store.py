"""Index versions on disk: manifests, checksums, sharded builds and change-log catch-up.

An index version lives in one folder under ``LOCKSTEP_INDEX_STORE``::

    <store>/<model name>/v<version>/
        manifest.json                 what the index is, and sha256 of each data file
        index-<sha12>.faiss           the FAISS index
        ids-<sha12>.json              FAISS label -> record id
        shards/shard-00000.*          partial indexes of a build in progress

Data files are named by their content and the manifest is replaced atomically
(temporary name, then rename), so a reader sees either the old version or the new one,
never half of each. Loading checks both checksums and refuses an index whose
fingerprint differs from the model it will be paired with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .errors import ConfigurationError, FingerprintMismatchError, IndexIntegrityError
from .records import DELETE, Change, Record, RecordStore
from .vector_index import IndexSpec, VectorIndex

MANIFEST = "manifest.json"
FORMAT = 1
METRIC = "inner_product"


@dataclass(frozen=True)
class Manifest:
    """What an index version is; the JSON beside its data files."""

    model_name: str
    model_version: str
    fingerprint: str
    dim: int
    index_type: str
    spec: dict[str, Any]
    record_count: int
    applied_seq: int
    index_file: str
    index_sha256: str
    ids_file: str
    ids_sha256: str
    built_at: str
    updated_at: str
    metric: str = METRIC
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class LoadedIndex:
    """An index in memory with the manifest it was loaded from and the last sequence applied."""

    index: VectorIndex
    manifest: Manifest
    applied_seq: int
    location: Path

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint


# --- locations -------------------------------------------------------------------------


def store_root(store: str | None = None) -> Path:
    """The local folder of the index store (object storage is not supported yet)."""
    if store is None:
        from .config import settings

        store = settings().index_store
    if "://" in store and not store.startswith("file://"):
        raise ConfigurationError(
            f"LOCKSTEP_INDEX_STORE={store!r}: only local paths (or file://) are supported in this "
            "release; mount object storage as a folder (e.g. s3fs, gcsfuse) and point the store at it"
        )
    return Path(store.removeprefix("file://")).expanduser().resolve()


def index_location(model_name: str, model_version: str | int, store: str | None = None) -> Path:
    return store_root(store) / _safe(model_name) / f"v{model_version}"


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if not cleaned or cleaned.startswith("."):
        raise ConfigurationError(f"model name {name!r} cannot be used as a folder name")
    return cleaned


# --- save and load -------------------------------------------------------------------------


def save_index(
    index: VectorIndex,
    location: str | Path,
    *,
    model_name: str,
    model_version: str | int,
    fingerprint: str,
    applied_seq: int,
    built_at: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Write the index and its manifest atomically; returns the new manifest."""
    location = Path(location)
    location.mkdir(parents=True, exist_ok=True)
    blob, mapping = index.to_state()
    ids_blob = json.dumps(mapping, separators=(",", ":")).encode()
    index_sha, ids_sha = _sha256(blob), _sha256(ids_blob)
    index_file, ids_file = f"index-{index_sha[:12]}.faiss", f"ids-{ids_sha[:12]}.json"
    atomic_write(location / index_file, blob)
    atomic_write(location / ids_file, ids_blob)
    now = _now()
    previous = read_manifest(location) if (location / MANIFEST).exists() else None
    manifest = Manifest(
        model_name=model_name,
        model_version=str(model_version),
        fingerprint=fingerprint,
        dim=index.dim,
        index_type=index.spec.kind,
        spec=index.spec.to_dict(),
        record_count=len(index),
        applied_seq=int(applied_seq),
        index_file=index_file,
        index_sha256=index_sha,
        ids_file=ids_file,
        ids_sha256=ids_sha,
        built_at=built_at or (previous.built_at if previous else now),
        updated_at=now,
        extra=dict(extra or (previous.extra if previous else {})),
    )
    atomic_write(location / MANIFEST, manifest.to_json().encode())
    _remove_stale_files(location, keep={index_file, ids_file, *_files_of(previous)})
    return manifest


def read_manifest(location: str | Path) -> Manifest:
    path = Path(location) / MANIFEST
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"no index at {location}: {MANIFEST} is missing (was it built?)") from exc
    except (json.JSONDecodeError, TypeError) as exc:
        raise IndexIntegrityError(f"{path} is not a valid manifest ({exc}); rebuild the index") from exc


def load_index(location: str | Path, *, expected_fingerprint: str | None = None, model_label: str = "") -> LoadedIndex:
    """Load an index version, verifying checksums and (if given) the model's fingerprint."""
    location = Path(location)
    manifest = read_manifest(location)
    if expected_fingerprint is not None and manifest.fingerprint != expected_fingerprint:
        raise FingerprintMismatchError(
            f"index at {location} was built by {manifest.model_name} v{manifest.model_version} "
            f"(fingerprint {manifest.fingerprint}) but is being paired with model {model_label or '?'} "
            f"(fingerprint {expected_fingerprint}); queries and records would be in different vector spaces"
        )
    blob = _read_verified(location / manifest.index_file, manifest.index_sha256)
    ids_blob = _read_verified(location / manifest.ids_file, manifest.ids_sha256)
    try:
        index = VectorIndex.from_state(blob, json.loads(ids_blob))
    except Exception as exc:
        raise IndexIntegrityError(f"index at {location} cannot be read: {exc}") from exc
    return LoadedIndex(index=index, manifest=manifest, applied_seq=manifest.applied_seq, location=location)


def verify_index_files(location: str | Path) -> Manifest:
    """Check the checksums of an index version without loading it into FAISS."""
    manifest = read_manifest(location)
    _read_verified(Path(location) / manifest.index_file, manifest.index_sha256)
    _read_verified(Path(location) / manifest.ids_file, manifest.ids_sha256)
    return manifest


def _read_verified(path: Path, sha: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"{path} is missing; the index version is incomplete, rebuild it") from exc
    actual = _sha256(data)
    if actual != sha:
        raise IndexIntegrityError(
            f"{path} fails its checksum (manifest sha256 {sha[:16]}..., file {actual[:16]}...): "
            "the file is corrupt or truncated; rebuild the index version"
        )
    return data


# --- sharded build -------------------------------------------------------------------------


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
    """Embed one shard into a partial (flat) index, unless a matching one already exists.

    A partial index is keyed by the model fingerprint, the snapshot sequence and a hash
    of its records' ids and texts, so a retried or re-run task reuses finished work and
    never mixes work from another model or snapshot.
    """
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    key = _shard_key(records, fingerprint, snapshot_seq)
    vec_path, meta_path = shards_dir / f"shard-{shard:05d}.npy", shards_dir / f"shard-{shard:05d}.json"
    if meta_path.exists() and vec_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and _sha256(vec_path.read_bytes()) == meta.get("sha256"):
            return ShardResult(shard, str(vec_path), len(records), skipped=True)
    vectors = embedder.transform([r.text for r in records]) if records else np.zeros((0, 1), np.float32)
    buf = _npy_bytes(np.ascontiguousarray(vectors, dtype=np.float32))
    atomic_write(vec_path, buf)
    meta = {"key": key, "sha256": _sha256(buf), "ids": [r.id for r in records], "count": len(records)}
    atomic_write(meta_path, json.dumps(meta).encode())
    return ShardResult(shard, str(vec_path), len(records), skipped=False)


def merge_shards(shard_paths: Iterable[str | Path], spec: IndexSpec | None = None) -> VectorIndex:
    """Merge partial indexes into one index of the configured type, checking each shard."""
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    for path in sorted(Path(p) for p in shard_paths):
        meta = json.loads(path.with_suffix(".json").read_text())
        data = path.read_bytes()
        if _sha256(data) != meta["sha256"]:
            raise IndexIntegrityError(f"partial index {path} fails its checksum; rerun its shard")
        vectors = _npy_load(data)
        if len(meta["ids"]) != len(vectors):
            raise IndexIntegrityError(f"partial index {path} has {len(vectors)} vectors for {len(meta['ids'])} ids")
        if len(vectors):
            ids.extend(meta["ids"])
            blocks.append(vectors)
    if not blocks:
        raise IndexIntegrityError("nothing to merge: the snapshot has no records")
    return VectorIndex.build(ids, np.vstack(blocks), spec)


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
    """Embed a snapshot shard by shard and merge: the library path the re-embed DAG maps over."""
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
    shards_dir = Path(location) / "shards"
    if shards_dir.exists():
        for f in shards_dir.iterdir():
            f.unlink(missing_ok=True)
        shards_dir.rmdir()


# --- catch-up from the change log ------------------------------------------------------------


def apply_changes(index: VectorIndex, embedder: Any, changes: Sequence[Change]) -> int:
    """Apply change-log entries in order; returns the last sequence applied (0 if none).

    Only each record's last change in the batch matters: a later delete wins over an
    earlier upsert and vice versa, so a delete can never be undone by replaying older
    entries, and replaying the same entries twice changes nothing.
    """
    if not changes:
        return 0
    final: dict[str, Change] = {}
    for change in changes:
        final[change.record_id] = change
    deletes = [rid for rid, c in final.items() if c.op == DELETE]
    upserts = [c for c in final.values() if c.op != DELETE]
    if deletes:
        index.remove(deletes)
    if upserts:
        vectors = embedder.transform([c.text for c in upserts])
        index.upsert([c.record_id for c in upserts], vectors)
    return max(c.seq for c in changes)


def catch_up(
    loaded_index: VectorIndex,
    embedder: Any,
    store: RecordStore,
    since_seq: int,
    *,
    until: int | None = None,
    page: int = 5000,
) -> int:
    """Apply every change after ``since_seq`` (up to ``until``); returns the new applied sequence."""
    applied = since_seq
    while True:
        batch = store.changes_since(applied, until=until, limit=page)
        if not batch:
            return applied
        applied = apply_changes(loaded_index, embedder, batch)
        if len(batch) < page:
            return applied


# --- helpers ---------------------------------------------------------------------------------


def _shard_key(records: Sequence[Record], fingerprint: str, snapshot_seq: int) -> str:
    h = hashlib.sha256(f"{fingerprint}|{snapshot_seq}|{len(records)}".encode())
    for r in records:
        h.update(r.id.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(r.text.encode()).digest())
    return h.hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_of(manifest: Manifest | None) -> set[str]:
    return {manifest.index_file, manifest.ids_file} if manifest else set()


def _remove_stale_files(location: Path, keep: set[str]) -> None:
    """Drop data files of versions older than the previous one (readers may still open that one)."""
    for f in location.iterdir():
        stale = f.is_file() and f.name != MANIFEST and f.name not in keep and not f.name.startswith(".")
        if stale and f.suffix in (".faiss", ".json"):
            f.unlink(missing_ok=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
