"""What every embedding model family offers, and what the built-in families share.

Everything downstream of training (the registry, the re-embed, serving, drift) handles a
model through the ``Embedder`` protocol only: bulk and single-query embedding, the
dimension, the fingerprint of its vector space, and ``save``.

A *built-in family* (``TextEmbedder``, ``WordVectorEmbedder``) is a ``BuiltinEmbedder``:
a scikit-learn estimator trained by Lockstep, saved as one checksummed joblib file
(``integrity.write_checksummed``) holding a dict with ``"format": FILE_FORMAT``, and
logged to MLflow as code (its ``PYFUNC_CODE`` file, its ``MODEL_REQUIREMENTS``). The base
class holds what each family would otherwise copy: the fingerprint property, ``load``
(checked before anything is unpickled), the file-format check, and pickling without the
derived query-time structures. A subclass that declares ``FILE_FORMAT`` is registered
under it, so ``load_family_file`` reads any built-in family's file and a family's
``load`` can name what a file of another family holds.

What a model costs is part of the contract too, so the rest of Lockstep can size its work
without knowing the family: ``COST`` (``FAST``: microseconds a text, e.g. TF-IDF; ``SLOW``:
milliseconds, e.g. a transformer or any imported pyfunc) and ``BATCH_SIZE_HINT`` (texts per
``transform`` call that keep the model efficient and its memory bounded). Both are optional
on an ``Embedder``; ``embed_cost`` and ``batch_size_hint`` read them with the defaults a
model that says nothing gets (slow, ``DEFAULT_BATCH_SIZE_HINT``).

The helpers at the end (``as_text_list``, ``l2_normalise``, ``jsonable``) are the input
check, the normalisation and the fingerprint's parameter encoding every family uses.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from lockstep.core.errors import NotFittedError
from lockstep.model.integrity import read_verified_model


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


FAST, SLOW = "fast", "slow"  # Embedder.COST: a text in microseconds, or in milliseconds
COSTS = (FAST, SLOW)
DEFAULT_BATCH_SIZE_HINT = 256  # texts per transform call of a model that names no batch of its own
BUILTIN_BATCH_SIZE_HINT = 50_000  # a built-in family: one batch's matrix at a time (pyfunc_model.BATCH)


def embed_cost(embedder: object) -> str:
    """``"fast"`` or ``"slow"``: the model's ``COST``, slow when it names none or an unknown one.

    Slow models get their queries micro-batched across requests, their own bounded worker
    pool on a serving replica, and small embed batches with one thread budget per worker.
    """
    cost = getattr(embedder, "COST", SLOW)
    return cost if cost in COSTS else SLOW


def batch_size_hint(embedder: object) -> int:
    """Texts per ``transform`` call the model works best with (``BATCH_SIZE_HINT``, at least 1)."""
    hint = getattr(embedder, "BATCH_SIZE_HINT", DEFAULT_BATCH_SIZE_HINT)
    if isinstance(hint, bool) or not isinstance(hint, int) or hint < 1:
        return DEFAULT_BATCH_SIZE_HINT
    return hint


_FILE_FORMATS: dict[str, type[BuiltinEmbedder]] = {}  # FILE_FORMAT -> the family that writes it


class BuiltinEmbedder(TransformerMixin, BaseEstimator):
    """The shared part of a built-in family; a subclass adds ``fit``, ``transform``,
    ``embed_query``, ``dim_``, ``save``, ``_compute_fingerprint``, ``_from_file_object``
    and ``_prepare_fast_path`` (which rebuilds the ``DERIVED`` attributes)."""

    FAMILY: ClassVar[str]  # how the model is named to a reviewer
    FILE_FORMAT: ClassVar[str]  # what ``save`` writes; ``load_family_file`` dispatches on it
    PYFUNC_CODE: ClassVar[Path]  # the MLflow model, logged as code
    MODEL_REQUIREMENTS: ClassVar[tuple[str, ...]]  # what the logged model needs to load and predict
    FITTED_ATTR: ClassVar[str]  # an attribute only a fitted model has
    DERIVED: ClassVar[tuple[str, ...]] = ()  # rebuilt by _prepare_fast_path, so never pickled
    LOADS_PICKLED_SELF: ClassVar[bool] = False  # a file may hold the pickled estimator itself (older files)
    COST: ClassVar[str] = FAST  # embed_cost: a built-in family embeds a text in microseconds
    BATCH_SIZE_HINT: ClassVar[int] = BUILTIN_BATCH_SIZE_HINT  # batch_size_hint

    fingerprint_: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "FILE_FORMAT" in cls.__dict__:
            _FILE_FORMATS[cls.FILE_FORMAT] = cls

    @property
    def fingerprint(self) -> str:
        """A stable sha256 of the vector space: 'sha256:<hex>'."""
        self._check_fitted()
        return self.fingerprint_

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> Self:
        """Load a model file after checking its sha256; nothing is unpickled before that.

        ``expected_sha256`` ('sha256:<hex>' or bare hex) is the hash the caller trusts,
        e.g. the registry tag; without it the ``.sha256`` sidecar ``save`` wrote is used.
        """
        path = Path(path)
        if path.is_dir():  # an imported MLflow model (families.load_model_file opens those)
            raise TypeError(f"{path} is a model directory (an imported model), not a {cls.__name__} file")
        model = load_family_file(path, expected_sha256)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    @classmethod
    def _check_file_format(cls, obj: Any, path: Path) -> None:
        """Refuse what a file held unless it is this family's dict."""
        if not isinstance(obj, dict) or obj.get("format") != cls.FILE_FORMAT:
            found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise TypeError(f"{path} holds {found!r}, not a {cls.__name__} file ({cls.FILE_FORMAT})")

    def _check_fitted(self) -> None:
        if not hasattr(self, self.FITTED_ATTR):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(texts) first")

    def _prepare_fast_path(self) -> None:
        raise NotImplementedError

    def _compute_fingerprint(self) -> str:
        raise NotImplementedError

    @classmethod
    def _from_file_object(cls, obj: Any, path: Path) -> BuiltinEmbedder:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in self.DERIVED:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.FITTED_ATTR in state:
            self._prepare_fast_path()


def load_family_file(path: str | Path, expected_sha256: str | None = None) -> BuiltinEmbedder:
    """A built-in family's model file, checked before anything runs.

    The file must hash to ``expected_sha256`` (or its ``.sha256`` sidecar); the family is
    read from the file's ``format``, and the stored fingerprint must match the weights.
    """
    import joblib

    path = Path(path)
    # Read once, check, then unpickle those same bytes: the file cannot be swapped
    # between the check and the load.
    data = read_verified_model(path, expected_sha256)
    obj = joblib.load(io.BytesIO(data))
    del data
    if isinstance(obj, BuiltinEmbedder) and type(obj).LOADS_PICKLED_SELF:  # written before file format 2
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


def _class_for_format(obj: Any, path: Path) -> type[BuiltinEmbedder]:
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if found not in _FILE_FORMATS:
        raise TypeError(
            f"{path} holds {found!r}, not a Lockstep model file (known formats: {', '.join(sorted(_FILE_FORMATS))})"
        )
    return _FILE_FORMATS[found]


# --- what every family's input, output and fingerprint go through ----------------------------


def as_text_list(texts: Any) -> list[str]:
    """The texts as a list of strings; a single string or a non-string item is refused."""
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got a single string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text at position {i} is a {type(t).__name__}, not a string")
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Each row of ``x`` to unit length, in place (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def jsonable(value: Any) -> Any:
    """Parameters as JSON-stable values (dicts sorted, tuples as lists) for a fingerprint."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
