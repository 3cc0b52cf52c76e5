"""The manifest: what an index version is, and the sha256 of each of its data files.

It is the JSON that makes a folder an index version, so it is checked field by field
when read (types, keys, data file names confined to the version folder) and never
written when it would not pass that check. It is replaced atomically, so a reader sees
the old version or the new one, never half of each.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lockstep.core.atomic import atomic_write
from lockstep.core.errors import (
    IndexIntegrityError,
)
from lockstep.index import mirror

MANIFEST = "manifest.json"
FORMAT = 1
METRIC = "inner_product"


@dataclass(frozen=True)
class Manifest:
    """What an index version is; the JSON beside its data files."""

    model_name: str
    model_version: str
    fingerprint: str
    dim: int
    index_type: str
    spec: dict[str, Any]
    record_count: int
    applied_seq: int
    index_file: str
    index_sha256: str
    ids_file: str
    ids_sha256: str
    built_at: str
    updated_at: str
    metric: str = METRIC
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST) -> Manifest:
        """Parse and check a manifest; anything malformed is an ``IndexIntegrityError`` naming ``source``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndexIntegrityError(f"{source} is not valid JSON ({exc}); rebuild the index version") from exc
        problems = _manifest_problems(data)
        if problems:
            raise IndexIntegrityError(f"{source} is not a valid manifest: {'; '.join(problems)}; rebuild the index version")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "model_name": str, "model_version": str, "fingerprint": str, "dim": int, "index_type": str, "spec": dict,
    "record_count": int, "applied_seq": int, "index_file": str, "index_sha256": str, "ids_file": str,
    "ids_sha256": str, "built_at": str, "updated_at": str, "metric": str, "format": int, "extra": dict,
}
_OPTIONAL = {"metric", "format", "extra"}
_HEX = set("0123456789abcdef")


def _manifest_problems(data: Any) -> list[str]:
    """Everything wrong with a parsed manifest, each naming the field (empty when it is sound)."""
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {type(data).__name__}"]
    missing = sorted(k for k in _MANIFEST_TYPES if k not in data and k not in _OPTIONAL)
    problems = [f"missing keys {missing}"] if missing else []
    for key, kind in _MANIFEST_TYPES.items():
        if key in data and (not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool))):
            problems.append(f"{key} must be {getattr(kind, '__name__', kind)}, got {type(data[key]).__name__}")
    for key in ("index_file", "ids_file"):
        if isinstance(data.get(key), str):
            problem = _file_name_problem(data[key])
            if problem:
                problems.append(f"{key} {data[key]!r} {problem}")
    for key in ("index_sha256", "ids_sha256"):
        value = data.get(key)
        if isinstance(value, str) and (len(value) != 64 or not set(value) <= _HEX):
            problems.append(f"{key} must be 64 lowercase hex digits")
    for key in ("dim", "record_count", "applied_seq"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < (1 if key == "dim" else 0):
            problems.append(f"{key} must not be {value}")
    return problems


def _file_name_problem(name: str) -> str | None:
    """Why a manifest's data file name could reach outside its version folder (None if it cannot)."""
    if not name or name in (".", ".."):
        return "is not a file name"
    if "/" in name or "\\" in name or "\0" in name:
        return "must be a plain file name in the version folder (no path separators)"
    if name.startswith(".") or name == MANIFEST:
        return "must name a data file of the version, not a hidden file or the manifest"
    return None


def read_manifest(location: str | Path) -> Manifest:
    """The manifest of an index version, checked (types, keys, confined file names).

    From an object store it is always read fresh (``mirror.pull(refresh=True)``): another host
    may have published since, and the manifest is what says which data files are current.
    """
    folder = mirror.working_dir(location)
    path = folder / MANIFEST
    mirror.pull(path, refresh=True)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"no index at {location}: {MANIFEST} is missing (was it built?)") from exc
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise IndexIntegrityError(f"{path} is not a valid manifest ({exc}); rebuild the index version") from exc
    return Manifest.from_json(text, source=str(path))


def write_manifest(location: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically, after the same checks ``read_manifest`` makes."""
    problems = _manifest_problems(json.loads(manifest.to_json()))
    if problems:  # never write what read_manifest would refuse
        raise IndexIntegrityError(f"refusing to write an invalid manifest to {location}: {'; '.join(problems)}")
    atomic_write(location / MANIFEST, manifest.to_json().encode())
