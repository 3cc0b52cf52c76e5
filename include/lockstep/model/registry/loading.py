"""Loading: a registered version back as an embedder (checked) or as MLflow's pyfunc.

A downloaded model file must hash to the version's ``lockstep.model_sha256`` tag before
it is unpickled, and the loaded model's fingerprint must equal the ``fingerprint`` tag
written at registration; an imported version is loaded through ``importing.load_imported``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from lockstep.core.errors import FingerprintMismatchError, RegistryError
from lockstep.model.contract import Embedder
from lockstep.model.embedding import TextEmbedder
from lockstep.model.families import DIRECTORY_FAMILIES, load_model_file
from lockstep.model.registry.tags import (
    ARTIFACT_KEY,
    TAG_FAMILY,
    TAG_FINGERPRINT,
    TAG_MODEL_SHA256,
    ModelVersionInfo,
)
from lockstep.model.registry.versions import RegistryVersions


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


class LoadingMixin(RegistryVersions):
    """A version's model downloaded and opened, checked against its tags."""

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
        if info.tags.get(TAG_FAMILY) in DIRECTORY_FAMILIES:  # imported, onnx_text: an MLflow model directory
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
