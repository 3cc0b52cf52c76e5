"""The recommender's lifecycle on the embedded stack (``lockstep demo --system recommender``).

The same story as the search demo (``ops.demo``), told with MovieLens-100k on a
recommender deployment (``LOCKSTEP_SYSTEM=recommender``: its own database and
registered model; the same DAG ids):

1. load the catalogue without the films released in 1998, and each user's first 80 % of
   ratings (by time) on the other films: the world as it was;
2. ``lockstep_retrain`` fits the first ALS model; the challenger asset starts
   ``lockstep_reembed``, which writes its serving files and makes it champion at 100 %;
3. traffic: simulated users ask ``POST /recommend`` and click the films they really
   rated later (each user's last 20 %, which Lockstep never sees); each user asks as often
   as the next and clicks alike unless ``DemoOptions.users_like`` is ``heterogeneous``
   (heavy-tailed activity, own click propensity, none anonymous: a recommendation needs a
   user id). Not the default yet: with only MovieLens's 943 users the per-user gates see
   few independent users, and that story has not been measured end to end with them;
4. the world changes: the 1998 films reach the catalogue and their ratings arrive through
   ``POST /interactions`` (every live version folds the users and the new films in);
5. ``lockstep_drift`` sees interactions on films the champion's fit does not know and
   emits the drift asset; ``lockstep_retrain`` fits a new model on everything, judged
   against the champion's parameters; it is built and rolled out by canary steps under
   the gates, with live traffic, until it serves 100 % and holds alias ``champion``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lockstep.ops.demo import DemoRun

NEW_RELEASE_YEAR = 1998  # films of this year arrive as the drift (53 films, ~850 ratings)
FUTURE_FRACTION = 0.2  # each user's latest ratings: what simulated users click, never loaded


class RecommenderDemoRun(DemoRun):
    """One run of the recommender's story; the steps the search story does not share are here."""

    USERS_LIKE = "uniform"  # see the module's docstring, step 3

    def load_first_half(self) -> str:
        from lockstep.ops.recommender_simulator import split_future
        from lockstep.recommender import movielens
        from lockstep.store.interactions import InteractionStore

        store = InteractionStore()
        items = movielens.items()
        ratings = movielens.interactions()
        past, future = split_future(ratings, FUTURE_FRACTION)
        new_films = set(items.loc[items["release_year"] >= NEW_RELEASE_YEAR, "item_id"])
        self.facts.update(future=future, new_films=items[items["item_id"].isin(new_films)],
                          new_ratings=past[past["item_id"].isin(new_films)])
        if store.count():
            return f"interaction store already holds {store.count():,} interactions"
        store.upsert_items(items[~items["item_id"].isin(new_films)])
        store.upsert_users(movielens.users())
        first = past[~past["item_id"].isin(new_films)]
        store.add_many(first)
        return (f"{len(first):,} ratings of {first['user_id'].nunique()} users on {first['item_id'].nunique():,} films "
                f"loaded (films of {NEW_RELEASE_YEAR} held back; sequence {store.max_seq()})")

    def start_traffic(self) -> str:
        from lockstep.ops.demo import DEMO_USERS_SEED
        from lockstep.ops.population import Population
        from lockstep.ops.recommender_simulator import RecommenderSimulator, recommender_population

        future = self.facts["future"]
        if self.users_like == "uniform":
            population = Population.uniform(len(future))
        else:
            population = recommender_population(future, seed=DEMO_USERS_SEED)
        self.simulator = RecommenderSimulator(
            self.stack.config.serving_url, future, concurrency=3, rate=self.options.rate, seed=1, population=population,
        ).start()
        return (f"{len(future)} MovieLens users asking for recommendations at {self.options.rate:g} requests/s "
                f"({population.describe()})")

    def stream_second_half(self) -> str:
        import httpx

        from lockstep.store.interactions import InteractionStore

        films: pd.DataFrame = self.facts["new_films"]
        ratings: pd.DataFrame = self.facts["new_ratings"]
        InteractionStore().upsert_items(films)  # the catalogue learns of the new films first
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.stack.config.serving_url, timeout=30, headers=headers) as http:
            for row in ratings.itertuples(index=False):
                body: dict[str, Any] = {"user_id": row.user_id, "item_id": row.item_id, "value": float(row.value)}
                http.post("/interactions", json=body).raise_for_status()
        return (f"{len(films)} films of {NEW_RELEASE_YEAR} added to the catalogue; {len(ratings):,} ratings of them "
                "written through POST /interactions")

    def first_steps(self):
        return [
            ("load MovieLens (without 1998)", self.load_first_half),
            ("start the stack", self.start_stack),
            ("first model", self.first_model),
            ("start traffic", self.start_traffic),
        ]

    def drift_steps(self):
        return [
            ("stream the films of 1998", self.stream_second_half),
            ("drift -> retrain", self.drift_and_retrain),
            ("build + canary rollout", self.reembed_and_rollout),
        ]
