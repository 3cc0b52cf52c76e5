"""Simulated users of the recommender: each asks for recommendations and clicks what it really went on to rate.

The recommender demo keeps each user's latest interactions (by time) out of the
interaction store: they are the user's future. A simulated user sends ``POST /recommend`` under its
own id and scans the answer top down like a searcher (``ClickModel``), where a relevant
item is one of its future items. A version that ranks those items higher earns more
clicks, which is what the rollout's gates compare; every answer is also checked to come
from one version (item index version = model version).

With a heterogeneous ``Population`` (``recommender_population``; the demo's), who asks
is drawn by activity weight (a few users ask most often) and each user clicks with its
own propensity; ``POST /recommend`` needs a user id, so no request is anonymous. Without
one, every user asks equally often and clicks alike (the old world).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from lockstep.ops.population import Population, Visitor
from lockstep.ops.simulator import SimQuery, Simulator, SimulatorError


class RecommenderSimulator(Simulator):
    """Users of ``future`` (user id -> items it will rate) asking for recommendations and clicking them."""

    def __init__(self, url: str, future: Mapping[str, Iterable[str]], **options: Any) -> None:
        if not future:
            raise SimulatorError("no users with future interactions to simulate")
        self.future = {str(user): frozenset(map(str, items)) for user, items in future.items()}
        users = sorted(self.future)
        population = options.get("population")
        if population is not None and (population.users != len(users) or population.anonymous):
            raise SimulatorError(
                f"a recommender population must have one user per user with a future ({len(users)}) and no "
                f"anonymous share (POST /recommend needs a user id); got {population.users} users, "
                f"{population.anonymous:g} anonymous"
            )
        options.setdefault("users", len(users))
        super().__init__(url, [SimQuery(user) for user in users], {}, **options)

    def _draw(self, rng: random.Random) -> tuple[SimQuery, Visitor]:
        """A heterogeneous population picks the user, whose own id is the request; uniform: as before."""
        if self.population.kind == "uniform":
            return super()._draw(rng)
        visitor = self.population.visit(rng)
        return self.queries[visitor.index], visitor

    def _ask(self, client: Any, query: SimQuery, user: str) -> Any:
        return client.post("/recommend", json={"user_id": query.text, "k": self.k})

    def _relevance(self, query: SimQuery, results: list[dict[str, Any]]) -> list[bool]:
        wanted = self.future.get(query.text, frozenset())
        return [r["id"] in wanted for r in results]


def recommender_population(future: Mapping[str, Iterable[str]], seed: int = 0, **options: Any) -> Population:
    """A heterogeneous population of the users of ``future`` (in sorted order), none anonymous."""
    return Population.draw(len(future), "heterogeneous", seed=seed, anonymous=0.0, **options)


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
