"""Slots in memory: one version's model and index, loaded together and caught up together.

A ``LoadedSlot`` is one model version and its index version in memory, always used
together: a request that picked the slot embeds its query with that slot's model and
searches that slot's index, so a query and an index of different vector spaces can
never meet. Its files are opened by ``lockstep.index.slot_files``, as the batch job and
a re-embed open them.

Live writes reach every loaded slot through the change log: each slot remembers the
last sequence it applied and catches up from there in order under its own lock
(``catch_up_slot``). A failed apply leaves the sequence where it was, so the next
catch-up repairs it.

``SearchSlots`` is the search system's ``SlotSystem``: what the slot manager
(``serving.slot_manager``) loads for a routing row and catches up from the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from lockstep.core.errors import FingerprintMismatchError, IndexIntegrityError, RegistryError
from lockstep.core.faults import maybe_fail
from lockstep.index.catch_up import apply_changes
from lockstep.index.slot_files import SlotLoadError, open_index, open_model
from lockstep.index.vector_index import SearchHits
from lockstep.model.contract import SLOW, Embedder, embed_cost
from lockstep.serving.query_batches import QueryBatcher
from lockstep.serving.search_batches import SearchBatcher
from lockstep.serving.search_batches import one_openmp_thread as _one_openmp_thread
from lockstep.serving.slow_slots import SlotPool
from lockstep.store.records import Change, RecordStore
from lockstep.store.routing import SlotRow

log = logging.getLogger("lockstep.serving")

CATCH_UP_PAGE = 2000
# A flat index up to this size answers in about a millisecond: searched on the event loop
# like an ANN index. Larger flat indexes are searched in the thread pool.
FAST_FLAT_RECORDS = 50_000


# --- one slot in memory ---------------------------------------------------------------------


class ServingSlot:
    """One version in memory with in-flight accounting: what every system's slot shares.

    ``acquire`` fails once the slot is retiring, so no request can start on a slot
    that is about to be unloaded; the last ``release`` after ``retire`` unloads it
    (``_drop`` lets go of the version's data). ``applied_seq`` is the last change-log
    sequence the slot has applied, under ``apply_lock``.
    """

    def __init__(self, row: SlotRow, *, fingerprint: str, index_version: str, applied_seq: int) -> None:
        self.version = row.model_version
        self.identity = row.identity
        self.model_uri = row.model_uri
        self.fingerprint = fingerprint
        self.index_version = index_version
        self.applied_seq = int(applied_seq)
        self.loaded_at = time.time()
        self.fast = True
        self.apply_lock = threading.Lock()
        self.unloaded = threading.Event()
        self._lock = threading.Lock()
        self._inflight = 0
        self._retiring = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(v{self.version}, applied_seq={self.applied_seq}, inflight={self._inflight})"

    @property
    def size(self) -> int:
        """How many items the slot serves (records, or a recommender's items), for the log."""
        return 0

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def retiring(self) -> bool:
        return self._retiring

    def acquire(self) -> bool:
        with self._lock:
            if self._retiring:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            unload = self._retiring and self._inflight == 0
        if unload:
            self._unload()

    @contextmanager
    def lease(self) -> Iterator[bool]:
        """``with slot.lease() as ok:`` -- ``ok`` is False if the slot is leaving service."""
        ok = self.acquire()
        try:
            yield ok
        finally:
            if ok:
                self.release()

    def retire(self) -> None:
        """Take no new requests; unload now if idle, else when the last one ends."""
        with self._lock:
            if self._retiring:
                return
            self._retiring = True
            unload = self._inflight == 0
        if unload:
            self._unload()

    def _unload(self) -> None:
        self._drop()
        self.unloaded.set()
        log.info("slot v%s unloaded", self.version)

    def _drop(self) -> None:
        """Let go of the version's data (the model, the index)."""


class LoadedSlot(ServingSlot):
    """A search version in memory: its embedding model and its index, always used together."""

    def __init__(self, row: SlotRow, embedder: Embedder, loaded: Any) -> None:
        super().__init__(
            row,
            fingerprint=embedder.fingerprint,
            index_version=str(loaded.manifest.model_version),
            applied_seq=int(loaded.applied_seq),
        )
        self.embedder: Embedder | None = embedder
        self.index = loaded.index
        # A slow model (an imported pyfunc, a transformer) embeds concurrent queries together,
        # on its own bounded pool once the runtime gives it one (``attach_pool``).
        self.cost = embed_cost(embedder)
        self.batcher = QueryBatcher(getattr(embedder, "embed_queries", embedder.transform)) if self.cost == SLOW else None  # onnx_text: the query prefix
        self.pool: SlotPool | None = None
        spec = getattr(self.index, "spec", None)
        self.fast = getattr(spec, "kind", "flat") != "flat" or len(self.index) <= FAST_FLAT_RECORDS
        # Concurrent searches of this version go to its index as one FAISS call (``search_batches``).
        self.searches = SearchBatcher(self._search_many, version=self.version, inline=self.fast)

    @property
    def size(self) -> int:
        return len(self.index) if self.index is not None else 0

    def attach_pool(self, pool: SlotPool) -> None:
        """Run this slow slot's query embeds and searches on ``pool`` (its own threads)."""
        self.pool = pool
        if self.batcher is not None:
            self.batcher.run = pool.run
        self.searches.run = pool.run

    def _drop(self) -> None:
        self.embedder = None
        self.index = None
        if self.pool is not None:
            self.pool.close()

    def search(self, query: str, k: int, *, wait: bool = True) -> SearchHits | None:
        """Embed with this slot's model, search this slot's index (call while holding a lease).

        ``wait=False`` is for the event loop: None at once, instead of a wait, while a
        writer holds or awaits the index's lock (see ``search_vector``).
        """
        return self.search_vector(self.embedder.embed_query(query), k, wait=wait)

    def search_vector(self, vector: Any, k: int, *, wait: bool = True) -> SearchHits | None:
        """Search this slot's index with a query this slot's model embedded (``batcher`` or ``search``).

        With ``wait`` (the default; worker threads) it waits while a writer holds the
        index's lock and always returns hits. Without, it returns None at once then:
        the event loop must never wait on an index lock, or every request of the
        process, ``/healthz`` included, waits with it (issue 21).
        """
        maybe_fail("serving.search", self.version)  # LOCKSTEP_FAULTS="serving.search:<version>*" breaks a version
        _one_openmp_thread()
        if not vector.any():  # no known term: every score would be 0, an arbitrary list
            return SearchHits()
        found = self.index.search(vector, k) if wait else self.index.try_search(vector, k)
        return None if found is None else found[0]

    def search_vectors(self, queries: Any, k: int, *, wait: bool = True) -> list[SearchHits] | None:
        """One FAISS call for many queries this slot's model embedded (the ``searches`` batcher's).

        No fault injection and no thread setting here: the batcher makes both per request
        and per batch. ``wait=False``: None at once while a writer holds or awaits the lock.
        """
        return self.index.search(queries, k) if wait else self.index.try_search(queries, k)

    def _search_many(self, queries: Any, k: int, *, wait: bool = True) -> list[SearchHits] | None:
        return self.search_vectors(queries, k, wait=wait)  # looked up per call: a test may replace it


def load_slot(row: SlotRow, store: RecordStore, tracking_uri: str | None = None) -> LoadedSlot:
    """Load a slot's model and index, check they share one vector space, and catch up.

    Both are opened as the batch job opens them (``index.slot_files``): the model checked
    against the row's fingerprint, the index by its checksums and fingerprint.
    """
    embedder = open_model(row, tracking_uri)
    slot = LoadedSlot(row, embedder, open_index(row))
    catch_up_slot(slot, store)
    return slot


def catch_up_slot(
    slot: LoadedSlot,
    store: RecordStore,
    *,
    page: int = CATCH_UP_PAGE,
    on_applied: Callable[[Sequence[Change]], None] | None = None,
) -> int | None:
    """Apply every change after the slot's sequence, in order; None if the slot is retiring.

    The sequence advances page by page, so a failure keeps what was applied and the
    next call starts exactly where this one stopped. Everything pending goes in one
    ``apply_changes`` per page: one ``transform`` call for many writes. ``on_applied``
    gets each page once it is applied (the appliers measure the lag with it).
    """
    with slot.lease() as ok:
        if not ok:
            return None
        _one_openmp_thread()
        with slot.apply_lock:
            while True:
                batch = store.changes_since(slot.applied_seq, limit=page)
                if not batch:
                    break
                slot.applied_seq = apply_changes(slot.index, slot.embedder, batch)
                if on_applied is not None:
                    on_applied(batch)
                if len(batch) < page:
                    break
            return slot.applied_seq


# --- slots as the slot manager sees them: loaded by a system, or failed with a reason ---------


def error_category(exc: BaseException) -> str:
    """A short, public name for why a slot cannot load (the full error goes to the log only)."""
    if isinstance(exc, FingerprintMismatchError):
        return "fingerprint_mismatch"
    if isinstance(exc, IndexIntegrityError):
        return "index_integrity"
    if isinstance(exc, RegistryError):
        return "registry_error"
    if isinstance(exc, SlotLoadError):
        return "model_unavailable"
    if isinstance(exc, OSError):
        return "file_unavailable"
    return "load_failed"


class SlotSystem(Protocol):
    """What the slot manager needs of a system: load a slot, apply its change log, the log's head."""

    def load(self, row: SlotRow) -> ServingSlot: ...

    def catch_up(self, slot: Any, on_applied: Callable[[Sequence[Any]], None] | None = None) -> int | None: ...

    def head(self) -> int: ...


class SearchSlots:
    """The search system: a slot is an embedding model and its index; the log is the record store's."""

    def __init__(self, store: RecordStore, tracking_uri: str | None = None) -> None:
        self.store = store
        self.tracking_uri = tracking_uri

    def load(self, row: SlotRow) -> LoadedSlot:
        return load_slot(row, self.store, self.tracking_uri)

    def catch_up(self, slot: LoadedSlot, on_applied: Callable[[Sequence[Change]], None] | None = None) -> int | None:
        return catch_up_slot(slot, self.store, on_applied=on_applied)

    def head(self) -> int:
        return self.store.head()
