"""The recommender system from the command line, on the real MovieLens-100k, as a user runs it.

``interactions load --demo``, ``train --system recommender``, ``index build --system
recommender``, ``routing show|set --system recommender``: a recommender deployment of
its own beside the search system's (its own database, routing table and registered model).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lockstep.cli import app

pytestmark = pytest.mark.timeout(600, method="thread")


def _ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.stdout


def test_train_build_and_route_the_recommender_from_the_cli(lockstep_home, monkeypatch):
    from tests.conftest import DEMO_CACHE

    monkeypatch.setenv("LOCKSTEP_SYSTEM", "search")  # recorded, so undone after the test: --system sets it
    monkeypatch.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as `lockstep` sets it (main)
    runner = CliRunner()
    loaded = _ok(runner, "interactions", "load", "--demo")
    assert "100,000 interactions of 943 users on 1,682 items" in loaded

    first = _ok(runner, "train", "--system", "recommender", "--factors", "16", "--iterations", "5")
    assert "registered lockstep-recommender v1 (challenger)" in first and "first version" in first
    built = json.loads(_ok(runner, "index", "build", "--system", "recommender", "--model-version", "1"))
    assert built["users"] == 943 and built["items"] == 1682 and built["dim"] == 16

    second = _ok(runner, "train", "--system", "recommender", "--factors", "32", "--iterations", "8")
    assert "registered lockstep-recommender v2" in second and "vs champion v1" in second
    from lockstep.recommender.registration import recommender_registry

    figures = recommender_registry().get_version("2").eval_figures
    assert figures["delta_ndcg_at_10_ci_low"] <= figures["delta_ndcg_at_10"] <= figures["delta_ndcg_at_10_ci_high"]
    assert 0 < figures["ndcg_at_10"] < 1 and figures["ndcg_at_10"] > figures["popularity_ndcg_at_10"]

    _ok(runner, "index", "build", "--system", "recommender", "--model-version", "2", "--no-promote")
    _ok(runner, "routing", "set", "--system", "recommender", "1=50", "2=50")
    shown = _ok(runner, "routing", "show", "--system", "recommender")
    rows = {line.split()[0]: line.split() for line in shown.splitlines()[2:] if line.strip()}
    assert rows["1"][1:3] == ["live", "50"] and rows["2"][1:3] == ["live", "50"]
    assert rows["2"][3] == "models:/lockstep-recommender/2"

    from lockstep.store.routing import read_table

    assert read_table().weights == {"1": 50, "2": 50}  # this process now points at the recommender
    monkeypatch.setenv("LOCKSTEP_SYSTEM", "search")
    assert read_table().weights == {}  # the search system's routing table is another one


def test_a_wrong_system_is_a_usage_error(lockstep_home, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_SYSTEM", "search")  # recorded, so undone after the test
    result = CliRunner().invoke(app, ["routing", "show", "--system", "books"])
    assert result.exit_code == 2 and "'books' is not a system" in result.output


def test_training_without_interactions_says_what_to_do(lockstep_home, monkeypatch):
    from lockstep.core.errors import LockstepError

    monkeypatch.setenv("LOCKSTEP_SYSTEM", "search")  # recorded, so undone after the test
    result = CliRunner().invoke(app, ["train", "--system", "recommender"])
    assert result.exit_code == 1 and isinstance(result.exception, LockstepError)
    assert "lockstep interactions load --demo" in str(result.exception)
