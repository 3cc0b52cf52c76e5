"""The embedding model: text -> L2-normalised float32 vectors, and its fingerprint.

``TextEmbedder`` is a scikit-learn estimator (TF-IDF, then TruncatedSVD, then L2
normalisation). Bulk embedding goes through scikit-learn; a single query takes a
hand-written path over the same fitted weights that skips sklearn's validation and
sparse-matrix machinery (about 30x faster; ``benchmarks/bench_core.py`` measures it)
and gives the same vector to float32 precision.

The fingerprint hashes everything that defines the vector space, so an index built by
one space can never be paired with a query embedded by another, even when the model
name and version look the same (a library upgrade or a changed parameter changes it).

Model files are pickles, so a model file is never deserialised before its sha256 is
checked: ``save`` writes a ``<file>.sha256`` sidecar and ``load`` compares the file with
the hash the caller trusts (``lockstep.model.integrity`` says what each check proves).

The file holds no Lockstep class: a dict of plain values and the fitted scikit-learn
parts as one ``Pipeline`` (TF-IDF, SVD, L2 ``Normalizer``), so the MLflow model
(``lockstep.model.pyfunc_model``) loads and runs it with scikit-learn alone, in an
environment without Lockstep. Files written before (a pickled ``TextEmbedder``) still load.

Bulk ``transform`` works in batches of ``TRANSFORM_BATCH`` texts, so embedding a million
records holds one batch's TF-IDF matrix at a time, never the whole corpus's.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.model.contract import BuiltinEmbedder, as_text_list, jsonable, l2_normalise
from lockstep.model.integrity import write_checksummed

FORMAT_VERSION = 1  # of the vector space's description in the fingerprint, not of the file
FILE_FORMAT = "lockstep.text-embedder/2"  # a dict of plain values and a scikit-learn Pipeline
TRANSFORM_BATCH = 50_000  # texts per TF-IDF matrix in transform (50k x ~30 terms: ~20 MB)


class TextEmbedder(BuiltinEmbedder):
    """TF-IDF + TruncatedSVD + L2 norm; ``fit`` returns self, ``transform`` embeds.

    Parameters mirror the two stages: ``dim`` is the SVD output size; ``max_features``,
    ``min_df``, ``max_df``, ``ngram_range`` and ``sublinear_tf`` shape the vocabulary.
    """

    FAMILY = "TF-IDF + TruncatedSVD + L2 norm (TextEmbedder)"  # how the model is named to a reviewer
    FILE_FORMAT = FILE_FORMAT  # what ``save`` writes; ``contract.load_family_file`` dispatches on it
    PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # the MLflow model, logged as code
    # What the logged model needs to load and predict (pinned to the installed versions).
    MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "scipy", "joblib", "pandas")
    FITTED_ATTR = "svd_"
    DERIVED = ("_analyzer", "_vocab", "_idf", "components_t_")
    LOADS_PICKLED_SELF = True  # files written before format 2 hold the pickled estimator

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

        texts = as_text_list(texts)
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
        """Embed many texts: a (n, dim) float32 array, each row of unit length (or zero).

        Batches of ``TRANSFORM_BATCH`` texts go through TF-IDF one at a time into one
        preallocated output, so memory is the output plus one batch.
        """
        self._check_fitted()
        texts = as_text_list(texts)
        out = np.empty((len(texts), self.dim_), dtype=np.float32)
        for start in range(0, len(texts), TRANSFORM_BATCH):
            stop = min(start + TRANSFORM_BATCH, len(texts))
            out[start:stop] = self._transform_batch(texts[start:stop])
        return out

    def _transform_batch(self, texts: list[str]) -> np.ndarray:
        tfidf = self.vectorizer_.transform(texts)
        dense = np.asarray(tfidf @ self.components_t_, dtype=np.float32)
        return l2_normalise(dense)

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

    def _compute_fingerprint(self) -> str:
        import sklearn

        h = hashlib.sha256()
        header = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "format": FORMAT_VERSION,
            "params": jsonable(self.get_params()),
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

    def to_pipeline(self) -> Any:
        """The fitted model as a plain scikit-learn ``Pipeline``: TF-IDF, SVD, L2 norm.

        It shares the fitted parts (nothing is refitted) and gives the same vectors as
        ``transform`` to float32 precision; it is what the saved file and the MLflow model
        hold, so neither needs Lockstep to be loaded.
        """
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import Normalizer

        self._check_fitted()
        l2 = Normalizer(norm="l2").fit(np.zeros((1, self.dim_), dtype=np.float32))
        return Pipeline([("tfidf", self.vectorizer_), ("svd", self.svd_), ("l2", l2)])

    # --- persistence -------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted model atomically, then its ``.sha256`` sidecar (``write_checksummed``)."""
        import joblib

        self._check_fitted()
        payload = {
            "format": FILE_FORMAT,
            "params": self.get_params(),
            "fingerprint": self.fingerprint_,
            "pipeline": self.to_pipeline(),
        }
        return write_checksummed(path, lambda tmp: joblib.dump(payload, tmp))

    @classmethod
    def _from_file_object(cls, obj: Any, path: Path) -> TextEmbedder:
        """The model from the dict a file held (``contract.load_family_file`` checks it after)."""
        cls._check_file_format(obj, path)
        model = cls(**obj["params"])
        steps = obj["pipeline"].named_steps
        model.vectorizer_, model.svd_ = steps["tfidf"], steps["svd"]
        model.fingerprint_ = obj["fingerprint"]
        model._prepare_fast_path()
        return model

    # --- internals ---------------------------------------------------------------------

    def _prepare_fast_path(self) -> None:
        # components_.T as a contiguous (vocab, dim) float32 matrix: row j is the
        # direction of term j, so a query is a weighted sum of a few rows.
        self.components_t_ = np.ascontiguousarray(self.svd_.components_.T, dtype=np.float32)
        self._idf = np.asarray(self.vectorizer_.idf_, dtype=np.float32)
        self._vocab = self.vectorizer_.vocabulary_
        self._analyzer = self.vectorizer_.build_analyzer()

    def to_bytes(self) -> bytes:
        import joblib

        buf = io.BytesIO()
        joblib.dump(self, buf)
        return buf.getvalue()
