"""The routing table as a value: its rows, its holdback, and how a request picks its slot.

A ``RoutingTable`` is the whole table at one generation; replicas route only from such a
snapshot (``lockstep.store.routing.database`` reads and writes it).

Traffic is split into 100 buckets. A request with a user id hashes ``salt:user_id`` into
a bucket, and buckets are laid out by cumulative weight over the live slots sorted by
version: a user keeps their version while the weights hold, and a new salt (a new
rollout) reshuffles who lands where.

The long-term holdback group (issue 13) comes first: a user whose hash with the
holdback's *own* salt falls under its percent is always served by the holdback version,
whatever the weights, so re-salting a rollout never moves them and rollouts never see
them. Everybody else is routed by the weights as above; requests without a user id are
never held back.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from lockstep.core.errors import LockstepError

LOADING, READY, LIVE, DRAINING, RETIRED = "loading", "ready", "live", "draining", "retired"
STATES = (LOADING, READY, LIVE, DRAINING, RETIRED)
# States whose model and index a serving replica keeps loaded.
SERVING_STATES = frozenset({READY, LIVE})
# States that may receive traffic weight: loaded ones, and a draining slot called back.
WEIGHTABLE_STATES = frozenset({READY, LIVE, DRAINING})
BUCKETS = 100
# The holdback share is drawn in basis points, so 2.5 % is exactly 250 of 10,000 buckets.
HOLDBACK_BUCKETS = 10_000
HOLDBACK_MAX_PERCENT = 50.0
NOTIFY_CHANNEL = "lockstep_routing"

T = TypeVar("T")


class RoutingError(LockstepError, ValueError):
    """A routing change that cannot be applied; the message says which input is wrong."""


class RoutingConflict(RoutingError):
    """Someone else changed the traffic since the generation a writer expected (compare-and-set).

    ``changes`` are the history entries written by others since then, oldest first.
    """

    def __init__(self, message: str, *, expected: int, current: int, changes: Sequence[HistoryEntry] = ()) -> None:
        super().__init__(message)
        self.expected = expected
        self.current = current
        self.changes = list(changes)


@dataclass(frozen=True)
class SlotRow:
    """One slot as the routing table holds it."""

    model_version: str
    model_uri: str
    index_location: str
    fingerprint: str
    state: str
    weight: int
    shadow: bool
    note: str | None = None
    updated_at: datetime | None = None

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What a replica must reload when it changes: the model and index it points at."""
        return (self.model_version, self.model_uri, self.index_location, self.fingerprint)


@dataclass(frozen=True)
class Holdback:
    """The long-term holdback: ``percent`` of users (by their own salt) frozen on one version."""

    model_version: str
    percent: float
    salt: str
    set_at: datetime | None = None
    set_by: str | None = None

    def holds(self, user_id: str | None) -> bool:
        """Whether this user is in the holdback: sticky for the salt, never without a user id."""
        if user_id is None:
            return False
        return bucket_of(user_id, self.salt, HOLDBACK_BUCKETS) < round(self.percent * HOLDBACK_BUCKETS / 100)

    def to_dict(self) -> dict[str, Any]:
        """What ``GET /routing`` shows (not the salt: the endpoint is open)."""
        return {
            "model_version": self.model_version,
            "percent": self.percent,
            "set_at": self.set_at.isoformat() if self.set_at else None,
            "set_by": self.set_by,
        }


@dataclass(frozen=True)
class RoutingTable:
    """The whole table at one generation; replicas route only from such a snapshot."""

    generation: int
    salt: str
    slots: tuple[SlotRow, ...] = ()
    holdback: Holdback | None = None

    def slot(self, model_version: str | int) -> SlotRow | None:
        version = str(model_version)
        return next((s for s in self.slots if s.model_version == version), None)

    @property
    def live(self) -> tuple[SlotRow, ...]:
        """Slots taking traffic, sorted by version (the order buckets are laid out in)."""
        return tuple(s for s in self.slots if s.state == LIVE and s.weight > 0)

    @property
    def shadows(self) -> tuple[SlotRow, ...]:
        return tuple(s for s in self.slots if s.shadow and s.state in SERVING_STATES)

    @property
    def weights(self) -> dict[str, int]:
        return {s.model_version: s.weight for s in self.live}

    def held_back(self, user_id: str | None) -> str | None:
        """The holdback version when this user is in the holdback, else None."""
        if self.holdback is None or not self.holdback.holds(user_id):
            return None
        return self.holdback.model_version

    def choose(self, user_id: str | None, available: Iterable[str] | None = None) -> SlotRow | None:
        """The slot a request goes to (restricted to ``available`` versions if given).

        A holdback user gets the holdback version or nothing (None when it is not serving
        or not among ``available``): the holdback is never handed to another version.
        """
        allowed = None if available is None else set(available)
        held = self.held_back(user_id)
        if held is not None:
            slot = self.slot(held)
            if slot is None or slot.state not in SERVING_STATES or (allowed is not None and held not in allowed):
                return None
            return slot
        candidates = [(s, s.weight) for s in self.live if allowed is None or s.model_version in allowed]
        return pick(candidates, user_id, self.salt)

    def to_dict(self) -> dict[str, Any]:
        """The ``GET /routing`` shape of the public contract."""
        return {
            "generation": self.generation,
            "slots": [
                {"model_version": s.model_version, "state": s.state, "weight": s.weight, "shadow": s.shadow}
                for s in self.slots
            ],
            "holdback": self.holdback.to_dict() if self.holdback else None,
        }


@dataclass(frozen=True)
class HistoryEntry:
    generation: int
    at: datetime
    weights: dict[str, int]
    shadow: list[str]
    reason: str | None
    actor: str | None


# --- picking a slot ----------------------------------------------------------------------


def version_key(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order (2 before 10), anything else after them by name."""
    return (0, int(version)) if version.isdigit() else (1, version)


def bucket_of(user_id: str, salt: str, total: int = BUCKETS) -> int:
    """The sticky bucket of a user in [0, total): stable for a salt, independent across salts."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % total


def pick(candidates: Sequence[tuple[T, int]], user_id: str | None, salt: str) -> T | None:
    """Choose among ``(slot, weight)`` pairs, already sorted by version.

    With every live slot available the weights sum to 100 and a user's bucket is
    ``hash % 100``; if a replica lacks one (it failed to load), the others share its
    traffic in proportion rather than refusing requests.
    """
    total = sum(w for _, w in candidates if w > 0)
    if total <= 0:
        return None
    point = bucket_of(user_id, salt, total) if user_id is not None else random.randrange(total)
    for slot, weight in candidates:
        if weight <= 0:
            continue
        if point < weight:
            return slot
        point -= weight
    return None  # unreachable: point < total
