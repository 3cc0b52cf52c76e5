"""Embedding model families: what every Lockstep model offers, and which class reads which file.

Everything downstream of training (the registry, the re-embed, serving, drift) handles a
model through the ``Embedder`` protocol only (``lockstep.model.contract``), so a new
family is one class plus one line in ``families()``:

- a *built-in family* (``TextEmbedder``, ``WordVectorEmbedder``) is trained by Lockstep,
  saved as one checksummed joblib file holding a dict with ``"format": FILE_FORMAT``, and
  logged to MLflow as code (its ``PYFUNC_CODE`` file, its ``MODEL_REQUIREMENTS``);
- an *imported model* (``PyfuncEmbedder``) is any MLflow pyfunc model whose ``predict``
  on a list of texts returns a 2-D float array, trained anywhere; it is kept as the MLflow
  model directory itself;
- an ``onnx_text`` model (``lockstep.model.onnx_text``) is a sentence-embedding model
  exported to ONNX, run by onnxruntime + tokenizers: a directory model too (a
  ``PyfuncEmbedder`` whose MLmodel names the family), never trained by Lockstep, so it is
  not in ``families()`` (what ``lockstep train`` and the retrain DAG offer) but in
  ``all_families()`` (what a version's ``lockstep.family`` tag may say).

``load_model_file`` opens either kind from a local path after checking its sha256 (a
file) or its content digest (a directory): nothing is unpickled or imported before that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lockstep.core.errors import LockstepError
from lockstep.model.contract import Embedder, load_family_file
from lockstep.model.pyfunc_embedder import DIRECTORY_FAMILIES, FAMILY_TITLES, IMPORTED, ONNX_TEXT

__all__ = [
    "DIRECTORY_FAMILIES", "IMPORTED", "ONNX_TEXT", "all_families", "families", "family_class", "family_name",
    "load_model_file",
]


def families() -> dict[str, type]:
    """The built-in families Lockstep trains, by the name the retrain DAG's ``family`` Param uses."""
    from lockstep.model.embedding import TextEmbedder

    found: dict[str, type] = {"tfidf_svd": TextEmbedder}
    try:
        from lockstep.model.word_vectors import WordVectorEmbedder
    except ImportError:  # gensim missing: the family is unavailable, the others work
        return found
    found["word_vectors"] = WordVectorEmbedder
    return found


def all_families() -> dict[str, str]:
    """Every family a version may belong to, by name, with how a reviewer reads it.

    The trained ones (``families()``), then those that come in through
    ``lockstep model import``: ``onnx_text`` (``--onnx DIR``) and ``imported`` (any pyfunc).
    """
    found = {name: str(cls.FAMILY) for name, cls in families().items()}
    return {**found, **{name: FAMILY_TITLES[name] for name in (ONNX_TEXT, IMPORTED)}}


def family_class(name: str) -> type:
    """The class of a built-in family, or an error listing the families there are."""
    known = families()
    if name in DIRECTORY_FAMILIES:
        raise LockstepError(
            f"model family {name!r} is not trained by Lockstep: its versions come in through "
            f"`lockstep model import{' --onnx DIR' if name == ONNX_TEXT else ''}`; trainable families: "
            f"{', '.join(sorted(known))}"
        )
    if name not in known:
        raise LockstepError(
            f"unknown model family {name!r}; choose one of: {', '.join(sorted(known))} "
            f"(or import a model: {', '.join(DIRECTORY_FAMILIES)})"
        )
    return known[name]


def family_name(embedder: Any) -> str:
    """The family name of a model (``onnx_text`` or ``imported`` for a directory model)."""
    for name, cls in families().items():
        if type(embedder) is cls:
            return name
    family = getattr(embedder, "family", IMPORTED)
    return family if family in DIRECTORY_FAMILIES else IMPORTED


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
    families()  # every built-in family imported, so each file format is known
    return load_family_file(path, expected_sha256)
