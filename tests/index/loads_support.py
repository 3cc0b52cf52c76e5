"""What the load tests share: a fake model that counts its calls, and a shard folder with a registered load.

``CountingEmbedder`` embeds each text as a seeded function of its sha256 (the same vector
in any batch, on any process), so a resumed shard must equal a clean one exactly; it
records every text it was asked to embed. It can be told to wait forever on a call after
writing a marker file (``block_on_call``), which is where a test SIGKILLs the process it
runs in: synchronised on the file, not on time.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

DIM = 8


class CountingEmbedder:
    FAMILY = "counting test model"
    COST = "slow"
    BATCH_SIZE_HINT = 4

    def __init__(self, *, block_on_call: int | None = None, marker: Path | None = None, on_call=None) -> None:
        self.calls: list[list[str]] = []
        self.block_on_call = block_on_call
        self.marker = marker
        self.on_call = on_call  # called with the call number before embedding (tests pause a load here)
        self.threads: int | None = None

    @property
    def dim_(self) -> int:
        return DIM

    @property
    def fingerprint(self) -> str:
        return "sha256:" + "0" * 64

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]

    def set_threads(self, n: int) -> None:
        self.threads = n

    def transform(self, texts: list[str]) -> np.ndarray:
        number = len(self.calls) + 1
        if self.on_call is not None:
            self.on_call(number)
        if self.block_on_call is not None and number == self.block_on_call:
            assert self.marker is not None
            self.marker.write_text("waiting")
            time.sleep(600)  # the test kills this process now; the sleep only guards against a hang
        self.calls.append(list(texts))
        return np.vstack([vector_of(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return vector_of(text)


def vector_of(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def corpus(n: int, duplicates_every: int = 0) -> tuple[list[str], list[str]]:
    """``n`` ids and texts; with ``duplicates_every``, every such record repeats one of three texts."""
    ids = [f"r{i:04d}" for i in range(n)]
    texts = [f"text number {i}" if not duplicates_every or i % duplicates_every else f"repeated {i % 3}"
             for i in range(n)]
    return ids, texts


def register(location: Path, counts: list[int], seq: int = 7) -> Path:
    """A registered load at ``location`` (its ``load.json``), as a snapshot step leaves it; the shards folder."""
    from lockstep.index.load_progress import start_load

    start_load(location, model_version="3", seq=seq, counts=counts, file=f"snapshot-{seq}-{max(counts)}.parquet")
    return location / "shards"


class FakeClock:
    """A clock that moves only when told (or by ``step`` at every reading)."""

    def __init__(self, start: float = 1000.0, step: float = 0.0) -> None:
        self.t = start
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def registered_world(texts: list[str], dim: int = 8):
    """The records ``texts`` (ids ``id0000``...) in the home's store and a TF-IDF model of them registered.

    Returns (store, registry, model): what ``reembed_version`` needs for version 1.
    """
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore

    store = RecordStore()
    store.upsert_many({"id": f"id{i:04d}", "text": t} for i, t in enumerate(texts))
    registry = Registry()
    model = TextEmbedder(dim=dim, min_df=1, stop_words=None).fit(texts)
    registry.log_and_register(model, params={"dim": dim}, metrics={}, snapshot_seq=store.head())
    return store, registry, model
