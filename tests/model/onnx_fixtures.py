"""A tiny ONNX sentence encoder and its WordLevel tokenizer, made here for the onnx_text tests.

The graph has the inputs of a BERT export (``input_ids``, ``attention_mask``,
``token_type_ids``, int64 ``[B, T]``) and its output ``last_hidden_state`` ``[B, T, D]``
float32 (D = 16): ``tanh(E[ids] + P[position] + S[type]) * mask``, from a seeded token
table ``E``, position table ``P`` and type table ``S``. Each token's row depends on its
position and the mask, so mean and CLS pooling differ, and no row depends on another
text's (the batch independence a real transformer with an attention mask has).
``reference`` computes the same in NumPy. The tokenizer, like MiniLM's, pads and cuts by
itself (here at 6 tokens), which the model must override from its config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIM = 16
MAX_POSITIONS = 512
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = [
    "the", "of", "and", "to", "in", "is", "it", "that", "orbit", "rocket", "launch", "nasa",
    "shuttle", "moon", "satellite", "mission", "puck", "goal", "ice", "team", "season", "playoff",
    "goalie", "score", "key", "encryption", "cipher", "clipper", "privacy", "algorithm", "secure",
    "chip", "query", "passage", "a", "guitar", "man", "plays", "someone",
]
TOKENIZER_CUT = 6  # the saved tokenizer.json pads and truncates at this many tokens by itself


@dataclass(frozen=True)
class TinyModel:
    folder: Path
    tokens: np.ndarray  # [V, D]
    positions: np.ndarray  # [MAX_POSITIONS, D]
    types: np.ndarray  # [2, D]


def vocabulary(extra: tuple[str, ...] = ()) -> dict[str, int]:
    return {w: i for i, w in enumerate([*SPECIALS, *WORDS, *extra])}


def write_tokenizer(path: Path, extra: tuple[str, ...] = ()) -> Path:
    """A lower-casing WordLevel tokenizer with [CLS] ... [SEP] around each text."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing

    vocab = vocabulary(extra)
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.enable_truncation(max_length=TOKENIZER_CUT)
    tok.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]", length=TOKENIZER_CUT)
    tok.save(str(path))
    return path


def write_onnx(path: Path, vocab_size: int, seed: int = 0, output_rank: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tiny encoder as ONNX (opset 17); its three tables. ``output_rank`` 2 pools in the
    graph (mean over the mask), 4 adds a dimension (a graph onnx_text must refuse)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(vocab_size, DIM)).astype(np.float32)
    positions = (0.5 * rng.normal(size=(MAX_POSITIONS, DIM))).astype(np.float32)
    types = (0.1 * rng.normal(size=(2, DIM))).astype(np.float32)
    init = [
        numpy_helper.from_array(tokens, "E"),
        numpy_helper.from_array(positions, "P"),
        numpy_helper.from_array(types, "S"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "token_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"]),
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["width"]),
        helper.make_node("Range", ["zero", "width", "one"], ["pos_ids"]),
        helper.make_node("Gather", ["P", "pos_ids"], ["pos"]),
        helper.make_node("Gather", ["S", "token_type_ids"], ["typ"]),
        helper.make_node("Add", ["tok", "pos"], ["s1"]),
        helper.make_node("Add", ["s1", "typ"], ["s2"]),
        helper.make_node("Tanh", ["s2"], ["act"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["act", "mask3"], ["hidden"]),
    ]
    out_name = "last_hidden_state"
    if output_rank == 3:
        nodes.append(helper.make_node("Identity", ["hidden"], [out_name]))
        out_shape: list[Any] = ["batch", "tokens", DIM]
    elif output_rank == 2:
        out_name = "sentence_embedding"
        nodes += [
            helper.make_node("ReduceSum", ["hidden", "token_axis"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask3", "token_axis"], ["count"], keepdims=0),
            helper.make_node("Div", ["summed", "count"], [out_name]),
        ]
        out_shape = ["batch", DIM]
    else:
        nodes.append(helper.make_node("Unsqueeze", ["hidden", "last_axis"], [out_name]))
        out_shape = ["batch", "tokens", DIM, 1]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "tiny_encoder", inputs, [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return tokens, positions, types


def make_folder(
    folder: Path, *, seed: int = 0, config: dict[str, Any] | None = None, output_rank: int = 3, extra_words: tuple[str, ...] = ()
) -> TinyModel:
    """``folder`` with model.onnx, tokenizer.json and (when ``config``) onnx_text.json."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder / "tokenizer.json", extra_words)
    tables = write_onnx(folder / "model.onnx", len(vocabulary(extra_words)), seed=seed, output_rank=output_rank)
    if config is not None:
        (folder / "onnx_text.json").write_text(json.dumps(config), encoding="utf-8")
    return TinyModel(folder, *tables)


def reference(
    model: TinyModel, texts: list[str], *, pooling: str = "mean", normalize: bool = True, prefix: str = "", max_length: int = 256
) -> np.ndarray:
    """What the tiny encoder gives, one text at a time in NumPy, tokenised without the file's own cut."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model.folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    rows = []
    for text in texts:
        enc = tok.encode(prefix + text)
        ids = np.array(enc.ids)
        hidden = np.tanh(model.tokens[ids] + model.positions[: len(ids)] + model.types[np.array(enc.type_ids)])
        rows.append(hidden[0] if pooling == "cls" else hidden.mean(axis=0))
    out = np.array(rows, dtype=np.float32).reshape(len(texts), DIM)
    if normalize:
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
