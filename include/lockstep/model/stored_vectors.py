"""Vectors a version's published index already holds, as the offline evaluation takes them.

Re-embedding the champion's side of an evaluation costs as much as embedding the whole
evaluation set with it (849 s for 18,425 texts with a transformer on 2 cores), although its
index holds those vectors already. The index layer reads them (``lockstep.index.champion_vectors``),
the training layer decides which of them still match the evaluation's texts
(``lockstep.training.champion_side``); this module is the plain value that travels between
the two, so neither layer imports the other.

Only an index that stores the vectors *exactly* can stand in for embedding: flat
(``IndexFlatIP``), HNSW (``IndexHNSWFlat``) and IVF (``IndexIVFFlat``) keep every
vector as it was added, bit for bit. A quantised index (PQ, SQ8, ...) reconstructs
approximations, so a reader returns no vectors for it and the evaluation embeds instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from lockstep.model.registry import ModelVersionInfo


@dataclass(frozen=True)
class StoredVectors:
    """Some records' vectors as a version's index holds them, current up to ``applied_seq``.

    ``ids[i]`` owns row ``i`` of ``vectors``; records the index does not hold are absent.
    """

    model_version: str
    ids: list[str]
    vectors: np.ndarray  # (len(ids), dim) float32
    applied_seq: int  # the last change-log sequence the index reflects
    index_kind: str
    location: str

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise ValueError(f"stored vectors of shape {self.vectors.shape} for {len(self.ids)} ids")


class StoredVectorReader(Protocol):
    """Reads the vectors of ``ids`` from the published index of a version.

    Returns the vectors found, or a sentence saying why there are none to reuse (no
    published index, an index type that stores approximate vectors, unreadable files).
    """

    def __call__(self, info: ModelVersionInfo, ids: Sequence[str]) -> StoredVectors | str: ...
