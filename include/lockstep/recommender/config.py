"""The recommender's training parameters (``RecommenderTrainConfig``), some of them retrain DAG knobs.

Kept free of heavy imports (the retrain DAG's form is built from these fields when its
file is parsed): the ALS model is imported only when ``model`` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockstep.core.config.knobs import knob

if TYPE_CHECKING:
    from lockstep.recommender.factorization import ALSRecommender

RECOMMENDER = "Recommender"  # the retrain form's section of these knobs


@dataclass(frozen=True)
class RecommenderTrainConfig:
    """The candidate's parameters and the acceptance rule."""

    factors: int = knob(64, "ALS factors", RECOMMENDER,
                        "Recommender deployments only: the embedding dimension of users and items.",
                        type="integer", minimum=1, maximum=1024)
    regularization: float = 10.0
    alpha: float = 0.2
    iterations: int = knob(15, "ALS iterations", RECOMMENDER, "Recommender deployments only: alternating least-squares passes.",
                           type="integer", minimum=1, maximum=200)
    random_state: int = 0
    holdout_fraction: float = 0.2
    margin: float = 0.0  # nDCG@10 the candidate may lose to the champion and still be the challenger
    extra_tags: dict[str, str] = field(default_factory=dict)

    def model(self, **override: Any) -> ALSRecommender:
        from lockstep.recommender.factorization import ALSRecommender

        params = {"factors": self.factors, "regularization": self.regularization, "alpha": self.alpha,
                  "iterations": self.iterations, "random_state": self.random_state, **override}
        return ALSRecommender(**params)
