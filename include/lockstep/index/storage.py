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
import mmap
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core import clock
from lockstep.core.atomic import atomic_path, atomic_write
from lockstep.core.errors import (
    ConfigurationError,
    FingerprintMismatchError,
    IndexIntegrityError,
    LockstepError,
)
from lockstep.index.vector_index import IndexSpec, VectorIndex
from lockstep.store.records import DELETE, Change, Record, RecordStore

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
    def from_json(cls, text: str, source: str = MANIFEST) -> Manifest:
        """Parse and check a manifest; anything malformed is an ``IndexIntegrityError`` naming ``source``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndexIntegrityError(f"{source} is not valid JSON ({exc}); rebuild the index version") from exc
        problems = _manifest_problems(data)
        if problems:
            raise IndexIntegrityError(f"{source} is not a valid manifest: {'; '.join(problems)}; rebuild the index version")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "model_name": str, "model_version": str, "fingerprint": str, "dim": int, "index_type": str, "spec": dict,
    "record_count": int, "applied_seq": int, "index_file": str, "index_sha256": str, "ids_file": str,
    "ids_sha256": str, "built_at": str, "updated_at": str, "metric": str, "format": int, "extra": dict,
}
_OPTIONAL = {"metric", "format", "extra"}
_HEX = set("0123456789abcdef")


def _manifest_problems(data: Any) -> list[str]:
    """Everything wrong with a parsed manifest, each naming the field (empty when it is sound)."""
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {type(data).__name__}"]
    missing = sorted(k for k in _MANIFEST_TYPES if k not in data and k not in _OPTIONAL)
    problems = [f"missing keys {missing}"] if missing else []
    for key, kind in _MANIFEST_TYPES.items():
        if key in data and (not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool))):
            problems.append(f"{key} must be {getattr(kind, '__name__', kind)}, got {type(data[key]).__name__}")
    for key in ("index_file", "ids_file"):
        if isinstance(data.get(key), str):
            problem = _file_name_problem(data[key])
            if problem:
                problems.append(f"{key} {data[key]!r} {problem}")
    for key in ("index_sha256", "ids_sha256"):
        value = data.get(key)
        if isinstance(value, str) and (len(value) != 64 or not set(value) <= _HEX):
            problems.append(f"{key} must be 64 lowercase hex digits")
    for key in ("dim", "record_count", "applied_seq"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < (1 if key == "dim" else 0):
            problems.append(f"{key} must not be {value}")
    return problems


def _file_name_problem(name: str) -> str | None:
    """Why a manifest's data file name could reach outside its version folder (None if it cannot)."""
    if not name or name in (".", ".."):
        return "is not a file name"
    if "/" in name or "\\" in name or "\0" in name:
        return "must be a plain file name in the version folder (no path separators)"
    if name.startswith(".") or name == MANIFEST:
        return "must name a data file of the version, not a hidden file or the manifest"
    return None


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
        from lockstep.core.config import settings

        store = settings().index_store
    if "://" in store and not store.startswith("file://"):
        raise ConfigurationError(
            f"LOCKSTEP_INDEX_STORE={store!r}: only local paths (or file://) are supported in this "
            "release; mount object storage as a folder (e.g. s3fs, gcsfuse) and point the store at it"
        )
    return Path(store.removeprefix("file://")).expanduser().resolve()


def index_location(model_name: str, model_version: str | int, store: str | None = None) -> Path:
    return store_root(store) / _safe(model_name) / f"v{model_version}"


class UnsafeIndexPathError(LockstepError):
    """A path handed to the index store points outside it (or is not an index version folder)."""


def delete_index_version(location: str | Path, store: str | None = None) -> bool:
    """Delete one index version folder; True if it was deleted, False if it was already gone.

    The location comes from the database (a slot's ``index_location``), so it is not
    trusted: it is resolved (symlinks and ``..`` included) and deleted only when it is a
    version folder ``<store>/<model>/<version>`` inside ``LOCKSTEP_INDEX_STORE``.
    Anything else is refused with :class:`UnsafeIndexPathError` and nothing is removed.
    """
    root = store_root(store)
    raw = str(location)
    if "://" in raw and not raw.startswith("file://"):
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: not a local path inside the index store {root}")
    given = Path(raw.removeprefix("file://")).expanduser()
    if not given.is_absolute():
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: an index location must be an absolute path")
    if given.is_symlink():
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: it is a symbolic link, not an index version folder")
    path = given.resolve()
    if not path.is_relative_to(root) or len(path.relative_to(root).parts) != 2:
        raise UnsafeIndexPathError(
            f"refusing to delete {raw!r}: it resolves to {path}, which is not an index version folder "
            f"<store>/<model>/<version> inside LOCKSTEP_INDEX_STORE={root}"
        )
    if not path.exists():
        return False
    if not path.is_dir():
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: {path} is a file, not an index version folder")
    shutil.rmtree(path)
    return True


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
    """Write the index and its manifest atomically; returns the new manifest.

    The FAISS index goes straight to a file (no serialised copy in memory: at a
    million vectors that copy would double the process's memory), is hashed from the
    file, and is renamed to its content name; the manifest is replaced last.
    """
    location = Path(location)
    location.mkdir(parents=True, exist_ok=True)
    index_file, index_sha, mapping = _write_faiss_file(index, location)
    ids_blob = json.dumps(mapping, separators=(",", ":")).encode()
    del mapping
    ids_sha = _sha256(ids_blob)
    ids_file = f"ids-{ids_sha[:12]}.json"
    atomic_write(location / ids_file, ids_blob)
    del ids_blob
    previous = read_manifest(location) if (location / MANIFEST).exists() else None
    now = clock.now_iso()
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
    _write_manifest(location, manifest)
    _remove_stale_files(location, keep={index_file, ids_file, *_files_of(previous)})
    return manifest


def update_manifest(location: str | Path, *, applied_seq: int | None = None, extra: dict[str, Any] | None = None) -> Manifest:
    """Rewrite only the manifest (same data files): a validation that changed no vector."""
    previous = read_manifest(location)
    manifest = replace(
        previous,
        applied_seq=previous.applied_seq if applied_seq is None else int(applied_seq),
        extra=dict(previous.extra if extra is None else extra),
        updated_at=clock.now_iso(),
    )
    _write_manifest(Path(location), manifest)
    return manifest


def read_manifest(location: str | Path) -> Manifest:
    """The manifest of an index version, checked (types, keys, confined file names)."""
    path = Path(location) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"no index at {location}: {MANIFEST} is missing (was it built?)") from exc
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise IndexIntegrityError(f"{path} is not a valid manifest ({exc}); rebuild the index version") from exc
    return Manifest.from_json(text, source=str(path))


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
    ids_blob = _read_verified(location / manifest.ids_file, manifest.ids_sha256)
    try:
        mapping = json.loads(ids_blob)
    except ValueError as exc:
        raise IndexIntegrityError(f"{location / manifest.ids_file} is not valid JSON: {exc}") from exc
    del ids_blob
    with _mapped_verified(location / manifest.index_file, manifest.index_sha256) as blob:
        try:
            index = VectorIndex.from_state(blob, mapping)
        except Exception as exc:
            raise IndexIntegrityError(f"index at {location} cannot be read: {exc}") from exc
    return LoadedIndex(index=index, manifest=manifest, applied_seq=manifest.applied_seq, location=location)


def verify_index_files(location: str | Path) -> Manifest:
    """Check the checksums of an index version without loading it into FAISS."""
    manifest = read_manifest(location)
    for name, sha in ((manifest.index_file, manifest.index_sha256), (manifest.ids_file, manifest.ids_sha256)):
        _check_sha(Path(location) / name, sha, _sha256_file(Path(location) / name))
    return manifest


def _write_faiss_file(index: VectorIndex, location: Path) -> tuple[str, str, dict[str, Any]]:
    """Write the FAISS index under a temporary name, hash it, rename it to its content name."""
    fd, tmp_name = tempfile.mkstemp(prefix=".index-", suffix=".faiss.tmp", dir=location)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        mapping = index.write_state(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        sha = _sha256_file(tmp)
        name = f"index-{sha[:12]}.faiss"
        os.replace(tmp, location / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name, sha, mapping


def _write_manifest(location: Path, manifest: Manifest) -> None:
    problems = _manifest_problems(json.loads(manifest.to_json()))
    if problems:  # never write what read_manifest would refuse
        raise IndexIntegrityError(f"refusing to write an invalid manifest to {location}: {'; '.join(problems)}")
    atomic_write(location / MANIFEST, manifest.to_json().encode())


def _read_verified(path: Path, sha: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"{path} is missing; the index version is incomplete, rebuild it") from exc
    _check_sha(path, sha, _sha256(data))
    return data


@contextmanager
def _mapped_verified(path: Path, sha: str) -> Iterator[Any]:
    """The file's bytes, memory-mapped (not copied) and checked against ``sha``."""
    if not path.is_file():
        raise IndexIntegrityError(f"{path} is missing; the index version is incomplete, rebuild it")
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            _check_sha(path, sha, _sha256(b""))
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            _check_sha(path, sha, hashlib.sha256(mapped).hexdigest())
            yield mapped


def _check_sha(path: Path, expected: str, actual: str) -> None:
    if actual != expected:
        raise IndexIntegrityError(
            f"{path} fails its checksum (manifest sha256 {expected[:16]}..., file {actual[:16]}...): "
            "the file is corrupt or truncated; rebuild the index version"
        )


# --- sharded build -------------------------------------------------------------------------

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


def shard_paths(shards_dir: str | Path, shard: int) -> tuple[Path, Path]:
    """The vectors (.npy) and metadata (.json: ids, key, checksum) of one partial index."""
    stem = Path(shards_dir) / f"shard-{shard:05d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


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
    shards_dir = Path(location) / "shards"
    if shards_dir.exists():
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


def _shard_key(ids: Sequence[str], texts: Sequence[str], fingerprint: str, snapshot_seq: int) -> str:
    h = hashlib.sha256(f"{fingerprint}|{snapshot_seq}|{len(ids)}".encode())
    for rid, text in zip(ids, texts, strict=True):
        h.update(rid.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(text.encode()).digest())
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


def _crc32(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def _crc32_file(path: Path, block: int = 1 << 22) -> str:
    value = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def _sha256_file(path: Path, block: int = 1 << 22) -> str:
    """sha256 of a file read in blocks (a large index is never read into memory whole)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"{path} is missing; the index version is incomplete, rebuild it") from exc
    return h.hexdigest()


def _files_of(manifest: Manifest | None) -> set[str]:
    return {manifest.index_file, manifest.ids_file} if manifest else set()


def _remove_stale_files(location: Path, keep: set[str]) -> None:
    """Drop data files of versions older than the previous one (readers may still open that one)."""
    for f in location.iterdir():
        stale = f.is_file() and f.name != MANIFEST and f.name not in keep and not f.name.startswith(".")
        if stale and f.suffix in (".faiss", ".json"):
            f.unlink(missing_ok=True)
