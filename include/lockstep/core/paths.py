"""Values from outside that become paths: checked once, where they enter.

A digest from an MLflow tag, a version from a DAG Param, a file name from a manifest or
an XCom, a folder from the routing table: each ends up joined to a folder Lockstep
writes to, reads from or deletes. A value like ``sha256:../../../indexes`` or
``v1/../../..`` must never get that far, so every such value goes through one of these
functions at the boundary, and each refuses with an ``UnsafePathError`` that names the
value and what it should have been:

- ``digest``: ``sha256:<64 hex>`` or 64 hex digits, nothing else;
- ``version_number``: a positive integer written plainly (``"7"``, not ``" 7"``, ``"+7"``,
  ``"07"`` or ``"7.0"``), at most ``MAX_VERSION``;
- ``name``: one plain path component (no separator, ``..``, NUL, hidden dot, at most
  ``MAX_NAME_BYTES``);
- ``inside``: ``root`` joined with relative parts, resolved (symlinks followed) and
  refused unless it stays inside ``root``;
- ``within``: the same check for a whole path that arrived from outside (a database row).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

from lockstep.core.errors import UnsafePathError

MAX_VERSION = 2**31 - 1  # MLflow keeps versions in a 32-bit integer column
MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems: a longer name fails later, less clearly
MAX_PATH_BYTES = 4096  # PATH_MAX
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_VERSION = re.compile(r"[1-9][0-9]*", re.ASCII)


def digest(value: object, what: str = "digest") -> str:
    """``value`` as ``sha256:<64 lowercase hex>``; refused unless it is exactly a sha256.

    Upper-case hex is accepted (``sha256sum`` prints lower case, other tools may not);
    anything else, surrounding spaces included, is refused.
    """
    if not isinstance(value, str):
        raise UnsafePathError(f"{what} must be a string 'sha256:<64 hex digits>', got {type(value).__name__}")
    hexdigest = value.removeprefix("sha256:").lower()
    if not _HEX64.fullmatch(hexdigest):
        raise UnsafePathError(f"{what} {_shown(value)} is not a sha256 (64 hex digits, optionally 'sha256:' first)")
    return "sha256:" + hexdigest


def hex_digest(value: object, what: str = "digest") -> str:
    """The 64 hex digits of a checked ``digest`` (a folder name that cannot escape)."""
    return digest(value, what).removeprefix("sha256:")


def version_number(value: object, what: str = "model version") -> int:
    """A model version as an int: 1..``MAX_VERSION``, from an int or a plain decimal string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UnsafePathError(f"{what} must be a positive integer, got {type(value).__name__} {_shown(value)}")
    if isinstance(value, str) and not _VERSION.fullmatch(value):
        raise UnsafePathError(f"{what} {_shown(value)} is not a positive integer written in plain digits")
    number = int(value)
    if not 1 <= number <= MAX_VERSION:
        raise UnsafePathError(f"{what} {_shown(value)} is out of range (1..{MAX_VERSION})")
    return number


def name(value: object, what: str = "file name") -> str:
    """``value`` when it is one plain path component that stays in its folder."""
    if not isinstance(value, str):
        raise UnsafePathError(f"{what} must be a string, got {type(value).__name__}")
    _check_component(value, value, what)
    if value.startswith("."):
        raise UnsafePathError(f"{what} {_shown(value)} must not start with '.' (hidden or relative names are refused)")
    return value


def inside(root: str | os.PathLike[str], *parts: str | os.PathLike[str], what: str = "path") -> Path:
    """``root / parts``, resolved, when it stays inside ``root`` (resolved too); else refused.

    Each part must be relative, without ``..``, NUL or over-long components. The joined
    path is resolved with symlinks followed (it need not exist), so a symlink inside the
    root that points out of it is refused as well.
    """
    base = Path(root).resolve()
    joined = PurePath()
    for part in parts:
        text = os.fspath(part)
        if not isinstance(text, str):
            raise UnsafePathError(f"{what}: part {_shown(text)} is not text")
        _check_relative(text, what)
        joined /= text
    return _confined(base, base / joined, f"{what} {_shown(str(joined))}")


def within(root: str | os.PathLike[str], path: str | os.PathLike[str], what: str = "path") -> Path:
    """An absolute ``path`` from outside (a database row, a plan), resolved, when it lies inside ``root``."""
    text = os.fspath(path)
    if not isinstance(text, str) or "\0" in text:
        raise UnsafePathError(f"{what} {_shown(text)} contains a NUL byte or is not text")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    given = Path(text)
    if not given.is_absolute():
        raise UnsafePathError(f"{what} {_shown(text)} must be an absolute path")
    return _confined(Path(root).resolve(), given, f"{what} {_shown(text)}")


def _confined(base: Path, candidate: Path, label: str) -> Path:
    resolved = candidate.resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise UnsafePathError(f"{label} resolves to {resolved}, outside {base}; refused")
    return resolved


def _check_relative(text: str, what: str) -> None:
    if not text:
        raise UnsafePathError(f"{what}: an empty path part is not allowed")
    if "\0" in text:
        raise UnsafePathError(f"{what} {_shown(text)} contains a NUL byte")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if PurePath(text).is_absolute() or text.startswith(("/", "\\")):
        raise UnsafePathError(f"{what} {_shown(text)} must be relative to its folder, not an absolute path")
    for component in text.replace("\\", "/").split("/"):
        if component in ("", "."):
            continue
        _check_component(component, text, what)


def _check_component(component: str, whole: str, what: str) -> None:
    if component in ("", ".", ".."):
        raise UnsafePathError(f"{what} {_shown(whole)} is not a plain name ('', '.' and '..' are refused)")
    if "/" in component or "\\" in component:
        raise UnsafePathError(f"{what} {_shown(whole)} must not contain a path separator")
    if "\0" in component:
        raise UnsafePathError(f"{what} {_shown(whole)} contains a NUL byte")
    if len(component.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise UnsafePathError(f"{what} {_shown(whole)} has a name longer than {MAX_NAME_BYTES} bytes")


def _shown(value: object) -> str:
    """The bad value as the message shows it: quoted, NULs visible, cut after 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
