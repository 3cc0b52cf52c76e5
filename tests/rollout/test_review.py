"""The rollout review (``lockstep.rollout.review``): the drift context read through the
registry from a real MLflow store, and the page a reviewer sees."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest

from lockstep.core.config import DRIFT_EXPERIMENT
from lockstep.model.registry import Registry
from lockstep.rollout.review import drift_context, review_markdown


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow store (SQLite) with no drift experiment yet."""
    folder = tmp_path_factory.mktemp("review-mlflow")
    return Registry(f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "art")


def _drift_run(client: mlflow.MlflowClient, experiment_id: str, start_ms: int, status: str) -> str:
    run = client.create_run(experiment_id, start_time=start_ms, tags={
        "lockstep.drift_status": status, "lockstep.drifted": str(status == "drift").lower(),
        "lockstep.champion_version": "3", "mlflow.note.content": f"check at {start_ms}",
    })
    client.set_terminated(run.info.run_id, end_time=start_ms + 1)
    return run.info.run_id


def test_drift_context_reads_the_newest_drift_check_through_the_registry(store):
    assert drift_context(store) == {}  # no drift check has ever run
    client = mlflow.MlflowClient(tracking_uri=store.tracking_uri)
    experiment_id = client.create_experiment(DRIFT_EXPERIMENT, artifact_location=(store.artifact_root / "d").as_uri())
    assert drift_context(store) == {}  # the experiment exists, without runs

    _drift_run(client, experiment_id, 1_000_000, "ok")
    newest = _drift_run(client, experiment_id, 3_000_000, "drift")
    _drift_run(client, experiment_id, 2_000_000, "ok")  # logged later, but an older check

    assert drift_context(store) == {
        "run_id": newest, "status": "drift", "drifted": "true", "champion_version": "3",
        "summary": "check at 3000000",
    }


def test_drift_context_of_an_unreadable_store_is_an_error_not_a_failed_review(tmp_path):
    broken = tmp_path / "not-a-database.db"
    broken.write_text("this is not SQLite")
    context = drift_context(Registry(f"sqlite:///{broken}", artifact_root=tmp_path / "art"))
    assert set(context) == {"error"} and context["error"]


def test_review_markdown_shows_both_versions_and_the_drift():
    candidate = SimpleNamespace(version="5", eval_figures={"ndcg_at_10": 0.41234, "recall_at_10": 0.7})
    champion = SimpleNamespace(version="4", eval_figures={"ndcg_at_10": 0.4})
    page = review_markdown(candidate, champion, {"status": "drift", "drifted": "true", "summary": "vocabulary moved"})
    assert "## Roll out v5 (champion: v4)" in page
    assert "| ndcg_at_10 | 0.4123 | 0.4 |" in page
    assert "| recall_at_10 | 0.7 | - |" in page
    assert "latest drift check: drift (drifted: true) vocabulary moved" in page
    assert "no drift check has run yet" in review_markdown(candidate, champion, {})
