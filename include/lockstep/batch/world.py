"""One serving version as the batch job sees it: its vectors at one input sequence.

- **search** (``SearchWorld``): the version's own FAISS index, loaded from its index
  folder (checksums and fingerprint checked) and caught up with the change log through
  sequence T using the version's own model, exactly as a serving replica does. Every
  record's stored vector is then its query for "related records".
- **recommender** (``RecommenderWorld``): the version's fit (user vectors and item index,
  ``recommender.live_version``), with each user's seen items, caught up with the
  interaction log through T by the same fold-in serving runs.

Worlds are cached per process by (version, fingerprint, T): under ``dag.test()`` or a
worker that runs several shards, the plan's world is loaded once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.core.errors import FingerprintMismatchError, LockstepError
from lockstep.index.catch_up import catch_up
from lockstep.index.storage import load_index
from lockstep.index.vector_index import VectorIndex
from lockstep.store.routing import SlotRow

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>[^/@]+)/?$")


@dataclass
class SearchWorld:
    """A search version's index, holding exactly the live records as of ``through_seq``."""

    model_version: str
    fingerprint: str
    through_seq: int
    index: VectorIndex

    def all_keys(self) -> list[str]:
        return sorted(self.index.ids)


@dataclass
class RecommenderWorld:
    """A recommender version's user vectors, item index and seen items as of ``through_seq``."""

    model_version: str
    fingerprint: str
    through_seq: int
    live: Any  # lockstep.recommender.live_version.LiveVersion
    seen: dict[str, set[str]] = field(default_factory=dict)

    def all_keys(self) -> list[str]:
        return sorted(self.live.users)


_CACHE: dict[tuple[str, str, str, int], Any] = {}


def search_world(row: SlotRow, store: Any, through_seq: int) -> SearchWorld:
    """The version's index caught up through ``through_seq`` (cached per process)."""
    key = ("search", row.model_version, row.fingerprint, int(through_seq))
    if key not in _CACHE:
        _CACHE.clear()  # one world at a time: a 1M index is gigabytes
        loaded = load_index(row.index_location, expected_fingerprint=row.fingerprint, model_label=f"v{row.model_version}")
        if loaded.applied_seq > through_seq:
            raise LockstepError(
                f"the index of version {row.model_version} is already at sequence {loaded.applied_seq}, past the "
                f"batch run's {through_seq}; plan the run again"
            )
        if loaded.applied_seq < through_seq:
            catch_up(loaded.index, load_embedder(row), store, loaded.applied_seq, until=through_seq)
        _CACHE[key] = SearchWorld(row.model_version, row.fingerprint, int(through_seq), loaded.index)
    return _CACHE[key]


def recommender_world(row: SlotRow, store: Any, through_seq: int) -> RecommenderWorld:
    """The version's fit folded in through ``through_seq`` (cached per process)."""
    from lockstep.recommender.build import read_slot_files
    from lockstep.recommender.live_version import LiveVersion

    key = ("recommender", row.model_version, row.fingerprint, int(through_seq))
    if key not in _CACHE:
        _CACHE.clear()
        model, manifest = read_slot_files(row.index_location, row.fingerprint)
        if manifest.snapshot_seq > through_seq:
            raise LockstepError(
                f"recommender version {row.model_version} was fitted at sequence {manifest.snapshot_seq}, past the "
                f"batch run's {through_seq}; plan the run again"
            )
        world = RecommenderWorld(row.model_version, row.fingerprint, int(through_seq), LiveVersion(model, row.model_version))
        for chunk in store.iter_snapshot(manifest.snapshot_seq):
            for user, item in zip(chunk["user_id"], chunk["item_id"], strict=True):
                world.seen.setdefault(user, set()).add(item)
        _fold_in_since(world, store, manifest.snapshot_seq)
        _CACHE[key] = world
    return _CACHE[key]


def _fold_in_since(world: RecommenderWorld, store: Any, seq: int) -> None:
    """What serving's ``RecommenderSlot.apply`` does for the interactions in (seq, through_seq].

    A new item (unknown to the fit) is placed from all its users so far; every user who
    interacted is refolded from the whole history, and their seen items follow.
    """
    changes = store.changes_since(seq, until=world.through_seq)
    if changes.empty:
        return
    live = world.live
    for item in sorted(set(changes["item_id"])):
        if not live.fitted_item(item):
            users, values = store.users_of(item, until=world.through_seq)
            live.fold_in_item(item, users, values)
    for user in sorted(set(changes["user_id"])):
        items, values = store.interactions_of(user, until=world.through_seq)
        live.fold_in_user(user, items, values)
        world.seen[user] = set(items)


def load_embedder(row: SlotRow) -> Any:
    """The slot's model (``models:/<name>/<version>`` from MLflow, or a local file), checked
    against the fingerprint the routing table registered."""
    match = _MODELS_URI.match(row.model_uri.strip())
    if match:
        from lockstep.model.registry import Registry

        model = Registry(model_name=match["name"]).load_embedder(match["version"])
    else:
        from lockstep.model.families import load_model_file

        path = Path(row.model_uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise LockstepError(f"slot {row.model_version}: model file {path} does not exist")
        model = load_model_file(path)
    if model.fingerprint != row.fingerprint:
        raise FingerprintMismatchError(
            f"slot {row.model_version}: the model at {row.model_uri} has fingerprint {model.fingerprint}, "
            f"the routing table registered {row.fingerprint}"
        )
    return model
