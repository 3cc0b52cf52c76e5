"""Index versions on disk: where they live, saving and loading them with checksums, deleting.

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

The manifest itself is ``lockstep.index.manifest``; building from shards is
``lockstep.index.shards``; replaying the change log is ``lockstep.index.catch_up``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lockstep.core import clock, paths
from lockstep.core.atomic import atomic_write
from lockstep.core.errors import (
    ConfigurationError,
    FingerprintMismatchError,
    IndexIntegrityError,
    UnsafePathError,
)
from lockstep.index import mirror
from lockstep.index.manifest import (
    MANIFEST,
    Manifest,
    read_manifest,
    write_manifest,
)
from lockstep.index.vector_index import IndexSpec, VectorIndex


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
    """This host's folder of the index store: the store, or the object store's local cache.

    ``LOCKSTEP_INDEX_STORE`` is a folder (or ``file://``) or ``s3://bucket/prefix``
    (``lockstep.index.mirror``); any other scheme is refused with the ones that work.
    """
    from lockstep.core.config import is_remote_store, settings

    if store is None:
        store = settings().index_store
    if is_remote_store(store):
        return mirror.working_root()
    if "://" in store and not store.startswith("file://"):
        raise ConfigurationError(
            f"LOCKSTEP_INDEX_STORE={store!r}: use a local folder (or file://) or an S3-protocol object store "
            "s3://bucket/prefix (AWS S3, MinIO, Ceph, ...; LOCKSTEP_S3_ENDPOINT_URL for a server other than AWS)"
        )
    return Path(store.removeprefix("file://")).expanduser().resolve()


def index_location(model_name: str, model_version: str | int, store: str | None = None) -> Path:
    """``<store>/<model name>/v<version>``, resolved and confined to the store.

    The version comes from the registry, a DAG Param or the command line, so it must be
    a plain positive integer (``core.paths.version_number``): ``"1/../.."`` or ``"../x"``
    never becomes a folder, and a model folder that is a symlink out of the store is refused.
    """
    version = paths.version_number(model_version, f"model version of {model_name!r}")
    return paths.inside(store_root(store), _safe(model_name), f"v{version}", what="index location")


def published_location(model_name: str, model_version: str | int) -> str:
    """The location every host resolves (routing rows, plans, tags): ``s3://...`` or the folder's path."""
    return mirror.public_location(index_location(model_name, model_version))


class UnsafeIndexPathError(UnsafePathError):
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
        try:
            raw = str(mirror.working_dir(raw))  # s3://<store>/<model>/v<N> only
        except UnsafePathError as exc:
            raise UnsafeIndexPathError(f"refusing to delete {str(location)!r}: {exc}") from exc
    if "\0" in raw:
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: it contains a NUL byte")
    given = Path(raw.removeprefix("file://")).expanduser()
    if not given.is_absolute():
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: an index location must be an absolute path")
    if given.is_symlink():
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: it is a symbolic link, not an index version folder")
    path = given.resolve()
    if not path.is_relative_to(root) or len(path.relative_to(root).parts) != 2 or not _is_version_folder(path.name):
        raise UnsafeIndexPathError(
            f"refusing to delete {raw!r}: it resolves to {path}, which is not an index version folder "
            f"<store>/<model>/v<version> inside LOCKSTEP_INDEX_STORE={root}"
        )
    remote_gone = bool(mirror.listing(path))
    mirror.delete(path)  # the store's copy first: a host must never pull a half-deleted version back
    if not path.exists():
        return remote_gone
    if not path.is_dir():
        raise UnsafeIndexPathError(f"refusing to delete {raw!r}: {path} is a file, not an index version folder")
    shutil.rmtree(path)
    return True



def _is_version_folder(folder: str) -> bool:
    """``v<positive integer>``: the only folder names ``index_location`` makes."""
    try:
        paths.version_number(folder.removeprefix("v"))
    except UnsafePathError:
        return False
    return folder.startswith("v")


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if not cleaned or cleaned.startswith("."):
        raise ConfigurationError(f"model name {name!r} cannot be used as a folder name")
    return paths.name(cleaned, f"model name {name!r} as a folder name")


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
    location = mirror.working_dir(location)
    location.mkdir(parents=True, exist_ok=True)
    mirror.pull(location / MANIFEST, refresh=True)  # the previous manifest, wherever it was written (no-op locally)
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
    write_manifest(location, manifest)
    mirror.push(location / index_file)
    mirror.push(location / ids_file)
    mirror.push(location / MANIFEST)  # last: a reader that finds it finds every file it names
    _remove_stale_files(location, keep={index_file, ids_file, *_files_of(previous)})
    return manifest


def update_manifest(location: str | Path, *, applied_seq: int | None = None, extra: dict[str, Any] | None = None,
                    spec: dict[str, Any] | None = None) -> Manifest:
    """Rewrite only the manifest (same data files): a validation that changed no vector.

    ``spec`` may change search-time settings only (the HNSW beam validation chose);
    ``load_index`` applies them over what the data files were built with.
    """
    location = mirror.working_dir(location)
    previous = read_manifest(location)
    manifest = replace(
        previous,
        applied_seq=previous.applied_seq if applied_seq is None else int(applied_seq),
        extra=dict(previous.extra if extra is None else extra),
        spec=dict(previous.spec if spec is None else spec),
        updated_at=clock.now_iso(),
    )
    write_manifest(location, manifest)
    mirror.push(location / MANIFEST)
    return manifest


def load_index(location: str | Path, *, expected_fingerprint: str | None = None, model_label: str = "") -> LoadedIndex:
    """Load an index version, verifying checksums and (if given) the model's fingerprint.

    From an object store, the manifest is read fresh and the data files it names are pulled
    into this host's cache when missing; a cached file that fails its checksum is fetched
    again once (a torn or stale copy), then refused like a local one.
    """
    location = mirror.working_dir(location)
    try:
        return _load_verified(location, expected_fingerprint, model_label)
    except IndexIntegrityError:
        if mirror.remote() is None:
            raise
        _drop_cached_data(location)
        return _load_verified(location, expected_fingerprint, model_label)


def _load_verified(location: Path, expected_fingerprint: str | None, model_label: str) -> LoadedIndex:
    manifest = read_manifest(location)
    if expected_fingerprint is not None and manifest.fingerprint != expected_fingerprint:
        raise FingerprintMismatchError(
            f"index at {location} was built by {manifest.model_name} v{manifest.model_version} "
            f"(fingerprint {manifest.fingerprint}) but is being paired with model {model_label or '?'} "
            f"(fingerprint {expected_fingerprint}); queries and records would be in different vector spaces"
        )
    ids_path, index_path = _data_file(location, manifest.ids_file), _data_file(location, manifest.index_file)
    mirror.pull(ids_path)
    mirror.pull(index_path)
    ids_blob = _read_verified(ids_path, manifest.ids_sha256)
    try:
        mapping = json.loads(ids_blob)
    except ValueError as exc:
        raise IndexIntegrityError(f"{ids_path} is not valid JSON: {exc}") from exc
    del ids_blob
    with _mapped_verified(index_path, manifest.index_sha256) as blob:
        try:
            index = VectorIndex.from_state(blob, mapping)
        except Exception as exc:
            raise IndexIntegrityError(f"index at {location} cannot be read: {exc}") from exc
    chosen = IndexSpec.from_dict({**index.spec.to_dict(), **manifest.spec}).search_settings()
    if chosen != index.spec.search_settings():
        index.set_search(**chosen)  # the search settings validation chose after the files were written
    return LoadedIndex(index=index, manifest=manifest, applied_seq=manifest.applied_seq, location=location)


def verify_index_files(location: str | Path) -> Manifest:
    """Check the checksums of an index version without loading it into FAISS (pulled into the cache first)."""
    location = mirror.working_dir(location)
    manifest = read_manifest(location)
    for name, sha in ((manifest.index_file, manifest.index_sha256), (manifest.ids_file, manifest.ids_sha256)):
        path = _data_file(location, name)
        mirror.pull(path)
        _check_sha(path, sha, _sha256_file(path))
    return manifest


def _drop_cached_data(location: Path) -> None:
    """Forget this host's cached data files of a version (the next load downloads them again)."""
    for f in location.glob("*"):
        if f.is_file() and f.suffix in (".faiss", ".json") and f.name != MANIFEST:
            f.unlink(missing_ok=True)


def _data_file(location: Path, name: str) -> Path:
    """A data file the manifest names, confined to the version folder.

    ``read_manifest`` already refuses names with separators or ``..``; this also refuses a
    data file that is a symlink out of the folder, so a manifest never makes Lockstep read
    (or map into memory) a file elsewhere.
    """
    try:
        return paths.inside(location, name, what=f"data file of the index at {location}")
    except UnsafePathError as exc:
        raise IndexIntegrityError(f"{exc}; rebuild the index version") from exc


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

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
    for name in mirror.listing(location):
        if "/" not in name and name != MANIFEST and name not in keep and name.endswith((".faiss", ".json")):
            mirror.delete(location / name)
