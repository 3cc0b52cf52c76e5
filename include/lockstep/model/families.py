"""Embedding model families: what every Lockstep model offers, and which class reads which file.

Everything downstream of training (the registry, the re-embed, serving, drift) handles a
model through the ``Embedder`` protocol only, so a new family is one class plus one line
in ``FAMILIES``:

- a *built-in family* (``TextEmbedder``, ``WordVectorEmbedder``) is trained by Lockstep,
  saved as one checksummed joblib file holding a dict with ``"format": FILE_FORMAT``, and
  logged to MLflow as code (its ``PYFUNC_CODE`` file, its ``MODEL_REQUIREMENTS``);
- an *imported model* (``PyfuncEmbedder``) is any MLflow pyfunc model whose ``predict``
  on a list of texts returns a 2-D float array, trained anywhere; it is kept as the MLflow
  model directory itself.

``load_model_file`` opens either kind from a local path after checking its sha256 (a
file) or its content digest (a directory): nothing is unpickled or imported before that.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lockstep.core.errors import LockstepError, NotFittedError


@runtime_checkable
class Embedder(Protocol):
    """What Lockstep needs of a model: bulk and single-query embedding, and its identity."""

    FAMILY: str

    @property
    def dim_(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def transform(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...

    def save(self, path: str | Path) -> Path: ...


def families() -> dict[str, type]:
    """The built-in families by the name the retrain DAG's ``family`` Param uses."""
    from lockstep.model.embedding import TextEmbedder

    found: dict[str, type] = {"tfidf_svd": TextEmbedder}
    try:
        from lockstep.model.word_vectors import WordVectorEmbedder
    except ImportError:  # gensim missing: the family is unavailable, the others work
        return found
    found["word_vectors"] = WordVectorEmbedder
    return found


def family_class(name: str) -> type:
    """The class of a built-in family, or an error listing the families there are."""
    known = families()
    if name not in known:
        raise LockstepError(f"unknown model family {name!r}; choose one of: {', '.join(sorted(known))}")
    return known[name]


def family_name(embedder: Any) -> str:
    """The family name of a model (``imported`` for a pyfunc model trained elsewhere)."""
    for name, cls in families().items():
        if type(embedder) is cls:
            return name
    return "imported"


def load_model_file(path: str | Path, expected_sha256: str | None = None) -> Embedder:
    """Load any Lockstep model from a local path, checked before anything runs.

    A directory is an MLflow pyfunc model (``PyfuncEmbedder``; ``expected_sha256`` is
    its content digest); a file is a built-in family's joblib file (``expected_sha256``
    or its ``.sha256`` sidecar). The family is read from the file's ``format``.
    """
    path = Path(path)
    if path.is_dir():
        from lockstep.model.pyfunc_embedder import PyfuncEmbedder

        return PyfuncEmbedder.load(path, expected_sha256=expected_sha256)
    import joblib

    from lockstep.model.embedding import TextEmbedder, read_verified_model

    # Read once, check, then unpickle those same bytes: the file cannot be swapped
    # between the check and the load.
    data = read_verified_model(path, expected_sha256)
    obj = joblib.load(io.BytesIO(data))
    del data
    if isinstance(obj, TextEmbedder):  # a pickled TextEmbedder, written before file format 2
        obj._prepare_fast_path()
        return obj
    cls = _class_for_format(obj, path)
    model = cls._from_file_object(obj, path)
    if model._compute_fingerprint() != model.fingerprint_:
        raise NotFittedError(
            f"{path}: the stored fingerprint does not match the model's weights; "
            "the file is corrupt or was written by different library versions"
        )
    return model


def load_as(cls: type, path: str | Path, expected_sha256: str | None = None) -> Any:
    """``load_model_file``, refused unless the file holds a ``cls`` (each family's ``load``)."""
    model = load_model_file(Path(path), expected_sha256)
    if not isinstance(model, cls):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
    return model


def _class_for_format(obj: Any, path: Path) -> type:
    formats = {cls.FILE_FORMAT: cls for cls in families().values()}
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if found not in formats:
        raise TypeError(
            f"{path} holds {found!r}, not a Lockstep model file (known formats: {', '.join(sorted(formats))})"
        )
    return formats[found]
