"""The search system: records embedded by a text model into a versioned FAISS index.

Composed from the pipelines: training (``lockstep.training``) and the re-embed
(``lockstep.index``) run as the DAGs' own chains, the serving app's ``/search`` routes,
the text drift check, the search probe of the rollout's verify step, the index checkpoint
of the maintenance DAG and the 20 Newsgroups demo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockstep.core.config import SYSTEMS
from lockstep.systems.protocol import Probe


class SearchSystem:
    """Semantic search: (model version, index version) pairs over the record store."""

    name = SYSTEMS[0]
    retrain_start = "snapshot"
    reembed_start = "prepare"
    has_early_verdict = True

    def train_for_dag(self, params: Mapping[str, Any], drift: Mapping[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError("search trains in the retrain DAG's own chain (snapshot -> validate -> train)")

    def build(self, requested: str | None, asset_extra: Mapping[str, Any] | None, *, promote_if_first: bool) -> dict[str, Any]:
        raise NotImplementedError("search builds in the reembed DAG's own chain (prepare -> ... -> publish)")

    def drift_check(self, *, thresholds: Mapping[str, Any] | None, min_records: int, max_samples: int,
                    work_dir: str | None, **search_options: Any) -> dict[str, Any]:
        from lockstep.drift.steps import run_drift_check

        return run_drift_check(thresholds=thresholds, min_records=min_records, max_samples=max_samples,
                               work_dir=work_dir, **search_options)

    def verify_probe(self) -> Probe:
        from lockstep.rollout.verify import search_probe

        return search_probe

    def checkpoint_indexes(self) -> list[dict[str, Any]]:
        from lockstep.ops.retention import checkpoint_indexes

        return checkpoint_indexes()

    def serving_parts(self) -> Any:
        from lockstep.serving.app import SEARCH_PARTS

        return SEARCH_PARTS

    def input_head(self, engine: Any) -> int:
        from lockstep.store.records import RecordStore

        return RecordStore(engine).head()

    def demo_story(self) -> type:
        from lockstep.ops.demo import DemoRun

        return DemoRun
