"""The MLflow model of a recommender version, logged as code ("models from code").

MLflow copies this file into every registered recommender version and runs it when the
version is loaded, so it imports only MLflow, NumPy and pandas, nothing from
``lockstep``: ``mlflow.pyfunc.load_model("models:/lockstep-recommender/3")`` works with
the version's ``requirements.txt`` alone.

``predict(list of user ids)`` returns one float32 row per user: the user's embedding from
the version's factorization fit (the vectors Lockstep's ``ALSRecommender`` stores). An id
the version does not know raises ``UnknownUserError`` naming every such id; users who
arrived after the fit are served by Lockstep's fold-in, not by this file.

The artifact ``recommender`` is the ``.npz`` file ``ALSRecommender.save`` writes (plain
arrays: ids, factors, a JSON ``meta``). Its sha256 is checked against ``model_sha256`` in
the model's ``model_config`` (written at registration, equal to the version tag
``lockstep.model_sha256``) before NumPy opens it, and NumPy opens it with
``allow_pickle=False``: a changed file is refused and no file can run code.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd

ARTIFACT_KEY = "recommender"
FILE_FORMAT = "lockstep.recommender-als/1"


class ArtifactChecksumError(ValueError):
    """The model's file does not hash to the sha256 recorded when it was registered."""


class UnknownUserError(ValueError):
    """User ids this version has no embedding for; the message names them."""


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """``predict(user ids)``: the users' embeddings, a (n, dim) float32 array."""

    def load_context(self, context: Any) -> None:
        path = context.artifacts[ARTIFACT_KEY]
        expected = (context.model_config or {}).get("model_sha256")
        with np.load(io.BytesIO(_verified_bytes(path, expected)), allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") != FILE_FORMAT:
                raise TypeError(f"{path} holds {meta.get('format')!r}, not a recommender file ({FILE_FORMAT})")
            user_ids = [str(u) for u in archive["user_ids"]]
            self.user_factors = np.ascontiguousarray(archive["user_factors"], dtype=np.float32)
        self.row_of = {u: r for r, u in enumerate(user_ids)}
        self.fingerprint = meta["fingerprint"]

    # Through pyfunc the input arrives as a DataFrame (MLflow applies the logged signature
    # first), hence the hint; called directly, a list or Series works too.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """The embeddings of a list of user ids, a Series, or a DataFrame ("user_id" or first column)."""
        user_ids = [str(u) for u in user_ids_from(model_input)]
        unknown = sorted({u for u in user_ids if u not in self.row_of})
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise UnknownUserError(
                f"unknown user id{'s' if len(unknown) != 1 else ''}: {shown}{more}; this version "
                f"knows {len(self.row_of)} users (new users get a vector by fold-in in Lockstep)"
            )
        rows = np.fromiter((self.row_of[u] for u in user_ids), dtype=np.int64, count=len(user_ids))
        return self.user_factors[rows]


def user_ids_from(model_input: Any) -> list[Any]:
    """Accept the shapes pyfunc callers send: list, Series, DataFrame, array, one string."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            raise ValueError("the input DataFrame has no columns; send a 'user_id' column")
        column = "user_id" if "user_id" in model_input.columns else model_input.columns[0]
        return model_input[column].tolist()
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, np.ndarray):
        return model_input.ravel().tolist()
    return list(model_input)


def _verified_bytes(path: str, expected: str | None) -> bytes:
    """The file's bytes once they hash to ``expected``; refuse a file with nothing to check."""
    if not expected:
        raise ArtifactChecksumError(
            f"the model has no model_sha256 in its model_config, so {path} cannot be verified; register it again"
        )
    with open(path, "rb") as fh:
        data = fh.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.removeprefix("sha256:").lower():
        raise ArtifactChecksumError(
            f"{path} has sha256 {actual} but the model was registered with {expected}; "
            "the artifact was changed after registration, so it was not loaded"
        )
    return data


mlflow.models.set_model(RecommenderModel())
