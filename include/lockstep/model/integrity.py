"""Model files and their sha256: nothing is unpickled before its bytes are checked.

Model files are pickles, and unpickling runs code, so a model file is never
deserialised before its sha256 is checked: ``write_checksummed`` writes a ``<file>.sha256``
sidecar (``sha256sum -c`` reads it), and a loader compares the file with the hash the
caller trusts (``expected_sha256``, e.g. the registry's ``lockstep.model_sha256`` tag) or,
when none is given, with the sidecar. A file with neither is refused.

What each check proves: the sidecar lies in the same folder as the file, so it only
proves the file is whole (not torn, truncated or corrupted); whoever can write that
folder can replace both, so it is no trust anchor. A registered model is always loaded
against a digest kept outside its folder: the registry's tag (``Registry.load_embedder``,
``importing.load_imported``), or the digest the re-embed's ``prepare`` task recorded in
its plan for the local copy it wrote (``index.steps``). The sidecar alone vouches only
for files a person saves and names locally (a ``lockstep train`` output, a local-file slot).

Every model file Lockstep writes (each built-in embedding family's, the recommender's
fit) goes through here, so one module decides what "checked" means.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lockstep.core import paths
from lockstep.core.errors import LockstepError, UnsafePathError

CHECKSUM_SUFFIX = ".sha256"


class ModelIntegrityError(LockstepError):
    """A model file does not match the sha256 it must have, or has no checksum to check."""


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
