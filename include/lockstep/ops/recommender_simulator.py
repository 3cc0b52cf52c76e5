"""Simulated users of the recommender: each asks for recommendations and clicks what it really went on to rate.

The recommender demo keeps each user's latest interactions (by time) out of the
interaction store: they are the user's future. A simulated user sends ``POST /recommend`` under its
own id and scans the answer top down like a searcher (``ClickModel``), where a relevant
item is one of its future items. A version that ranks those items higher earns more
clicks, which is what the rollout's gates compare; every answer is also checked to come
from one version (item index version = model version).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from lockstep.ops.simulator import SimQuery, Simulator, SimulatorError


class RecommenderSimulator(Simulator):
    """Users of ``future`` (user id -> items it will rate) asking for recommendations and clicking them."""

    def __init__(self, url: str, future: Mapping[str, Iterable[str]], **options: Any) -> None:
        if not future:
            raise SimulatorError("no users with future interactions to simulate")
        self.future = {str(user): frozenset(map(str, items)) for user, items in future.items()}
        users = sorted(self.future)
        options.setdefault("users", len(users))
        super().__init__(url, [SimQuery(user) for user in users], {}, **options)

    def _ask(self, client: Any, query: SimQuery, user: str) -> Any:
        return client.post("/recommend", json={"user_id": query.text, "k": self.k})

    def _relevance(self, query: SimQuery, results: list[dict[str, Any]]) -> list[bool]:
        wanted = self.future.get(query.text, frozenset())
        return [r["id"] in wanted for r in results]


def split_future(interactions: pd.DataFrame, fraction: float = 0.2) -> tuple[pd.DataFrame, dict[str, set[str]]]:
    """The past and each user's future: per user, the latest ``fraction`` of its interactions by time.

    The offline evaluation's split (``recommender.evaluation.time_split``), so simulated
    users click what the offline figures count as hits, and every user has a future.
    """
    from lockstep.recommender.evaluation import time_split

    if not 0 < fraction < 1:
        raise SimulatorError(f"fraction must be between 0 and 1, got {fraction!r}")
    split = time_split(interactions, fraction)
    future: dict[str, set[str]] = {}
    for user, item in zip(split.test["user_id"], split.test["item_id"], strict=True):
        future.setdefault(str(user), set()).add(str(item))
    return split.train, future
