"""``reembed_version`` (``lockstep index build``) reports per batch and leaves the load's state behind.

One process and two worker processes: the progress callback adds up to the records, the
status file shows every shard done with its worker's pid, and the index is complete.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.index.loads_support import registered_world

RECORDS = 400


@pytest.fixture
def world(lockstep_home):
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(150)]
    texts = [" ".join(rng.choice(words, 10)) for _ in range(RECORDS - 40)] + ["the same text"] * 40
    store, registry, _ = registered_world(texts)
    return store, registry


@pytest.mark.parametrize("workers", [1, 2])
def test_a_build_reports_every_batch_and_leaves_its_status(world, monkeypatch, workers):
    import os

    from lockstep.core.config.embedding import EMBED_BATCH_ENV
    from lockstep.index.build import reembed_version
    from lockstep.index.load_progress import version_load_status

    store, registry = world
    monkeypatch.setenv(EMBED_BATCH_ENV, "50")
    told: list[int] = []
    outcome = reembed_version(store, registry, 1, shard_size=100, workers=workers, progress=told.append)
    assert sum(told) == RECORDS and outcome["records"] == RECORDS and outcome["workers"] == workers
    if workers == 1:
        assert told == [50] * 8  # one step per batch of 50, not per shard
    status = version_load_status(1)
    assert status["state"] == "done" and status["done"] == RECORDS and status["eta_s"] == 0.0
    assert status["shard_states"]["done"] == 4
    pids = {s["pid"] for s in status["shards"]}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)
