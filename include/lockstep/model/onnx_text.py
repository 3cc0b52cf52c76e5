"""The ``onnx_text`` family: any sentence-embedding model exported to ONNX, brought in by import.

A folder with ``model.onnx`` and ``tokenizer.json`` (and optionally ``onnx_text.json``:
pooling, normalisation, max length, query/document prefixes, output name, batch) becomes
a version that is self-contained in MLflow: an MLflow pyfunc logged as code
(``onnx_text_pyfunc.py``, which imports no Lockstep) with the three files as artifacts.
So ``mlflow.pyfunc.load_model(uri).predict([...])`` works where Lockstep is not installed,
and Lockstep loads it as any imported version (``PyfuncEmbedder``, family ``onnx_text``).

A transformer cannot be trained by Lockstep: ``onnx_text`` versions come in through
``lockstep model import --onnx DIR`` (``import_onnx``), which checks the folder first
(the files are there, the ONNX graph parses and has a usable output, the tokenizer loads,
a probe embeds to finite rows of a dimension above 0) and registers nothing when a check
fails; then the usual import path proves the embedding contract, stores the probe, tags
the version and points ``challenger`` at it.

The fingerprint covers the ONNX file, the tokenizer and the config (with the code file and
the pinned requirements; ``pyfunc_embedder.artifact_digest``), not MLflow's stamps, so the
same folder imported twice names the same vector space.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lockstep.core.errors import LockstepError
from lockstep.model.pyfunc_embedder import (
    MLFLOW_AUTHOR_ADVICE,
    ONNX_TEXT,
    PROBE_TEXTS,
    ModelContractError,
    PyfuncEmbedder,
    _load_pyfunc,
    check_contract,
    directory_digest,
    write_probe,
)

if TYPE_CHECKING:
    from lockstep.model.registry import ModelVersionInfo, Registry

PYFUNC_CODE = Path(__file__).with_name("onnx_text_pyfunc.py")  # the MLflow model, logged as code
MODEL_REQUIREMENTS = ("mlflow", "numpy", "pandas", "onnxruntime", "tokenizers")
MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE = "model.onnx", "tokenizer.json", "onnx_text.json"
QUERY_BATCH_FACTOR = 8  # texts per predict call: this many session batches, sorted by length together
SOURCE_TAG = "lockstep.source_uri"  # for an onnx_text version: the folder it was imported from


class OnnxFolderError(ModelContractError):
    """A folder is not a usable ONNX sentence-embedding model (the message names what is wrong)."""


def folder_config(folder: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model's config: defaults, then the folder's ``onnx_text.json``, then ``overrides``.

    ``overrides`` are the command line's options (None values are left out); every field is
    checked, and an unknown one is named.
    """
    from lockstep.model.onnx_text_pyfunc import OnnxTextConfigError, checked_config

    folder = Path(folder)
    raw: dict[str, Any] = {}
    config_file = folder / CONFIG_FILE
    if config_file.exists():
        if not config_file.is_file():
            raise OnnxFolderError(f"{config_file} is not a regular file")
        try:
            loaded = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise OnnxFolderError(f"{config_file} is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise OnnxFolderError(f"{config_file} must hold a JSON object, not {type(loaded).__name__}")
        raw.update(loaded)
    raw.update({k: v for k, v in dict(overrides or {}).items() if v is not None})
    try:
        return checked_config(raw, source=str(config_file) if config_file.exists() else "the onnx_text options")
    except OnnxTextConfigError as exc:
        raise OnnxFolderError(str(exc)) from exc


def check_folder(folder: str | Path, config: Mapping[str, Any]) -> int:
    """Prove ``folder`` holds a usable model under ``config``; its embedding dimension.

    Checked in the order a person fixes things: the folder and its two files exist as
    regular files, ``model.onnx`` parses as ONNX (weights in the file itself), the
    tokenizer loads, the graph's inputs and output fit (``[B, T, D]`` or ``[B, D]``), and
    the probe texts embed to finite rows of one dimension above 0.
    """
    from lockstep.model.onnx_text_pyfunc import OnnxTextEncoder

    model_file, tokenizer_file = _model_files(Path(folder))
    _check_onnx_file(model_file)
    _check_tokenizer(tokenizer_file)
    try:
        encoder = OnnxTextEncoder(str(model_file), str(tokenizer_file), dict(config), threads=1)
        rows = encoder.embed(list(PROBE_TEXTS))
    except Exception as exc:  # onnxruntime and the graph raise many kinds; the message names the cause
        raise OnnxFolderError(f"the model in {folder} does not run as an onnx_text model: {exc}") from exc
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise OnnxFolderError(f"the model in {folder} gives embeddings of shape {rows.shape}; it needs a dimension above 0")
    if not np.isfinite(rows).all():
        raise OnnxFolderError(f"the model in {folder} gives NaN or infinite values for the probe texts")
    return int(rows.shape[1])


def save_onnx_pyfunc(folder: str | Path, dest: str | Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Check ``folder`` and save it as a local MLflow pyfunc model directory ``dest`` (which must not exist)."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    from lockstep.model.onnx_text_pyfunc import CONFIG_KEY, MODEL_KEY, TOKENIZER_KEY

    folder, dest = Path(folder), Path(dest)
    config = folder_config(folder, overrides)
    check_folder(folder, config)
    if dest.exists():
        raise LockstepError(f"{dest} already exists; choose a new folder for the MLflow model")
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),
        params=ParamSchema([ParamSpec("role", DataType.string, "document")]),
    )
    metadata = {
        "lockstep": {
            "family": ONNX_TEXT,
            "batch_size_hint": int(config["batch_size"]) * QUERY_BATCH_FACTOR,
            "query_role": True,
            "threads": True,
        }
    }
    with tempfile.TemporaryDirectory(prefix="lockstep-onnx-") as tmp:
        config_file = Path(tmp) / CONFIG_FILE
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MLFLOW_AUTHOR_ADVICE, category=UserWarning)
            mlflow.pyfunc.save_model(
                path=str(dest),
                python_model=str(PYFUNC_CODE),
                artifacts={MODEL_KEY: str(folder / MODEL_FILE), TOKENIZER_KEY: str(folder / TOKENIZER_FILE), CONFIG_KEY: str(config_file)},
                model_config={"threads": 1},
                signature=signature,
                pip_requirements=_pinned(MODEL_REQUIREMENTS),
                metadata=metadata,
            )
    return dest


def open_folder(folder: str | Path, work: str | Path, overrides: Mapping[str, Any] | None = None) -> PyfuncEmbedder:
    """An ``onnx_text`` model as Lockstep loads it, without a registry (tests, benchmarks, a quick look).

    Saved under ``work/model``, its contract proved and its probe stored as an import
    does, then loaded against its own content digest.
    """
    model_dir = save_onnx_pyfunc(folder, Path(work) / "model", overrides)
    write_probe(model_dir, check_contract(_load_pyfunc(model_dir)))
    return PyfuncEmbedder.load(model_dir, expected_sha256=directory_digest(model_dir))


def import_onnx(
    registry: Registry,
    folder: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    set_challenger: bool = True,
    evaluate: bool = True,
    evaluator: Any = None,
    source: str | None = None,
) -> ModelVersionInfo:
    """Register the ONNX model in ``folder`` as a new ``onnx_text`` version (nothing when a check fails).

    ``evaluate``/``evaluator``: the offline evaluation against the champion, as ``import_model`` takes them.
    ``source`` names where the model came from on the version (default: the folder's path).
    """
    from lockstep.model.importing import import_model
    from lockstep.model.registry.tags import TAG_FAMILY

    folder = Path(folder).expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="lockstep-onnx-import-") as tmp:
        model_dir = save_onnx_pyfunc(folder, Path(tmp) / "model", overrides)
        tags = {TAG_FAMILY: ONNX_TEXT, SOURCE_TAG: (source or str(folder))[:500]}  # the source shown on the version page
        return import_model(registry, str(model_dir), tags=tags, set_challenger=set_challenger, evaluate=evaluate,
                            evaluator=evaluator)


def _model_files(folder: Path) -> tuple[Path, Path]:
    if not folder.is_dir():
        raise OnnxFolderError(f"{folder} is not a folder; give a folder holding {MODEL_FILE} and {TOKENIZER_FILE}")
    found = []
    for name in (MODEL_FILE, TOKENIZER_FILE):
        path = folder / name
        if not path.is_file():
            raise OnnxFolderError(f"{folder} has no {name}; an onnx_text model folder holds {MODEL_FILE} and {TOKENIZER_FILE}")
        found.append(path)
    return found[0], found[1]


def _check_onnx_file(path: Path) -> None:
    """``path`` parses as an ONNX model whose weights are inside the file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and others
        raise OnnxFolderError(f"{path} is not an ONNX model file: {type(exc).__name__}: {exc}") from exc
    if not model.graph.node:
        raise OnnxFolderError(f"{path} is not an ONNX model file (it has no graph)")
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise OnnxFolderError(
            f"{path} keeps weights in external data files ({', '.join(external[:3])}); save the model with its "
            "weights inside model.onnx (onnx.save_model(..., save_as_external_data=False))"
        )


def _check_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise OnnxFolderError(f"{path} is not a Hugging Face tokenizer.json: {exc}") from exc


def _pinned(distributions: tuple[str, ...]) -> list[str]:
    """The logged model's requirements, pinned to the installed versions (as registration does)."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}" for dist in distributions]
