"""The registry's vocabulary: aliases, the tags Lockstep reads and writes, one version's view.

Tags on model versions unless stated:

=============================  =================================================
``fingerprint``                the vector space's ``sha256:...`` (set at registration)
``snapshot_seq``               change-log sequence number of the training snapshot
``lockstep.model_sha256``      sha256 of the model file, checked before it is unpickled
``dim``                        embedding dimension
``eval.<figure>``              evaluation figures, e.g. ``eval.ndcg_at_10``
``lockstep.status``            ``champion``, ``replaced`` or ``rejected``
``lockstep.champion_since``    ISO time the version became champion
``lockstep.replaced_at``       ISO time another version took over as champion
``lockstep.replaced_by``       the version that took over
``lockstep.rejected_reason``   why the version was rejected (with ``lockstep.rejected_at``
                               and the figures as ``lockstep.rejected.<figure>``)
``lockstep.review``            set by a reviewer in the MLflow UI: ``approved`` or
                               ``rejected`` (``approve``/``reject`` are accepted too)
``lockstep.review.by``         who decided: the MLflow user name (``set_review``) or the
                               Airflow user who answered the review form; an approval
                               without it is not taken (``review``)
``lockstep.review.at``         ISO time of the decision
``lockstep.review.via``        where it was given: ``mlflow`` or ``airflow``
``lockstep.champion_history``  on the registered model: a JSON list of
                               ``{"version", "since", "reason"}``, oldest first, bounded
=============================  =================================================

A value is written as ``tag_value`` renders it (floats exactly, dicts and lists as JSON),
so every part of the registry writes the same text for the same figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lockstep.core import jsonio

CHAMPION = "champion"
CHALLENGER = "challenger"

TAG_FINGERPRINT = "fingerprint"
TAG_SNAPSHOT_SEQ = "snapshot_seq"
TAG_DIM = "dim"
TAG_MODEL_SHA256 = "lockstep.model_sha256"
EVAL_TAG_PREFIX = "eval."
TAG_STATUS = "lockstep.status"
TAG_CHAMPION_SINCE = "lockstep.champion_since"
TAG_REPLACED_AT = "lockstep.replaced_at"
TAG_REPLACED_BY = "lockstep.replaced_by"
TAG_REJECTED_REASON = "lockstep.rejected_reason"
TAG_REJECTED_AT = "lockstep.rejected_at"
REJECTED_FIGURE_PREFIX = "lockstep.rejected."
TAG_REVIEW = "lockstep.review"
TAG_REVIEW_BY = "lockstep.review.by"
TAG_REVIEW_AT = "lockstep.review.at"
TAG_REVIEW_VIA = "lockstep.review.via"
MODEL_TAG_CHAMPION_HISTORY = "lockstep.champion_history"

REVIEW_VALUES = {
    "approved": "approved",
    "approve": "approved",
    "rejected": "rejected",
    "reject": "rejected",
}

MODEL_DESCRIPTION = (
    "Lockstep embedding model: predict(list of texts) returns one L2-normalised float32 row "
    "per text. Alias 'champion' serves all traffic after a completed rollout; 'challenger' is "
    "registered and waiting or rolling out. To review a version, add the version tag "
    f"'{TAG_REVIEW}' with the value 'approved' or 'rejected' and the tag '{TAG_REVIEW_BY}' with "
    "your user name; the rollout reads both and takes no approval that names no reviewer."
)

ARTIFACT_KEY = "embedder"
MODEL_NAME_IN_RUN = "embedder"


TAG_FAMILY = "lockstep.family"  # a built-in family's name (families.families()) or "imported"
IMPORTED = "imported"  # the family of a pyfunc model trained elsewhere (lockstep model import)


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered model version as Lockstep sees it."""

    name: str
    version: str
    run_id: str | None
    fingerprint: str
    source: str
    model_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def eval_figures(self) -> dict[str, float]:
        """The ``eval.*`` tags as numbers, without the prefix."""
        figures: dict[str, float] = {}
        for key, value in self.tags.items():
            if key.startswith(EVAL_TAG_PREFIX):
                try:
                    figures[key[len(EVAL_TAG_PREFIX) :]] = float(value)
                except ValueError:
                    continue
        return figures

    @property
    def snapshot_seq(self) -> int | None:
        value = self.tags.get(TAG_SNAPSHOT_SEQ)
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    @property
    def dim(self) -> int | None:
        value = self.tags.get(TAG_DIM)
        return int(value) if value is not None and value.isdigit() else None

    @property
    def status(self) -> str | None:
        return self.tags.get(TAG_STATUS)


def tag_value(value: Any) -> str:
    """A tag's text: a float exactly (``repr``), a dict, list or tuple as JSON, else ``str``."""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, dict | list | tuple):
        return jsonio.dumps(value)
    return str(value)


def param_value(value: Any) -> str:
    """A run param's text: as ``tag_value``, cut to the 6,000 characters MLflow keeps."""
    text = tag_value(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
