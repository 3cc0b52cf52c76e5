"""A recommender version's item index as a FAISS file beside its fit: built once, read by every replica.

An HNSW graph over a million items takes minutes to build; a replica that built it at
every slot load was minutes from ready (issue 26). The version's build
(``recommender.build.write_slot_files``) now builds the item index once, writes it as
``items-<sha256[:16]>.faiss`` in the version's folder (named by its content, so a
cached copy of an older build is never taken for it) and names it, with its sha256, in
the manifest's ``item_index`` entry. Replicas pull the file (``lockstep.index.mirror``:
a local store or ``s3://``), check its sha256, read it with ``faiss.read_index`` and
check that it holds exactly the fit's item vectors in the fit's order: no build.

A missing, corrupt or foreign file is an ``IndexIntegrityError`` naming the file and
what is wrong; a cached copy that fails its checksum is downloaded again once first.

The index reaches ``LiveVersion`` through the model it was checked against: ``attach``
(in ``read_slot_files``) and ``take`` (in ``LiveVersion``), once, so the two callers of
``read_slot_files`` (serving's slot load and the batch world) use it unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core import paths
from lockstep.core.errors import IndexIntegrityError
from lockstep.index import mirror
from lockstep.recommender.item_index import KINDS, ItemIndex

__all__ = ["attach", "read_item_index", "remove_stale_files", "take", "write_item_index"]

FILE_NAME = re.compile(r"items-[0-9a-f]{16}\.faiss", re.ASCII)
_TEMPORARY = ".items.faiss.tmp"  # hidden: mirror.push of a folder skips it
_ENTRY_KEYS = {"file", "sha256", "kind", "items", "dim", "max_norm", "ef_search", "build_seconds"}
REBUILD = "rebuild the version (`lockstep index build --system recommender <version>`)"

_ATTACHED: weakref.WeakKeyDictionary[Any, ItemIndex] = weakref.WeakKeyDictionary()


def build_and_write(location: Path, item_ids: Sequence[str], vectors: np.ndarray, kind: str = "auto") -> dict[str, Any]:
    """Build the version's item index and store it in ``location``; the manifest's ``item_index`` entry."""
    started = time.perf_counter()
    index = ItemIndex.build(item_ids, vectors, kind=kind)
    return write_item_index(location, index, build_seconds=time.perf_counter() - started)


def write_item_index(location: Path, index: ItemIndex, *, build_seconds: float = 0.0) -> dict[str, Any]:
    """Write ``index`` as a content-named FAISS file in ``location``, pushed to the store; its entry."""
    tmp = location / _TEMPORARY
    index.write(str(tmp))
    sha = _sha256_file(tmp)
    name = f"items-{sha[:16]}.faiss"
    os.replace(tmp, location / name)
    mirror.push(location / name)
    return {
        "file": name,
        "sha256": sha,
        "kind": index.kind,
        "items": len(index),
        "dim": index.dim,
        "max_norm": index.max_norm,
        "ef_search": index.ef_search,
        "build_seconds": round(float(build_seconds), 3),
    }


def read_item_index(location: Path, entry: Mapping[str, Any], item_ids: Sequence[str], vectors: np.ndarray) -> ItemIndex:
    """The stored index of ``entry`` (pulled, checksummed, read), checked to hold exactly these items."""
    import faiss

    name, sha = _checked_entry(entry)
    path = paths.inside(location, name, what="item index file")
    _verify(path, sha)
    try:
        stored = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexIntegrityError(f"{path} is not a FAISS index FAISS can read ({exc}); {REBUILD}") from exc
    try:
        index = ItemIndex.from_faiss(stored, item_ids, kind=entry["kind"], dim=int(entry["dim"]),
                                     ef_search=int(entry["ef_search"]), max_norm=entry["max_norm"])
    except ValueError as exc:
        raise IndexIntegrityError(f"{path} does not fit this version: {exc}; {REBUILD}") from exc
    if not index.holds(vectors):
        raise IndexIntegrityError(f"{path} holds other item vectors than the version's fit; {REBUILD}")
    return index


def remove_stale_files(location: Path, keep: str | None) -> None:
    """Delete item index files of earlier builds of this version (here and in the store)."""
    names = {p.name for p in location.glob("items-*.faiss")} | {n for n in mirror.listing(location) if "/" not in n}
    for name in sorted(names):
        if FILE_NAME.fullmatch(name) and name != keep:
            mirror.delete(location / name)
            (location / name).unlink(missing_ok=True)


def attach(model: Any, index: ItemIndex) -> None:
    """Hand ``index`` (checked against ``model``) to the next ``LiveVersion`` made from ``model``."""
    _ATTACHED[model] = index


def take(model: Any) -> ItemIndex | None:
    """The index attached to ``model``, once (a second ``LiveVersion`` of it builds its own)."""
    return _ATTACHED.pop(model, None)


def _checked_entry(entry: Mapping[str, Any]) -> tuple[str, str]:
    """The file name and sha256 of a manifest entry, refused by name unless well-formed."""
    if not isinstance(entry, Mapping):
        raise IndexIntegrityError(f"the manifest's item_index is not an object: {entry!r}; {REBUILD}")
    missing = sorted(_ENTRY_KEYS - set(entry))
    if missing:
        raise IndexIntegrityError(f"the manifest's item_index lacks {', '.join(missing)}; {REBUILD}")
    name = entry["file"]
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        raise IndexIntegrityError(f"the manifest's item_index file {name!r} is not an items-<16 hex>.faiss name")
    if entry["kind"] not in KINDS:
        raise IndexIntegrityError(f"the manifest's item_index kind {entry['kind']!r} is not one of {', '.join(KINDS)}")
    try:
        sha = paths.hex_digest(entry["sha256"], "the manifest's item_index sha256")
    except ValueError as exc:
        raise IndexIntegrityError(str(exc)) from exc
    if not name.startswith(f"items-{sha[:16]}"):
        raise IndexIntegrityError(f"the manifest's item_index file {name} is not named by its sha256 {sha[:16]}...")
    return name, sha


def _verify(path: Path, sha: str) -> None:
    """The file is here (pulled if need be) with this sha256; a bad cached copy is fetched again once."""
    if not mirror.pull(path):
        raise IndexIntegrityError(f"{path} is missing: the version's manifest names it as its item index; {REBUILD}")
    actual = _sha256_file(path)
    if actual != sha and mirror.remote() is not None and mirror.pull(path, refresh=True):
        actual = _sha256_file(path)
    if actual != sha:
        raise IndexIntegrityError(f"{path} fails its checksum (manifest sha256 {sha[:16]}..., file {actual[:16]}...): "
                                  f"the item index is corrupt or truncated; {REBUILD}")


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
