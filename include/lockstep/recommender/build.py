"""A recommender version's serving files, and its slot in the recommender's routing table.

The recommender's counterpart of the re-embed: a version is one fit (user and item
factors from the same solve), so "building" it writes the fit, its **item index** (built
here, once: an HNSW graph over a million items takes minutes; ``item_index_file``) and a
manifest naming both in the version's folder of the index store, and registers the slot.
Serving reads the item index file and builds the user-vector store from the fit when it
loads the slot (no index build: seconds at a million items), then folds in every
interaction logged after the fit's snapshot, so no interaction is lost between the fit
and the version going live (the recommender's catch-up).

A manifest of format ``/1`` (written before the item index was stored) still loads: its
item index is built at load, as it was then.

Run it with ``LOCKSTEP_SYSTEM=recommender`` (``lockstep index build --system recommender``):
the routing table is the recommender deployment's own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lockstep.core import clock
from lockstep.core.atomic import atomic_write
from lockstep.core.errors import IndexIntegrityError
from lockstep.index import mirror
from lockstep.index.storage import index_location, published_location
from lockstep.model.integrity import checksum_path
from lockstep.model.registry import Registry
from lockstep.recommender import item_index_file
from lockstep.recommender.factorization import ALSRecommender
from lockstep.recommender.registration import load_version, recommender_registry

MODEL_FILE = "model"  # ALSRecommender.save: the fit, with its .sha256 sidecar
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "lockstep.recommender-slot/2"
READABLE_FORMATS = ("lockstep.recommender-slot/1", MANIFEST_FORMAT)  # /1: no stored item index


@dataclass(frozen=True)
class RecommenderManifest:
    """What a recommender version's folder holds, checked when serving loads it."""

    model_version: str
    fingerprint: str
    snapshot_seq: int  # interactions up to this sequence are in the fit; later ones are folded in
    users: int
    items: int
    dim: int
    built_at: str
    format: str = MANIFEST_FORMAT
    item_index: dict[str, Any] | None = None  # item_index_file's entry: file, sha256, kind, ...; None in /1


def build_version(
    version: str | int,
    *,
    registry: Registry | None = None,
    engine: Any = None,
    promote_if_first: bool = True,
) -> RecommenderManifest:
    """Register the slot (``loading``), write the fit and its manifest, mark it ``ready``.

    The first version with serving files becomes the champion at 100 %, as for search.
    """
    from lockstep.store import routing

    registry = registry or recommender_registry()
    info = registry.get_version(version)
    location = index_location(registry.model_name, info.version)
    public = published_location(registry.model_name, info.version)  # what every host resolves
    model_uri = f"models:/{registry.model_name}/{info.version}"
    routing.register_slot(info.version, model_uri, public, info.fingerprint, state="loading", engine=engine)
    model, info = load_version(info.version, registry)
    manifest = write_slot_files(location, model, info.version, info.snapshot_seq or 0)
    routing.set_state(info.version, "ready", note=f"recommender fit: {manifest.users} users, {manifest.items} items", engine=engine)
    registry.set_tags(info.version, {"lockstep.index_location": public})
    if promote_if_first and registry.version_for_alias("champion") is None:
        routing.set_weights({info.version: 100}, reason="first champion", actor="lockstep", engine=engine)
        registry.promote_champion(info.version, reason="first valid recommender with serving files")
    return manifest


def write_slot_files(location: Path, model: ALSRecommender, version: str, snapshot_seq: int,
                     *, index_kind: str = "auto") -> RecommenderManifest:
    """The fit, its item index and their manifest in ``location`` (each written atomically, the manifest last)."""
    location.mkdir(parents=True, exist_ok=True)
    model.save(location / MODEL_FILE)
    entry = item_index_file.build_and_write(location, model.item_ids_, model.item_factors_, index_kind)
    manifest = RecommenderManifest(
        model_version=str(version),
        fingerprint=model.fingerprint,
        snapshot_seq=int(snapshot_seq),
        users=len(model.user_ids_),
        items=len(model.item_ids_),
        dim=model.dim_,
        built_at=clock.now_iso(),
        item_index=entry,
    )
    atomic_write(location / MANIFEST_FILE, json.dumps(asdict(manifest), indent=2))
    mirror.push(location / MODEL_FILE)
    mirror.push(checksum_path(location / MODEL_FILE))  # the sidecar ALSRecommender.load checks
    mirror.push(location / MANIFEST_FILE)  # last, as for a search index
    item_index_file.remove_stale_files(location, keep=entry["file"])  # an earlier build's index
    return manifest


def read_slot_files(location: str | Path, expected_fingerprint: str) -> tuple[ALSRecommender, RecommenderManifest]:
    """Open a version's folder: the manifest, the fit (checked by sha256 and fingerprint), its item index.

    The stored item index (checked by sha256 and against the fit's item vectors) is
    attached to the returned model: ``LiveVersion(model)`` takes it instead of building.
    """
    location = mirror.working_dir(location)
    path = location / MANIFEST_FILE
    if mirror.pull(path, refresh=True):
        mirror.pull_path(location / MODEL_FILE)  # an object store: into this host's cache
        mirror.pull(checksum_path(location / MODEL_FILE), refresh=True)
    if not path.is_file():
        raise IndexIntegrityError(f"{location} has no {MANIFEST_FILE}: the recommender version was not built there")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") not in READABLE_FORMATS:
        raise IndexIntegrityError(f"{path} is not a recommender manifest ({' or '.join(READABLE_FORMATS)})")
    if data["format"] == MANIFEST_FORMAT and not data.get("item_index"):
        raise IndexIntegrityError(f"{path} names no item index; {item_index_file.REBUILD}")
    manifest = RecommenderManifest(**data)
    if manifest.fingerprint != expected_fingerprint:
        from lockstep.core.errors import FingerprintMismatchError

        raise FingerprintMismatchError(
            f"{location} was built by fingerprint {manifest.fingerprint}, the slot is {expected_fingerprint}"
        )
    model = ALSRecommender.load(location / MODEL_FILE)
    if model.fingerprint != manifest.fingerprint:
        raise IndexIntegrityError(f"{location}: the fit's fingerprint {model.fingerprint} is not the manifest's")
    if manifest.item_index is not None:
        index = item_index_file.read_item_index(location, manifest.item_index, model.item_ids_, model.item_factors_)
        item_index_file.attach(model, index)
    return model, manifest
