"""The MLflow model of a Lockstep embedder, logged as code ("models from code").

MLflow copies this file into every registered model and runs it when the model is
loaded, so it imports only what the model declares in its requirements (MLflow,
scikit-learn, NumPy, pandas, joblib) and nothing from ``lockstep``: ``mlflow.pyfunc.
load_model("models:/lockstep-embedder/3")`` works in an environment with the model's
``requirements.txt`` alone. ``predict(list of texts)`` returns one L2-normalised float32
row per text, the vectors Lockstep's own ``TextEmbedder.transform`` gives.

The artifact ``embedder`` is the file ``TextEmbedder.save`` writes: a dict whose
``pipeline`` is a plain scikit-learn Pipeline (TF-IDF, SVD, L2 norm). Unpickling runs
code, so the file's sha256 is checked first against ``model_sha256`` in the model's
``model_config`` (written at registration, equal to the version tag
``lockstep.model_sha256``); a file that differs is refused before joblib opens it.
Lockstep itself (serving, re-embedding) does not go through this file: it loads the same
artifact with ``TextEmbedder.load`` and its single-query fast path.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd

ARTIFACT_KEY = "embedder"
FILE_FORMAT = "lockstep.text-embedder/2"
BATCH = 50_000  # texts per TF-IDF matrix, so a large input holds one batch's matrix at a time


class ArtifactChecksumError(ValueError):
    """The model's file does not hash to the sha256 recorded when it was registered."""


class EmbedderModel(mlflow.pyfunc.PythonModel):
    """``predict(texts)``: the embeddings of the texts, a (n, dim) float32 array."""

    def load_context(self, context: Any) -> None:
        path = context.artifacts[ARTIFACT_KEY]
        expected = (context.model_config or {}).get("model_sha256")
        payload = joblib.load(io.BytesIO(_verified_bytes(path, expected)))
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise TypeError(f"{path} is not a Lockstep embedder file ({FILE_FORMAT})")
        self.pipeline = payload["pipeline"]
        self.dim = int(payload["pipeline"].named_steps["svd"].components_.shape[0])

    # Through pyfunc the input arrives as a DataFrame (MLflow applies the logged signature
    # first), hence the hint; called directly, a list or Series works too.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Embed a list of texts, a pandas Series, or a DataFrame ("text" or first column)."""
        texts = texts_from(model_input)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            out[start : start + BATCH] = self.pipeline.transform(texts[start : start + BATCH])
        return out


def texts_from(model_input: Any) -> list[str]:
    """Accept the shapes pyfunc callers send: list, Series, DataFrame, array, one string."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            raise ValueError("the input DataFrame has no columns; send a 'text' column")
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[column].tolist()
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, np.ndarray):
        return model_input.ravel().tolist()
    return list(model_input)


def _verified_bytes(path: str, expected: str | None) -> bytes:
    """The file's bytes once they hash to ``expected``; read once, so they cannot be swapped."""
    if not expected:
        raise ArtifactChecksumError(
            f"the model has no model_sha256 in its model_config, so {path} cannot be checked "
            "before it is unpickled; register the model again"
        )
    with open(path, "rb") as fh:
        data = fh.read()
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != "sha256:" + expected.lower().removeprefix("sha256:"):
        raise ArtifactChecksumError(
            f"model file {path} fails its checksum: its sha256 is {actual}, the registered "
            f"model_sha256 is {expected}; the file was changed after registration, so it was not loaded"
        )
    return data


mlflow.models.set_model(EmbedderModel())
