"""What the DAG tasks ask of the deployment's system (``lockstep.systems.current()``).

A DAG file is the plan of a run; where the plan depends on the system (the retrain and
reembed DAGs start on the system's own first task; the drift check and the index
checkpoint are the system's), its task calls one of these instead of comparing names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockstep.systems import current


def retrain_start() -> str:
    """The retrain DAG's first task on this deployment (``snapshot`` or ``train_recommender``)."""
    return current().retrain_start


def starts_reembed_with(task_id: str) -> bool:
    """Whether the reembed DAG's run on this deployment starts with ``task_id`` (a ``run_if``)."""
    return current().reembed_start == task_id


def train(params: Mapping[str, Any], drift: Mapping[str, Any] | None) -> dict[str, Any]:
    """The retrain DAG's one-step training on a system that trains in one step."""
    return current().train_for_dag(params, drift)


def build(requested: str | None, asset_extra: Mapping[str, Any] | None, *, promote_if_first: bool) -> dict[str, Any]:
    """The reembed DAG's one-step build on a system that builds in one step."""
    return current().build(requested, asset_extra, promote_if_first=promote_if_first)


def drift_check(**options: Any) -> dict[str, Any]:
    """The drift DAG's check: the system's own (text drift, or interaction drift)."""
    return current().drift_check(**options)


def checkpoint_indexes() -> list[dict[str, Any]]:
    """The maintenance DAG's index checkpoint ([] on a system with no index to checkpoint)."""
    return current().checkpoint_indexes()


def verify_probe():
    """The request the rollout's verify step sends on this deployment."""
    return current().verify_probe()


def evaluate_retrain(seq: int, model_path: str, run_dir: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The retrain DAG's evaluate: the champion's side reads the vectors its published index holds.

    Here because it joins two layers that may not import each other: the training's
    evaluation and the index's stored vectors (``lockstep.index.champion_vectors``).
    """
    from lockstep.index.champion_vectors import read_stored_vectors
    from lockstep.training import steps as retrain

    return retrain.evaluate(seq, model_path, run_dir, dict(config), stored=read_stored_vectors)
