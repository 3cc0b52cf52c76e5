"""The recommender system: ALS user and item vectors, an item index, fold-in of new interactions.

Composed from the pipelines: the fit, registration and build of ``lockstep.recommender``
(one step each in the retrain and reembed DAGs), the serving app's ``/recommend`` and
``/interactions`` routes with their slots, the interaction drift check, the recommend
probe of the rollout's verify step and the MovieLens-100k demo. It has no index to
checkpoint (serving builds the item index from the fit and folds in the interaction
log) and no early verdict (a fit is judged whole at training).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockstep.core.config import SYSTEMS
from lockstep.systems.protocol import Probe


def recommend_probe(client: Any, url: str, i: int) -> str:
    """One ``/recommend`` for a verify user; the version that answered, from the response header."""
    response = client.post(f"{url}/recommend", json={"user_id": f"lockstep-verify-{i}", "k": 1})
    return response.headers.get("X-Lockstep-Model-Version") or f"HTTP {response.status_code}"


class RecommenderSystem:
    """Recommendations: (user-vector store, item index) pairs over the interaction store."""

    name = SYSTEMS[1]
    retrain_start = "train_recommender"
    reembed_start = "build_recommender"
    has_early_verdict = False

    def train_for_dag(self, params: Mapping[str, Any], drift: Mapping[str, Any] | None) -> dict[str, Any]:
        from lockstep.recommender import steps

        return steps.train_for_dag(dict(params), dict(drift) if drift else None)

    def build(self, requested: str | None, asset_extra: Mapping[str, Any] | None, *, promote_if_first: bool) -> dict[str, Any]:
        from lockstep.recommender import steps

        return steps.build_requested(requested, dict(asset_extra) if asset_extra else None, promote_if_first=promote_if_first)

    def drift_check(self, *, thresholds: Mapping[str, Any] | None, min_records: int, max_samples: int,
                    work_dir: str | None, **search_options: Any) -> dict[str, Any]:
        """Interactions since the champion's fit (new items, popularity shift); ``window_hours``
        and the text-only thresholds do not apply here."""
        from lockstep.drift.interactions import run_interaction_drift_check
        from lockstep.drift.steps import thresholds_from

        return run_interaction_drift_check(thresholds_from(thresholds), min_interactions=min_records,
                                           max_samples=max_samples, work_dir=work_dir, system=self.name)

    def verify_probe(self) -> Probe:
        return recommend_probe

    def checkpoint_indexes(self) -> list[dict[str, Any]]:
        return []

    def serving_parts(self) -> Any:
        from lockstep.recommender.live_version import single_thread_blas
        from lockstep.serving.parts import ServingParts
        from lockstep.serving.recommend import RecommenderSlots, add_recommender_routes
        from lockstep.store.batch_results import RECOMMENDATIONS
        from lockstep.store.interactions import InteractionStore

        return ServingParts(
            description="Recommendations served by exactly one (user-vector store, item index) version pair per request.",
            add_routes=add_recommender_routes,
            batch_kind=RECOMMENDATIONS,
            slots=lambda engine: RecommenderSlots(InteractionStore(engine)),
            quiet_blas=single_thread_blas,  # a fold-in is a 64 x 64 solve: BLAS threads only add wake-ups
        )

    def input_head(self, engine: Any) -> int:
        from lockstep.store.interactions import InteractionStore

        return InteractionStore(engine).max_seq()

    def demo_story(self) -> type:
        from lockstep.ops.recommender_demo import RecommenderDemoRun

        return RecommenderDemoRun
