"""The champion's vectors as its published index holds them, for the offline evaluation.

``read_stored_vectors`` is a ``lockstep.model.stored_vectors.StoredVectorReader``: the
retrain's evaluation (``lockstep.training.steps.evaluate``) and the evaluation of an
imported version (``lockstep.training.imports``) take the champion's vectors from here
for every evaluation text its index already holds unchanged, and embed only the rest.

Only a *published* index counts (its slot ``ready``, ``live`` or ``draining``, or no slot
but the version's ``lockstep.index_location`` tag that ``publish`` writes): a load in
progress is half an index. Only exact storage counts (``EXACT_KINDS``): flat, HNSW-flat
and IVF-flat keep each vector as it was added; any other kind (a quantised index
reconstructs approximations) gives no vectors, and the evaluation embeds instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lockstep.core.errors import LockstepError
from lockstep.model.stored_vectors import StoredVectors

if TYPE_CHECKING:
    from lockstep.model.registry import ModelVersionInfo

# IndexIDMap2(IndexFlatIP), IndexHNSWFlat, IndexIVFFlat, and ivfpq's re-rank copy: each stores the
# added float32 vector itself.
EXACT_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
INDEX_LOCATION_TAG = "lockstep.index_location"  # written by lockstep.index.steps.publish


def read_stored_vectors(info: ModelVersionInfo, ids: Sequence[str], engine=None) -> StoredVectors | str:
    """The stored vectors of ``ids`` in the published index of ``info``, or why there are none."""
    from lockstep.index.storage import load_index

    location = published_location(info, engine)
    if location is None:
        return f"v{info.version} has no published index"
    try:
        loaded = load_index(location, expected_fingerprint=info.fingerprint, model_label=f"v{info.version}")
    except LockstepError as exc:
        return f"the index of v{info.version} at {location} cannot be read ({exc})"
    kind = loaded.index.spec.kind
    if kind not in EXACT_KINDS:
        return f"the index of v{info.version} is of type {kind}, which stores approximate vectors"
    found, vectors = _rows_of(loaded.index, ids)
    return StoredVectors(
        model_version=str(info.version), ids=found, vectors=vectors, applied_seq=int(loaded.applied_seq),
        index_kind=kind, location=str(location),
    )


def published_location(info: ModelVersionInfo, engine=None) -> str | None:
    """Where the version's published index is; None while it has none (or only a load in progress)."""
    from lockstep.store import routing

    slot = routing.read_table(engine).slot(info.version)
    if slot is not None:
        published = slot.state in (routing.READY, routing.LIVE, routing.DRAINING)
        return slot.index_location if published and slot.index_location else None
    return info.tags.get(INDEX_LOCATION_TAG) or None


def _rows_of(index, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(ids found, their vectors) in one pass over the stored blocks (views, no per-vector call)."""
    wanted = set(ids)
    found: list[str] = []
    blocks: list[np.ndarray] = []
    for block_ids, block in index.iter_stored():
        rows = [row for row, rid in enumerate(block_ids) if rid in wanted]
        if rows:
            found.extend(block_ids[row] for row in rows)
            blocks.append(np.array(block[rows], dtype=np.float32))  # a copy: the block is a view
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, index.dim), dtype=np.float32)
    return found, vectors
