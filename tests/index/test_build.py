"""How many processes `lockstep index build` embeds with (``index.build.default_workers``)."""

from __future__ import annotations

import os

import pytest

from lockstep.core.errors import LockstepError
from lockstep.index.build import PARALLEL_MIN_RECORDS, WORKERS_ENV, default_workers

BIG = PARALLEL_MIN_RECORDS * 20


def test_every_core_by_default_but_never_more_processes_than_shards(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_workers(BIG, 16) == 8
    assert default_workers(BIG, 3) == 3


def test_the_variable_wins_and_one_means_in_process(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert default_workers(BIG, 16) == 2
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert default_workers(BIG, 16) == 1
    monkeypatch.setenv(WORKERS_ENV, " ")
    assert default_workers(BIG, 16) == 8  # blank is unset


@pytest.mark.parametrize(("records", "shards"), [(PARALLEL_MIN_RECORDS - 1, 16), (BIG, 1)])
def test_small_builds_stay_in_one_process(monkeypatch, records, shards):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_workers(records, shards) == 1


def test_a_bad_value_names_the_variable(monkeypatch):
    for bad in ("two", "0", "-3"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(LockstepError, match=f"{WORKERS_ENV}='{bad}' must be a whole number of processes, at least 1"):
            default_workers(BIG, 16)


def test_embedding_processes_default_to_the_core_count(monkeypatch):
    from lockstep.core.config import embedding_processes

    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert embedding_processes({}) == 6
    assert embedding_processes({WORKERS_ENV: " 2 "}) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert embedding_processes({}) == 1
