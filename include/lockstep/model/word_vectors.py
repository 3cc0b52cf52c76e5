"""Word vectors trained on the corpus, pooled with SIF weights: a second built-in family.

``WordVectorEmbedder`` learns one vector per word with gensim's Word2Vec on the training
texts, then embeds a text as Arora et al.'s "smooth inverse frequency" (SIF) average
(ICLR 2017): each known token's vector weighted by ``a / (a + p(w))`` (``p(w)``: the
word's share of the training tokens, ``a``: ``sif_a``), minus the projection on the
first principal component ``u`` of the training texts' weighted averages, L2-normalised.
A text with no known token is the zero vector, as with ``TextEmbedder``.

Everything after the weighted sum is linear, so the pooling folds into one matrix: row
``t`` of ``pooled_`` is ``w_t * (v_t - u (u . v_t))`` and a text's embedding is the
normalised sum of its tokens' rows (the 1/|s| of the average drops out under the
normalisation). A single query is a dict lookup per token plus a sum of a few rows
(``embed_query``); bulk ``transform`` is one sparse count matrix times ``pooled_`` per
batch. Query time needs NumPy and SciPy only: gensim trains, and is not needed to
load or run a model (its version at training time is kept in the file and the
fingerprint).

Training is deterministic: Word2Vec runs with one worker thread and a fixed seed, and
the principal component is the top eigenvector of a float64 Gram matrix (accumulated
batch by batch, so the texts' averages are never all held), so the same texts and
parameters give the same fingerprint.

The file holds a dict of plain values and NumPy arrays, no Lockstep class, so the MLflow
model (``lockstep.model.word_vectors_pyfunc``) loads and runs it without Lockstep.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.model.contract import BuiltinEmbedder, as_text_list, jsonable, l2_normalise
from lockstep.model.integrity import write_checksummed

if importlib.util.find_spec("gensim") is None:  # families() then leaves this family out
    raise ImportError("the word_vectors family needs gensim: pip install gensim==4.4.0")

FORMAT_VERSION = 1  # of the vector space's description in the fingerprint
FILE_FORMAT = "lockstep.word-vectors/1"  # a dict of plain values and NumPy arrays
TOKEN_PATTERN = r"\b\w\w+\b"  # on lowercased text; the same in word_vectors_pyfunc.py
TRANSFORM_BATCH = 20_000  # texts per sparse count matrix in transform
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def tokenize(text: str) -> list[str]:
    """Lowercase words of two or more letters or digits (scikit-learn's default pattern)."""
    return _TOKEN_RE.findall(text.lower())


class WordVectorEmbedder(BuiltinEmbedder):
    """Word2Vec trained on the corpus + SIF pooling + L2 norm; ``fit`` returns self.

    ``dim`` is the word-vector size; ``window``, ``min_count``, ``epochs``, ``sg`` (1:
    skip-gram, 0: CBOW) and ``negative`` go to Word2Vec (on 20 Newsgroups at dim 256,
    skip-gram with a 10-word window scored nDCG@10 0.781, CBOW with 5 words 0.612);
    ``max_vocab`` caps the vocabulary to the most frequent words; ``sif_a`` is SIF's
    ``a``; ``seed`` seeds Word2Vec.
    """

    FAMILY = "Word2Vec + SIF pooling + L2 norm (WordVectorEmbedder)"
    FILE_FORMAT = FILE_FORMAT
    PYFUNC_CODE = Path(__file__).with_name("word_vectors_pyfunc.py")
    # What the logged model needs at predict time: not gensim, not Lockstep.
    MODEL_REQUIREMENTS = ("mlflow", "numpy", "scipy", "pandas", "joblib")
    FITTED_ATTR = "vectors_"
    DERIVED = ("pooled_", "_index")

    def __init__(
        self,
        dim: int = 128,
        window: int = 10,
        min_count: int = 2,
        epochs: int = 10,
        sg: int = 1,
        negative: int = 5,
        max_vocab: int | None = 100_000,
        sif_a: float = 1e-3,
        seed: int = 0,
    ) -> None:
        self.dim = dim
        self.window = window
        self.min_count = min_count
        self.epochs = epochs
        self.sg = sg
        self.negative = negative
        self.max_vocab = max_vocab
        self.sif_a = sif_a
        self.seed = seed

    # --- scikit-learn API --------------------------------------------------------------

    def fit(self, texts: list[str] | Any, y: Any = None) -> WordVectorEmbedder:
        import gensim

        self._check_params()
        texts = as_text_list(texts)
        if len(texts) < 2:
            raise ValueError(f"need at least 2 texts to fit an embedding model, got {len(texts)}")
        w2v = self._train_word2vec(_Sentences(texts))
        self.vocab_ = list(w2v.wv.index_to_key)
        self.vectors_ = np.ascontiguousarray(w2v.wv.vectors, dtype=np.float32)
        counts = np.array([w2v.wv.get_vecattr(w, "count") for w in self.vocab_], dtype=np.float64)
        self.weights_ = (self.sif_a / (self.sif_a + counts / counts.sum())).astype(np.float32)
        self.gensim_version_ = gensim.__version__
        self.component_ = np.zeros(self.dim_, dtype=np.float32)
        self._prepare_fast_path()  # pooled rows without the projection removed yet
        self.component_ = _top_eigenvector(self._sentence_gram(texts))
        self._prepare_fast_path()
        self.fingerprint_ = self._compute_fingerprint()
        return self

    def _train_word2vec(self, sentences: _Sentences) -> Any:
        from gensim.models import Word2Vec

        model = Word2Vec(
            vector_size=self.dim, window=self.window, min_count=self.min_count, sg=self.sg,
            negative=self.negative, max_final_vocab=self.max_vocab, seed=self.seed, workers=1,
        )
        model.build_vocab(corpus_iterable=sentences)
        if not model.wv.index_to_key:
            raise ValueError(
                f"no word occurs at least min_count={self.min_count} times in the training texts; "
                "lower min_count or give more text"
            )
        model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=self.epochs)
        return model

    def _sentence_gram(self, texts: list[str]) -> np.ndarray:
        """X^T X of the training texts' SIF-weighted averages X, in float64, one batch at a time.

        Its top eigenvector is the first principal component (uncentred, as SIF's SVD);
        only a (dim, dim) matrix is kept, never X.
        """
        gram = np.zeros((self.dim_, self.dim_), dtype=np.float64)
        for start in range(0, len(texts), TRANSFORM_BATCH):
            counts = self._count_matrix([tokenize(t) for t in texts[start : start + TRANSFORM_BATCH]])
            lengths = np.asarray(counts.sum(axis=1), dtype=np.float64)
            rows = np.asarray(counts @ self.pooled_, dtype=np.float64)
            np.divide(rows, lengths, out=rows, where=lengths > 0)
            gram += rows.T @ rows
        return gram

    def transform(self, texts: list[str] | Any) -> np.ndarray:
        """Embed many texts: a (n, dim) float32 array, each row of unit length (or zero)."""
        self._check_fitted()
        texts = as_text_list(texts)
        out = np.empty((len(texts), self.dim_), dtype=np.float32)
        for start in range(0, len(texts), TRANSFORM_BATCH):
            batch = [tokenize(t) for t in texts[start : start + TRANSFORM_BATCH]]
            out[start : start + len(batch)] = l2_normalise(
                np.asarray(self._count_matrix(batch) @ self.pooled_, dtype=np.float32)
            )
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text: the normalised sum of its known tokens' pooled rows, (dim,) float32."""
        self._check_fitted()
        index = self._index
        counts: dict[int, int] = {}
        for token in tokenize(text):
            j = index.get(token)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(self.dim_, dtype=np.float32)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        times = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        vec = times @ self.pooled_[cols]
        norm = float(np.sqrt(np.dot(vec, vec)))
        return vec / norm if norm > 0 else vec

    def _count_matrix(self, sentences: list[list[str]]) -> Any:
        """Token counts per text over the vocabulary, as a float32 CSR matrix."""
        from scipy.sparse import csr_matrix

        index = self._index
        cols: list[int] = []
        indptr = [0]
        for tokens in sentences:
            cols.extend(j for j in (index.get(t) for t in tokens) if j is not None)
            indptr.append(len(cols))
        data = np.ones(len(cols), dtype=np.float32)
        matrix = csr_matrix((data, np.asarray(cols, dtype=np.int64), indptr), shape=(len(sentences), len(index)))
        matrix.sum_duplicates()
        return matrix

    # --- identity ----------------------------------------------------------------------

    @property
    def dim_(self) -> int:
        self._check_fitted()
        return int(self.vectors_.shape[1])

    def _compute_fingerprint(self) -> str:
        import scipy

        h = hashlib.sha256()
        header = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "format": FORMAT_VERSION,
            "params": jsonable(self.get_params()),
            "dim": self.dim_,
            "pooling": "sif, first principal component removed",
            "tokens": TOKEN_PATTERN,
            "normalisation": "l2",
            "dtype": "float32",
            "gensim": self.gensim_version_,  # the trainer's version, kept in the file
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        }
        h.update(json.dumps(header, sort_keys=True).encode())
        h.update(json.dumps(self.vocab_).encode())
        for array in (self.vectors_, self.weights_, self.component_):
            h.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return "sha256:" + h.hexdigest()

    # --- persistence -------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted model atomically, then its ``.sha256`` sidecar (as TextEmbedder does)."""
        import joblib

        self._check_fitted()
        payload = {
            "format": FILE_FORMAT,
            "params": self.get_params(),
            "fingerprint": self.fingerprint_,
            "token_pattern": TOKEN_PATTERN,
            "gensim_version": self.gensim_version_,
            "vocab": self.vocab_,
            "vectors": self.vectors_,
            "weights": self.weights_,
            "component": self.component_,
        }
        return write_checksummed(path, lambda tmp: joblib.dump(payload, tmp))

    @classmethod
    def _from_file_object(cls, obj: Any, path: Path) -> WordVectorEmbedder:
        """The model from the dict a file held (``contract.load_family_file`` checks it after)."""
        cls._check_file_format(obj, path)
        if obj.get("token_pattern") != TOKEN_PATTERN:
            raise TypeError(f"{path} tokenizes with {obj.get('token_pattern')!r}, not {TOKEN_PATTERN!r}")
        model = cls(**obj["params"])
        model.vocab_ = list(obj["vocab"])
        model.vectors_ = np.ascontiguousarray(obj["vectors"], dtype=np.float32)
        model.weights_ = np.ascontiguousarray(obj["weights"], dtype=np.float32)
        model.component_ = np.ascontiguousarray(obj["component"], dtype=np.float32)
        model.gensim_version_ = str(obj["gensim_version"])
        model.fingerprint_ = obj["fingerprint"]
        model._prepare_fast_path()
        return model

    # --- internals ---------------------------------------------------------------------

    def _prepare_fast_path(self) -> None:
        self.pooled_ = pooled_rows(self.vectors_, self.weights_, self.component_)
        self._index = {word: j for j, word in enumerate(self.vocab_)}

    def _check_params(self) -> None:
        for name in ("dim", "window", "min_count", "epochs", "negative"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.sg not in (0, 1):
            raise ValueError(f"sg must be 0 (CBOW) or 1 (skip-gram), got {self.sg!r}")
        if self.max_vocab is not None and (not isinstance(self.max_vocab, int) or self.max_vocab < 1):
            raise ValueError(f"max_vocab must be a whole number >= 1 or None, got {self.max_vocab!r}")
        if not isinstance(self.sif_a, (int, float)) or not self.sif_a > 0:
            raise ValueError(f"sif_a must be a number > 0, got {self.sif_a!r}")


def pooled_rows(vectors: np.ndarray, weights: np.ndarray, component: np.ndarray) -> np.ndarray:
    """Row t: ``weights[t] * (vectors[t] - component (component . vectors[t]))``, float32.

    The same arithmetic as ``word_vectors_pyfunc.pooled_rows`` (which may not import this).
    """
    projected = vectors - np.outer(vectors @ component, component).astype(np.float32)
    return np.ascontiguousarray(weights[:, None] * projected, dtype=np.float32)


def _top_eigenvector(gram: np.ndarray) -> np.ndarray:
    """The unit eigenvector of the largest eigenvalue, its sign fixed (largest entry positive).

    So it is a function of the matrix only; zero when the matrix is (no text had a known word).
    """
    if not gram.any():
        return np.zeros(gram.shape[0], dtype=np.float32)
    _, vectors = np.linalg.eigh(gram)
    top = vectors[:, -1]
    top = top if top[np.argmax(np.abs(top))] > 0 else -top
    return top.astype(np.float32)


class _Sentences:
    """The texts as token lists for Word2Vec, tokenized afresh on each pass.

    Word2Vec reads its corpus once for the vocabulary and once per epoch; holding every
    token list at 200,000 posts would cost gigabytes of small strings, the texts a fraction.
    """

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[list[str]]:
        return (tokenize(t) for t in self.texts)
