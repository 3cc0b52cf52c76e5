"""One serving version as the batch job sees it: its vectors at one input sequence.

- **search** (``SearchWorld``): the version's own FAISS index, loaded from its index
  folder (checksums and fingerprint checked) and caught up with the change log through
  sequence T using the version's own model, both opened as a serving replica opens them
  (``index.slot_files``). Every record's stored vector is then its query for "related
  records".
- **recommender** (``RecommenderWorld``): the version's fit (user vectors and item index,
  ``recommender.live_version``), with each user's seen items, caught up with the
  interaction log through T by the fold-in serving runs (``LiveVersion.fold_in_changes``).

Worlds are cached per process by (version, fingerprint, T): under ``dag.test()`` or a
worker that runs several shards, the plan's world is loaded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lockstep.core.errors import LockstepError
from lockstep.index.catch_up import catch_up
from lockstep.index.slot_files import open_index, open_model
from lockstep.index.vector_index import VectorIndex
from lockstep.store.batch_results import RECOMMENDATIONS, RELATED
from lockstep.store.routing import SlotRow


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
    key = (RELATED, row.model_version, row.fingerprint, int(through_seq))
    if key not in _CACHE:
        _CACHE.clear()  # one world at a time: a 1M index is gigabytes
        loaded = open_index(row)
        if loaded.applied_seq > through_seq:
            raise LockstepError(
                f"the index of version {row.model_version} is already at sequence {loaded.applied_seq}, past the "
                f"batch run's {through_seq}; plan the run again"
            )
        if loaded.applied_seq < through_seq:
            catch_up(loaded.index, open_model(row), store, loaded.applied_seq, until=through_seq)
        _CACHE[key] = SearchWorld(row.model_version, row.fingerprint, int(through_seq), loaded.index)
    return _CACHE[key]


def recommender_world(row: SlotRow, store: Any, through_seq: int) -> RecommenderWorld:
    """The version's fit folded in through ``through_seq`` (cached per process)."""
    from lockstep.recommender.build import read_slot_files
    from lockstep.recommender.live_version import LiveVersion, seen_items

    key = (RECOMMENDATIONS, row.model_version, row.fingerprint, int(through_seq))
    if key not in _CACHE:
        _CACHE.clear()
        model, manifest = read_slot_files(row.index_location, row.fingerprint)
        if manifest.snapshot_seq > through_seq:
            raise LockstepError(
                f"recommender version {row.model_version} was fitted at sequence {manifest.snapshot_seq}, past the "
                f"batch run's {through_seq}; plan the run again"
            )
        live = LiveVersion(model, row.model_version)
        seen = seen_items(store, manifest.snapshot_seq)
        live.fold_in_changes(store, store.changes_since(manifest.snapshot_seq, until=through_seq), through_seq, seen)
        _CACHE[key] = RecommenderWorld(row.model_version, row.fingerprint, int(through_seq), live, seen)
    return _CACHE[key]

