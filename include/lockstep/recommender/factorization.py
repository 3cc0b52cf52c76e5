"""A recommender model version: one ALS factorization fit, user and item embeddings.

``ALSRecommender`` is a scikit-learn style estimator (parameters in ``__init__``,
``fit(interactions)`` returns ``self``, fitted attributes end in ``_``) around
``implicit`` 0.7's alternating least squares for implicit feedback.

Confidence mapping (documented in ``fold_in.confidence``): the interactions of one
(user, item) pair are summed and the cell's confidence is ``1 + alpha * value``; every
observed cell has preference 1, unobserved cells preference 0 with confidence 1. For
MovieLens ratings (1-5) with the default ``alpha = 0.2`` a 5-star rating weighs 2, a
1-star rating 1.2, an unwatched movie 1. The defaults (64 factors, regularization 10,
alpha 0.2, 15 iterations) come from a small grid on MovieLens-100k's time split
(``docs/benchmarks.md``, "Recommender"). ``implicit``'s own ``alpha`` stays 1: the mapping is done here so
fold-in and fit share one definition.

Deterministic: ``random_state`` seeds the initial factors, the exact (Cholesky, not
conjugate-gradient) solver is used with ``num_threads=1`` and BLAS limited to one thread
during the fit, and ids are sorted, so the same interactions in any row order give the
same factors, bit for bit (the tests check two fits).

The fit ends with one more exact user half-step against the final item factors, so a
user's stored vector *is* its fold-in (``user_fold_in().vector(its items, its values)``
gives it back to float32 rounding): serving can refold a user after a new interaction
without the untouched part of its history moving it.

The file (``save``/``load``) is one ``.npz`` archive of plain arrays, read with
``allow_pickle=False`` after its sha256 is checked, so loading never runs code; the
MLflow model (``lockstep.model.recommender_pyfunc``) reads the same file with NumPy alone.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator

from lockstep.core.errors import NotFittedError
from lockstep.model.integrity import read_verified_model, write_checksummed
from lockstep.recommender.fold_in import FoldIn, UnknownIdError, check_values, confidence

__all__ = ["FILE_FORMAT", "ALSRecommender", "interaction_matrix"]

FILE_FORMAT = "lockstep.recommender-als/1"
REQUIRED_COLUMNS = ("user_id", "item_id", "value")


class ALSRecommender(BaseEstimator):
    """User and item embeddings from implicit-feedback ALS; score = user . item."""

    FAMILY = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 10.0,
        alpha: float = 0.2,
        iterations: int = 15,
        random_state: int = 0,
        num_threads: int = 1,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    # --- fitting ---------------------------------------------------------------------------

    def fit(self, interactions: pd.DataFrame, y: Any = None) -> ALSRecommender:
        """Fit on a DataFrame with user_id, item_id, value (timestamp is not used here)."""
        self._check_params()
        user_ids, item_ids, matrix = interaction_matrix(interactions, self.alpha)
        als = self._fit_als(matrix)
        self.user_ids_, self.item_ids_ = user_ids, item_ids
        self.item_factors_ = np.ascontiguousarray(als.item_factors, dtype=np.float32)
        # The final user half-step: the stored user vectors are exactly their fold-ins.
        self.user_factors_ = _exact_user_step(als, matrix)
        self.library_versions_ = _library_versions()
        self._index_ids()
        self.fingerprint_ = self._compute_fingerprint()
        return self

    def _fit_als(self, matrix: sp.csr_matrix) -> Any:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # BLAS limited to one thread: implicit's own threads do the work (and it warns otherwise).
        with threadpool_limits(1, "blas"):
            als = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=1.0,
                use_cg=False, iterations=self.iterations, num_threads=self.num_threads,
                random_state=self.random_state, calculate_training_loss=False,
            )
            als.fit(matrix, show_progress=False)
        return als

    def _check_params(self) -> None:
        problems = []
        if not isinstance(self.factors, int) or self.factors < 1:
            problems.append(f"factors must be a positive int, got {self.factors!r}")
        if not self.regularization > 0:
            problems.append(f"regularization must be > 0, got {self.regularization!r}")
        if not self.alpha >= 0:
            problems.append(f"alpha must be >= 0, got {self.alpha!r}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            problems.append(f"iterations must be a positive int, got {self.iterations!r}")
        if problems:
            raise ValueError("ALSRecommender: " + "; ".join(problems))

    # --- using a fitted model ------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        self._check_fitted()
        return self.fingerprint_

    @property
    def dim_(self) -> int:
        self._check_fitted()
        return int(self.item_factors_.shape[1])

    def user_vectors(self, user_ids: list[str]) -> np.ndarray:
        """The fitted vectors of known users, one row each; unknown ids raise, all named."""
        return self.user_factors_[self._rows(self.user_row_, user_ids, "user")]

    def item_vectors(self, item_ids: list[str]) -> np.ndarray:
        """The fitted vectors of known items, one row each; unknown ids raise, all named."""
        return self.item_factors_[self._rows(self.item_row_, item_ids, "item")]

    def user_fold_in(self) -> FoldIn:
        """Fold-in of users (new or changed) given this version's item factors."""
        self._check_fitted()
        return FoldIn(self.item_factors_, self.item_ids_, self.regularization, self.alpha, "item")

    def item_fold_in(self) -> FoldIn:
        """Fold-in of items (new ones after their first interactions) given the user factors."""
        self._check_fitted()
        return FoldIn(self.user_factors_, self.user_ids_, self.regularization, self.alpha, "user")

    def user_store(self) -> dict[str, np.ndarray]:
        """A fresh user-vector store (user id -> float32 vector) for serving to update."""
        self._check_fitted()
        return {u: self.user_factors_[r].copy() for r, u in enumerate(self.user_ids_)}

    # --- the file --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the model as one ``.npz`` atomically, then its ``.sha256`` sidecar (second:
        a crash in between leaves a file without checksum, refused by ``load``)."""
        self._check_fitted()
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        return write_checksummed(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> ALSRecommender:
        """Load a file after checking its sha256 (``expected_sha256``, else the sidecar) and
        then its fingerprint against its arrays; no pickle is ever read."""
        data = read_verified_model(path, expected_sha256)
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.get("meta", np.array("{}"))))
        if meta.get("format") != FILE_FORMAT:
            raise TypeError(f"{path} holds {meta.get('format')!r}, not a recommender file ({FILE_FORMAT})")
        model = cls(**meta["params"])
        model.user_ids_ = [str(u) for u in arrays["user_ids"]]
        model.item_ids_ = [str(i) for i in arrays["item_ids"]]
        model.user_factors_ = np.ascontiguousarray(arrays["user_factors"], dtype=np.float32)
        model.item_factors_ = np.ascontiguousarray(arrays["item_factors"], dtype=np.float32)
        model.library_versions_ = meta["library_versions"]
        model._index_ids()
        model.fingerprint_ = model._compute_fingerprint()
        if model.fingerprint_ != meta["fingerprint"]:
            raise NotFittedError(
                f"{path}: the stored fingerprint {meta['fingerprint']} does not match the file's "
                f"factors ({model.fingerprint_}); the file is corrupt"
            )
        return model

    def _arrays(self) -> dict[str, np.ndarray]:
        meta = {
            "format": FILE_FORMAT,
            "params": self.get_params(),
            "fingerprint": self.fingerprint_,
            "library_versions": self.library_versions_,
        }
        return {
            "meta": np.array(json.dumps(meta, sort_keys=True)),
            "user_ids": np.array(self.user_ids_, dtype=np.str_),
            "item_ids": np.array(self.item_ids_, dtype=np.str_),
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
        }

    # --- internals -------------------------------------------------------------------------------

    def _compute_fingerprint(self) -> str:
        """sha256 of the format, params, the fitting libraries' versions, ids and factors."""
        h = hashlib.sha256()
        head = {"format": FILE_FORMAT, "params": self.get_params(), "library_versions": self.library_versions_}
        h.update(json.dumps(head, sort_keys=True).encode())
        for ids in (self.user_ids_, self.item_ids_):
            h.update(json.dumps(ids).encode())
        for factors in (self.user_factors_, self.item_factors_):
            h.update(str(factors.shape).encode())
            h.update(np.ascontiguousarray(factors, dtype="<f4").tobytes())
        return "sha256:" + h.hexdigest()

    def _index_ids(self) -> None:
        self.user_row_ = {u: r for r, u in enumerate(self.user_ids_)}
        self.item_row_ = {i: r for r, i in enumerate(self.item_ids_)}

    def _rows(self, row_of: dict[str, int], ids: list[str], kind: str) -> np.ndarray:
        self._check_fitted()
        unknown = [i for i in ids if i not in row_of]
        if unknown:
            raise UnknownIdError(kind, unknown, f"this model version knows {len(row_of)} {kind}s")
        return np.fromiter((row_of[i] for i in ids), dtype=np.int64, count=len(ids))

    def _check_fitted(self) -> None:
        if not hasattr(self, "fingerprint_"):
            raise NotFittedError("this ALSRecommender is not fitted yet: call fit(interactions) first")


def interaction_matrix(interactions: pd.DataFrame, alpha: float) -> tuple[list[str], list[str], sp.csr_matrix]:
    """Sorted user ids, sorted item ids, and the (users x items) confidence matrix.

    Repeated (user, item) rows are summed before the confidence map, as in fold-in.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(
            f"interactions need columns {list(REQUIRED_COLUMNS)}; missing {missing} "
            f"(found {list(interactions.columns)})"
        )
    if len(interactions) == 0:
        raise ValueError("cannot fit on zero interactions")
    users = interactions["user_id"].astype(str).to_numpy()
    items = interactions["item_id"].astype(str).to_numpy()
    values = check_values(interactions["value"].to_numpy(), "interactions")
    user_ids, user_rows = np.unique(users, return_inverse=True)
    item_ids, item_rows = np.unique(items, return_inverse=True)
    summed = sp.coo_matrix((values, (user_rows, item_rows)), shape=(len(user_ids), len(item_ids))).tocsr()
    summed.sum_duplicates()
    summed.data = confidence(summed.data, alpha).astype(np.float32)
    return [str(u) for u in user_ids], [str(i) for i in item_ids], summed


def _exact_user_step(als: Any, matrix: sp.csr_matrix) -> np.ndarray:
    """Every user's exact least-squares vector given the final item factors."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        users = als.recalculate_user(np.arange(matrix.shape[0]), matrix)
    return np.ascontiguousarray(users, dtype=np.float32)


def _library_versions() -> dict[str, str]:
    import implicit
    import scipy

    return {"implicit": implicit.__version__, "numpy": np.__version__, "scipy": scipy.__version__}
