"""``lockstep index plan``'s numbers come from a timed sample; the load commands on the command line.

The rate is measured on a fake model of known cost under a fake clock (no wall-clock
timing); the commands run through typer's CliRunner on a fresh Lockstep home.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lockstep.cli import app
from lockstep.core.errors import LockstepError
from lockstep.index.load_estimate import WARMUP, estimate_load, measure_rate
from lockstep.index.vector_index import choose_spec
from tests.index.loads_support import DIM, CountingEmbedder, FakeClock, register


class TimedModel(CountingEmbedder):
    """Embeds ``rate`` texts per second of the fake clock, plus a slow first call (the warm-up)."""

    def __init__(self, clock: FakeClock, rate: float, first_call_s: float = 30.0) -> None:
        super().__init__()
        self.clock, self.rate, self.first_call_s = clock, rate, first_call_s

    def transform(self, texts):
        self.clock.t += (self.first_call_s if not self.calls else 0.0) + len(texts) / self.rate
        return super().transform(texts)


def test_the_rate_is_measured_on_the_sample_without_the_warm_up():
    clock = FakeClock()
    model = TimedModel(clock, rate=20.0)
    texts = [f"t{i}" for i in range(WARMUP + 64)]
    assert measure_rate(model, texts, batch_size=16, monotonic=clock) == pytest.approx(20.0)
    assert [len(c) for c in model.calls] == [WARMUP, 16, 16, 16, 16]


def test_the_projection_scales_with_the_cores_the_workers_use():
    clock = FakeClock()
    model = TimedModel(clock, rate=20.0)  # slow (COST): measured with every core as its threads
    est = estimate_load(model, [f"t{i}" for i in range(WARMUP + 40)], 1_000_000, workers=[1, 2, 4],
                        cores=2, monotonic=clock)
    assert model.threads == 2 and est["measured"] == {"texts_per_second": 20.0, "threads": 2}
    by_workers = {row["workers"]: row for row in est["workers"]}
    assert by_workers[1]["seconds"] == 50_000.0  # 1M at 20/s: ~13.9 h, the figure
    assert by_workers[2]["threads_per_worker"] == 1 and by_workers[2]["seconds"] == 50_000.0
    assert by_workers[4]["cores_used"] == 2  # never more than the cores
    assert est["index_type"] == "hnsw" and est["dim"] == DIM and est["sample_texts"] == 40
    m = choose_spec(1_000_000, DIM).hnsw_m  # the frontier's choice (lockstep.index.frontier)
    assert est["index_bytes"] == 1_000_000 * (DIM * 4 + m * 2 * 4 + 16 + 12)
    assert est["peak_memory_bytes"] >= est["index_bytes"] + est["shard_size"] * DIM * 4


def test_a_fast_model_projects_one_core_per_worker():
    clock = FakeClock()
    model = TimedModel(clock, rate=36_000.0)
    model.COST = "fast"
    est = estimate_load(model, [f"t{i}" for i in range(WARMUP + 100)], 10_000, workers=[1, 2], cores=2, monotonic=clock)
    assert [row["texts_per_second"] for row in est["workers"]] == [36_000.0, 72_000.0]
    assert est["index_type"] == "flat" and est["shards"] == 2


def test_bad_inputs_are_named():
    with pytest.raises(LockstepError, match="record count"):
        estimate_load(CountingEmbedder(), ["a"], -1)
    with pytest.raises(LockstepError, match="worker counts"):
        estimate_load(CountingEmbedder(), ["a"], 10, workers=[0])
    with pytest.raises(LockstepError, match="no texts"):
        measure_rate(CountingEmbedder(), [], batch_size=4)


# --- the commands ----------------------------------------------------------------------------------


@pytest.fixture
def home(lockstep_home):
    from lockstep.core.config import settings
    from lockstep.index.storage import index_location

    return index_location(settings().model_name, 3)


def test_status_pause_and_resume_on_the_command_line(home):
    from lockstep.index.load_progress import ShardProgress

    runner = CliRunner()
    register(home, [10, 10])
    ShardProgress(home, 0, 10, every=0.0).set_state("done")
    result = runner.invoke(app, ["index", "status", "--json"])  # the latest load: v3
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["model_version"] == "3" and status["done"] == 10 and status["shard_states"]["done"] == 1
    assert runner.invoke(app, ["index", "pause", "--model-version", "3"]).stdout.strip() == (
        "v3: paused: each shard stops at its next checkpoint")
    lines = runner.invoke(app, ["index", "status", "--model-version", "3"]).stdout
    assert "v3: paused, 10/20 records (50.0 %)" in lines and "lockstep index resume" in lines
    assert "shard 0: done 10/10 on" in lines
    assert runner.invoke(app, ["index", "resume", "--model-version", "3"]).stdout.strip() == "v3: resumed"
    bad = runner.invoke(app, ["index", "pause", "--model-version", "../3"])
    assert bad.exit_code == 2 and "not a positive integer" in bad.output


def test_status_without_a_load_says_so(home):
    result = CliRunner().invoke(app, ["index", "status", "--model-version", "4"])
    assert result.exit_code == 1 and "v4 has no load" in str(result.exception)


def test_plan_times_a_registered_version(home):
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(200)]
    store = RecordStore()
    store.upsert_many({"id": f"id{i:04d}", "text": " ".join(rng.choice(words, 12))} for i in range(300))
    model = TextEmbedder(dim=8, min_df=1, stop_words=None).fit([r.text for r in store.snapshot().records])
    version = Registry().log_and_register(model, params={"dim": 8}, metrics={}, snapshot_seq=store.head())
    number = str(getattr(version, "version", version))
    runner = CliRunner()
    result = runner.invoke(app, ["index", "plan", "--model-version", number, "--records", "1000000",
                                 "--workers", "1,2", "--sample", "64", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    est = json.loads(result.stdout)
    assert est["records"] == 1_000_000 and est["cost"] == "fast" and est["sample_texts"] == 64
    assert [row["workers"] for row in est["workers"]] == [1, 2] and est["measured"]["texts_per_second"] > 0
    text = runner.invoke(app, ["index", "plan", "--model-version", number, "--workers", "1"]).stdout
    assert "texts/s measured on" in text and "300 records in 1 shards" in text and "peak memory" in text
    bad = runner.invoke(app, ["index", "plan", "--model-version", number, "--workers", "1,x"])
    assert bad.exit_code == 2 and "--workers" in bad.output
