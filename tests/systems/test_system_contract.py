"""The contract every system keeps (``lockstep.systems.System``), checked over both systems.

In the manner of scikit-learn's ``check_estimator``: one parametrised set of checks that a
new system must pass before the DAGs, the CLI and the serving app can call it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lockstep import systems
from lockstep.core.config import SYSTEMS, Settings
from lockstep.core.errors import ConfigurationError
from lockstep.serving.bodies import MODEL_VERSION_HEADER
from lockstep.serving.parts import ServingParts
from lockstep.store.batch_results import RECOMMENDATIONS, RELATED
from lockstep.store.db import get_engine

DAGS = Path(__file__).resolve().parents[2] / "dags"
EVERY = [systems.by_name(name) for name in SYSTEMS]
# What each system's serving answers on: its request route and its batch read.
ROUTES = {"search": ("/search", "/related/{record_id}"), "recommender": ("/recommend", "/recommendations/{user_id}")}


def _task_ids(dag_file: str) -> set[str]:
    tree = ast.parse((DAGS / dag_file).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


@pytest.fixture(params=EVERY, ids=lambda s: s.name)
def system(request):
    return request.param


def test_every_configured_name_is_a_system_and_nothing_else_is():
    assert [s.name for s in EVERY] == list(SYSTEMS)
    with pytest.raises(ConfigurationError, match="'books' is not a system; use one of: search, recommender"):
        systems.by_name("books")


def test_the_system_keeps_the_protocol(system):
    assert isinstance(system, systems.System)
    assert systems.by_name(system.name) is system


def test_current_follows_the_deployment_setting(system, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_SYSTEM", system.name)
    assert systems.current() is system
    assert systems.current(Settings.from_env({"LOCKSTEP_SYSTEM": system.name})) is system


def test_the_dags_start_on_tasks_that_exist(system):
    assert system.retrain_start in _task_ids("lockstep_retrain.py")
    assert system.reembed_start in _task_ids("lockstep_reembed.py")


def test_the_systems_start_the_dags_on_different_tasks():
    assert len({s.retrain_start for s in EVERY}) == len(EVERY)
    assert len({s.reembed_start for s in EVERY}) == len(EVERY)


def test_the_serving_app_answers_on_the_systems_routes(system):
    from lockstep.serving.app import create_app

    parts = system.serving_parts()
    assert isinstance(parts, ServingParts)
    assert parts.batch_kind in (RELATED, RECOMMENDATIONS)
    paths = create_app(engine="sqlite://", api_token=None, parts=parts).openapi()["paths"]
    own, batch = ROUTES[system.name]
    others = {route for name, pair in ROUTES.items() if name != system.name for route in pair}
    assert own in paths and batch in paths, sorted(paths)
    assert not others & set(paths), sorted(others & set(paths))
    assert {"/feedback", "/routing", "/healthz", "/readyz"} <= set(paths)


class _Answer:
    def __init__(self, version: str) -> None:
        self.status_code = 200
        self.headers = {MODEL_VERSION_HEADER: version}
        self._body = {"model_version": version}

    def json(self):
        return self._body


class _Client:
    """Records what the probe asked; answers as version 7."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict]] = []

    def post(self, url: str, json: dict):
        self.asked.append((url, json))
        return _Answer("7")


def test_the_verify_probe_asks_the_systems_route_and_reads_the_version(system):
    client = _Client()
    assert system.verify_probe()(client, "http://replica", 0) == "7"
    ((url, body),) = client.asked
    assert url == "http://replica" + ROUTES[system.name][0]
    assert body["user_id"] == "lockstep-verify-0"  # a probe user is routed like any other


def test_the_input_head_of_an_empty_deployment_is_zero(system, lockstep_home, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_SYSTEM", system.name)
    Settings.from_env().ensure_home()
    engine = get_engine(Settings.from_env().database_url)
    assert system.input_head(engine) == 0


def test_the_demo_story_runs_a_whole_lifecycle(system):
    story = system.demo_story()
    assert callable(getattr(story, "run_demo", None)), story


def test_a_system_without_an_index_has_nothing_to_checkpoint():
    assert systems.by_name("recommender").checkpoint_indexes() == []
    assert systems.by_name("recommender").has_early_verdict is False
    assert systems.by_name("search").has_early_verdict is True
