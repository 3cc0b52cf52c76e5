"""The recommender's serving: ``POST /recommend`` and ``POST /interactions`` (``LOCKSTEP_SYSTEM=recommender``).

A recommender slot is one fit as serving needs it (``recommender.live_version``): the
user-vector store (the generator) and the item index (the server) of the same version.
``/recommend`` leases one slot exactly as ``/search`` does (pin header, sticky user
bucket, weights from the recommender's routing table) and answers with that slot's user
vector and that slot's items only, so user vectors of one version never meet items of
another. A result's ``score`` is ``user . item`` under that version.
It is searched on the event loop, but only when its item index's lock is free at once
(``serving.lock_waits``): a fold-in holding that lock never freezes the process.

``/interactions`` writes the interaction to the recommender's log (one transaction; an
item missing from the catalogue is a 422 and nothing is written), then every slot
loaded on this replica folds the user in again from the user's whole history before
the answer; other replicas do so from the log within their tail interval. New items
(in the catalogue, unknown to a fit) join a version's index after their first
interactions.

The slot's ``search(user_id, k)`` has the search slot's signature so the shadow runner,
the request log and the click judge serve both systems unchanged: the request log's
``query`` column holds the user id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field

from lockstep.core.faults import maybe_fail
from lockstep.index.vector_index import SearchHits
from lockstep.recommender.build import read_slot_files
from lockstep.recommender.fold_in import UnknownIdError
from lockstep.recommender.live_version import LiveVersion, seen_items
from lockstep.serving.asked import Asked
from lockstep.serving.bodies import (
    _ID_DOC,
    MAX_K,
    MAX_USER_ID_CHARS,
    MODEL_VERSION_HEADER,
    PIN_HEADER,
    Id,
    _Strict,
    error_responses,
)
from lockstep.serving.lock_waits import LockFreeSearch
from lockstep.serving.metrics import NO_VERSION
from lockstep.serving.slots import ServingSlot
from lockstep.store.interactions import InteractionStore, InvalidInteractionError, UnknownItemError
from lockstep.store.routing import SlotRow
from lockstep.store.schema import ID_LENGTH

CATCH_UP_PAGE = 5000


# --- bodies -----------------------------------------------------------------------------------


class RecommendRequest(_Strict):
    user_id: Annotated[str, Field(min_length=1, max_length=MAX_USER_ID_CHARS, strict=True, json_schema_extra=_ID_DOC), Id]
    k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = 10


class Recommendation(BaseModel):
    id: str
    score: float


class RecommendResponse(BaseModel):
    request_id: str
    model_version: str
    index_version: str  # the version whose item index answered: always model_version
    fingerprint: str
    routing_generation: int
    results: list[Recommendation]


def _finite(value: float) -> float:
    import math

    if not math.isfinite(value):
        raise ValueError("value must be a finite number")
    return value


class InteractionBody(_Strict):
    user_id: Annotated[str, Field(min_length=1, max_length=MAX_USER_ID_CHARS, strict=True, json_schema_extra=_ID_DOC), Id]
    item_id: Annotated[str, Field(min_length=1, max_length=ID_LENGTH, strict=True, json_schema_extra=_ID_DOC), Id]
    value: Annotated[float, Field(gt=0, le=1e6), AfterValidator(_finite)] = 1.0


class InteractionWritten(BaseModel):
    seq: int


# --- one recommender version in memory -----------------------------------------------------------


class RecommenderSlot(ServingSlot):
    """One fit's user vectors and item index, always used together, plus what each user has seen."""

    def __init__(self, row: SlotRow, live: LiveVersion, *, snapshot_seq: int, seen: dict[str, set[str]]) -> None:
        super().__init__(row, fingerprint=live.fingerprint, index_version=row.model_version, applied_seq=snapshot_seq)
        self.live: LiveVersion | None = live
        self.seen = seen

    @property
    def size(self) -> int:
        return len(self.live.index) if self.live is not None else 0

    def _drop(self) -> None:
        self.live = None

    def search(self, user_id: str, k: int, *, wait: bool = True) -> SearchHits | None:
        """The user's top ``k`` unseen items under this version (``KeyError`` for an unknown user).

        ``wait=False`` is for the event loop: None at once, instead of a wait, while a
        writer holds or awaits this version's item index lock (a fold-in placing an
        item); the loop must never wait there, or every request of the process,
        ``/healthz`` included, waits with it (issue 21).
        """
        maybe_fail("serving.recommend", self.version)  # LOCKSTEP_FAULTS="serving.recommend:<version>*" breaks a version
        try:
            hits = self.live.recommend(user_id, k, exclude=self.seen.get(user_id, ()), wait=wait)
        except UnknownIdError as exc:
            raise KeyError(user_id) from exc
        if hits is None:
            return None
        return SearchHits([item for item, _ in hits], [score for _, score in hits])


class RecommenderSlots:
    """The recommender system for the slot manager: load a fit, fold in the interaction log."""

    def __init__(self, store: InteractionStore) -> None:
        self.store = store

    def load(self, row: SlotRow) -> RecommenderSlot:
        model, manifest = read_slot_files(row.index_location, row.fingerprint)
        seen = seen_items(self.store, manifest.snapshot_seq)
        slot = RecommenderSlot(row, LiveVersion(model, row.model_version), snapshot_seq=manifest.snapshot_seq, seen=seen)
        self.catch_up(slot)
        return slot

    def catch_up(self, slot: RecommenderSlot, on_applied: Any = None) -> int | None:
        """Apply the interactions after the slot's sequence, page by page, in order.

        (``on_applied`` is the slot appliers' hook for the lag of a write; interactions
        carry no commit time here, so it is not called.)

        Each page folds in every user (and new item) it touched, from their whole history
        up to the page's last sequence (``LiveVersion.fold_in_changes``, which the batch
        job runs too).
        """
        with slot.lease() as ok:
            if not ok:
                return None
            with slot.apply_lock:
                while True:
                    changes = self.store.changes_since(slot.applied_seq, limit=CATCH_UP_PAGE)
                    if changes.empty:
                        break
                    last = int(changes["seq"].max())
                    slot.live.fold_in_changes(self.store, changes, last, slot.seen)
                    slot.applied_seq = last
                    if len(changes) < CATCH_UP_PAGE:
                        break
                return slot.applied_seq

    def head(self) -> int:
        return self.store.max_seq()


# --- the endpoints ------------------------------------------------------------------------------


def add_recommender_routes(app: FastAPI, rt: Any, require_token: Callable[..., None]) -> None:
    """``/recommend`` and ``/interactions`` on a replica of the recommender system."""
    store: InteractionStore = rt.manager.system.store
    fast_search = LockFreeSearch()  # on the loop if the item index's lock is free now, else in a thread of its own

    @app.post("/recommend", response_model=RecommendResponse, responses=error_responses(400, 404, 413, 422, 500, 503))
    async def recommend(
        body: RecommendRequest,
        x_lockstep_pin: Annotated[str | None, Header(alias=PIN_HEADER)] = None,
    ) -> Response:
        """The user's top ``k`` items under the version routing assigns (or the pinned one).

        The user vector and the items come from that one version; items the user has
        interacted with are left out. An unknown user is a 404 (no cold-start fallback).
        Searched on the event loop while the version's item index lock is free at once;
        while a writer (a fold-in from ``/interactions``) holds it, the search waits in
        a worker thread instead and every other request goes on (``LockFreeSearch``).
        """
        asked = Asked(body.user_id, body.k, body.user_id, pinned=x_lockstep_pin is not None)
        try:
            view, slot = rt.lease(x_lockstep_pin, body.user_id)
        except HTTPException as exc:
            rt.metrics.errors.labels(getattr(exc, "model_version", NO_VERSION), str(exc.status_code)).inc()
            raise
        try:
            hits = await fast_search(slot.search, body.user_id, body.k)
        except KeyError:
            rt.metrics.errors.labels(slot.version, "404").inc()
            raise HTTPException(
                404,
                f"user {body.user_id!r} is unknown to model version {slot.version}: it has no interactions yet "
                "(POST /interactions first; there is no cold-start fallback)",
                headers={MODEL_VERSION_HEADER: slot.version},
            ) from None
        except Exception as exc:  # counted and logged against the version, so gates see it
            return rt.failed(view, slot, asked, exc, "recommend")
        finally:
            slot.release()
        return rt.answered(view, slot, hits, asked)

    @app.post(
        "/interactions", response_model=InteractionWritten, dependencies=[Depends(require_token)],
        responses=error_responses(400, 401, 403, 413, 422, 500, 503),
    )
    def interactions(body: InteractionBody) -> InteractionWritten:
        """Log an interaction; every version loaded here refolds the user before the answer."""
        try:
            seq = store.add(body.user_id, body.item_id, body.value)
        except UnknownItemError as exc:
            raise HTTPException(422, str(exc)) from exc
        except InvalidInteractionError as exc:
            raise HTTPException(422, str(exc)) from exc
        rt.metrics.writes.labels("interaction").inc()
        rt.manager.catch_up_all()
        return InteractionWritten(seq=seq)
