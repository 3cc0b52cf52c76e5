"""Tombstones and compaction: deletes stay exact in index types that cannot remove.

``IndexHNSWFlat`` cannot remove a vector, nor can ``ivfpq``'s ``IndexRefine`` (the same
machinery serves both: ``kinds.POSITIONAL_KINDS``). An upsert adds the new vector under a new label
and tombstones the old label, a delete tombstones; a tombstoned label leaves the id map
at once and is excluded inside FAISS's search by an ``IDSelector`` over a bitmap of dead
labels. When the dead share passes ``IndexSpec.max_dead_fraction`` the graph is rebuilt
from the live vectors alone (``compact``) without holding the write lock while it builds
(issue 21): see ``lockstep.index.vector_index`` for the whole story.

``HnswCompaction`` is the part of ``VectorIndex`` that does this, kept in its own module
by concept: a mixin over the index's own state (its lock, id maps, labels and storage),
which only ``VectorIndex`` inherits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lockstep.core.errors import LockstepError
from lockstep.index.faiss_ops import all_cores, set_bits
from lockstep.index.kinds import POSITIONAL_KINDS, empty_like

COMPACT_CHUNK = 65_536  # live vectors copied per read-lock hold while a compaction builds (~64 MB at 256-d)
SWAP_REPLAY_MAX = 1_024  # records added during a compaction that the swap itself may add under the write lock


@dataclass
class _Compacted:
    """The copy a compaction builds off the lock: a new graph and its id maps, not yet in place.

    ``carried`` holds the old labels of its vectors in new-label order (ascending), so an
    old label's new one is its position; ``scanned_to`` is the first old label not yet
    looked at.
    """

    faiss: Any
    carried: list[int]
    id_of: dict[int, str]
    label_of: dict[str, int]
    scanned_to: int


class HnswCompaction:
    """Tombstones and the off-lock rebuild of an HNSW graph (a mixin of ``VectorIndex``)."""

    def compact(self, *, chunk: int = COMPACT_CHUNK) -> bool:
        """Rebuild a positional index (HNSW, ivfpq) from its live vectors only; True if it did (no-op for others).

        Searches and writes go on meanwhile: the build holds no lock (see the module
        docstring), so it runs in the calling thread for as long as a fresh build of the
        live vectors takes. A call while another compaction runs returns False at once.
        """
        if chunk < 1:
            raise LockstepError(f"compaction chunk must be at least 1 vector, got {chunk}")
        if self.spec.kind not in POSITIONAL_KINDS or not self._compacting.acquire(blocking=False):
            return False
        try:
            return self._compact_by_copy(chunk)
        finally:
            self._journal = None
            self._compacting.release()

    def _mark_dead(self, labels: np.ndarray) -> None:
        """Tombstone labels (write lock held); the bitmap is updated in place when it fits.

        While a compaction builds, the labels also go to its journal: the copy it swaps
        in must tombstone them too.
        """
        self._dead.update(labels.tolist())
        journal = self._journal
        if journal is not None:
            journal.extend(labels.tolist())
        if self._dead_selector is not None:
            bitmap = self._dead_selector[0]
            if int(labels.max()) >> 3 < len(bitmap):
                set_bits(bitmap, labels)
            else:
                self._dead_selector = None  # outgrown: rebuilt, larger, at the next search

    def _live_selector(self) -> Any:
        """An IDSelector accepting every label not tombstoned (a bitmap: O(1) per test).

        Built once under the read lock and then kept in step by ``_mark_dead`` under the
        write lock; a search never sees it change. Sized with room to grow.
        """
        import faiss

        if self._dead_selector is None:
            bitmap = np.zeros(self._next_label // 4 + 64, dtype=np.uint8)
            set_bits(bitmap, np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)))
            dead = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            self._dead_selector = (bitmap, dead, faiss.IDSelectorNot(dead))
        return self._dead_selector[2]

    def _compact_if_due(self) -> None:
        """Compact after a write (no lock held) once the dead share passes the threshold.

        Read without the lock: a stale answer only means this write or the next one
        starts it, and ``compact`` checks again under the lock.
        """
        if self.spec.kind in POSITIONAL_KINDS and self._dead and self.dead_fraction > self.spec.max_dead_fraction:
            self.compact()

    def _compact_by_copy(self, chunk: int) -> bool:
        """A new graph over the live vectors, labelled 0..n-1 in their old label order, swapped in.

        Only ``_swap_locked`` holds the write lock; everything else holds the read lock
        for one block copy at a time, or no lock. Costs what a fresh build of the live
        vectors costs (191 s for 1M 256-d vectors on 2 cores) and holds the old graph
        and the new one at once until the swap.
        """
        with self._lock.read():
            if not self._dead:
                return False
            labels = np.array(sorted(self._id_of), dtype=np.int64)
            ids = [self._id_of[label] for label in labels.tolist()]
            scanned_to = self._next_label
            self._journal = []  # writers are shut out while the read lock is held: none is missed
        self._hook("snapshot")
        new = empty_like(self._faiss, self.spec, self.dim)  # ivfpq keeps its trained cells and codebooks
        for start in range(0, len(labels), chunk):
            with self._lock.read():
                block = self._stored_rows(labels[start : start + chunk])  # a copy: valid after release
            with all_cores():
                new.add(block)
            del block
            self._hook("chunk")
        carried = labels.tolist()
        while True:  # records added meanwhile: copied off the lock too while there are many
            with self._lock.read():
                tail, tail_ids, end = self._live_since(scanned_to)
                if len(tail) <= SWAP_REPLAY_MAX:
                    break
                block = self._stored_rows(np.array(tail, dtype=np.int64))
            with all_cores():
                new.add(block)
            carried.extend(tail)
            ids.extend(tail_ids)
            scanned_to = end
        id_of = dict(enumerate(ids))
        label_of = {rid: label for label, rid in id_of.items()}  # a record replaced meanwhile: its newest label
        self._hook("built")
        with self._lock.write():
            self._swap_locked(_Compacted(new, carried, id_of, label_of, scanned_to))
        return True

    def _live_since(self, first: int) -> tuple[list[int], list[str], int]:
        """Live labels from ``first`` to the newest, their ids, and the next label (lock held)."""
        end = self._next_label
        labels = [label for label in range(first, end) if label in self._id_of]
        return labels, [self._id_of[label] for label in labels], end

    def _swap_locked(self, built: _Compacted) -> None:
        """Bring the copy level with the index and put it in place (write lock held).

        Adds the records added since the copy's last catch-up, tombstones the copied
        labels that died during the build (the journal), then swaps graph and maps.
        """
        tail, tail_ids, _ = self._live_since(built.scanned_to)
        if tail:
            with all_cores():
                built.faiss.add(self._stored_rows(np.array(tail, dtype=np.int64)))
        carried = np.array(built.carried, dtype=np.int64)
        died = np.unique(np.array(self._journal or [], dtype=np.int64))
        at = np.searchsorted(carried, died)
        inside = at < len(carried)
        dead_new = at[inside][carried[at[inside]] == died[inside]]
        for label in dead_new.tolist():  # tombstones first: a record replaced meanwhile is re-added below
            rid = built.id_of.pop(label)
            if built.label_of.get(rid) == label:
                del built.label_of[rid]
        first_new = len(carried)
        for offset, rid in enumerate(tail_ids):
            built.id_of[first_new + offset] = rid
            built.label_of[rid] = first_new + offset
        next_label = first_new + len(tail)
        live = len(self._label_of)
        if built.faiss.ntotal != next_label or len(built.id_of) != live or len(built.label_of) != live:
            raise LockstepError("a compaction came out of step with the index's id map; the old graph stays in place")
        self._faiss = built.faiss
        self._id_of, self._label_of = built.id_of, built.label_of
        self._next_label = next_label
        self._dead = set(dead_new.tolist())
        self._dead_selector = None

    def _hook(self, stage: str) -> None:
        hook = self.compaction_hook
        if hook is not None:
            hook(stage)
