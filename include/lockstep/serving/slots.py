"""Loaded slots and the replica's view of the routing table.

A ``LoadedSlot`` is one model version and its index version in memory, always used
together: a request that picked the slot embeds its query with that slot's model and
searches that slot's index, so a query and an index of different vector spaces can
never meet.

The ``SlotManager`` makes the replica follow the routing table in the database. It
polls the generation (cheap), listens for ``NOTIFY`` on PostgreSQL, and on a change
publishes a new immutable ``ServingView``: the table plus the slots loaded for it.
Requests read the view once (one attribute read) and route from that snapshot only.
A slot leaving service is dropped from the next view at once and unloaded when its
in-flight count reaches zero, so a request in flight finishes on the slot it started on.

Live writes reach every loaded slot through the change log: each slot remembers the
last sequence it applied and catches up from there in order under its own lock, after
each write on this replica and from a background tail that also picks up writes made
elsewhere (other replicas, Airflow tasks). A failed apply leaves the sequence where it
was, so the next catch-up repairs it.

A live slot that this replica cannot load keeps its share of traffic: requests that
land on it are refused (503) rather than moved to the other live versions. Moving
them would hand a canary the champion's share (5 % becoming 100 % on that replica)
whenever the champion fails to load. During a database outage the background loops
back off and log once when they start failing and once when they recover.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from sqlalchemy import Engine

from lockstep.core.errors import (
    FingerprintMismatchError,
    IndexIntegrityError,
    LockstepError,
    RegistryError,
)
from lockstep.core.faults import maybe_fail
from lockstep.index.catch_up import apply_changes
from lockstep.index.storage import load_index
from lockstep.index.vector_index import SearchHits
from lockstep.model.families import Embedder, load_model_file
from lockstep.serving.batching import QueryBatcher
from lockstep.serving.outage import Outage, summary
from lockstep.store.records import RecordStore
from lockstep.store.routing import (
    NOTIFY_CHANNEL,
    SERVING_STATES,
    RoutingTable,
    SlotRow,
    pick,
    read_generation,
    read_table,
)

log = logging.getLogger("lockstep.serving")

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>[^/@]+)/?$")
CATCH_UP_PAGE = 2000
# A flat index up to this size answers in about a millisecond: searched on the event loop
# like an ANN index. Larger flat indexes are searched in the thread pool.
FAST_FLAT_RECORDS = 50_000


class SlotLoadError(LockstepError):
    """A slot's model or index cannot be put into service."""


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
        # A model without a fast single-query path (an imported pyfunc) embeds concurrent queries together.
        self.batcher = None if getattr(embedder, "FAST_QUERY", True) else QueryBatcher(embedder.transform)
        spec = getattr(self.index, "spec", None)
        self.fast = getattr(spec, "kind", "flat") != "flat" or len(self.index) <= FAST_FLAT_RECORDS

    @property
    def size(self) -> int:
        return len(self.index) if self.index is not None else 0

    def _drop(self) -> None:
        self.embedder = None
        self.index = None

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


_thread_state = threading.local()


def _one_openmp_thread() -> None:
    """Make FAISS calls from this thread single-threaded (once per thread).

    FAISS wraps even a one-query search in an OpenMP region (IndexIDMap maps the result
    labels in one). With one OpenMP team per request thread the teams oversubscribe the
    cores: measured on 2 cores, 7-11 ms of CPU per search instead of about 1.5 ms. The
    requests are the parallelism here. The setting is per calling thread in OpenMP,
    which is why it is made here and not once at start-up.
    """
    if not getattr(_thread_state, "single", False):
        import faiss

        faiss.omp_set_num_threads(1)
        _thread_state.single = True


def load_model(model_uri: str, tracking_uri: str | None = None) -> Embedder:
    """A slot's model: ``models:/<name>/<version>`` from MLflow, or a local model file or directory."""
    match = _MODELS_URI.match(model_uri.strip())
    if match:
        from lockstep.model.registry import Registry

        return Registry(tracking_uri=tracking_uri, model_name=match["name"]).load_embedder(match["version"])
    if model_uri.startswith("models:/"):
        raise SlotLoadError(
            f"model URI {model_uri!r} must name a version (models:/<name>/<version>); "
            "an alias could move under a running replica"
        )
    path = Path(model_uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise SlotLoadError(f"model file {path} does not exist")
    return load_model_file(path)


def load_slot(row: SlotRow, store: RecordStore, tracking_uri: str | None = None) -> LoadedSlot:
    """Load a slot's model and index, check they share one vector space, and catch up."""
    embedder = load_model(row.model_uri, tracking_uri)
    if embedder.fingerprint != row.fingerprint:
        raise FingerprintMismatchError(
            f"slot {row.model_version}: the model at {row.model_uri} has fingerprint {embedder.fingerprint} "
            f"but the routing table registered {row.fingerprint}; register the slot again"
        )
    loaded = load_index(row.index_location, expected_fingerprint=row.fingerprint, model_label=f"v{row.model_version}")
    slot = LoadedSlot(row, embedder, loaded)
    catch_up_slot(slot, store)
    return slot


def catch_up_slot(slot: LoadedSlot, store: RecordStore, *, page: int = CATCH_UP_PAGE) -> int | None:
    """Apply every change after the slot's sequence, in order; None if the slot is retiring.

    The sequence advances page by page, so a failure keeps what was applied and the
    next call starts exactly where this one stopped.
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
                if len(batch) < page:
                    break
            return slot.applied_seq


# --- the replica's view ---------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where one request goes: the live version the table picked, and its slot if loaded here."""

    version: str
    weight: int
    slot: LoadedSlot | None


@dataclass(frozen=True)
class ServingView:
    """One routing generation and the slots loaded for it; requests never see it change.

    ``live`` holds the loaded live slots; ``routes`` every live slot of the table with
    its weight, loaded or not, which is what requests are routed over: the share of a
    slot that is not loaded here is refused, never given to another version.
    """

    table: RoutingTable
    slots: MappingProxyType[str, LoadedSlot]
    live: tuple[tuple[LoadedSlot, int], ...] = ()
    shadows: tuple[LoadedSlot, ...] = ()
    routes: tuple[tuple[Route, int], ...] = ()

    @classmethod
    def empty(cls) -> ServingView:
        return cls(RoutingTable(generation=-1, salt=""), MappingProxyType({}))

    @property
    def generation(self) -> int:
        return self.table.generation

    def route(self, user_id: str | None) -> Route | None:
        """The version this request goes to (None if nothing is live).

        A holdback user goes to the holdback version (loaded even at weight 0), or is
        refused when this replica does not hold it: never to another version.
        """
        held = self.table.held_back(user_id)
        if held is not None:
            return Route(held, int(self.table.holdback.percent), self.slots.get(held))
        return pick(self.routes, user_id, self.table.salt)

    def choose(self, user_id: str | None) -> LoadedSlot | None:
        """The loaded slot this request goes to; None if nothing is live or it is not loaded."""
        route = self.route(user_id)
        return route.slot if route is not None else None

    @property
    def unloaded(self) -> tuple[str, ...]:
        """Live versions with weight that this replica does not hold."""
        return tuple(r.version for r, _ in self.routes if r.slot is None)

    def pinned(self, version: str) -> LoadedSlot | None:
        return self.slots.get(version.strip())


@dataclass(frozen=True)
class SlotStatus:
    """What this replica holds for one slot of the table (``GET /routing`` and metrics)."""

    model_version: str
    state: str
    weight: int
    shadow: bool
    loaded: bool
    error: str | None
    applied_seq: int | None
    inflight: int
    error_category: str | None = None  # what ``GET /routing`` shows: no paths, no internals


@dataclass
class _Failure:
    identity: tuple[str, str, str, str]
    error: str
    attempts: int
    retry_at: float
    category: str = "load_failed"


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


@dataclass
class _Threads:
    items: list[threading.Thread] = field(default_factory=list)

    def start(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.items.append(thread)

    def join(self, timeout: float) -> None:
        for thread in self.items:
            thread.join(timeout)
        self.items.clear()


class SlotSystem(Protocol):
    """What the slot manager needs of a system: load a slot, apply its change log, the log's head."""

    def load(self, row: SlotRow) -> ServingSlot: ...

    def catch_up(self, slot: Any) -> int | None: ...

    def head(self) -> int: ...


class SearchSlots:
    """The search system: a slot is an embedding model and its index; the log is the record store's."""

    def __init__(self, store: RecordStore, tracking_uri: str | None = None) -> None:
        self.store = store
        self.tracking_uri = tracking_uri

    def load(self, row: SlotRow) -> LoadedSlot:
        return load_slot(row, self.store, self.tracking_uri)

    def catch_up(self, slot: LoadedSlot) -> int | None:
        return catch_up_slot(slot, self.store)

    def head(self) -> int:
        return self.store.head()


class SlotManager:
    """Keeps the slots of the routing table loaded and the replica's view current."""

    def __init__(
        self,
        engine: Engine,
        store: RecordStore,
        *,
        tracking_uri: str | None = None,
        poll_interval: float = 0.1,
        tail_interval: float = 0.2,
        retry_after: float = 30.0,
        listen: bool = True,
        system: SlotSystem | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.tracking_uri = tracking_uri
        self.system = system or SearchSlots(store, tracking_uri)
        self.poll_interval = poll_interval
        self.tail_interval = tail_interval
        self.retry_after = retry_after
        self.listen = listen
        self.listening = False
        self.apply_errors = 0
        self._view = ServingView.empty()
        self._table = self._view.table
        self._loaded: dict[str, LoadedSlot] = {}
        self._draining: list[LoadedSlot] = []
        self._pending: set[tuple[str, str, str, str]] = set()
        self._failures: dict[str, _Failure] = {}
        self._lock = threading.RLock()
        self._loads: queue.Queue[SlotRow | None] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = _Threads()
        self.health = {
            "follower": Outage("routing follower (reading the routing table)", poll_interval),
            "tail": Outage("change-log tail", tail_interval),
            "catch_up": Outage("catch-up of loaded slots from the change log", tail_interval),
            "listener": Outage(f"LISTEN {NOTIFY_CHANNEL} (polling continues meanwhile)", 1.0),
        }

    # --- what requests read ------------------------------------------------------------

    @property
    def view(self) -> ServingView:
        return self._view

    def loaded(self) -> dict[str, LoadedSlot]:
        with self._lock:
            return dict(self._loaded)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._threads.start(self._follow, "lockstep-routing-follower")
        self._threads.start(self._load_worker, "lockstep-slot-loader")
        self._threads.start(self._tail, "lockstep-change-tail")
        if self.listen and self.engine.dialect.name == "postgresql":
            self._threads.start(self._listen, "lockstep-routing-listener")
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._loads.put(None)
        self._threads.join(timeout)

    # --- following the routing table ---------------------------------------------------

    def refresh(self, *, wait: bool = False) -> RoutingTable:
        """Read the table and publish a view for it; load missing slots (here if ``wait``)."""
        table = read_table(self.engine)
        with self._lock:
            missing = self._reconcile(table)
        for row in missing:
            if wait:
                self._load_and_install(row)
            else:
                self._loads.put(row)
        return table

    def _reconcile(self, table: RoutingTable) -> list[SlotRow]:
        """Publish ``table`` with the slots already loaded; return the slots still to load."""
        self._table = table
        wanted = {s.model_version: s for s in table.slots if s.state in SERVING_STATES}
        leaving = []
        for version, slot in list(self._loaded.items()):
            row = wanted.get(version)
            if row is None or row.identity != slot.identity:
                leaving.append(self._loaded.pop(version))
        self._publish()
        for slot in leaving:  # after publishing: no new view names them
            self._draining.append(slot)
            slot.retire()
            log.info("slot v%s left service (generation %d); unloading after %d in-flight", slot.version, table.generation, slot.inflight)
        self._draining = [s for s in self._draining if not s.unloaded.is_set()]
        for version in list(self._failures):
            if version not in wanted:
                del self._failures[version]
        now = time.monotonic()
        missing = []
        for version, row in wanted.items():
            if version in self._loaded or row.identity in self._pending:
                continue
            failure = self._failures.get(version)
            if failure is not None and failure.identity == row.identity and now < failure.retry_at:
                continue
            self._pending.add(row.identity)
            missing.append(row)
        return missing

    def _publish(self) -> None:
        table = self._table
        loaded = self._loaded
        live = tuple((loaded[s.model_version], s.weight) for s in table.live if s.model_version in loaded)
        shadows = tuple(loaded[s.model_version] for s in table.shadows if s.model_version in loaded)
        routes = tuple((Route(s.model_version, s.weight, loaded.get(s.model_version)), s.weight) for s in table.live)
        self._view = ServingView(table, MappingProxyType(dict(loaded)), live, shadows, routes)

    def _load_and_install(self, row: SlotRow) -> bool:
        try:
            started = time.perf_counter()
            slot = self.system.load(row)
        except Exception as exc:  # a broken slot must never take the replica down
            self._failed(row, exc)
            return False
        with self._lock:
            self._pending.discard(row.identity)
            current = self._table.slot(row.model_version)
            wanted = current is not None and current.state in SERVING_STATES and current.identity == row.identity
            if not wanted or row.model_version in self._loaded:
                slot.retire()
                return False
            self._loaded[row.model_version] = slot
            self._failures.pop(row.model_version, None)
            self._publish()
        log.info(
            "slot v%s in service: %d items, applied_seq %d, loaded in %.2f s",
            row.model_version, slot.size, slot.applied_seq, time.perf_counter() - started,
        )
        return True

    def _failed(self, row: SlotRow, exc: Exception) -> None:
        with self._lock:
            self._pending.discard(row.identity)
            previous = self._failures.get(row.model_version)
            attempts = previous.attempts + 1 if previous and previous.identity == row.identity else 1
            delay = min(self.retry_after * 2 ** (attempts - 1), 600.0)
            message = f"{type(exc).__name__}: {exc}"
            self._failures[row.model_version] = _Failure(
                row.identity, message, attempts, time.monotonic() + delay, error_category(exc)
            )
        log.error("slot v%s cannot be put into service (attempt %d, retry in %.0f s): %s",
                  row.model_version, attempts, delay, message)

    def _retry_due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(f.retry_at <= now for f in self._failures.values())

    def _follow(self) -> None:
        health = self.health["follower"]
        delay = self.poll_interval
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if read_generation(self.engine) != self._table.generation or self._retry_due():
                    self.refresh()
            except Exception as exc:  # keeps serving the generation it has
                delay = health.failed(exc)
            else:
                delay = health.ok()

    def _load_worker(self) -> None:
        while True:
            row = self._loads.get()
            if row is None or self._stop.is_set():
                return
            self._load_and_install(row)

    def _listen(self) -> None:
        """Wake the follower on ``NOTIFY lockstep_routing`` (PostgreSQL only)."""
        import psycopg

        health = self.health["listener"]
        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = health.interval
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening = True
                    health.ok()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake.set()
            except Exception as exc:
                delay = health.failed(exc)
            finally:
                self.listening = False
            self._stop.wait(delay)

    # --- live writes ---------------------------------------------------------------------

    def catch_up_all(self) -> dict[str, int]:
        """Bring every loaded slot up to the change log's head; returns each slot's sequence."""
        done: dict[str, int] = {}
        health = self.health["catch_up"]
        failure: Exception | None = None
        for version, slot in self.loaded().items():
            try:
                seq = self.system.catch_up(slot)
            except Exception as exc:  # the sequence stays put: the next catch-up repairs it
                self.apply_errors += 1
                failure = exc
                log.debug("slot v%s: applying changes after %d failed: %s", version, slot.applied_seq, summary(exc))
                continue
            if seq is not None:
                done[version] = seq
        if failure is None:
            health.ok()
        else:
            health.failed(failure)
        return done

    def _tail(self) -> None:
        health = self.health["tail"]
        delay = self.tail_interval
        while not self._stop.wait(delay):
            try:
                head = self.system.head()
                if any(slot.applied_seq < head for slot in self.loaded().values()):
                    self.catch_up_all()
            except Exception as exc:
                delay = health.failed(exc)
            else:
                delay = health.ok()

    # --- status ----------------------------------------------------------------------------

    def status(self) -> list[SlotStatus]:
        with self._lock:
            table, loaded, failures = self._table, dict(self._loaded), dict(self._failures)
        out = []
        for row in table.slots:
            slot = loaded.get(row.model_version)
            failure = failures.get(row.model_version)
            out.append(
                SlotStatus(
                    model_version=row.model_version,
                    state=row.state,
                    weight=row.weight,
                    shadow=row.shadow,
                    loaded=slot is not None,
                    error=failure.error if failure and failure.identity == row.identity else None,
                    applied_seq=slot.applied_seq if slot else None,
                    inflight=slot.inflight if slot else 0,
                    error_category=failure.category if failure and failure.identity == row.identity else None,
                )
            )
        return out

    def draining(self) -> list[LoadedSlot]:
        with self._lock:
            self._draining = [s for s in self._draining if not s.unloaded.is_set()]
            return list(self._draining)
