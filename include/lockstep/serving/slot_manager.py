"""The replica's view of the routing table, and the manager that keeps it current.

The ``SlotManager`` makes the replica follow the routing table in the database. It
polls the generation (cheap), listens for ``NOTIFY`` on PostgreSQL, and on a change
publishes a new immutable ``ServingView``: the table plus the slots loaded for it.
Requests read the view once (one attribute read) and route from that snapshot only.
A slot leaving service is dropped from the next view at once and unloaded when its
in-flight count reaches zero, so a request in flight finishes on the slot it started on.

Live writes reach every loaded slot through the change log (``slots.catch_up_slot``):
each loaded slot has its own apply thread (``appliers.SlotApplier``) that a write on this
replica wakes at once (``written``) and that applies everything pending in one catch-up,
so a slow version never holds up a fast one; a background tail wakes the slots that are
behind the head, which is how writes made elsewhere (other replicas, Airflow tasks) arrive.

A live slot that this replica cannot load keeps its share of traffic: requests that
land on it are refused (503) rather than moved to the other live versions. Moving
them would hand a canary the champion's share (5 % becoming 100 % on that replica)
whenever the champion fails to load. During a database outage the background loops
back off and log once when they start failing and once when they recover.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy import Engine

from lockstep.serving.appliers import SlotApplier, wait_all
from lockstep.serving.outage import Outage, summary
from lockstep.serving.slots import LoadedSlot, SearchSlots, SlotSystem, error_category
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
    cost: str | None = None  # "fast" | "slow" (``model.contract.embed_cost``) once loaded
    lag_seq: int | None = None  # changes this replica knows of that the slot has not applied
    lag_seconds: float | None = None  # commit to applied, of the last change the slot applied


@dataclass
class _Failure:
    identity: tuple[str, str, str, str]
    error: str
    attempts: int
    retry_at: float
    category: str = "load_failed"


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
        on_lag: Callable[[str, Sequence[float]], None] | None = None,
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
        self.head_seen = 0  # the highest change-log sequence this replica has seen committed
        self.on_lag = on_lag
        self._appliers: dict[str, SlotApplier] = {}
        self._running = False
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
        with self._lock:
            self._running = True
            for slot in self._loaded.values():
                self._start_applier(slot)
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
        with self._lock:
            self._running = False
            appliers = list(self._appliers.values())
            self._appliers.clear()
        for applier in appliers:
            applier.stop(timeout)
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
            self._stop_applier(slot)
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
            if self._running:
                self._start_applier(slot)
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

    def _start_applier(self, slot: LoadedSlot) -> None:
        """Give ``slot`` its apply thread (under ``_lock``) and let it catch up at once."""
        old = self._appliers.get(slot.version)
        if old is not None and old.slot is slot:
            return
        if old is not None:
            old.stop(0)
        applier = SlotApplier(slot, self.system.catch_up, on_error=self._apply_failed,
                              on_ok=self.health["catch_up"].ok, on_lag=self.on_lag)
        self._appliers[slot.version] = applier.start()
        applier.wake()

    def _stop_applier(self, slot: LoadedSlot) -> None:
        applier = self._appliers.get(slot.version)
        if applier is not None and applier.slot is slot:
            del self._appliers[slot.version]
            applier.stop(0)  # not joined under the lock: it ends after its current catch-up

    def _apply_failed(self, slot: LoadedSlot, exc: Exception) -> None:
        self.apply_errors += 1
        self.health["catch_up"].failed(exc)
        log.debug("slot v%s: applying changes after %d failed: %s", slot.version, slot.applied_seq, summary(exc))

    def _catch_up_here(self, slot: LoadedSlot) -> None:
        """Catch ``slot`` up on the calling thread (a slot without an apply thread of its own)."""
        try:
            self.system.catch_up(slot)
        except Exception as exc:  # the sequence stays put: the next catch-up repairs it
            self._apply_failed(slot, exc)

    def appliers(self) -> dict[str, SlotApplier]:
        """The apply thread of each loaded slot, by version."""
        with self._lock:
            return dict(self._appliers)

    def written(self, seq: int) -> None:
        """A write on this replica committed ``seq``: wake every slot's applier (no timer)."""
        self.head_seen = max(self.head_seen, int(seq))
        for applier in self.appliers().values():
            applier.wake()

    def wait_applied(self, seq: int, timeout: float) -> tuple[list[str], list[str]]:
        """Wait (bounded) until every loaded slot has applied ``seq``: (applied, pending) versions.

        A slot without an apply thread (the manager not started) is caught up right here.
        """
        appliers = self.appliers()
        inline = [slot for version, slot in self.loaded().items() if version not in appliers]
        applied, pending = wait_all(list(appliers.values()), seq, timeout)
        for slot in inline:
            self._catch_up_here(slot)
            (applied if slot.applied_seq >= seq else pending).append(slot.version)
        return sorted(applied, key=version_key), sorted(pending, key=version_key)

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
        for applier in self.appliers().values():  # waiters for what this call applied
            applier.applied.advanced()
        return done

    def _tail(self) -> None:
        health = self.health["tail"]
        delay = self.tail_interval
        while not self._stop.wait(delay):
            try:
                head = self.system.head()
                self.head_seen = max(self.head_seen, head)
                appliers = self.appliers()
                for version, slot in self.loaded().items():
                    if slot.applied_seq >= head:
                        continue
                    if version in appliers:
                        appliers[version].wake()  # each slot applies on its own thread
                    else:
                        self._catch_up_here(slot)  # only this slot: the others have their threads
            except Exception as exc:
                delay = health.failed(exc)
            else:
                delay = health.ok()

    # --- status ----------------------------------------------------------------------------

    def status(self) -> list[SlotStatus]:
        with self._lock:
            table, loaded, failures = self._table, dict(self._loaded), dict(self._failures)
            appliers = dict(self._appliers)
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
                    cost=getattr(slot, "cost", None) if slot else None,
                    lag_seq=max(0, self.head_seen - slot.applied_seq) if slot else None,
                    lag_seconds=appliers[row.model_version].last_lag if slot and row.model_version in appliers else None,
                )
            )
        return out

    def draining(self) -> list[LoadedSlot]:
        with self._lock:
            self._draining = [s for s in self._draining if not s.unloaded.is_set()]
            return list(self._draining)


def version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
