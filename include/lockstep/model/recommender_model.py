"""Registering and loading recommender versions in MLflow (the registry seam).

The recommender system has its own registered model (``LOCKSTEP_RECOMMENDER_MODEL_NAME``,
default ``lockstep-recommender``) in the same MLflow store as the embedder. A version is
one factorization fit: its artifact is the model's single checksummed ``.npz`` file,
logged as code through ``lockstep.model.recommender_pyfunc`` (no Lockstep needed to load
it), whose ``predict(list of user ids)`` returns the users' embeddings.

Everything after registration (aliases, champion history, review, tags) is the ordinary
``Registry`` pointed at the recommender's model name (``recommender_registry``). Only
registration and loading differ from the embedder's, because the model is keyed by user
ids rather than texts and its class lives above this layer (``lockstep.recommender``):
this module takes any object with the ``FactorModel`` shape, and ``open_version`` takes
the loader as an argument.

Version tags (besides the registry's ``lockstep.model_sha256``, ``snapshot_seq``, ``eval.*``):
``fingerprint`` (sha256 of params, ids, factors and fitting library versions), ``dim``,
``users``, ``items``, and ``lockstep.family`` = ``als_recommender``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import mlflow
import numpy as np

from lockstep.core.config import settings
from lockstep.core.errors import FingerprintMismatchError, RegistryError
from lockstep.model.integrity import file_sha256
from lockstep.model.registry import (
    EVAL_TAG_PREFIX,
    TAG_DIM,
    TAG_FAMILY,
    TAG_FINGERPRINT,
    TAG_MODEL_SHA256,
    TAG_SNAPSHOT_SEQ,
    ModelVersionInfo,
    Registry,
    pip_requirements,
)

__all__ = [
    "FAMILY",
    "FactorModel",
    "open_version",
    "recommender_registry",
    "register_recommender",
]

PYFUNC_CODE = Path(__file__).with_name("recommender_pyfunc.py")
MODEL_REQUIREMENTS = ("mlflow", "numpy", "pandas")
ARTIFACT_KEY = "recommender"  # the same key as in recommender_pyfunc.py
MODEL_NAME_IN_RUN = "recommender"
FAMILY = "als_recommender"
TAG_USERS = "users"
TAG_ITEMS = "items"
EXPERIMENT = "lockstep-recommender"
EXAMPLE_USERS = 3
MODEL_DESCRIPTION = (
    "Lockstep recommender: one factorization fit per version. predict(list of user ids) returns "
    "the users' float32 embeddings (unknown ids raise, named); an item's score for a user is "
    "user . item. Alias 'champion' serves all traffic after a completed rollout; 'challenger' is "
    "registered and waiting or rolling out."
)

M = TypeVar("M", bound="FactorModel")


class FactorModel(Protocol):
    """What registration needs of a fitted recommender (``ALSRecommender`` has it)."""

    user_ids_: list[str]
    item_ids_: list[str]

    @property
    def fingerprint(self) -> str: ...

    @property
    def dim_(self) -> int: ...

    def get_params(self) -> dict[str, Any]: ...

    def user_vectors(self, user_ids: list[str]) -> np.ndarray: ...

    def save(self, path: str | Path) -> Path: ...


def recommender_registry(
    tracking_uri: str | None = None, model_name: str | None = None, *, artifact_root: str | Path | None = None
) -> Registry:
    """The registry of the recommender's model (aliases, tags, history work as for the embedder)."""
    return Registry(tracking_uri, model_name or settings().recommender_model_name, artifact_root=artifact_root)


def register_recommender(
    model: FactorModel,
    metrics: Mapping[str, float],
    *,
    registry: Registry | None = None,
    snapshot_seq: int | None = None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> ModelVersionInfo:
    """Log one fit to MLflow (params, metrics, the pyfunc model) and register it.

    ``metrics`` (the offline evaluation's figures) go on the run, on the LoggedModel and
    on the version as ``eval.<name>`` tags, so a rollout reads them without the run.
    """
    registry = registry or recommender_registry()
    version_tags = {
        **{str(k): str(v) for k, v in (tags or {}).items()},
        TAG_FINGERPRINT: model.fingerprint,
        TAG_DIM: str(model.dim_),
        TAG_USERS: str(len(model.user_ids_)),
        TAG_ITEMS: str(len(model.item_ids_)),
        TAG_FAMILY: FAMILY,
        **{f"{EVAL_TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()},
    }
    if snapshot_seq is not None:
        version_tags[TAG_SNAPSHOT_SEQ] = str(int(snapshot_seq))
    examples = list(model.user_ids_[:EXAMPLE_USERS])
    signature = mlflow.models.infer_signature(examples, model.user_vectors(examples))
    experiment_id = registry._experiment_id(EXPERIMENT)
    with registry._scoped(), tempfile.TemporaryDirectory(prefix="lockstep-register-") as tmp:
        model_file = model.save(Path(tmp) / "recommender.npz")
        version_tags[TAG_MODEL_SHA256] = file_sha256(model_file)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            mlflow.set_tags({**version_tags, "lockstep.model_name": registry.model_name})
            mlflow.log_params({f"recommender.{k}": str(v) for k, v in model.get_params().items()})
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(PYFUNC_CODE),
                artifacts={ARTIFACT_KEY: str(model_file)},
                model_config={"model_sha256": version_tags[TAG_MODEL_SHA256]},
                signature=signature,
                input_example=examples,
                pip_requirements=pip_requirements(MODEL_REQUIREMENTS),
            )
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)
            try:
                version = mlflow.register_model(info.model_uri, registry.model_name, tags=version_tags)
            except mlflow.MlflowException as exc:
                raise RegistryError(
                    f"could not register the recommender of run {run.info.run_id} as "
                    f"{registry.model_name!r}: {exc.message}"
                ) from exc
    _describe(registry)
    return registry.get_version(version.version)


def open_version(
    version: str | int, load: Callable[[Path, str], M], registry: Registry | None = None
) -> tuple[M, ModelVersionInfo]:
    """Download a version's model file and open it with ``load(path, expected_sha256)``.

    ``load`` must refuse a file that does not hash to ``expected_sha256`` before reading
    it (``ALSRecommender.load`` does); the opened model's fingerprint must then equal the
    version's ``fingerprint`` tag, else FingerprintMismatchError.
    """
    registry = registry or recommender_registry()
    info = registry.get_version(version)
    expected = info.tags.get(TAG_MODEL_SHA256)
    if info.tags.get(TAG_FAMILY) != FAMILY or not expected or not info.fingerprint:
        raise RegistryError(
            f"version {info.version} of {registry.model_name!r} is not a recommender registered by Lockstep "
            f"(tags {TAG_FAMILY}={info.tags.get(TAG_FAMILY)!r}, {TAG_MODEL_SHA256} "
            f"{'set' if expected else 'missing'}, {TAG_FINGERPRINT} {'set' if info.fingerprint else 'missing'})"
        )
    with tempfile.TemporaryDirectory(prefix="lockstep-recommender-") as tmp:
        local = registry.download_version(info, Path(tmp))
        model = load(_artifact_path(local), expected)
    if model.fingerprint != info.fingerprint:
        raise FingerprintMismatchError(
            f"version {info.version} of {registry.model_name!r} is tagged {TAG_FINGERPRINT}={info.fingerprint} "
            f"but its model file has fingerprint {model.fingerprint}; register the model again"
        )
    return model, info


def _artifact_path(model_dir: Path) -> Path:
    """Where the ``recommender`` artifact sits inside a downloaded pyfunc model folder."""
    from mlflow.models import Model

    conf = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    entry = (conf.get("artifacts") or {}).get(ARTIFACT_KEY)
    if not entry or "path" not in entry:
        raise RegistryError(f"the model in {model_dir} has no {ARTIFACT_KEY!r} artifact; it was not logged by Lockstep")
    return model_dir / entry["path"]


def _describe(registry: Registry) -> None:
    """The registered model's description, for the reviewer in the MLflow UI (set once)."""
    client = registry._client()
    try:
        if not client.get_registered_model(registry.model_name).description:
            client.update_registered_model(registry.model_name, description=MODEL_DESCRIPTION)
    except mlflow.MlflowException as exc:
        raise registry._failed("describe the registered model", exc) from exc
