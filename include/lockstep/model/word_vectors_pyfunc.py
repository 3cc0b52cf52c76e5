"""The MLflow model of a word-vector embedder, logged as code ("models from code").

MLflow copies this file into every registered version of the ``word_vectors`` family
and runs it when the model is loaded, so it imports only what the model declares in its
requirements (MLflow, NumPy, SciPy, pandas, joblib): neither ``lockstep`` nor gensim.
``predict(list of texts)`` returns one L2-normalised float32 row per text, the vectors
``WordVectorEmbedder.transform`` gives: the SIF-weighted sum of the text's word vectors,
minus their projection on the stored principal component, normalised (zero for a
text with no known word).

The artifact ``embedder`` is the file ``WordVectorEmbedder.save`` writes (a dict of
plain values and NumPy arrays). Unpickling runs code, so the file's sha256 is checked
first against ``model_sha256`` in the model's ``model_config`` (written at
registration); a file that differs is refused before joblib opens it.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

ARTIFACT_KEY = "embedder"
FILE_FORMAT = "lockstep.word-vectors/1"
TOKEN_PATTERN = r"\b\w\w+\b"  # on lowercased text, as in lockstep.model.word_vectors
BATCH = 20_000  # texts per sparse count matrix
_TOKEN_RE = re.compile(TOKEN_PATTERN)


class ArtifactChecksumError(ValueError):
    """The model's file does not hash to the sha256 recorded when it was registered."""


class WordVectorModel(mlflow.pyfunc.PythonModel):
    """``predict(texts)``: the embeddings of the texts, a (n, dim) float32 array."""

    def load_context(self, context: Any) -> None:
        path = context.artifacts[ARTIFACT_KEY]
        expected = (context.model_config or {}).get("model_sha256")
        payload = joblib.load(io.BytesIO(_verified_bytes(path, expected)))
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise TypeError(f"{path} is not a Lockstep word-vector file ({FILE_FORMAT})")
        if payload.get("token_pattern") != TOKEN_PATTERN:
            raise TypeError(f"{path} tokenizes with {payload.get('token_pattern')!r}, not {TOKEN_PATTERN!r}")
        self.pooled = pooled_rows(payload["vectors"], payload["weights"], payload["component"])
        self.index = {word: j for j, word in enumerate(payload["vocab"])}

    # Through pyfunc the input arrives as a DataFrame (MLflow applies the logged signature
    # first), hence the hint; called directly, a list or Series works too.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Embed a list of texts, a pandas Series, or a DataFrame ("text" or first column)."""
        texts = texts_from(model_input)
        out = np.empty((len(texts), self.pooled.shape[1]), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            out[start : start + len(batch)] = _normalised(self._counts(batch) @ self.pooled)
        return out

    def _counts(self, texts: list[str]) -> csr_matrix:
        cols: list[int] = []
        indptr = [0]
        for text in texts:
            cols.extend(j for j in (self.index.get(t) for t in tokenize(text)) if j is not None)
            indptr.append(len(cols))
        data = np.ones(len(cols), dtype=np.float32)
        matrix = csr_matrix((data, np.asarray(cols, dtype=np.int64), indptr), shape=(len(texts), len(self.index)))
        matrix.sum_duplicates()
        return matrix


def tokenize(text: str) -> list[str]:
    """Lowercase words of two or more letters or digits."""
    return _TOKEN_RE.findall(str(text).lower())


def pooled_rows(vectors: np.ndarray, weights: np.ndarray, component: np.ndarray) -> np.ndarray:
    """Row t: ``weights[t] * (vectors[t] - component (component . vectors[t]))``, float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    component = np.asarray(component, dtype=np.float32)
    projected = vectors - np.outer(vectors @ component, component).astype(np.float32)
    return np.ascontiguousarray(np.asarray(weights, dtype=np.float32)[:, None] * projected, dtype=np.float32)


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


def _normalised(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


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


mlflow.models.set_model(WordVectorModel())
