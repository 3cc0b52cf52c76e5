"""The embedding model: text -> L2-normalised float32 vectors, and its fingerprint.

``TextEmbedder`` is a scikit-learn estimator (TF-IDF, then TruncatedSVD, then L2
normalisation). Bulk embedding goes through scikit-learn; a single query takes a
hand-written path over the same fitted weights that skips sklearn's validation and
sparse-matrix machinery (about 30x faster; ``benchmarks/bench_core.py`` measures it)
and gives the same vector to float32 precision.

The fingerprint hashes everything that defines the vector space, so an index built by
one space can never be paired with a query embedded by another, even when the model
name and version look the same (a library upgrade or a changed parameter changes it).

Model files are pickles, and unpickling runs code, so a model file is never
deserialised before its sha256 is checked: ``save`` writes a ``<file>.sha256`` sidecar
(``sha256sum -c`` reads it), and ``load`` compares the file with the hash the caller
trusts (``expected_sha256``, e.g. the registry's ``lockstep.model_sha256`` tag) or, when
none is given, with the sidecar. A file with neither is refused.

What each check proves: the sidecar lies in the same folder as the file, so it only
proves the file is whole (not torn, truncated or corrupted); whoever can write that
folder can replace both, so it is no trust anchor. A registered model is always loaded
against a digest kept outside its folder: the registry's tag (``Registry.load_embedder``,
``importing.load_imported``), or the digest the re-embed's ``prepare`` task recorded in
its plan for the local copy it wrote (``index.steps``). The sidecar alone vouches only
for files a person saves and names locally (a ``lockstep train`` output, a local-file slot).

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
from sklearn.base import BaseEstimator, TransformerMixin

from lockstep.core import paths
from lockstep.core.errors import LockstepError, NotFittedError, UnsafePathError

FORMAT_VERSION = 1  # of the vector space's description in the fingerprint, not of the file
FILE_FORMAT = "lockstep.text-embedder/2"  # a dict of plain values and a scikit-learn Pipeline
TRANSFORM_BATCH = 50_000  # texts per TF-IDF matrix in transform (50k x ~30 terms: ~20 MB)
CHECKSUM_SUFFIX = ".sha256"


class ModelIntegrityError(LockstepError):
    """A model file does not match the sha256 it must have, or has no checksum to check."""


class TextEmbedder(TransformerMixin, BaseEstimator):
    """TF-IDF + TruncatedSVD + L2 norm; ``fit`` returns self, ``transform`` embeds.

    Parameters mirror the two stages: ``dim`` is the SVD output size; ``max_features``,
    ``min_df``, ``max_df``, ``ngram_range`` and ``sublinear_tf`` shape the vocabulary.
    """

    FAMILY = "TF-IDF + TruncatedSVD + L2 norm (TextEmbedder)"  # how the model is named to a reviewer
    FILE_FORMAT = FILE_FORMAT  # what ``save`` writes; ``families.load_model_file`` dispatches on it
    PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # the MLflow model, logged as code
    # What the logged model needs to load and predict (pinned to the installed versions).
    MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "scipy", "joblib", "pandas")

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
        """Embed many texts: a (n, dim) float32 array, each row of unit length (or zero).

        Batches of ``TRANSFORM_BATCH`` texts go through TF-IDF one at a time into one
        preallocated output, so memory is the output plus one batch.
        """
        self._check_fitted()
        texts = _as_text_list(texts)
        out = np.empty((len(texts), self.dim_), dtype=np.float32)
        for start in range(0, len(texts), TRANSFORM_BATCH):
            stop = min(start + TRANSFORM_BATCH, len(texts))
            out[start:stop] = self._transform_batch(texts[start:stop])
        return out

    def _transform_batch(self, texts: list[str]) -> np.ndarray:
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
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> TextEmbedder:
        """Load a model file after checking its sha256; nothing is unpickled before that.

        ``expected_sha256`` ('sha256:<hex>' or bare hex) is the hash the caller trusts,
        e.g. the registry tag; without it the ``.sha256`` sidecar ``save`` wrote is used.
        """
        from lockstep.model.families import load_as

        return load_as(cls, path, expected_sha256)

    @classmethod
    def _from_file_object(cls, obj: Any, path: Path) -> TextEmbedder:
        """The model from what a file held: the current dict, or an older pickled model."""
        if not isinstance(obj, dict) or obj.get("format") != FILE_FORMAT:
            found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise TypeError(f"{path} holds {found!r}, not a {cls.__name__} file ({FILE_FORMAT})")
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


def file_sha256(path: str | Path) -> str:
    """'sha256:<hex>' of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def write_checksummed(path: str | Path, write: Any) -> Path:
    """``write(tmp_path)`` a model file atomically, then its ``.sha256`` sidecar.

    The sidecar is written second: a crash in between leaves a model without a checksum
    (refused by the loaders), never a checksum that vouches for a torn file. Every model
    file (each built-in family's, the recommender's fit) is written through here.
    """
    from lockstep.core.atomic import atomic_path, atomic_write

    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp)
    digest = file_sha256(path)
    atomic_write(checksum_path(path), f"{digest.removeprefix('sha256:')}  {path.name}\n")
    return path


def checksum_path(path: str | Path) -> Path:
    """The sidecar beside a model file: ``model.joblib`` -> ``model.joblib.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def verify_model_file(path: str | Path, expected_sha256: str | None = None) -> str:
    """Check a model file against the trusted sha256 (or its sidecar); return the digest.

    Raises ``ModelIntegrityError`` naming the file when it is missing, has no checksum
    to compare with, or hashes differently. Reads bytes only; unpickles nothing.
    """
    return _verified(path, expected_sha256)[1]


def read_verified_model(path: str | Path, expected_sha256: str | None = None) -> bytes:
    """The model file's bytes, once they hash to the trusted sha256 (or its sidecar's)."""
    return _verified(path, expected_sha256)[0]


def _verified(path: str | Path, expected_sha256: str | None) -> tuple[bytes, str]:
    path = Path(path)
    if not path.is_file():
        raise ModelIntegrityError(f"model file {path} does not exist")
    expected, source = _expected_digest(path, expected_sha256)
    data = path.read_bytes()
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelIntegrityError(
            f"model file {path} fails its checksum: its sha256 is {actual}, {source} says {expected}; "
            "the file was changed or corrupted after it was saved, so it was not loaded "
            "(register or save the model again)"
        )
    return data, actual


def _expected_digest(path: Path, expected_sha256: str | None) -> tuple[str, str]:
    if expected_sha256 is not None:
        source = "the expected sha256"
        return _normal_digest(expected_sha256, source), source
    sidecar = checksum_path(path)
    source = f"its sidecar {sidecar.name}"
    if not sidecar.is_file():
        raise ModelIntegrityError(
            f"model file {path} has no checksum to verify: no expected sha256 was given and "
            f"its sidecar {sidecar.name} is missing, so it was not loaded; save it with "
            "TextEmbedder.save (which writes the sidecar) or register it again"
        )
    words = sidecar.read_text(encoding="utf-8", errors="replace").split()
    return _normal_digest(words[0] if words else "", source), source


def _normal_digest(value: str, source: str) -> str:
    """``value`` as 'sha256:<hex>' (``core.paths.digest``), or a ``ModelIntegrityError`` naming ``source``."""
    try:
        return paths.digest(value, source)
    except UnsafePathError as exc:
        raise ModelIntegrityError(str(exc)) from exc


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
