"""The model registry: a thin layer over the MLflow 3 client, in Lockstep's words.

MLflow keeps the model versions, their tags and the aliases ``champion`` and
``challenger``; this package adds what MLflow does not keep on its own:

- the fingerprint of each version's vector space, checked again when the version is
  loaded, so an index can never be paired with a model whose weights were swapped;
- a history of which version was champion since when and why (the registry forgets
  where an alias pointed before it moved);
- a review decision a person can give in the MLflow UI, read back by the rollout.

``Registry`` is the one class callers use. It is composed of parts that share one MLflow
client and one scope of MLflow's process-wide URIs (``store.MlflowStore``):

- ``versions``: reading versions, resolving ``models:/`` URIs, tags and aliases;
- ``registration``: a training run logged and its model registered (``log_and_register``);
- ``champions``: promotion, rejection, review and the champion history;
- ``runs``: runs of the other pipelines (drift, early verdict), run params, UI links;
- ``loading``: a version back as a checked embedder, a download, MLflow's pyfunc.

The tags each part reads and writes are listed in ``tags``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockstep.core.errors import RegistryError
from lockstep.model.registry.champions import ChampionsMixin, Review, reviewer_name
from lockstep.model.registry.loading import EmbedderPyfunc, LoadingMixin
from lockstep.model.registry.registration import (
    RegistrationMixin,
    TrainingSnapshot,
    pip_requirements,
)
from lockstep.model.registry.runs import RunsMixin
from lockstep.model.registry.tags import (
    ARTIFACT_KEY,
    CHALLENGER,
    CHAMPION,
    EVAL_TAG_PREFIX,
    IMPORTED,
    MODEL_DESCRIPTION,
    MODEL_NAME_IN_RUN,
    MODEL_TAG_CHAMPION_HISTORY,
    REJECTED_FIGURE_PREFIX,
    REVIEW_VALUES,
    TAG_CHAMPION_SINCE,
    TAG_DIM,
    TAG_FAMILY,
    TAG_FINGERPRINT,
    TAG_MODEL_SHA256,
    TAG_REJECTED_AT,
    TAG_REJECTED_REASON,
    TAG_REPLACED_AT,
    TAG_REPLACED_BY,
    TAG_REVIEW,
    TAG_REVIEW_AT,
    TAG_REVIEW_BY,
    TAG_REVIEW_VIA,
    TAG_SNAPSHOT_SEQ,
    TAG_STATUS,
    ModelVersionInfo,
)

__all__ = [
    "ARTIFACT_KEY",
    "CHALLENGER",
    "CHAMPION",
    "EVAL_TAG_PREFIX",
    "IMPORTED",
    "MODEL_DESCRIPTION",
    "MODEL_NAME_IN_RUN",
    "MODEL_TAG_CHAMPION_HISTORY",
    "REJECTED_FIGURE_PREFIX",
    "REVIEW_VALUES",
    "TAG_CHAMPION_SINCE",
    "TAG_DIM",
    "TAG_FAMILY",
    "TAG_FINGERPRINT",
    "TAG_MODEL_SHA256",
    "TAG_REJECTED_AT",
    "TAG_REJECTED_REASON",
    "TAG_REPLACED_AT",
    "TAG_REPLACED_BY",
    "TAG_REVIEW",
    "TAG_REVIEW_AT",
    "TAG_REVIEW_BY",
    "TAG_REVIEW_VIA",
    "TAG_SNAPSHOT_SEQ",
    "TAG_STATUS",
    "EmbedderPyfunc",
    "ModelVersionInfo",
    "Registry",
    "Review",
    "TrainingSnapshot",
    "pip_requirements",
    "requested_version",
    "reviewer_name",
]


class Registry(RegistrationMixin, ChampionsMixin, RunsMixin, LoadingMixin):
    """Lockstep's operations on the registered embedding model in one MLflow store."""


def requested_version(requested: str | int | None, asset_extra: Mapping[str, Any] | None, registry: Registry | None = None,
                      *, purpose: str = "index") -> str:
    """The version a DAG run works on: its Param, else the triggering asset event, else alias challenger.

    The reembed and rollout DAGs both start this way; ``purpose`` only words the error.
    """
    if requested not in (None, ""):
        return str(requested).strip()
    if asset_extra and asset_extra.get("model_version"):
        return str(asset_extra["model_version"])
    challenger = (registry or Registry()).version_for_alias("challenger")
    if challenger is None:
        raise RegistryError(
            f"no model version to {purpose}: pass Param model_version, or train one first (alias 'challenger' is unset)"
        )
    return challenger.version
