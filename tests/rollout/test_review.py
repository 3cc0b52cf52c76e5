"""The rollout review (``lockstep.rollout.review``): the drift context read through the
registry from a real MLflow store, the page a reviewer sees, and who decided (the Airflow
form's user or the MLflow reviewer tag), on the version and in the rollout's review step."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest

from lockstep.core.config import DRIFT_EXPERIMENT
from lockstep.core.errors import RegistryError
from lockstep.model.registry import Registry, Review, reviewer_name
from lockstep.rollout.config import RolloutConfig
from lockstep.rollout.plan import RolloutPlan
from lockstep.rollout.review import (
    check_review,
    drift_context,
    read_review,
    record_decision,
    review_markdown,
    reviewer_figures,
)


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


# --- who decided (issue 21): the reviewer on the version and in the rollout record -------------


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    """A real SQLite MLflow store with one registered version (nothing reviewed yet)."""
    from lockstep.model.embedding import TextEmbedder
    from tests.model.test_registry import synthetic_texts

    folder = tmp_path_factory.mktemp("review-who")
    registry = Registry(f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "art")
    embedder = TextEmbedder(dim=8, min_df=1).fit(synthetic_texts())
    version = registry.log_and_register(embedder, params={}, metrics={"ndcg_at_10": 0.4}, snapshot_seq=0).version
    plan = RolloutPlan(rollout_id="r-review", model_version=version, baseline_version="0", config=RolloutConfig())
    return registry, plan.to_dict()


def _undecided(registry: Registry, version: str) -> None:
    registry.set_tags(version, {"lockstep.review": "", "lockstep.review.by": ""})


def test_the_review_form_result_names_who_answered():
    from datetime import UTC, datetime

    from lockstep.rollout.operator import form_review

    answered = {"chosen_options": ["Approve"], "params_input": {}, "responded_at": datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
                "responded_by_user": {"id": "7", "name": "alice"}}
    assert form_review(answered) == Review("approved", "alice", "2026-03-01T09:30:00+00:00", "airflow")
    expired = {"chosen_options": ["Reject"], "responded_at": "2026-03-02T00:00:00+00:00", "responded_by_user": None}
    assert form_review(expired) == Review("rejected", None, "2026-03-02T00:00:00+00:00", "airflow")
    assert form_review({"chosen_options": ["Reject"], "responded_by_user": {"id": "42", "name": ""}}).by == "42"
    assert form_review(None) is None and form_review({"chosen_options": []}) is None  # the form is still open


def test_an_mlflow_approval_counts_only_with_its_reviewer(reviewed):
    registry, plan = reviewed
    version = plan["model_version"]
    _undecided(registry, version)
    registry.set_tags(version, {"lockstep.review": "approved"})  # a tag with nobody named
    assert registry.review(version) == Review("approved", None, None, "mlflow")
    assert read_review(plan, registry=registry) is None and check_review(plan, registry=registry) is None

    registry.set_review(version, "approve", by="carol")
    answer = read_review(plan, registry=registry)
    assert (answer.decision, answer.by, answer.via) == ("approved", "carol", "mlflow") and answer.at
    tags = registry.get_version(version).tags
    assert tags["lockstep.review.by"] == "carol" and tags["lockstep.review.at"] == answer.at
    assert reviewer_figures(answer) == {"decision": "approved", "reviewer": "carol", "reviewed_at": answer.at,
                                        "review_via": "mlflow"}


def test_a_rejection_wins_whoever_gave_it_and_an_unnamed_form_approval_is_refused(reviewed):
    registry, plan = reviewed
    version = plan["model_version"]
    _undecided(registry, version)
    alice = Review("approved", "alice", "2026-03-01T09:30:00+00:00", "airflow")
    assert read_review(plan, registry=registry, external=lambda: alice) == alice
    assert read_review(plan, registry=registry, external=lambda: "approved") is None  # names nobody
    expired = Review("rejected", None, None, "airflow")
    assert read_review(plan, registry=registry, external=lambda: expired) == expired
    registry.set_review(version, "rejected", by="dave")
    assert read_review(plan, registry=registry, external=lambda: alice).by == "dave"
    with pytest.raises(ValueError, match="'maybe'"):
        read_review(plan, registry=registry, external=lambda: "maybe")


def test_the_form_decision_is_written_on_the_version(reviewed):
    registry, plan = reviewed
    version = plan["model_version"]
    _undecided(registry, version)
    record_decision(plan, Review("approved", "alice", "2026-03-01T09:30:00+00:00", "airflow"), registry=registry)
    tags = registry.get_version(version).tags
    assert {k: tags[k] for k in ("lockstep.review", "lockstep.review.by", "lockstep.review.at", "lockstep.review.via")} == {
        "lockstep.review": "approved", "lockstep.review.by": "alice",
        "lockstep.review.at": "2026-03-01T09:30:00+00:00", "lockstep.review.via": "airflow",
    }
    _undecided(registry, version)
    record_decision(plan, Review("rejected", None, None, "airflow"), registry=registry)  # expired: nothing to name
    assert registry.review(version) is None


def test_the_reviewer_name_comes_from_the_mlflow_login_and_is_checked(monkeypatch, reviewed):
    registry, plan = reviewed
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "erin")
    assert reviewer_name() == "erin" and reviewer_name(" frank ") == "frank"
    for bad in ("", "   ", "two\nlines", "x" * 201):
        with pytest.raises(RegistryError, match="reviewer"):
            reviewer_name(bad)
    with pytest.raises(RegistryError, match="via 'email'"):
        registry.set_review(plan["model_version"], "approved", via="email")
    registry.set_review(plan["model_version"], "approved")
    assert registry.review(plan["model_version"]).by == "erin"
