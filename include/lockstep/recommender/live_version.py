"""What serving holds per recommender version: the generator and the server, paired.

A ``LiveVersion`` is one registered fit as serving needs it:

- the **user-vector store** (the generator; the recommender's counterpart of the
  embedding model): user id -> float32 vector, filled from the fit and updated by
  fold-in when a user interacts (``fold_in_user``);
- the **item index** (the server; the counterpart of the search index): the fit's item
  vectors in FAISS, joined by new items after their first interactions (``fold_in_item``).
  A model from ``build.read_slot_files`` carries the version's stored index, which is
  taken as it is (``item_index_file``); any other model's index is built here.

A request takes one ``LiveVersion`` (from one routing snapshot) and calls
``recommend(user_id, k, exclude)``: the user's vector and the items come from the same
version, never from two (``wait=False``: never waits on the item index's lock). ``POST /interactions`` calls ``fold_in_user`` on every live
version with the user's whole history (``InteractionStore.interactions_of``), so each
version refolds the user in its own space.

Fold-in uses the fit's factors only: an item (or user) that joined the version later
is left out of another row's fold-in (it is returned as ``skipped``), because adding it
would change ``Y^T Y`` for everyone; the next fit includes it.

Catching a version up with the interaction log is written once, here: ``seen_items``
(each user's items at the fit's snapshot) and ``LiveVersion.fold_in_changes`` (the
interactions after it). Serving runs the fold-in on each page of the log it tails, the
batch job once for the interactions up to its input sequence, so a batch result is
computed in exactly the space serving answers in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lockstep.recommender import item_index_file
from lockstep.recommender.factorization import ALSRecommender
from lockstep.recommender.fold_in import UnknownIdError
from lockstep.recommender.item_index import ItemIndex

if TYPE_CHECKING:
    import pandas as pd

    from lockstep.store.interactions import InteractionStore

__all__ = ["FoldInResult", "LiveVersion", "seen_items", "single_thread_blas"]


@dataclass(frozen=True)
class FoldInResult:
    """A refolded vector and the interactions it left out (ids unknown to this version's fit)."""

    vector: np.ndarray
    skipped: list[str]


class LiveVersion:
    """One version's user-vector store and item index (see the module docstring)."""

    def __init__(self, model: ALSRecommender, model_version: str = "", index_kind: str = "auto",
                 *, index: ItemIndex | None = None) -> None:
        """``index``: the fit's item index if already at hand; else the stored one attached to ``model``, else built."""
        self.model = model
        self.model_version = str(model_version)
        self.fingerprint = model.fingerprint
        self.users = model.user_store()
        if index is None:
            index = item_index_file.take(model)
        self.index = index if index is not None else ItemIndex.build(model.item_ids_, model.item_factors_, kind=index_kind)
        self._user_fold_in = model.user_fold_in()
        self._item_fold_in = model.item_fold_in()
        self._lock = threading.Lock()  # one writer at a time for the user store

    def fitted_item(self, item_id: str) -> bool:
        """Whether the item has a vector from the fit itself (not one folded in after it)."""
        return item_id in self._user_fold_in.row_of

    def user_vector(self, user_id: str) -> np.ndarray:
        """The user's current vector; an unknown user raises (serving answers 404)."""
        vector = self.users.get(user_id)
        if vector is None:
            raise UnknownIdError("user", [user_id], f"version {self.model_version or '?'} has no vector for it")
        return vector

    def recommend(self, user_id: str, k: int = 10, exclude: Iterable[str] = (), *, wait: bool = True) -> list[tuple[str, float]] | None:
        """The user's top ``k`` items by ``user . item`` in this version, skipping ``exclude``.

        ``wait=False`` is for the serving event loop: None at once, instead of a wait,
        while a writer (a fold-in of a new item) holds or awaits the item index's lock
        (``ItemIndex.try_recommend``). With ``wait`` (the default) it always answers.
        """
        vector = self.user_vector(user_id)
        return self.index.recommend(vector, k, exclude) if wait else self.index.try_recommend(vector, k, exclude)

    def fold_in_user(self, user_id: str, item_ids: Sequence[str], values: Sequence[float] | None = None) -> FoldInResult:
        """Refold a new or changed user from its whole history and store the vector."""
        item_ids = [str(i) for i in item_ids]
        values_arr = _values(values, len(item_ids))
        known = np.array([i in self._user_fold_in.row_of for i in item_ids], dtype=bool)
        kept = [i for i, ok in zip(item_ids, known, strict=True) if ok]
        vector = self._user_fold_in.vector(kept, values_arr[known])
        with self._lock:
            self.users[str(user_id)] = vector
        return FoldInResult(vector, sorted({i for i, ok in zip(item_ids, known, strict=True) if not ok}))

    def fold_in_item(self, item_id: str, user_ids: Sequence[str], values: Sequence[float] | None = None) -> FoldInResult:
        """Place a new (or changed) item from the users who interacted with it, into the index."""
        user_ids = [str(u) for u in user_ids]
        values_arr = _values(values, len(user_ids))
        known = np.array([u in self._item_fold_in.row_of for u in user_ids], dtype=bool)
        kept = [u for u, ok in zip(user_ids, known, strict=True) if ok]
        vector = self._item_fold_in.vector(kept, values_arr[known])
        item_id = str(item_id)
        if item_id in self.index:
            self.index.update([item_id], vector[None, :])
        else:
            self.index.add([item_id], vector[None, :])
        return FoldInResult(vector, sorted({u for u, ok in zip(user_ids, known, strict=True) if not ok}))

    def fold_in_changes(self, store: InteractionStore, changes: pd.DataFrame, until: int,
                        seen: dict[str, set[str]]) -> None:
        """Fold in every user (and new item) the interactions touched, from their whole history up to ``until``.

        An item of the fit keeps its fitted vector; an item that joined after the fit is
        placed again from all its users on each of its interactions. Every user who
        interacted is refolded from the whole history, and their ``seen`` items follow.
        """
        if changes.empty:
            return
        for item in sorted(set(changes["item_id"])):
            if not self.fitted_item(item):  # a new item: placed again from all its users so far
                users, values = store.users_of(item, until=until)
                self.fold_in_item(item, users, values)
        for user in sorted(set(changes["user_id"])):
            items, values = store.interactions_of(user, until=until)
            self.fold_in_user(user, items, values)
            seen[user] = set(items)


def seen_items(store: InteractionStore, seq: int) -> dict[str, set[str]]:
    """Each user's items in the interaction log through ``seq``: what a version leaves out of their recommendations."""
    seen: dict[str, set[str]] = {}
    for chunk in store.iter_snapshot(seq):
        for user, item in zip(chunk["user_id"], chunk["item_id"], strict=True):
            seen.setdefault(user, set()).add(item)
    return seen


def single_thread_blas() -> Any:
    """Limit BLAS to one thread in this process; call once when a serving process starts.

    A fold-in is a 64 x 64 solve: BLAS's thread pool adds only wake-ups, which under load
    put its p99 at 30-40 ms instead of under 1 ms (docs/benchmarks.md, "Recommender").
    Returns threadpoolctl's limiter (``restore_original_limits()`` undoes it).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")


def _values(values: Sequence[float] | None, count: int) -> np.ndarray:
    """Interaction values (default 1.0 each), one per id."""
    if values is None:
        return np.ones(count)
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(array) != count:
        raise ValueError(f"fold-in needs one value per id: {count} ids, {len(array)} values")
    return array
