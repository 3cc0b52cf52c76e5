"""What a system is to the rest of Lockstep: the one seam between "search" and "recommender".

A Lockstep deployment runs one system (``LOCKSTEP_SYSTEM``). Both share the lifecycle
(routing table, rollout, gates, serving logs, holdback); they differ in what a version is
made of and how it is trained, built, served, checked for drift and verified. Everything
that differs is a member of ``System``; code that needs a system's part asks the system
(``lockstep.systems.current()``) instead of comparing its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

# A verify probe: (HTTP client, replica URL, probe number) -> the model version that answered
# (or a problem such as "HTTP 503").
Probe = Callable[[Any, str, int], str]


@runtime_checkable
class System(Protocol):
    """One of Lockstep's systems, composed from the pipeline packages."""

    name: str
    retrain_start: str  # the retrain DAG's first task on this system
    reembed_start: str  # the reembed DAG's first task on this system
    has_early_verdict: bool  # whether a load is judged on its first slice (search) or whole (recommender)

    def train_for_dag(self, params: Mapping[str, Any], drift: Mapping[str, Any] | None) -> dict[str, Any]:
        """The retrain DAG's training step (the recommender's; search trains in the DAG's own chain)."""
        ...

    def build(self, requested: str | None, asset_extra: Mapping[str, Any] | None, *, promote_if_first: bool) -> dict[str, Any]:
        """Build the serving files of a version in one step (the recommender's reembed)."""
        ...

    def drift_check(self, *, thresholds: Mapping[str, Any] | None, min_records: int, max_samples: int,
                    work_dir: str | None, **search_options: Any) -> dict[str, Any]:
        """The drift DAG's check: text drift (search) or interaction drift (recommender)."""
        ...

    def verify_probe(self) -> Probe:
        """The request the rollout's verify step sends to see which version answers."""
        ...

    def checkpoint_indexes(self) -> list[dict[str, Any]]:
        """The maintenance DAG's checkpoint of every served index ([] where there is none)."""
        ...

    def serving_parts(self) -> Any:
        """The serving app's parts: ``lockstep.serving.parts.ServingParts``."""
        ...

    def input_head(self, engine: Any) -> int:
        """The newest sequence of the store that drives the system (records or interactions)."""
        ...

    def demo_story(self) -> type:
        """The ``lockstep demo`` / ``lockstep up`` story of the system."""
        ...
