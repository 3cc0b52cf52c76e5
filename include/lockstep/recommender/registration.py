"""A fit becomes a registered version, and a registered version becomes a model again.

MLflow is reached only through ``lockstep.model.recommender_model`` (the registry seam);
this module binds it to ``ALSRecommender``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockstep.model.recommender_model import (
    open_version,
    recommender_registry,
    register_recommender,
)
from lockstep.model.registry import ModelVersionInfo, Registry
from lockstep.recommender.factorization import ALSRecommender

__all__ = ["load_version", "recommender_registry", "register_fit"]


def register_fit(
    model: ALSRecommender,
    figures: Mapping[str, float],
    *,
    registry: Registry | None = None,
    snapshot_seq: int | None = None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> ModelVersionInfo:
    """Register one fit under ``LOCKSTEP_RECOMMENDER_MODEL_NAME`` with its evaluation figures."""
    return register_recommender(
        model, figures, registry=registry, snapshot_seq=snapshot_seq, tags=tags, run_name=run_name
    )


def load_version(version: str | int, registry: Registry | None = None) -> tuple[ALSRecommender, ModelVersionInfo]:
    """The version's fitted model, checked by sha256 and fingerprint before use."""
    return open_version(version, ALSRecommender.load, registry)
