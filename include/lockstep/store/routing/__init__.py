"""The routing table: which model versions serve, with what share of traffic.

One row per serving slot (a model version paired with its index version) and one
``generation`` counter. ``table`` holds the table as a value and how a request picks
its slot (buckets, holdback); ``database`` reads it and changes it, one transaction and
one generation per change. Callers use this package: ``from lockstep.store import
routing`` then ``routing.read_table()``, ``routing.set_weights(...)``, ``routing.LIVE``.
"""

from __future__ import annotations

from lockstep.store.routing.database import (
    clear_holdback,
    foreign_changes,
    history,
    read_generation,
    read_holdback,
    read_table,
    register_slot,
    set_holdback,
    set_state,
    set_weights,
)
from lockstep.store.routing.table import (
    BUCKETS,
    DRAINING,
    HOLDBACK_BUCKETS,
    HOLDBACK_MAX_PERCENT,
    LIVE,
    LOADING,
    NOTIFY_CHANNEL,
    READY,
    RETIRED,
    SERVING_STATES,
    STATES,
    WEIGHTABLE_STATES,
    HistoryEntry,
    Holdback,
    RoutingConflict,
    RoutingError,
    RoutingTable,
    SlotRow,
    bucket_of,
    pick,
    version_key,
)

__all__ = [
    "BUCKETS",
    "DRAINING",
    "HOLDBACK_BUCKETS",
    "HOLDBACK_MAX_PERCENT",
    "LIVE",
    "LOADING",
    "NOTIFY_CHANNEL",
    "READY",
    "RETIRED",
    "SERVING_STATES",
    "STATES",
    "WEIGHTABLE_STATES",
    "HistoryEntry",
    "Holdback",
    "RoutingConflict",
    "RoutingError",
    "RoutingTable",
    "SlotRow",
    "bucket_of",
    "clear_holdback",
    "foreign_changes",
    "history",
    "pick",
    "read_generation",
    "read_holdback",
    "read_table",
    "register_slot",
    "set_holdback",
    "set_state",
    "set_weights",
    "version_key",
]
