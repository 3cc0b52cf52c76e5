"""The embedding model: text -> L2-normalised float32 vectors, and its fingerprint.

``TextEmbedder`` is a scikit-learn estimator (TF-IDF, then TruncatedSVD, then L2
normalisation). Bulk embedding goes through scikit-learn; a single query takes a
hand-written path over the same fitted weights that skips sklearn's validation and
sparse-matrix machinery (about 30x faster; ``benchmarks/bench_core.py`` measures it)
and gives the same vector to float32 precision.

The fingerprint hashes everything that defines the vector space, so an index built by
one space can never be paired with a query embedded by another, even when the model
name and version look the same (a library upgrade or a changed parameter changes it).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .errors import NotFittedError

FORMAT_VERSION = 1


class TextEmbedder(TransformerMixin, BaseEstimator):
    """TF-IDF + TruncatedSVD + L2 norm; ``fit`` returns self, ``transform`` embeds.

    Parameters mirror the two stages: ``dim`` is the SVD output size; ``max_features``,
    ``min_df``, ``max_df``, ``ngram_range`` and ``sublinear_tf`` shape the vocabulary.
    """

    def __init__(
        self,
        dim: int = 256,
        max_features: int | None = 50_000,
        min_df: int | float = 2,
        max_df: float = 0.5,
        ngram_range: tuple[int, int] = (1, 1),
        sublinear_tf: bool = True,
        stop_words: str | None = "english",
        n_iter: int = 5,
        random_state: int = 0,
    ) -> None:
        self.dim = dim
        self.max_features = max_features
        self.min_df = min_df
        self.max_df = max_df
        self.ngram_range = ngram_range
        self.sublinear_tf = sublinear_tf
        self.stop_words = stop_words
        self.n_iter = n_iter
        self.random_state = random_state

    # --- scikit-learn API --------------------------------------------------------------

    def fit(self, texts: list[str] | Any, y: Any = None) -> TextEmbedder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = _as_text_list(texts)
        if len(texts) < 2:
            raise ValueError(f"need at least 2 texts to fit an embedding model, got {len(texts)}")
        self.vectorizer_ = TfidfVectorizer(
            max_features=self.max_features,
            min_df=self.min_df,
            max_df=self.max_df,
            ngram_range=tuple(self.ngram_range),
            sublinear_tf=self.sublinear_tf,
            stop_words=self.stop_words,
            dtype=np.float32,
        )
        tfidf = self.vectorizer_.fit_transform(texts)
        n_components = min(self.dim, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
        if n_components < 1:
            raise ValueError(
                f"the vocabulary has {tfidf.shape[1]} terms after filtering; "
                "lower min_df or give more text"
            )
        self.svd_ = TruncatedSVD(
            n_components=n_components, n_iter=self.n_iter, random_state=self.random_state
        )
        self.svd_.fit(tfidf)
        self._prepare_fast_path()
        self.fingerprint_ = self._compute_fingerprint()
        return self

    def transform(self, texts: list[str] | Any) -> np.ndarray:
        """Embed many texts: a (n, dim) float32 array, each row of unit length (or zero)."""
        self._check_fitted()
        texts = _as_text_list(texts)
        if not texts:
            return np.zeros((0, self.dim_), dtype=np.float32)
        tfidf = self.vectorizer_.transform(texts)
        dense = np.asarray(tfidf @ self.components_t_, dtype=np.float32)
        return _l2_normalise(dense)

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text without sklearn's per-call overhead: a (dim,) float32 vector."""
        self._check_fitted()
        counts: dict[int, int] = {}
        vocab = self._vocab
        for token in self._analyzer(text):
            j = vocab.get(token)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(self.dim_, dtype=np.float32)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        if self.sublinear_tf:
            tf = np.log(tf) + 1.0
        weights = tf * self._idf[cols]
        weights /= np.sqrt(np.dot(weights, weights))
        vec = weights @ self.components_t_[cols]
        norm = float(np.sqrt(np.dot(vec, vec)))
        return vec / norm if norm > 0 else vec

    # --- identity ----------------------------------------------------------------------

    @property
    def dim_(self) -> int:
        self._check_fitted()
        return int(self.components_t_.shape[1])

    @property
    def fingerprint(self) -> str:
        """A stable sha256 of the vector space: 'sha256:<hex>'."""
        self._check_fitted()
        return self.fingerprint_

    def _compute_fingerprint(self) -> str:
        import sklearn

        h = hashlib.sha256()
        header = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "format": FORMAT_VERSION,
            "params": _jsonable(self.get_params()),
            "dim": self.dim_,
            "normalisation": "l2",
            "dtype": "float32",
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        }
        h.update(json.dumps(header, sort_keys=True).encode())
        vocab = sorted((term, int(j)) for term, j in self.vectorizer_.vocabulary_.items())
        h.update(json.dumps(vocab).encode())
        h.update(np.ascontiguousarray(self._idf, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.components_t_, dtype=np.float32).tobytes())
        return "sha256:" + h.hexdigest()

    # --- persistence -------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted model atomically (temporary name, then rename)."""
        import joblib

        self._check_fitted()
        from .atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            joblib.dump(self, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextEmbedder:
        import joblib

        model = joblib.load(path)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        model._prepare_fast_path()
        if model._compute_fingerprint() != model.fingerprint_:
            raise NotFittedError(
                f"{path}: the stored fingerprint does not match the model's weights; "
                "the file is corrupt or was written by different library versions"
            )
        return model

    # --- internals ---------------------------------------------------------------------

    def _prepare_fast_path(self) -> None:
        # components_.T as a contiguous (vocab, dim) float32 matrix: row j is the
        # direction of term j, so a query is a weighted sum of a few rows.
        self.components_t_ = np.ascontiguousarray(self.svd_.components_.T, dtype=np.float32)
        self._idf = np.asarray(self.vectorizer_.idf_, dtype=np.float32)
        self._vocab = self.vectorizer_.vocabulary_
        self._analyzer = self.vectorizer_.build_analyzer()

    def _check_fitted(self) -> None:
        if not hasattr(self, "svd_"):
            raise NotFittedError("this TextEmbedder is not fitted yet: call fit(texts) first")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_analyzer", "_vocab", "_idf", "components_t_"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "svd_" in state:
            self._prepare_fast_path()

    def to_bytes(self) -> bytes:
        import joblib

        buf = io.BytesIO()
        joblib.dump(self, buf)
        return buf.getvalue()


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _as_text_list(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got a single string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text at position {i} is a {type(t).__name__}, not a string")
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
