"""Embed batch and threads are settings; worker processes x threads never exceed the cores."""

from __future__ import annotations

import os

import pytest

from lockstep.core.config.embedding import EMBED_BATCH_ENV, EMBED_THREADS_ENV, reembed_workers_asked
from lockstep.core.errors import ConfigurationError
from lockstep.index import embed_settings
from lockstep.index.build import PARALLEL_MIN_RECORDS, WORKERS_ENV, default_workers
from lockstep.index.embed_settings import (
    apply_threads,
    batch_size_for,
    slow_workers,
    threads_per_worker,
)
from lockstep.model.contract import embed_cost
from tests.index.loads_support import CountingEmbedder

BIG = PARALLEL_MIN_RECORDS * 20


class Fast:
    COST = "fast"
    BATCH_SIZE_HINT = 50_000


class Silent:  # names no cost: treated as slow (an imported model)
    pass


def test_the_batch_is_the_setting_else_the_models_hint():
    assert batch_size_for(CountingEmbedder(), {}) == 4
    assert batch_size_for(Fast(), {EMBED_BATCH_ENV: "0"}) == 50_000
    assert batch_size_for(Fast(), {EMBED_BATCH_ENV: "128"}) == 128
    assert batch_size_for(Silent(), {}) == 256  # the contract's default hint
    with pytest.raises(ConfigurationError, match=EMBED_BATCH_ENV):
        batch_size_for(Fast(), {EMBED_BATCH_ENV: "lots"})


def test_costs_follow_the_contract():
    from lockstep.model.embedding import TextEmbedder

    assert embed_cost(TextEmbedder()) == "fast" and embed_cost(Silent()) == "slow" and embed_cost(Fast()) == "fast"


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("workers_env", [None, "1", "2", "5", "32"])
@pytest.mark.parametrize("threads_env", ["0", "1", "3", "64"])
def test_processes_times_threads_never_exceed_the_cores(monkeypatch, cores, workers_env, threads_env):
    monkeypatch.setattr(embed_settings, "usable_cores", lambda: cores)
    env = {EMBED_THREADS_ENV: threads_env, **({WORKERS_ENV: workers_env} if workers_env else {})}
    workers = slow_workers(reembed_workers_asked(env), n_shards=16, env=env, cores=cores)
    threads = threads_per_worker(workers, env, cores=cores)
    assert workers >= 1 and threads >= 1 and workers * threads <= cores


def test_a_slow_model_gets_one_process_with_every_core(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.delenv(EMBED_THREADS_ENV, raising=False)
    monkeypatch.setattr(embed_settings, "usable_cores", lambda: 8)
    assert default_workers(BIG, 16, cost="slow") == 1
    assert threads_per_worker(1, {}, cores=8) == 8
    monkeypatch.setenv(WORKERS_ENV, "2")  # told otherwise: two processes of 4 threads
    assert default_workers(BIG, 16, cost="slow") == 2 and threads_per_worker(2, {}, cores=8) == 4
    monkeypatch.delenv(WORKERS_ENV)
    monkeypatch.setenv(EMBED_THREADS_ENV, "2")  # two threads each: as many processes as fit
    assert default_workers(BIG, 16, cost="slow") == 4


def test_a_fast_model_keeps_a_process_per_core(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_workers(BIG, 16) == default_workers(BIG, 16, cost="fast") == 8
    assert threads_per_worker(8, {}, cores=8) == 1


def test_threads_reach_a_model_that_takes_them():
    model = CountingEmbedder()
    apply_threads(model, 3)
    apply_threads(Fast(), 3)  # no set_threads: nothing to do
    assert model.threads == 3


def test_a_bad_thread_count_names_the_variable():
    with pytest.raises(ConfigurationError, match=EMBED_THREADS_ENV):
        threads_per_worker(1, {EMBED_THREADS_ENV: "-1"})
