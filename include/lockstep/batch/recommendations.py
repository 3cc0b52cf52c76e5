"""Recommendations (recommender): each user's top-k unseen items under one version.

The answer is what ``POST /recommend`` would give at the same interaction sequence: the
version's user vector against its item index, the user's seen items left out
(``LiveVersion.recommend``, the serving code itself), scores ``user . item``.

**Which users an incremental run recomputes** (interactions in (T0, T]):

1. every user with an interaction in (T0, T] (their vector and seen items changed);
2. every user whose stored list contains an item that moved: an item that joined after
   the fit is placed again from all its users on each of its interactions, so its vector
   changes; an item of the fit never moves;
3. every user u that a moved item i would now enter: ``u . i >=`` the k-th score of u's
   stored list (any i when the list is shorter than k);
4. every user with no row yet.

Users are never deleted, so no row is removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from lockstep.batch.world import RecommenderWorld
from lockstep.store.batch_results import BatchRow, Hit


def recommendations(world: RecommenderWorld, users: list[str], k: int) -> Iterator[tuple[str, list[Hit]]]:
    """(user, top-k unseen items) for each user."""
    for user in users:
        yield user, [(i, float(s)) for i, s in world.live.recommend(user, k, exclude=world.seen.get(user, ()))]


def affected(
    world: RecommenderWorld, rows: Iterable[BatchRow], changed_users: set[str], moved_items: set[str], k: int
) -> set[str]:
    """The users an incremental run recomputes (rules in the module docstring)."""
    users = set(world.live.users)
    recompute = changed_users & users
    threshold: dict[str, float] = {}
    with_row: set[str] = set()
    for row in rows:
        with_row.add(row.key)
        if row.key in recompute:
            continue
        if any(i in moved_items for i, _ in row.results):
            recompute.add(row.key)
        else:
            threshold[row.key] = -np.inf if len(row.results) < k else row.results[k - 1][1]
    recompute |= users - with_row
    moved = sorted(i for i in moved_items if i in world.live.index)
    if moved and threshold:
        vectors = world.live.index.vectors_of(moved)
        candidates = sorted(threshold)
        for start in range(0, len(candidates), 50_000):
            block = candidates[start : start + 50_000]
            user_matrix = np.stack([world.live.users[u] for u in block]).astype(np.float32)
            best = (user_matrix @ vectors.T).max(axis=1)
            recompute |= {u for u, score in zip(block, best.tolist(), strict=True) if score >= threshold[u] - 1e-6}
    return recompute
