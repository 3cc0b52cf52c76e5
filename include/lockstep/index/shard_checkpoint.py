"""Checkpoints inside a shard: its vectors written chunk by chunk, so a dead worker loses one chunk at most.

While a shard is embedded, each chunk of its (distinct) texts goes to its own file in
``shard-NNNNN.parts/`` (written atomically, named by the first text it holds), under a
``key.json`` that names the work: the shard's key (model fingerprint, snapshot, its ids
and texts) and how many distinct texts it has. A worker that starts the shard again
(a retried task, a rerun build after a SIGKILL or a pause) keeps the chunks of the same
key that follow each other from the first text, and embeds only what comes after them;
anything else in the folder is work of another model or snapshot and is removed. The
finished shard is assembled from its chunks (``shards.build_shard_columns``) and the
folder removed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lockstep.core.atomic import atomic_path, atomic_write
from lockstep.index import mirror

KEY_FILE = "key.json"


@dataclass
class ShardCheckpoint:
    """The chunk files of one shard in progress."""

    folder: Path
    key: str
    n_unique: int

    @classmethod
    def open(cls, vec_path: Path, key: str, n_unique: int) -> ShardCheckpoint:
        """The checkpoint of this work beside ``vec_path``; a folder of other work is cleared first."""
        folder = vec_path.with_suffix(".parts")
        wanted = {"key": key, "n_unique": int(n_unique)}
        try:
            found = json.loads((folder / KEY_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            found = None
        if found != wanted:
            shutil.rmtree(folder, ignore_errors=True)
            mirror.delete(folder)  # another work's chunks in the object store too
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / KEY_FILE, json.dumps(wanted, sort_keys=True))
            mirror.push(folder / KEY_FILE)
        return cls(folder, key, int(n_unique))

    def chunks(self) -> list[tuple[int, int, Path]]:
        """(first, end, file) of the chunks that follow each other from text 0; later strays are dropped."""
        found: dict[int, Path] = {}
        for path in self.folder.glob("chunk-*.npy"):
            try:
                found[int(path.stem.removeprefix("chunk-"))] = path
            except ValueError:
                path.unlink(missing_ok=True)
        kept: list[tuple[int, int, Path]] = []
        start = 0
        while start in found:
            rows = _rows(found.pop(start))
            if rows is None or rows == 0 or start + rows > self.n_unique:
                break
            kept.append((start, start + rows, self.folder / f"chunk-{start:09d}.npy"))
            start += rows
        for stray in found.values():
            stray.unlink(missing_ok=True)
        return kept

    def done(self) -> int:
        """Distinct texts already embedded (the end of the last kept chunk)."""
        chunks = self.chunks()
        return chunks[-1][1] if chunks else 0

    def write_chunk(self, start: int, vectors: np.ndarray) -> None:
        """One chunk of vectors, for distinct texts ``start`` to ``start + len(vectors)``; atomic."""
        path = self.folder / f"chunk-{start:09d}.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        mirror.push(path)  # a worker that dies after this loses nothing, whichever host resumes

    def read(self) -> Iterator[tuple[int, np.ndarray]]:
        """Each chunk as (first text, vectors), in order."""
        for start, _end, path in self.chunks():
            yield start, np.load(path, allow_pickle=False)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        mirror.delete(self.folder)


def _rows(path: Path) -> int | None:
    """Rows of a chunk file from its header alone (None: not a readable .npy)."""
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError):
        return None
