"""A sentence-embedding model exported to ONNX, as an MLflow pyfunc model logged as code.

MLflow copies this file into every ``onnx_text`` version and runs it when the version is
loaded, so it imports only NumPy, onnxruntime, tokenizers, MLflow and json, never
``lockstep``: ``mlflow.pyfunc.load_model(uri).predict(["a text"])`` works where only the
version's ``requirements.txt`` is installed. It is logged as code (``python_model=<this
file>``) because MLflow pickles a ``PythonModel`` object, and an onnxruntime
``InferenceSession`` cannot be pickled; here the session is made in ``load_context``.

Artifacts: ``model`` (the ONNX graph), ``tokenizer`` (a Hugging Face ``tokenizer.json``)
and ``config`` (``onnx_text.json``: pooling ``mean`` or ``cls``, ``normalize``,
``max_length``, ``query_prefix``, ``document_prefix``, ``output``, ``batch_size``).
The tokenizer's own truncation and padding are replaced by the config's: a tokenizer.json
often pads or cuts at 128 tokens, and padding is done here per batch instead.

``predict`` sorts the texts by token count and runs them ``batch_size`` at a time, each
batch padded only to its own longest text, and returns the rows in input order. The
graph's inputs (``input_ids``, ``attention_mask``, ``token_type_ids``) are read from the
session; a 3-D output ``[B, T, D]`` is pooled over the attention mask, a 2-D one is taken
as it is. ``params={"role": "query"}`` puts the query prefix in front of each text (the
default, ``document``, the document prefix).

``model_config={"threads": N}`` at load time sets onnxruntime's intra-op threads (default
1 per process, so several worker processes do not oversubscribe the cores); the CUDA
provider is used when onnxruntime has it, else the CPU.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

MODEL_KEY, TOKENIZER_KEY, CONFIG_KEY = "model", "tokenizer", "config"
DEFAULTS: dict[str, Any] = {
    "pooling": "mean",
    "normalize": True,
    "max_length": 256,
    "query_prefix": "",
    "document_prefix": "",
    "output": None,
    "batch_size": 32,
}
POOLINGS = ("mean", "cls")
ROLES = ("document", "query")
FEEDS = ("input_ids", "attention_mask", "token_type_ids")  # what this model can give a graph
MAX_LENGTH_LIMIT = 8192


class OnnxTextConfigError(ValueError):
    """``onnx_text.json`` (or an option that overrides it) holds a value the model cannot use."""


def read_config(path: str) -> dict[str, Any]:
    """The config file merged over ``DEFAULTS``, every field checked."""
    with open(path, encoding="utf-8") as fh:
        try:
            raw = json.load(fh)
        except ValueError as exc:
            raise OnnxTextConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise OnnxTextConfigError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return checked_config(raw, source=path)


def checked_config(raw: dict[str, Any], source: str = "the onnx_text config") -> dict[str, Any]:
    """``raw`` over ``DEFAULTS``; an unknown key or a bad value is named in the error."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise OnnxTextConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **raw}
    if cfg["pooling"] not in POOLINGS:
        raise OnnxTextConfigError(f"{source}: pooling must be one of {', '.join(POOLINGS)}, got {cfg['pooling']!r}")
    if not isinstance(cfg["normalize"], bool):
        raise OnnxTextConfigError(f"{source}: normalize must be true or false, got {cfg['normalize']!r}")
    for name, most in (("max_length", MAX_LENGTH_LIMIT), ("batch_size", 4096)):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise OnnxTextConfigError(f"{source}: {name} must be a whole number from 1 to {most}, got {value!r}")
    for name in ("query_prefix", "document_prefix"):
        if not isinstance(cfg[name], str):
            raise OnnxTextConfigError(f"{source}: {name} must be a string, got {cfg[name]!r}")
    if cfg["output"] is not None and (not isinstance(cfg["output"], str) or not cfg["output"]):
        raise OnnxTextConfigError(f"{source}: output must be the name of a graph output or null, got {cfg['output']!r}")
    return cfg


def thread_count(value: Any) -> int:
    """The intra-op threads a ``threads`` model_config value asks for (0 or missing: 1)."""
    if value is None or value == 0:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OnnxTextConfigError(f"model_config threads must be a whole number of threads, got {value!r}")
    return value


class OnnxTextEncoder:
    """An ONNX session, its tokenizer and its config: texts in, pooled float32 rows out."""

    def __init__(self, model_path: str, tokenizer_path: str, config: dict[str, Any], threads: int = 1) -> None:
        self.model_path = model_path
        self.config = checked_config(dict(config))
        self.tokenizer, self.pad_id = _tokenizer(tokenizer_path, self.config["max_length"])
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        """A new session with ``threads`` intra-op threads (the old one is dropped)."""
        self.threads = thread_count(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(self.model_path, sess_options=options, providers=providers)
        self.feeds = _feeds(self.session)
        self.output, self.output_rank = _output(self.session, self.config["output"])

    def embed(self, texts: list[str], role: str = "document") -> np.ndarray:
        """One row per text in input order; texts run sorted by length, ``batch_size`` at a time."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        prefix = self.config[f"{role}_prefix"]
        encodings = self.tokenizer.encode_batch([prefix + t for t in texts]) if texts else []
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        rows: np.ndarray | None = None
        size = self.config["batch_size"]
        for start in range(0, len(order), size):
            picked = order[start : start + size]
            out = self._run([encodings[i] for i in picked])
            if rows is None:
                rows = np.empty((len(texts), out.shape[1]), dtype=np.float32)
            rows[picked] = out
        if rows is None:  # no texts: the dimension comes from one run of an empty text
            return np.empty((0, self._run(self.tokenizer.encode_batch([""])).shape[1]), dtype=np.float32)
        return rows

    def _run(self, encodings: list[Any]) -> np.ndarray:
        """One session.run over encodings padded to the longest of them, pooled."""
        width = max(1, max(len(e.ids) for e in encodings))
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, enc.attention_mask, enc.type_ids
        given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {name: given[name].astype(dtype, copy=False) for name, dtype in self.feeds.items()}
        hidden = np.asarray(self.session.run([self.output], feed)[0], dtype=np.float32)
        if hidden.ndim == 3:
            hidden = _pool(hidden, mask, self.config["pooling"])
        elif hidden.ndim != 2:
            raise ValueError(f"graph output {self.output!r} has {hidden.ndim} dimensions; onnx_text needs [B, T, D] or [B, D]")
        if self.config["normalize"]:
            norms = np.linalg.norm(hidden, axis=1, keepdims=True)
            np.divide(hidden, norms, out=hidden, where=norms > 0)
        return np.ascontiguousarray(hidden, dtype=np.float32)


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """[B, T, D] to [B, D]: the first token's row (``cls``) or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0, :].copy()
    weights = mask[:, :, None].astype(np.float32)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    return (hidden * weights).sum(axis=1) / counts


def _tokenizer(path: str, max_length: int) -> tuple[Tokenizer, int]:
    """The tokenizer with the config's truncation and no padding of its own; its pad id."""
    tokenizer = Tokenizer.from_file(path)
    padding = tokenizer.padding
    pad_id = int(padding["pad_id"]) if padding else (tokenizer.token_to_id("[PAD]") or 0)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer, pad_id


_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _feeds(session: Any) -> dict[str, Any]:
    """The graph's inputs with the dtype each wants; one this model cannot give is an error."""
    feeds: dict[str, Any] = {}
    for spec in session.get_inputs():
        if spec.name not in FEEDS or spec.type not in _DTYPES:
            raise ValueError(
                f"the ONNX graph wants input {spec.name!r} of type {spec.type}; onnx_text gives only "
                f"{', '.join(FEEDS)} as int64 or int32"
            )
        feeds[spec.name] = _DTYPES[spec.type]
    if "input_ids" not in feeds:
        raise ValueError("the ONNX graph has no input_ids input, so it is not a text model onnx_text can run")
    return feeds


def _output(session: Any, wanted: str | None) -> tuple[str, int]:
    """The output to read (``wanted``, else the first) and its rank (2 or 3)."""
    outputs = {o.name: o for o in session.get_outputs()}
    name = wanted or next(iter(outputs))
    if name not in outputs:
        raise ValueError(f"the ONNX graph has no output {name!r}; its outputs are {', '.join(outputs)}")
    rank = len(outputs[name].shape or ())
    if rank not in (2, 3):
        raise ValueError(
            f"graph output {name!r} has shape {outputs[name].shape}; onnx_text needs [batch, tokens, dim] "
            "(pooled here) or [batch, dim]"
        )
    return name, rank


def texts_from(model_input: Any) -> list[str]:
    """Accept the shapes pyfunc callers send: list, Series, DataFrame (first column), array, one string."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # a DataFrame, after MLflow applied the signature
        if len(model_input.columns) == 0:
            raise ValueError("the input DataFrame has no columns; send a 'text' column")
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        model_input = model_input[column]
    if isinstance(model_input, np.ndarray):
        model_input = model_input.ravel()
    return [str(t) for t in (model_input.tolist() if hasattr(model_input, "tolist") else model_input)]


class OnnxTextModel(mlflow.pyfunc.PythonModel):
    """``predict(texts)``: one pooled, optionally L2-normalised float32 row per text."""

    def load_context(self, context: Any) -> None:
        threads = thread_count((context.model_config or {}).get("threads"))
        config = read_config(context.artifacts[CONFIG_KEY])
        self.encoder = OnnxTextEncoder(context.artifacts[MODEL_KEY], context.artifacts[TOKENIZER_KEY], config, threads)

    def set_threads(self, threads: int) -> None:
        self.encoder.set_threads(threads)

    # No type hints on predict: MLflow would read them as an input schema of its own; the
    # logged signature (one string column, param "role") is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Embed a list of texts; ``params={"role": "query"}`` applies the query prefix."""
        role = str((params or {}).get("role") or "document")
        return self.encoder.embed(texts_from(model_input), role)


mlflow.models.set_model(OnnxTextModel())
