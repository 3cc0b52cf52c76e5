"""Index version folders mirrored to an object store, so hosts that share no disk share them.

With ``LOCKSTEP_INDEX_STORE=s3://bucket/prefix`` every host works on a local copy of a
version folder under its own ``LOCKSTEP_INDEX_CACHE``; this module moves files between
that copy and the store. Everything else in ``lockstep.index`` keeps reading and writing
local files, and calls ``push`` after it wrote a file other hosts need and ``pull``
before it reads one. With a local folder as the store every function here is a no-op.

- A **location** (what a routing row, a plan and an MLflow tag hold) names a version folder
  for every host: ``s3://bucket/prefix/<model>/v<N>`` for an object store, an absolute
  path for a local one. ``working_dir`` turns it into this host's folder, checked: only
  ``<model>/v<N>`` inside the configured store is accepted, so a location from outside
  never becomes a path elsewhere.
- A version is **published manifest-last**: ``storage.save_index`` pushes the data files,
  then the manifest, so a reader that finds a manifest finds every file it names.
- The cache is **read through and verified**: data files are named by their content and
  their sha256 is checked on every load (``storage``); a cached copy that fails its
  checksum is downloaded again once.
"""

from __future__ import annotations

from pathlib import Path

from lockstep.core import paths
from lockstep.core.config import ObjectStoreSettings, settings
from lockstep.core.errors import UnsafePathError
from lockstep.index.object_store import ObjectStore, object_store


class ForeignLocationError(UnsafePathError):
    """A location names another store than the configured one, or is not a version folder of it."""


def remote() -> ObjectStoreSettings | None:
    """The configured object store, or None when the index store is a local folder."""
    return settings().remote_store()


def working_root() -> Path:
    """This host's folder of the index store: the store itself, or the object store's local cache."""
    cfg = remote()
    if cfg is None:
        raw = settings().index_store
        return Path(raw.removeprefix("file://")).expanduser().resolve()
    return cfg.cache_dir


def working_dir(location: str | Path) -> Path:
    """This host's folder of a location (see the module docstring); checked, not yet pulled."""
    text = str(location)
    cfg = remote()
    if cfg is not None and text.startswith(cfg.url + "/"):
        parts = text[len(cfg.url) + 1:].rstrip("/").split("/")
        if len(parts) != 2 or not parts[1].startswith("v"):
            raise ForeignLocationError(f"{text!r} is not a version folder <store>/<model>/v<version> of {cfg.url}")
        paths.version_number(parts[1].removeprefix("v"), f"version folder of {text!r}")
        return paths.inside(cfg.cache_dir, *parts, what="index location")
    if "://" in text and not text.startswith("file://"):
        where = cfg.url if cfg is not None else settings().index_store
        raise ForeignLocationError(f"index location {text!r} is not in the configured index store {where}")
    return Path(text.removeprefix("file://"))


def public_location(folder: str | Path) -> str:
    """What other hosts can resolve: the store URL of a cached folder, else the folder's path."""
    rel = _rel(Path(folder))
    cfg = remote()
    return f"{cfg.url}/{rel}" if cfg is not None and rel is not None else str(folder)


def push(path: str | Path) -> None:
    """Upload a file, or every file under a folder (hidden temporaries excluded), to the store."""
    store, rel = _target(Path(path))
    if store is None:
        return
    path = Path(path)
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            store.put(f, f"{rel}/{f.relative_to(path).as_posix()}")
    elif path.is_file():
        store.put(path, rel)


def pull(path: str | Path, *, refresh: bool = False) -> bool:
    """Make a file present locally (downloaded when missing, or always with ``refresh``); False if nowhere."""
    path = Path(path)
    store, rel = _target(path)
    if store is None or (path.is_file() and not refresh):
        return path.is_file()
    try:
        store.get(rel, path)
    except FileNotFoundError:
        if refresh:
            path.unlink(missing_ok=True)  # gone from the store: the cached copy is gone too
        return False
    return True


def pull_tree(folder: str | Path) -> None:
    """Download every file of a store folder that is missing here or differs in size."""
    folder = Path(folder)
    store, rel = _target(folder)
    if store is None:
        return
    for name, size in listing(folder).items():
        local = paths.inside(folder, name, what="cached file")
        if not local.is_file() or local.stat().st_size != size:
            store.get(f"{rel}/{name}", local)


def pull_path(path: str | Path) -> None:
    """Pull a file or a whole folder, whichever the store holds under this name."""
    if listing(path):
        pull_tree(path)
    else:
        pull(path)


def listing(folder: str | Path) -> dict[str, int]:
    """The store's files under a cached folder (relative names, sizes); empty for a local store."""
    store, rel = _target(Path(folder))
    if store is None:
        return {}
    return {key.removeprefix(rel + "/"): size for key, size in store.listing(rel).items()}


def exists(path: str | Path) -> bool:
    """Whether a file is in the store (a local store: on disk)."""
    path = Path(path)
    store, rel = _target(path)
    return path.exists() if store is None else store.exists(rel)


def delete(path: str | Path) -> None:
    """Delete a file or folder from the store (the caller deletes the local copy)."""
    store, rel = _target(Path(path))
    if store is not None:
        store.delete(rel)


def ensure_bucket() -> None:
    """Create the store's bucket if needed (``lockstep db upgrade``/init of a fresh stack)."""
    cfg = remote()
    if cfg is not None:
        object_store(cfg).ensure_bucket()


def _rel(path: Path) -> str | None:
    cfg = remote()
    if cfg is None:
        return None
    try:
        return path.resolve().relative_to(cfg.cache_dir).as_posix()
    except ValueError:
        return None


def _target(path: Path) -> tuple[ObjectStore | None, str]:
    """The store and key of a cached path; (None, "") for a local store or a path outside the cache.

    Work outside the cache (a benchmark's temporary folder) is nobody else's business.
    """
    cfg = remote()
    rel = _rel(path) if cfg is not None else None
    if cfg is None or rel is None or rel == ".":
        return None, ""
    return object_store(cfg), rel
