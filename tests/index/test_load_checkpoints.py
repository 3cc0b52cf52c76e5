"""A shard checkpoints its vectors in chunks: a worker SIGKILLed mid-shard loses one chunk at most.

The rerun embeds only the texts after the last checkpoint, and the shard it writes is the
one a clean build writes, byte for byte. Identical texts are embedded once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lockstep.index.shard_checkpoint import ShardCheckpoint
from lockstep.index.shards import ShardPacing, build_shard_columns, merge_shards, shard_paths
from tests.index.loads_support import CountingEmbedder, corpus, register, vector_of

ROOT = Path(__file__).resolve().parents[2]
EVERY_BATCH = ShardPacing(checkpoint_s=0.0)  # a checkpoint after every batch: the test knows what was kept

CHILD = """
import sys
from pathlib import Path
from lockstep.index.shards import ShardPacing, build_shard_columns
from tests.index.loads_support import CountingEmbedder, corpus

shards_dir, marker, n, block = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ids, texts = corpus(n)
build_shard_columns(CountingEmbedder(block_on_call=block, marker=marker), ids, texts, 0, shards_dir,
                    fingerprint="sha256:" + "0" * 64, snapshot_seq=7, batch_size=4,
                    pacing=ShardPacing(checkpoint_s=0.0))
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the child writes ``path`` (the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the worker ended early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the worker never reached the blocking call")
        time.sleep(0.05)


def kill_mid_shard(shards_dir: Path, marker: Path, n: int, block: int, env: dict[str, str] | None = None) -> None:
    """Run CHILD on ``shards_dir`` until its ``block``-th model call, then SIGKILL it (a worker that dies)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(shards_dir), str(marker), str(n), str(block)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(marker, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _build(shards_dir: Path, embedder: CountingEmbedder, n: int, **kw):
    ids, texts = corpus(n, **kw)
    return build_shard_columns(embedder, ids, texts, 0, shards_dir, fingerprint="sha256:" + "0" * 64,
                               snapshot_seq=7, batch_size=4, pacing=EVERY_BATCH)


def test_a_worker_killed_mid_shard_is_redone_from_its_checkpoint(tmp_path):
    n, block = 40, 4  # 10 batches of 4; the 4th call blocks: 3 chunks (12 texts) are checkpointed
    shards_dir = register(tmp_path / "v3", [n])
    kill_mid_shard(shards_dir, tmp_path / "marker", n, block)
    vec_path, meta_path = shard_paths(shards_dir, 0)
    assert not vec_path.exists() and not meta_path.exists()  # the shard was not finished
    status = _shard_state(tmp_path / "v3")
    assert status["state"] == "running" and status["done"] == 12  # what the dead worker last said

    rerun = CountingEmbedder()
    result = _build(shards_dir, rerun, n)
    _, texts = corpus(n)
    assert rerun.texts == texts[12:]  # only what came after the last checkpoint
    assert not result.skipped and not vec_path.with_suffix(".parts").exists()

    clean_dir = register(tmp_path / "clean", [n])
    _build(clean_dir, CountingEmbedder(), n)
    assert vec_path.read_bytes() == shard_paths(clean_dir, 0)[0].read_bytes()
    resumed, clean = merge_shards([vec_path]), merge_shards([shard_paths(clean_dir, 0)[0]])
    assert resumed.ids == clean.ids
    np.testing.assert_array_equal(resumed.vectors_of(resumed.ids), clean.vectors_of(clean.ids))
    assert _shard_state(tmp_path / "v3")["state"] == "done"


def _shard_state(location: Path) -> dict:
    from lockstep.index.load_progress import load_status

    return load_status(location)["shards"][0]


def test_a_checkpoint_of_other_work_is_thrown_away(tmp_path):
    shards_dir = tmp_path / "shards"
    vec_path, _ = shard_paths(shards_dir, 0)
    stale = ShardCheckpoint.open(vec_path, "another model's key", 12)
    stale.write_chunk(0, np.ones((4, 8), np.float32))
    counting = CountingEmbedder()
    _build(shards_dir, counting, 12)
    assert len(counting.texts) == 12  # nothing reused from the other key
    vectors = np.load(vec_path)
    np.testing.assert_array_equal(vectors[0], vector_of("text number 0"))


def test_a_finished_shard_is_reused_without_a_model_call(tmp_path):
    shards_dir = tmp_path / "shards"
    _build(shards_dir, CountingEmbedder(), 10)
    again = CountingEmbedder()
    assert _build(shards_dir, again, 10).skipped and again.calls == []


@pytest.mark.parametrize("batch", [1, 4, 64])
def test_identical_texts_in_a_shard_are_embedded_once(tmp_path, batch):
    ids, texts = corpus(60, duplicates_every=4)  # 15 records share 3 texts
    counting = CountingEmbedder()
    result = build_shard_columns(counting, ids, texts, 0, tmp_path / "shards", fingerprint="sha256:" + "0" * 64,
                                 snapshot_seq=7, batch_size=batch, pacing=EVERY_BATCH)
    assert sorted(counting.texts) == sorted(set(texts)) and len(counting.texts) == 48  # 45 distinct + 3 repeated
    vectors = np.load(result.path)
    for row, text in enumerate(texts):  # every record has its own text's vector
        np.testing.assert_array_equal(vectors[row], vector_of(text))
