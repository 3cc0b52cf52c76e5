"""A load's progress per batch, its status (records done, rate, ETA, shards) and pause/resume.

Deterministic: fake clocks, and the pause is set and lifted from inside the model's calls
and the shard's poll (no timing).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lockstep.core.errors import LockstepError
from lockstep.index.load_progress import (
    ShardProgress,
    is_paused,
    load_status,
    pause,
    progress_listener,
    resume,
    start_load,
)
from lockstep.index.shards import LoadPaused, ShardPacing, build_shard_columns
from tests.index.loads_support import CountingEmbedder, FakeClock, corpus, register, vector_of

FP = "sha256:" + "0" * 64


def _shard(location, shards_dir, embedder, n=20, *, pacing=None, progress=None, shard=0):
    ids, texts = corpus(n)
    return build_shard_columns(embedder, ids, texts, shard, shards_dir, fingerprint=FP, snapshot_seq=7,
                               batch_size=4, pacing=pacing or ShardPacing(checkpoint_s=0.0), progress=progress)


def _file(location, shard=0):
    return json.loads((location / "load" / f"shard-{shard:05d}.json").read_text())


def test_the_shard_file_moves_every_batch_and_names_its_worker(tmp_path):
    location = tmp_path / "v3"
    shards_dir = register(location, [20])
    seen = []
    embedder = CountingEmbedder(on_call=lambda n: seen.append(_file(location)["done"]))
    tracker = ShardProgress(location, 0, 20, every=0.0)
    _shard(location, shards_dir, embedder, pacing=ShardPacing(checkpoint_s=1e9), progress=tracker)
    assert seen == [0, 4, 8, 12, 16]  # before each of the 5 model calls: the batches before it
    done = _file(location)
    assert done["state"] == "done" and done["done"] == 20 and done["pid"] > 0 and done["host"]


def test_status_adds_up_the_shards_with_rate_and_eta(tmp_path):
    location = tmp_path / "v3"
    register(location, [100, 100, 50])
    clock = FakeClock(start=1000.0)
    a = ShardProgress(location, 0, 100, now=clock, every=0.0)
    b = ShardProgress(location, 1, 100, now=clock, every=0.0)
    a.start(done=0, unique=100, checkpointed=0)
    b.start(done=40, unique=100, checkpointed=40)  # resumed: 40 were in its checkpoint
    clock.t = 1010.0
    a.advance(done=60, embedded=60)
    b.advance(done=80, embedded=80)
    status = load_status(location, now=clock)
    assert status["done"] == 140 and status["records"] == 250 and status["percent"] == 56.0
    assert status["rate_per_s"] == 10.0  # (60 + 40 done in these attempts) / 10 s
    assert status["eta_s"] == 11.0  # 110 left at 10/s
    assert status["shard_states"] == {"pending": 1, "running": 2, "paused": 0, "done": 0, "failed": 0}
    assert [s["state"] for s in status["shards"]] == ["running", "running", "pending"]
    a.set_state("failed", error="boom")
    assert load_status(location, now=clock)["state"] == "failed"


def test_a_paused_shard_waits_at_a_checkpoint_and_goes_on_when_resumed(tmp_path):
    location = tmp_path / "v3"
    shards_dir = register(location, [20])
    embedder = CountingEmbedder(on_call=lambda n: n == 3 and pause(location))  # paused while batch 3 embeds
    polls = []

    def sleep(seconds):  # the shard's poll: look at what it left, then lift the pause
        state = _file(location)
        chunks = sorted(p.name for p in (shards_dir / "shard-00000.parts").glob("chunk-*.npy"))
        polls.append((seconds, state["state"], state["done"], chunks))
        assert resume(location)

    result = _shard(location, shards_dir, embedder, pacing=ShardPacing(checkpoint_s=1e9, poll_s=5.0, sleep=sleep))
    assert polls == [(5.0, "paused", 12, ["chunk-000000000.npy"])]  # 3 batches kept in one checkpoint
    assert len(embedder.calls) == 5 and not is_paused(location)  # nothing embedded twice
    ids, texts = corpus(20)
    np.testing.assert_array_equal(np.load(result.path), np.vstack([vector_of(t) for t in texts]))
    assert _file(location)["state"] == "done"


def test_a_pause_longer_than_allowed_ends_the_shard_and_the_rerun_does_the_rest(tmp_path):
    location = tmp_path / "v3"
    shards_dir = register(location, [20])
    embedder = CountingEmbedder(on_call=lambda n: n == 2 and pause(location))
    clock = FakeClock(step=1.0)
    with pytest.raises(LoadPaused, match="shard 0 is paused at its checkpoint"):
        _shard(location, shards_dir, embedder,
               pacing=ShardPacing(checkpoint_s=1e9, pause_timeout_s=3.0, monotonic=clock, sleep=lambda s: None))
    assert load_status(location)["state"] == "paused" and _file(location)["state"] == "paused"
    resume(location)
    rerun = CountingEmbedder()
    _shard(location, shards_dir, rerun)
    assert rerun.texts == corpus(20)[1][8:]  # 2 batches were kept at the pause


def test_an_in_process_build_tells_the_progress_bar_every_batch(tmp_path):
    location = tmp_path / "v3"
    shards_dir = register(location, [20, 20])
    told = []
    with progress_listener(told.append):
        _shard(location, shards_dir, CountingEmbedder(), shard=0)
        _shard(location, shards_dir, CountingEmbedder(), shard=0)  # reused: no model call, its records at once
    assert told == [4, 4, 4, 4, 4, 20]
    _shard(location, shards_dir, CountingEmbedder(), shard=1)
    assert told == [4, 4, 4, 4, 4, 20]  # outside the listener: the bar is not told


def test_a_retried_snapshot_keeps_the_load_and_a_new_one_starts_over(tmp_path):
    location = tmp_path / "v3"
    shards_dir = register(location, [20])
    _shard(location, shards_dir, CountingEmbedder())
    register(location, [20])  # the same snapshot again (a retried task)
    assert load_status(location)["done"] == 20
    start_load(location, model_version="3", seq=8, counts=[20, 5], file="snapshot-8-20.parquet")
    status = load_status(location)
    assert status["done"] == 0 and status["records"] == 25 and status["snapshot_seq"] == 8


def test_pause_needs_a_load_and_is_idempotent(tmp_path):
    with pytest.raises(LockstepError, match="no load to pause"):
        pause(tmp_path / "v9")
    register(tmp_path / "v3", [5])
    assert pause(tmp_path / "v3") and not pause(tmp_path / "v3")
    assert load_status(tmp_path / "v3")["eta_s"] is None
    assert resume(tmp_path / "v3") and not resume(tmp_path / "v3")


def test_a_shard_outside_a_registered_load_writes_no_progress(tmp_path):
    shards_dir = tmp_path / "bare" / "shards"
    _shard(tmp_path / "bare", shards_dir, CountingEmbedder())
    assert not (tmp_path / "bare" / "load").exists() and load_status(tmp_path / "bare") is None
