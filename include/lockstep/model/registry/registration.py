"""Registration: one training run logged to MLflow and its model registered as a new version.

What MLflow shows for each registration: the run has the training snapshot as a dataset
input (``log_input``, context ``training``; a digest and the change-log sequence, never
the records themselves); the evaluation figures are metrics of the run *and* of the
LoggedModel, so the model's own page lists them; the model version's description is
written for its reviewer (``describe_version``). The model is logged as code
(``lockstep.model.pyfunc_model``) with pinned requirements and no dependency on Lockstep,
so ``mlflow.pyfunc.load_model`` works wherever its ``requirements.txt`` is installed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source import DatasetSource

from lockstep.core.config import mask_url
from lockstep.core.errors import RegistryError
from lockstep.model.contract import Embedder
from lockstep.model.embedding import TextEmbedder
from lockstep.model.families import family_name
from lockstep.model.integrity import file_sha256
from lockstep.model.registry.tags import (
    ARTIFACT_KEY,
    EVAL_TAG_PREFIX,
    MODEL_NAME_IN_RUN,
    TAG_DIM,
    TAG_FAMILY,
    TAG_FINGERPRINT,
    TAG_MODEL_SHA256,
    TAG_SNAPSHOT_SEQ,
    ModelVersionInfo,
    param_value,
    tag_value,
)
from lockstep.model.registry.versions import RegistryVersions

_EXAMPLE_TEXTS = ["how do I reset my password", "shipping times for international orders"]
DATASET_DIGEST_CHARS = 16  # MLflow keeps dataset digests in a 36-character column


@dataclass(frozen=True)
class TrainingSnapshot:
    """The records a version was trained on, as its run's dataset input.

    Only a description travels (where, which change-log sequence, how many, a digest of
    the content): at a million records the records themselves stay in the record store.
    """

    source: str  # the record store, e.g. its database URL (a password is redacted)
    seq: int
    records: int
    digest: str  # of the snapshot's content; equal digests mean the same records
    name: str = "lockstep-records"


class _SnapshotSource(DatasetSource):
    """Where a training snapshot lives: the record store and the change-log sequence.

    What the MLflow UI shows as the dataset's source; ``load`` is not offered, because
    the records are read back from the record store at that sequence, not from MLflow.
    """

    def __init__(self, store: str, seq: int, records: int) -> None:
        self.store, self.seq, self.records = store, seq, records

    @staticmethod
    def _get_source_type() -> str:
        return "lockstep_snapshot"

    def load(self) -> Any:
        raise RegistryError(
            f"the snapshot at seq {self.seq} of {self.store} is read with Lockstep's "
            "RecordStore.snapshot(at_seq=...), not through MLflow"
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> _SnapshotSource:
        raise RegistryError(f"{raw_source!r} is not resolved to a Lockstep snapshot")

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "seq": self.seq, "records": self.records}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> _SnapshotSource:
        return cls(str(source_dict["store"]), int(source_dict["seq"]), int(source_dict["records"]))


class RegistrationMixin(RegistryVersions):
    """``log_and_register``: a trained model becomes a registered version."""

    def log_and_register(
        self,
        embedder: Embedder,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        artifacts: Mapping[str, str | Path] | None = None,
        tags: Mapping[str, Any] | None = None,
        snapshot_seq: int,
        run_name: str | None = None,
        experiment: str = "lockstep",
        example_texts: list[str] | None = None,
        snapshot: TrainingSnapshot | None = None,
    ) -> ModelVersionInfo:
        """Log one training run (params, metrics, files, the pyfunc model) and register it.

        ``artifacts`` maps a path inside the run's artifacts (e.g. ``"reports/eval.json"``)
        to a local file or folder. ``metrics`` are logged on the run and on the LoggedModel
        (its page in the MLflow UI lists them) and copied onto the version as
        ``eval.<name>`` tags, so the rollout reads them without the run. ``snapshot`` is
        logged as the run's training dataset, and the metrics are linked to it.
        """
        extra_files = {str(k): Path(v) for k, v in (artifacts or {}).items()}
        for dest, src in extra_files.items():
            if not src.exists():
                raise RegistryError(f"artifact {dest!r}: {src} does not exist; nothing was logged")
        fingerprint = embedder.fingerprint
        version_tags = {
            **{str(k): tag_value(v) for k, v in (tags or {}).items()},
            TAG_FINGERPRINT: fingerprint,
            TAG_SNAPSHOT_SEQ: str(int(snapshot_seq)),
            TAG_DIM: str(embedder.dim_),
            TAG_FAMILY: family_name(embedder),
            **{f"{EVAL_TAG_PREFIX}{k}": tag_value(v) for k, v in metrics.items()},
        }
        run_params = {
            **{f"embedder.{k}": v for k, v in embedder.get_params().items()},
            **dict(params),
        }
        examples = list(example_texts or _EXAMPLE_TEXTS)
        signature = mlflow.models.infer_signature(examples, embedder.transform(examples))
        experiment_id = self._experiment_id(experiment)

        with self._scoped(), tempfile.TemporaryDirectory(prefix="lockstep-register-") as tmp:
            model_file = embedder.save(Path(tmp) / "embedder.joblib")
            model_sha256 = file_sha256(model_file)
            version_tags[TAG_MODEL_SHA256] = model_sha256
            with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
                mlflow.set_tags({**version_tags, "lockstep.model_name": self.model_name})
                if run_params:
                    mlflow.log_params({k: param_value(v) for k, v in run_params.items()})
                dataset = _snapshot_dataset(snapshot) if snapshot is not None else None
                if dataset is not None:
                    mlflow.log_input(dataset, context="training", tags={"snapshot_seq": str(snapshot.seq)})
                if extra_files:
                    mlflow.log_artifacts(_stage_files(extra_files, Path(tmp) / "extra"))
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME_IN_RUN,
                    python_model=str(type(embedder).PYFUNC_CODE),
                    artifacts={ARTIFACT_KEY: str(model_file)},
                    model_config={"model_sha256": model_sha256},
                    signature=signature,
                    input_example=examples,
                    pip_requirements=pip_requirements(type(embedder).MODEL_REQUIREMENTS),
                )
                # log_model gave the LoggedModel the run's params; the metrics go to both.
                if metrics:
                    mlflow.log_metrics(
                        {k: float(v) for k, v in metrics.items()}, model_id=info.model_id, dataset=dataset
                    )
                try:
                    version = mlflow.register_model(
                        info.model_uri, self.model_name, tags=version_tags
                    )
                except mlflow.MlflowException as exc:
                    raise RegistryError(
                        f"could not register the model of run {run.info.run_id} as "
                        f"{self.model_name!r} at {mask_url(self.tracking_uri)}: {exc.message}"
                    ) from exc
        self._describe_model()
        return self.get_version(version.version)


def _stage_files(files: dict[str, Path], folder: Path) -> str:
    """Copy the extra artifacts to their run paths so one upload puts each in its place."""
    for dest, src in files.items():
        target = folder / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
    return str(folder)


def pip_requirements(distributions: tuple[str, ...] = TextEmbedder.MODEL_REQUIREMENTS) -> list[str]:
    """The logged model's requirements, pinned to the installed versions.

    Declared rather than inferred: inference takes seconds and would add ``lockstep``,
    which the model, logged as code, does not need.
    """
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}" for dist in distributions]


def _snapshot_dataset(snapshot: TrainingSnapshot) -> Any:
    """The snapshot as an MLflow dataset: name, source, digest, schema; no rows."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    schema = Schema([ColSpec(DataType.string, "id"), ColSpec(DataType.string, "text")])
    return MetaDataset(
        source=_SnapshotSource(mask_url(snapshot.source), int(snapshot.seq), int(snapshot.records)),
        name=f"{snapshot.name}@{int(snapshot.seq)}",
        digest=snapshot.digest.removeprefix("sha256:")[:DATASET_DIGEST_CHARS],
        schema=schema,
    )
