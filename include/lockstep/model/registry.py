"""The model registry: a thin layer over the MLflow 3 client, in Lockstep's words.

MLflow keeps the model versions, their tags and the aliases ``champion`` and
``challenger``; this module adds what MLflow does not keep on its own:

- the fingerprint of each version's vector space, checked again when the version is
  loaded, so an index can never be paired with a model whose weights were swapped;
- a history of which version was champion since when and why (the registry forgets
  where an alias pointed before it moved);
- a review decision a person can give in the MLflow UI, read back by the rollout.

Tags this module reads and writes (on model versions unless stated):

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

What MLflow shows for each registration: the run has the training snapshot as a dataset
input (``log_input``, context ``training``; a digest and the change-log sequence, never
the records themselves); the evaluation figures are metrics of the run *and* of the
LoggedModel, so the model's own page lists them; the model version's description is
written for its reviewer (``describe_version``). The model is logged as code
(``lockstep.model.pyfunc_model``) with pinned requirements and no dependency on Lockstep,
so ``mlflow.pyfunc.load_model`` works wherever its ``requirements.txt`` is installed.

MLflow's fluent API (runs, ``log_model``, ``load_model``) reads a process-wide tracking
URI; every call here sets it for its own duration and restores the caller's value, so
two ``Registry`` objects on different stores can live in one process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source import DatasetSource

from lockstep.core import clock, jsonio
from lockstep.core.config import alert_settings, mask_url, settings
from lockstep.core.errors import FingerprintMismatchError, RegistryError
from lockstep.model.embedding import TextEmbedder, file_sha256
from lockstep.model.families import Embedder, family_name, load_model_file

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
REVIEWER_MAX_CHARS = 200
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
HISTORY_MAX_ENTRIES = 50
HISTORY_MAX_CHARS = 5000  # the registered-model tag column is VARCHAR(5000) on some back ends
PREFLIGHT_TIMEOUT_S = 3.0

_EXAMPLE_TEXTS = ["how do I reset my password", "shipping times for international orders"]
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))/?$")
_URI_LOCK = threading.RLock()


TAG_FAMILY = "lockstep.family"  # a built-in family's name (families.families()) or "imported"
IMPORTED = "imported"  # the family of a pyfunc model trained elsewhere (lockstep model import)
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


class EmbedderPyfunc(mlflow.pyfunc.PythonModel):
    """The pickled pyfunc of versions registered before models were logged as code.

    Kept only so those versions still load where Lockstep is installed (MLflow 3.17 also
    wants ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`` for them); new versions use
    ``lockstep.model.pyfunc_model``, which needs no Lockstep.

    The model file's sha256 travels inside this object (MLflow has already unpickled it
    by the time ``load_context`` runs), so the file is checked before joblib opens it.
    """

    def __init__(self, model_sha256: str | None = None) -> None:
        self.model_sha256 = model_sha256

    def load_context(self, context: Any) -> None:
        path = context.artifacts[ARTIFACT_KEY]
        self.embedder = TextEmbedder.load(path, expected_sha256=getattr(self, "model_sha256", None))

    # Through pyfunc the input always arrives as a DataFrame (MLflow applies the logged
    # signature first), hence the hint; MLflow adds no validation of its own for it and
    # stops warning about a missing hint. Called directly, a list or Series works too.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Embed a list of texts, a pandas Series, or a DataFrame ("text" or first column)."""
        from lockstep.model.pyfunc_model import texts_from

        return self.embedder.transform(texts_from(model_input))


@dataclass(frozen=True)
class Review:
    """A review decision and who gave it: what the rollout and its record keep.

    ``by`` is None when nobody is named (a decision tag without ``lockstep.review.by``, or
    an Airflow form that expired); the rollout does not take such an approval.
    """

    decision: str  # "approved" or "rejected"
    by: str | None
    at: str | None
    via: str  # "mlflow" (the version's tags) or "airflow" (the Required Actions form)


def reviewer_name(by: str | None = None) -> str:
    """Who is deciding: ``by``, else the MLflow login (MLFLOW_TRACKING_USERNAME), else the OS user.

    Checked so the name is safe to show and store: one line, printable, at most
    REVIEWER_MAX_CHARS characters.
    """
    import getpass

    name = by if by is not None else os.environ.get("MLFLOW_TRACKING_USERNAME") or ""
    if by is None and not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no login name for this uid (a bare container)
            name = ""
    name = name.strip()
    if not name or len(name) > REVIEWER_MAX_CHARS or not name.isprintable():
        raise RegistryError(
            f"reviewer {name!r}: give a user name of 1 to {REVIEWER_MAX_CHARS} printable characters "
            "(set MLFLOW_TRACKING_USERNAME or pass by=...)"
        )
    return name


class Registry:
    """Lockstep's operations on the registered embedding model in one MLflow store."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        model_name: str | None = None,
        *,
        artifact_root: str | Path | None = None,
    ) -> None:
        conf = settings()
        self.tracking_uri = tracking_uri or conf.mlflow_tracking_uri
        self.model_name = model_name or conf.model_name
        # Only a database store needs an artifact location from us; a server has its own.
        self.artifact_root = Path(artifact_root) if artifact_root else conf.artifact_root
        self._client_cache: mlflow.MlflowClient | None = None

    def __repr__(self) -> str:
        return f"Registry({mask_url(self.tracking_uri)!r}, {self.model_name!r})"

    # --- registration ------------------------------------------------------------------

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
            **{str(k): _tag_value(v) for k, v in (tags or {}).items()},
            TAG_FINGERPRINT: fingerprint,
            TAG_SNAPSHOT_SEQ: str(int(snapshot_seq)),
            TAG_DIM: str(embedder.dim_),
            TAG_FAMILY: family_name(embedder),
            **{f"{EVAL_TAG_PREFIX}{k}": _tag_value(v) for k, v in metrics.items()},
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
                    mlflow.log_params({k: _param_value(v) for k, v in run_params.items()})
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

    # --- reading -----------------------------------------------------------------------

    def get_version(self, version: str | int) -> ModelVersionInfo:
        """The version, or a RegistryError naming the model, the version and what exists."""
        version = _version_str(version)
        client = self._client()
        try:
            mv = client.get_model_version(self.model_name, version)
        except mlflow.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise self._failed(f"read version {version}", exc) from exc
            raise self._missing_version(version) from exc
        return self._info(mv, self._aliases_by_version())

    def latest_versions(self, limit: int | None = None) -> list[ModelVersionInfo]:
        """All versions of the model (or the newest ``limit``), newest first; [] if none."""
        client = self._client()
        try:
            found = client.search_model_versions(f"name = '{_quote_value(self.model_name)}'")
        except mlflow.MlflowException as exc:
            raise self._failed("list the model versions", exc) from exc
        found = sorted(found, key=lambda mv: int(mv.version), reverse=True)[:limit]
        aliases = self._aliases_by_version() if found else {}
        return [self._info(mv, aliases) for mv in found]

    def version_for_alias(self, alias: str) -> ModelVersionInfo | None:
        """The version an alias points at, or None when the alias (or the model) is unset."""
        client = self._client()
        try:
            mv = client.get_model_version_by_alias(self.model_name, alias)
        except mlflow.MlflowException as exc:
            # An unset alias is INVALID_PARAMETER_VALUE in the SQL store, like a malformed
            # one; the model's alias map tells the two apart.
            if alias not in self._alias_map():
                return None
            raise self._failed(f"read alias {alias!r}", exc) from exc
        return self._info(mv, self._aliases_by_version())

    def resolve(self, uri: str) -> ModelVersionInfo:
        """Resolve ``models:/name@alias``, ``models:/name/N`` or ``models:/name/latest``."""
        match = _MODELS_URI.match(uri.strip())
        if not match:
            raise RegistryError(
                f"{uri!r} is not a model URI; use models:/<name>@<alias> or models:/<name>/<version>"
            )
        registry = self if match["name"] == self.model_name else self._for_model(match["name"])
        if match["alias"]:
            found = registry.version_for_alias(match["alias"])
            if found is None:
                raise RegistryError(
                    f"model {registry.model_name!r} has no alias {match['alias']!r} at "
                    f"{mask_url(self.tracking_uri)}; set it with Registry.set_alias or in the MLflow UI"
                )
            return found
        if match["version"] == "latest":
            newest = registry.latest_versions(limit=1)
            if not newest:
                raise registry._missing_version("latest")
            return newest[0]
        return registry.get_version(match["version"])

    def review_decision(self, version: str | int) -> str | None:
        """The reviewer's decision from the ``lockstep.review`` tag, or None while undecided.

        A reviewer opens the version in the MLflow UI and adds the tag ``lockstep.review``
        with the value ``approved`` or ``rejected``. Any other value is an error rather
        than "undecided", so a typo does not leave a rollout waiting forever.
        """
        raw = self.get_version(version).tags.get(TAG_REVIEW)
        if raw is None or not raw.strip():
            return None
        decision = REVIEW_VALUES.get(raw.strip().lower())
        if decision is None:
            raise RegistryError(
                f"version {version} of {self.model_name!r} has {TAG_REVIEW}={raw!r}; "
                "set it to 'approved' or 'rejected' in the MLflow UI"
            )
        return decision

    def review(self, version: str | int) -> Review | None:
        """The decision on the version with its reviewer (``lockstep.review.by``), or None while undecided.

        ``by`` is None when the tags name nobody; the rollout then refuses an approval (a
        rejection still stops it). MLflow does not record who set a tag, so on this path
        the reviewer is the name written with the decision (``set_review`` writes the
        MLflow login).
        """
        decision = self.review_decision(version)
        if decision is None:
            return None
        tags = self.get_version(version).tags
        by = (tags.get(TAG_REVIEW_BY) or "").strip() or None
        return Review(decision, by, tags.get(TAG_REVIEW_AT) or None, tags.get(TAG_REVIEW_VIA) or "mlflow")

    def champion_history(self) -> list[dict[str, str]]:
        """The champion history kept on the registered model, oldest first."""
        client = self._client()
        try:
            model = client.get_registered_model(self.model_name)
        except mlflow.MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise self._failed("read the champion history", exc) from exc
        return _parse_history(model.tags.get(MODEL_TAG_CHAMPION_HISTORY))

    # --- loading -----------------------------------------------------------------------

    def load_embedder(self, version: str | int) -> Embedder:
        """Download the version's model and check it is the registered space.

        The downloaded file must hash to the ``lockstep.model_sha256`` tag before joblib
        opens it (ModelIntegrityError otherwise: nothing is unpickled). The
        ``fingerprint`` tag was written from the weights at registration; a model whose
        weights hash differently is refused (FingerprintMismatchError).
        """
        info = self.get_version(version)
        if not info.fingerprint:
            raise RegistryError(
                f"version {info.version} of {self.model_name!r} has no {TAG_FINGERPRINT!r} tag; "
                "it was not registered by Lockstep and cannot be paired with an index"
            )
        expected_sha256 = info.tags.get(TAG_MODEL_SHA256)
        if not expected_sha256:
            raise RegistryError(
                f"version {info.version} of {self.model_name!r} has no {TAG_MODEL_SHA256!r} tag "
                "(it was registered before model files were checksummed), so its model file "
                "cannot be verified before loading; register the model again (lockstep train)"
            )
        if info.tags.get(TAG_FAMILY) == IMPORTED:
            from lockstep.model.importing import load_imported

            embedder = load_imported(self, info, expected_sha256)
        else:
            with tempfile.TemporaryDirectory(prefix="lockstep-model-") as tmp:
                local = self.download_version(info, Path(tmp))
                embedder = load_model_file(local / _embedder_path_in(local), expected_sha256=expected_sha256)
        if embedder.fingerprint != info.fingerprint:
            raise FingerprintMismatchError(
                f"version {info.version} of {self.model_name!r} is tagged {TAG_FINGERPRINT}="
                f"{info.fingerprint} but its model file has fingerprint {embedder.fingerprint}; "
                "the tag or the artifact was changed after registration: register the model again"
            )
        return embedder

    def download_version(self, info: ModelVersionInfo, folder: Path) -> Path:
        """Download a version's MLflow model directory into ``folder``; its local path."""
        client = self._client()
        try:
            download_uri = client.get_model_version_download_uri(self.model_name, info.version)
            with self._scoped():
                return Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=download_uri, dst_path=str(folder), tracking_uri=self.tracking_uri
                    )
                )
        except mlflow.MlflowException as exc:
            raise self._failed(f"download version {info.version}", exc) from exc

    def load_pyfunc(self, version: str | int) -> Any:
        """The version as ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` gives it."""
        info = self.get_version(version)
        self._client()
        with self._scoped():
            try:
                return mlflow.pyfunc.load_model(info.model_uri)
            except mlflow.MlflowException as exc:
                raise self._failed(f"load version {info.version} as pyfunc", exc) from exc

    # --- what the MLflow UI shows --------------------------------------------------------

    def describe_version(self, version: str | int, description: str) -> ModelVersionInfo:
        """Set the version's description (markdown): the MLflow UI shows it on the version page."""
        info = self.get_version(version)
        try:
            self._client().update_model_version(self.model_name, info.version, description=description)
        except mlflow.MlflowException as exc:
            raise self._failed(f"describe version {info.version}", exc) from exc
        return info

    def version_description(self, version: str | int) -> str:
        """The version's description as the MLflow UI shows it ("" when unset)."""
        try:
            mv = self._client().get_model_version(self.model_name, self.get_version(version).version)
        except mlflow.MlflowException as exc:
            raise self._failed(f"read version {version}", exc) from exc
        return mv.description or ""

    def ui_links(
        self,
        info: ModelVersionInfo,
        artifact_paths: list[str] | tuple[str, ...] = (),
        *,
        drift_run_id: str | None = None,
    ) -> dict[str, str]:
        """Browser links (MLflow UI, Lockstep page) for a version: its page, run, model, files.

        Built from ``LOCKSTEP_MLFLOW_UI_URL`` and ``LOCKSTEP_AIRFLOW_UI_URL``; an artifact
        path (e.g. ``plots/evaluation.png``) becomes a link to that file on the run page;
        ``drift_run_id`` (the drift check that started the training) a link as ``drift_run``.
        """
        ui = settings().mlflow_ui_url.rstrip("/")
        links = {
            "version": f"{ui}/#/models/{self.model_name}/versions/{info.version}",
            "lockstep": f"{alert_settings().airflow_ui_url}/lockstep/",
        }
        if not info.run_id:
            return links
        try:
            run = self._client().get_run(info.run_id)
        except mlflow.MlflowException as exc:
            raise self._failed(f"read run {info.run_id}", exc) from exc
        run_page = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{info.run_id}"
        links["run"] = run_page
        model_id = _model_id_of(info.source)
        if model_id:
            links["logged_model"] = f"{ui}/#/experiments/{run.info.experiment_id}/models/{model_id}"
        for path in artifact_paths:
            links[path] = f"{run_page}/artifactPath/{path}"
        if drift_run_id:
            links["drift_run"] = self._run_page(ui, drift_run_id)
        return links

    def _run_page(self, ui: str, run_id: str) -> str:
        """A run's page in the MLflow UI (the direct route when the run cannot be read)."""
        try:
            return f"{ui}/#/experiments/{self._client().get_run(run_id).info.experiment_id}/runs/{run_id}"
        except mlflow.MlflowException:
            return f"{ui}/#/runs/{run_id}"

    def run_params(self, run_id: str | None) -> dict[str, str]:
        """The params of a run ({} without one): what a version was trained with."""
        if not run_id:
            return {}
        try:
            return dict(self._client().get_run(run_id).data.params)
        except mlflow.MlflowException as exc:
            raise self._failed(f"read run {run_id}", exc) from exc

    # --- tags and aliases --------------------------------------------------------------

    def set_tags(self, version: str | int, tags: Mapping[str, Any]) -> ModelVersionInfo:
        info = self.get_version(version)
        self._write_tags(info.version, tags)
        return self.get_version(info.version)

    def set_alias(self, alias: str, version: str | int) -> ModelVersionInfo:
        info = self.get_version(version)
        self._write_alias(alias, info.version)
        return self.get_version(info.version)

    def delete_alias(self, alias: str) -> bool:
        """Remove the alias; False when it was not set (deleting twice is not an error)."""
        if alias not in self._alias_map():
            return False
        self._remove_alias(alias)
        return True

    # --- lifecycle ---------------------------------------------------------------------

    def promote_champion(self, version: str | int, reason: str) -> ModelVersionInfo | None:
        """Move ``champion`` to the version; return the version that held it before.

        The alias moves first (it is what readers follow); the tags and the history are
        the record of it. Promoting the current champion again changes nothing and
        returns None. A version promoted back (a rollback) loses its old ``replaced_*``
        tags, so the tags always describe its present state.
        """
        info = self.get_version(version)
        held = self._alias_map()
        previous = held.get(CHAMPION)
        if held.get(CHALLENGER) == info.version:
            self._remove_alias(CHALLENGER)
        if previous == info.version:
            return None
        now = clock.now_iso()
        self._write_alias(CHAMPION, info.version)
        self._write_tags(info.version, {TAG_CHAMPION_SINCE: now, TAG_STATUS: "champion"})
        stale = [t for t in (TAG_REPLACED_AT, TAG_REPLACED_BY) if t in info.tags]
        try:
            for tag in stale:
                self._client().delete_model_version_tag(self.model_name, info.version, tag)
        except mlflow.MlflowException as exc:
            raise self._failed(f"clear old tags of version {info.version}", exc) from exc
        if previous is not None:
            self._write_tags(
                previous,
                {TAG_REPLACED_AT: now, TAG_REPLACED_BY: info.version, TAG_STATUS: "replaced"},
            )
        self._append_history({"version": info.version, "since": now, "reason": reason})
        return self.get_version(previous) if previous is not None else None

    def reject(
        self, version: str | int, reason: str, figures: Mapping[str, Any]
    ) -> ModelVersionInfo:
        """Mark the version rejected with the reason and the figures that decided it.

        The ``challenger`` alias is removed if it points here. Rejecting the serving
        champion is refused: return traffic to another version first (promote it).
        """
        info = self.get_version(version)
        if CHAMPION in info.aliases:
            raise RegistryError(
                f"version {info.version} of {self.model_name!r} is the champion; promote another "
                "version (roll back) before rejecting it"
            )
        self._write_tags(
            info.version,
            {
                TAG_STATUS: "rejected",
                TAG_REJECTED_REASON: reason,
                TAG_REJECTED_AT: clock.now_iso(),
                **{f"{REJECTED_FIGURE_PREFIX}{k}": v for k, v in figures.items()},
            },
        )
        if CHALLENGER in info.aliases:
            self._remove_alias(CHALLENGER)
        return self.get_version(info.version)

    def set_review(
        self, version: str | int, decision: str, *, by: str | None = None, via: str = "mlflow",
        at: str | None = None,
    ) -> ModelVersionInfo:
        """What a reviewer does in the MLflow UI, for the command line, the rollout and tests.

        Records who decided (``by``, default the MLflow login: ``reviewer_name``) and when.
        The reviewer tags are written before the decision, so a rollout never reads an
        approval without its reviewer.
        """
        normal = REVIEW_VALUES.get(decision.strip().lower())
        if normal is None:
            raise RegistryError(f"review decision {decision!r}: use 'approved' or 'rejected'")
        if via not in ("mlflow", "airflow"):
            raise RegistryError(f"review via {via!r}: use 'mlflow' or 'airflow'")
        info = self.get_version(version)
        self._write_tags(info.version, {
            TAG_REVIEW_BY: reviewer_name(by), TAG_REVIEW_AT: at or clock.now_iso(), TAG_REVIEW_VIA: via,
        })
        return self.set_tags(info.version, {TAG_REVIEW: normal})

    # --- internals ---------------------------------------------------------------------

    def _client(self) -> mlflow.MlflowClient:
        """The MLflow client, after checking once that the store answers."""
        if self._client_cache is None:
            self._preflight()
            self._client_cache = mlflow.MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client_cache

    def _preflight(self) -> None:
        """Fail in seconds with advice instead of MLflow's minutes of retries."""
        scheme = urlsplit(self.tracking_uri).scheme
        if scheme in ("http", "https"):
            import httpx

            url = self.tracking_uri.rstrip("/") + "/health"
            try:
                httpx.get(url, timeout=PREFLIGHT_TIMEOUT_S)
            except httpx.HTTPError as exc:
                raise RegistryError(
                    f"the MLflow tracking server at {mask_url(self.tracking_uri)} does not answer "
                    f"({type(exc).__name__}: {exc}); start it (mlflow server ...) or set "
                    "MLFLOW_TRACKING_URI to a reachable server, or unset it to use the embedded "
                    "SQLite store in LOCKSTEP_HOME"
                ) from exc
        elif scheme == "sqlite":
            db_path = self.tracking_uri[len("sqlite:///") :]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)

    def _experiment_id(self, name: str) -> str:
        client = self._client()
        try:
            found = client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            location = None
            if urlsplit(self.tracking_uri).scheme not in ("http", "https", "databricks"):
                folder = self.artifact_root / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
                location = folder.resolve().as_uri()
            try:
                return client.create_experiment(name, artifact_location=location)
            except mlflow.MlflowException as exc:  # created meanwhile by another process
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise exc from None
                return found.experiment_id
        except mlflow.MlflowException as exc:
            raise self._failed(f"open experiment {name!r}", exc) from exc

    def _describe_model(self) -> None:
        """Tell the reviewer in the MLflow UI how to decide, on the model's own page."""
        client = self._client()
        try:
            if not client.get_registered_model(self.model_name).description:
                client.update_registered_model(self.model_name, description=MODEL_DESCRIPTION)
        except mlflow.MlflowException as exc:
            raise self._failed("describe the registered model", exc) from exc

    def _alias_map(self) -> dict[str, str]:
        """Every alias of the model and the version it points at, in one read."""
        try:
            model = self._client().get_registered_model(self.model_name)
        except mlflow.MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise self._failed("read the aliases", exc) from exc
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def _aliases_by_version(self) -> dict[str, list[str]]:
        by_version: dict[str, list[str]] = {}
        for alias, version in sorted(self._alias_map().items()):
            by_version.setdefault(version, []).append(alias)
        return by_version

    def _write_tags(self, version: str, tags: Mapping[str, Any]) -> None:
        client = self._client()
        try:
            for key, value in tags.items():
                client.set_model_version_tag(self.model_name, version, str(key), _tag_value(value))
        except mlflow.MlflowException as exc:
            raise self._failed(f"tag version {version}", exc) from exc

    def _write_alias(self, alias: str, version: str) -> None:
        try:
            self._client().set_registered_model_alias(self.model_name, alias, version)
        except mlflow.MlflowException as exc:
            raise self._failed(f"point alias {alias!r} at version {version}", exc) from exc

    def _remove_alias(self, alias: str) -> None:
        try:
            self._client().delete_registered_model_alias(self.model_name, alias)
        except mlflow.MlflowException as exc:
            raise self._failed(f"delete alias {alias!r}", exc) from exc

    def _info(self, mv: Any, aliases: dict[str, list[str]]) -> ModelVersionInfo:
        tags = dict(mv.tags or {})
        return ModelVersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or None,
            fingerprint=tags.get(TAG_FINGERPRINT, ""),
            source=mv.source or "",
            model_uri=f"models:/{mv.name}/{mv.version}",
            tags=tags,
            aliases=list(aliases.get(str(mv.version), [])),
        )

    def _append_history(self, entry: dict[str, str]) -> None:
        history = self.champion_history()
        history.append({**entry, "reason": entry["reason"][:200]})
        history = history[-HISTORY_MAX_ENTRIES:]
        text = json.dumps(history)
        while len(text) > HISTORY_MAX_CHARS and len(history) > 1:
            history = history[1:]
            text = json.dumps(history)
        try:
            self._client().set_registered_model_tag(
                self.model_name, MODEL_TAG_CHAMPION_HISTORY, text
            )
        except mlflow.MlflowException as exc:
            raise self._failed("record the champion history", exc) from exc

    def _missing_version(self, version: str) -> RegistryError:
        where = mask_url(self.tracking_uri)
        try:
            existing = [mv.version for mv in self.latest_versions()]
        except RegistryError:
            existing = []
        if not existing:
            return RegistryError(
                f"model {self.model_name!r} has no version {version}: no versions of it are "
                f"registered at {where}; run `lockstep train` to register one, or check "
                "MLFLOW_TRACKING_URI and LOCKSTEP_MODEL_NAME"
            )
        listed = ", ".join(sorted(existing, key=int))
        return RegistryError(
            f"model {self.model_name!r} has no version {version} at {where}; "
            f"registered versions: {listed}"
        )

    def _failed(self, what: str, exc: Exception) -> RegistryError:
        message = getattr(exc, "message", None) or str(exc)
        return RegistryError(
            f"MLflow at {mask_url(self.tracking_uri)} could not {what} of model "
            f"{self.model_name!r}: {message}"
        )

    def _for_model(self, name: str) -> Registry:
        other = Registry(self.tracking_uri, name, artifact_root=self.artifact_root)
        other._client_cache = self._client_cache
        return other

    @contextmanager
    def _scoped(self) -> Iterator[None]:
        """Point MLflow's process-wide URIs at this store, then put back the caller's."""
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        with _URI_LOCK:
            saved_env = {
                k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
            }
            saved_tracking = tracking_utils._tracking_uri
            saved_registry = registry_utils._registry_uri
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(saved_tracking)
                registry_utils._registry_uri = saved_registry
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    # --- other experiments (added for the rollout review, issue 11) ----------------------

    def latest_run_tags(self, experiment: str) -> tuple[str, dict[str, str]] | None:
        """The id and tags of the newest run of ``experiment``; None when it has no runs.

        The rollout review shows the latest drift check (experiment ``lockstep-drift``)
        beside the evaluation figures; it reads it here so MLflow is called in one module.
        """
        client = self._client()
        try:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                return None
            runs = client.search_runs(
                [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
            )
        except mlflow.MlflowException as exc:
            raise self._failed(f"read the latest run of experiment {experiment!r}", exc) from exc
        if not runs:
            return None
        return runs[0].info.run_id, dict(runs[0].data.tags)

    def log_run(
        self,
        experiment: str,
        run_name: str,
        *,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        params: Mapping[str, Any],
        files: Mapping[str, Path],
        once_per: tuple[str, str] | None = None,
    ) -> tuple[str, str, bool]:
        """One finished run in ``experiment``: tags, metrics, params and files (artifact folder -> path).

        ``once_per=(tag, value)``: a finished run already tagged so is returned instead of
        logging a second one, so a retried Airflow task does not duplicate the record.
        Returns (run id, experiment id, reused). A failure part-way marks the run FAILED.
        """
        from mlflow.entities import Metric, Param, RunTag

        client = self._client()
        experiment_id = self._experiment_id(experiment)
        try:
            if once_per is not None:
                tag, value = once_per
                found = client.search_runs(
                    [experiment_id],
                    filter_string=f"tags.`{tag}` = '{_quote_value(value)}' and attributes.status = 'FINISHED'",
                    max_results=1,
                )
                if found:
                    return found[0].info.run_id, experiment_id, True
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        except mlflow.MlflowException as exc:
            raise self._failed(f"start a run in experiment {experiment!r}", exc) from exc
        try:
            now_ms = int(clock.now().timestamp() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()],
                params=[Param(k, _param_value(v)) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in {**tags, **({once_per[0]: once_per[1]} if once_per else {})}.items()],
            )
            for folder, path in files.items():
                client.log_artifact(run_id, str(path), artifact_path=folder)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return run_id, experiment_id, False

    def log_version_metrics(self, version: str | int, metrics: Mapping[str, float]) -> str | None:
        """Metrics on the run that registered ``version``; its run id, or None when it has no run.

        Added for the early verdict (issue 14): figures measured after registration (during
        the re-embed) belong beside the version's training figures. A finished run takes
        metrics too; logging again (a retried task) adds a later value under the same key.
        """
        from mlflow.entities import Metric

        info = self.get_version(version)
        if not info.run_id or not metrics:
            return info.run_id
        now_ms = int(clock.now().timestamp() * 1000)
        try:
            self._client().log_batch(info.run_id, metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()])
        except mlflow.MlflowException as exc:
            raise self._failed(f"log metrics on the run of version {info.version}", exc) from exc
        return info.run_id


# --- helpers ---------------------------------------------------------------------------


def _embedder_path_in(model_dir: Path) -> str:
    """Where the ``embedder`` artifact sits inside a downloaded pyfunc model folder."""
    from mlflow.models import Model

    conf = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    entry = (conf.get("artifacts") or {}).get(ARTIFACT_KEY)
    if not entry or "path" not in entry:
        raise RegistryError(
            f"the model in {model_dir} has no {ARTIFACT_KEY!r} artifact; it was not logged by Lockstep"
        )
    return entry["path"]


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


def _model_id_of(source: str) -> str | None:
    """The LoggedModel id in a version's source (``models:/m-...``), if it has one."""
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", source or "")
    return match.group(1) if match else None


def _version_str(version: str | int) -> str:
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(f"{version!r} is not a model version; versions are 1, 2, 3, ...")
    return str(int(text))


def _tag_value(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, dict | list | tuple):
        return jsonio.dumps(value)
    return str(value)


def _param_value(value: Any) -> str:
    text = _tag_value(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _parse_history(raw: str | None) -> list[dict[str, str]]:
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [dict(e) for e in history if isinstance(e, dict)] if isinstance(history, list) else []


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


def _quote_value(value: str) -> str:
    """A value inside single quotes of an MLflow search filter."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
