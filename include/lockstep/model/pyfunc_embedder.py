"""Any MLflow pyfunc model as a Lockstep model: the contract, its check, and its fingerprint.

The contract (shared/interfaces.md, "Any embedding model"): ``predict(list of texts)``
returns a 2-D float array, one row per text, of one fixed dimension. Whoever trained the
model (a sentence-transformer, an ONNX export, an in-house model), Lockstep needs nothing
else: ``check_contract`` proves it on a fixed probe set before a version is registered,
and ``PyfuncEmbedder`` embeds through ``predict`` in batches, checking every answer, so a
model that returns the wrong shape, NaNs or a changing dimension is refused with a
message instead of poisoning an index.

Identity. A vector space is named by its fingerprint, made of three parts:
- the digest of the model directory's content (every file, by relative path);
- the dimension;
- the sha256 of the model's embeddings of ``PROBE_TEXTS``, kept beside the model
  (``PROBE_FILE``).
Two different spaces never share one: a changed artifact changes the digest, and the
same artifact under another library version that embeds differently is caught when the
probe set is embedded again at every load and compared with the stored embeddings
(within ``PROBE_TOLERANCE``: float noise between machines must not refuse a good model,
so the comparison is by tolerance, and the stored, exact values enter the hash).

Nothing runs before the check: loading a pyfunc model unpickles and imports its code,
so the directory's digest is compared with the trusted one first: the registry's
``lockstep.model_sha256`` tag for every registered version, or, for a local copy a person
saved, the ``lockstep.json`` Lockstep wrote beside it (which proves the copy whole, not
untampered: it lies in the same folder). The directory must hold regular files only.

Families of directory models. A model directory may name a Lockstep family in its MLmodel
``metadata`` (``{"lockstep": {"family": "onnx_text", ...}}``, written by
``onnx_text.save_onnx_pyfunc``); only the families in ``DIRECTORY_FAMILIES`` are honoured,
anything else is ``imported``. An ``onnx_text`` directory's artifact digest leaves out the
MLmodel file (MLflow stamps it with a time and a uuid at every save), so the same
``model.onnx``, ``tokenizer.json`` and ``onnx_text.json`` (with the same code and
requirements) give the same fingerprint whenever they are imported; the content digest,
the trust anchor, still covers every file. Its metadata also says that ``predict`` takes
``params={"role": "query"}`` (the query prefix), that the pyfunc reads its onnxruntime
threads from ``model_config`` (``LOCKSTEP_ONNX_THREADS``, ``set_threads``) and its batch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core import paths
from lockstep.core.config import onnx_threads
from lockstep.core.errors import FingerprintMismatchError, LockstepError, UnsafePathError
from lockstep.model.contract import SLOW
from lockstep.model.integrity import ModelIntegrityError

PROBE_FILE = "lockstep_probe.npy"  # the probe set's embeddings at import, inside the model directory
META_FILE = "lockstep.json"  # Lockstep's note beside a local copy: digest, fingerprint, dimension
FINGERPRINT_FORMAT = "lockstep.pyfunc/1"
PREDICT_BATCH = 256  # texts per predict call in bulk embedding (an onnx_text model names its own)
IMPORTED = "imported"  # the family of a pyfunc model trained elsewhere
ONNX_TEXT = "onnx_text"  # a sentence-embedding model exported to ONNX (lockstep.model.onnx_text)
DIRECTORY_FAMILIES = (IMPORTED, ONNX_TEXT)  # the families kept as an MLflow model directory
FAMILY_TITLES = {
    IMPORTED: "imported MLflow pyfunc model",
    ONNX_TEXT: "ONNX sentence-embedding model, onnxruntime + tokenizers (onnx_text)",
}
MLMODEL = "MLmodel"
PROBE_TOLERANCE = 1e-4  # max abs difference of a probe embedding between import and a later load
PROBE_TEXTS = (
    "how do I reset my password",
    "shipping times for international orders",
    "the quick brown fox jumps over the lazy dog",
    "graphics card drivers crash after the update",
    "which telescope should a beginner buy",
    "hockey playoffs schedule and results",
    "is there life on other planets",
    "encryption keys and government access",
    "a",
    "1234567890",
    "Ünïcödé text, punctuation; and MIXED case!",
)


class ModelContractError(LockstepError):
    """A model does not meet the embedding contract (predict(list of texts) -> 2-D float array)."""


class PyfuncEmbedder:
    """An MLflow pyfunc model that meets the contract, with Lockstep's ``Embedder`` API."""

    FAMILY = FAMILY_TITLES[IMPORTED]
    COST = SLOW  # contract.embed_cost: a predict call per batch, milliseconds a text; serving batches concurrent queries
    BATCH_SIZE_HINT = PREDICT_BATCH  # contract.batch_size_hint

    def __init__(self, model: Any, model_dir: Path, *, dim: int, probe: np.ndarray, digest: str) -> None:
        self.model = model
        self.model_dir = Path(model_dir)
        self.dim = int(dim)
        self.probe = probe
        self.digest = digest  # of the whole directory, the probe file included
        declared = lockstep_metadata(self.model_dir)
        self.family = str(declared.get("family", IMPORTED))
        self.FAMILY = FAMILY_TITLES[self.family]
        self.BATCH_SIZE_HINT = _positive(declared.get("batch_size_hint"), PREDICT_BATCH)
        self.query_params = {"role": "query"} if declared.get("query_role") else None
        self.threads_config = bool(declared.get("threads"))  # predict's threads come from model_config
        self.fingerprint_ = fingerprint_of(artifact_digest(self.model_dir), self.dim, probe)

    def __repr__(self) -> str:
        return f"PyfuncEmbedder({self.model_dir}, dim={self.dim}, family={self.family})"

    def set_threads(self, threads: int) -> None:
        """Run the model with ``threads`` onnxruntime threads from now on (an ``onnx_text`` model only).

        At load the model gets ``LOCKSTEP_ONNX_THREADS`` (0: the core count); a build that
        starts N worker processes calls this with its share of the cores
        (``index.embed_settings.apply_threads``). The pyfunc makes a new onnxruntime session;
        a model that takes no thread setting raises ``NotImplementedError``.
        """
        if not self.threads_config:  # index.embed_settings.apply_threads skips a model that raises this
            raise NotImplementedError(f"the {self.family} model in {self.model_dir} takes no thread setting")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a whole number of threads, at least 1, got {threads!r}")
        inner = self.model.unwrap_python_model() if hasattr(self.model, "unwrap_python_model") else None
        if callable(getattr(inner, "set_threads", None)):
            inner.set_threads(threads)  # a new onnxruntime session; the pyfunc wrapper stays
        else:
            self.model = _load_pyfunc(self.model_dir, {"threads": threads})

    @property
    def dim_(self) -> int:
        return self.dim

    @property
    def fingerprint(self) -> str:
        return self.fingerprint_

    def get_params(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "dim": self.dim}

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Embed many texts through ``predict``, ``PREDICT_BATCH`` at a time, checking each answer."""
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = self.BATCH_SIZE_HINT
        for start in range(0, len(texts), step):
            batch = texts[start : start + step]
            out[start : start + len(batch)] = checked_embeddings(self.model, batch, self.dim)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """One query: a predict call of one text (imported models have no faster path)."""
        return checked_embeddings(self.model, [text], self.dim, params=self.query_params)[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Many queries in one predict call (the query prefix of an ``onnx_text`` model applied)."""
        return checked_embeddings(self.model, list(texts), self.dim, params=self.query_params)

    def save(self, path: str | Path) -> Path:
        """Copy the model directory to ``path`` with a ``lockstep.json`` that vouches for it."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.model_dir, tmp, ignore=shutil.ignore_patterns(META_FILE))
        meta = {"digest": self.digest, "fingerprint": self.fingerprint_, "dim": self.dim}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> PyfuncEmbedder:
        """Load a model directory after checking its digest, then check its probe embeddings.

        ``expected_sha256`` is the digest the caller trusts (the registry tag); without it
        the ``lockstep.json`` that ``save`` wrote is used. Refused (nothing imported or
        unpickled) when neither is there or the content differs. ``lockstep.json`` lies in
        the folder it vouches for, so it catches a damaged copy, not a tampered one: every
        registered version is loaded with the registry's digest (``importing.load_imported``).
        """
        path = Path(path)
        if expected_sha256 is not None:
            expected = _trusted(expected_sha256, "the expected sha256")
        else:
            expected = _trusted(_meta_digest(path), f"the digest in {path / META_FILE}")
        digest = directory_digest(path)
        if digest != expected:
            raise ModelIntegrityError(
                f"model directory {path} fails its checksum: its content digest is {digest}, "
                f"the trusted one is {expected}; it was changed after registration, so it was not loaded"
            )
        probe_path = path / PROBE_FILE
        if not probe_path.is_file():
            raise ModelIntegrityError(f"model directory {path} has no {PROBE_FILE}; import it with `lockstep model import`")
        stored = np.load(probe_path, allow_pickle=False)
        model = _load_pyfunc(path, {"threads": onnx_threads()} if lockstep_metadata(path).get("threads") else None)
        again = checked_embeddings(model, list(PROBE_TEXTS), stored.shape[1])
        worst = float(np.max(np.abs(again - stored))) if stored.size else 0.0
        if not worst <= PROBE_TOLERANCE:
            raise FingerprintMismatchError(
                f"the model in {path} embeds the probe set differently from when it was imported "
                f"(max difference {worst:.3g} > {PROBE_TOLERANCE}): its vector space changed, e.g. a "
                "library version differs; import it again as a new version"
            )
        return cls(model, path, dim=stored.shape[1], probe=stored, digest=digest)


def check_contract(model: Any) -> np.ndarray:
    """Prove the contract on the probe set; return its embeddings (n_probe, dim) float32.

    Checked: the answer is a 2-D numeric array with one row per text, finite, of one
    dimension whether the texts come in one batch or one by one, and the same texts give
    the same vectors (a model that samples at query time cannot pair with an index).
    """
    texts = list(PROBE_TEXTS)
    whole = checked_embeddings(model, texts, None)
    dim = whole.shape[1]
    if not np.allclose(checked_embeddings(model, texts, dim), whole, atol=PROBE_TOLERANCE):
        raise ModelContractError("predict gives different vectors for the same texts on a second call; it must be deterministic")
    for i, text in enumerate(texts[:3]):
        single = checked_embeddings(model, [text], dim)
        if not np.allclose(single[0], whole[i], atol=PROBE_TOLERANCE):
            raise ModelContractError(
                f"predict gives a different vector for {text!r} alone than in a batch "
                f"(max difference {float(np.max(np.abs(single[0] - whole[i]))):.3g}); the embedding of a "
                "text must not depend on the other texts in its batch"
            )
    return whole


def checked_embeddings(model: Any, texts: list[str], dim: int | None, params: dict[str, Any] | None = None) -> np.ndarray:
    """``model.predict(texts)`` as a C-contiguous float32 (len(texts), dim) array, or a clear error."""
    try:
        raw = model.predict(texts) if params is None else model.predict(texts, params=params)
    except Exception as exc:  # the model's own failure: name it, keep its cause
        raise ModelContractError(f"predict failed on {len(texts)} text(s): {type(exc).__name__}: {exc}") from exc
    if hasattr(raw, "to_numpy"):  # a DataFrame or Series
        raw = raw.to_numpy()
    try:
        arr = np.asarray(raw)
    except (TypeError, ValueError) as exc:
        raise ModelContractError(f"predict returned {type(raw).__name__}, which is not an array: {exc}") from exc
    if arr.dtype == object and arr.ndim == 1 and len(arr) and np.ndim(arr[0]) == 1:
        arr = np.stack(arr)  # a Series of vectors
    if arr.ndim != 2:
        raise ModelContractError(f"predict must return a 2-D array (one row per text); it returned shape {arr.shape}")
    if arr.shape[0] != len(texts):
        raise ModelContractError(f"predict returned {arr.shape[0]} rows for {len(texts)} texts; it must return one row per text")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ModelContractError(f"predict returned dtype {arr.dtype}; embeddings must be real numbers")
    if arr.shape[1] == 0:
        raise ModelContractError("predict returned rows of dimension 0")
    if dim is not None and arr.shape[1] != dim:
        raise ModelContractError(
            f"predict returned dimension {arr.shape[1]} where the model's dimension is {dim}; it must not change"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ModelContractError(
            f"predict returned NaN or infinite values for {int(bad.sum())} text(s), first {texts[row]!r}"
        )
    return out


def directory_digest(path: str | Path) -> str:
    """'sha256:<hex>' over every file in a directory (relative path and bytes), ``lockstep.json`` left out."""
    return _digest(Path(path), exclude={META_FILE})


def artifact_digest(path: str | Path) -> str:
    """The digest of the model alone: as ``directory_digest`` without the probe file.

    An ``onnx_text`` directory leaves out its MLmodel too (a save's time and uuid), so its
    digest is that of the ONNX file, the tokenizer, the config, the code and requirements.
    """
    exclude = {META_FILE, PROBE_FILE}
    if lockstep_metadata(path).get("family") == ONNX_TEXT:
        exclude.add(MLMODEL)
    return _digest(Path(path), exclude=exclude)


def lockstep_metadata(path: str | Path) -> dict[str, Any]:
    """The ``lockstep`` entry of a model directory's MLmodel metadata (``{}`` when none).

    Its ``family`` must be one of ``DIRECTORY_FAMILIES``; anything else counts as imported.
    Read with a safe YAML loader: the MLmodel file runs nothing.
    """
    import yaml

    mlmodel = Path(path) / MLMODEL
    if not mlmodel.is_file():
        return {}
    try:
        meta = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("metadata") or {}
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError):
        return {}
    declared = meta.get("lockstep") if isinstance(meta, dict) else None
    if not isinstance(declared, dict) or declared.get("family") not in DIRECTORY_FAMILIES:
        return {}
    return declared


def _positive(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def fingerprint_of(artifact: str, dim: int, probe: np.ndarray) -> str:
    """The vector space's name: artifact digest, dimension and the probe embeddings' hash."""
    header = {
        "format": FINGERPRINT_FORMAT,
        "artifact": artifact,
        "dim": int(dim),
        "probe": hashlib.sha256(np.ascontiguousarray(probe, dtype=np.float32).tobytes()).hexdigest(),
    }
    return "sha256:" + hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def write_probe(model_dir: Path, probe: np.ndarray) -> None:
    np.save(model_dir / PROBE_FILE, np.ascontiguousarray(probe, dtype=np.float32), allow_pickle=False)


def _digest(root: Path, exclude: set[str]) -> str:
    """sha256 over the directory's regular files; a symlink in it is refused, never followed.

    A link could make the digest (and then the model) read a file outside the folder,
    one that changes without the folder changing.
    """
    if not root.is_dir():
        raise ModelIntegrityError(f"model directory {root} does not exist")
    links = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
    if links:
        raise ModelIntegrityError(
            f"model directory {root} holds symbolic links ({', '.join(links[:5])}); a model directory "
            "must hold regular files only, so it was not loaded"
        )
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel in exclude:
            continue
        h.update(rel.encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def _trusted(value: object, source: str) -> str:
    """A digest to compare with, checked to be a sha256 (``core.paths.digest``)."""
    try:
        return paths.digest(value, source)
    except UnsafePathError as exc:
        raise ModelIntegrityError(f"model directory cannot be verified: {exc}") from exc


def _meta_digest(path: Path) -> str:
    meta = path / META_FILE
    if not meta.is_file():
        raise ModelIntegrityError(
            f"model directory {path} has no trusted digest: no expected sha256 was given and it has "
            f"no {META_FILE}, so it was not loaded"
        )
    try:
        return str(json.loads(meta.read_text(encoding="utf-8"))["digest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelIntegrityError(f"{meta} is not a valid {META_FILE} (no digest in it), so {path} was not loaded") from exc


# MLflow's advice to a model author at every save of a code-logged model whose signature is
# given explicitly (onnx_text): noise to the operator who imports it. (Its type-hint advice
# while a model loads cannot be filtered: MLflow installs a "once" filter of its own first.)
MLFLOW_AUTHOR_ADVICE = r".*(Add type hints to the `predict` method|An input example was not provided)"


def _load_pyfunc(path: Path, model_config: dict[str, Any] | None = None) -> Any:
    import mlflow

    try:
        return mlflow.pyfunc.load_model(str(path), model_config=model_config)
    except Exception as exc:  # MLflow raises many kinds; the message says which model
        raise ModelContractError(f"the model in {path} does not load as an MLflow pyfunc model: {exc}") from exc
