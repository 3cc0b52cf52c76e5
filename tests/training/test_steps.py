"""The retrain steps against a real record store and a real MLflow store: what MLflow shows
for a registered version (dataset input, metrics on the LoggedModel, the reviewer's
description), first without a champion, then against one after a drift check."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from lockstep.core.config import settings
from lockstep.model.registry import Registry
from lockstep.store.records import RecordStore
from lockstep.training import steps
from tests.training.test_fit import SMALL, corpus

CONFIG = {k: v for k, v in asdict(SMALL).items() if k in ("dim", "min_df", "max_df", "holdout_percent", "n_boot")}
DRIFT = {
    "model_version": "1",
    "drifted": True,
    "forced": False,
    "reasons": ["vocabulary share of unseen words 0.31 > 0.10"],
    "window_end": "2026-11-30T00:00:00+00:00",
    "mlflow_run_id": "abc123",
    "segment": {"top_words": [["graphics", 12], ["jpeg", 9]], "current_share": 0.4},
}


def retrain(run_id: str, tmp_path: Path, *, drift=None, config=CONFIG) -> tuple[dict, dict]:
    """snapshot -> train -> evaluate -> register, as the DAG runs them."""
    folder = tmp_path / run_id
    folder.mkdir()
    snap = steps.snapshot()
    model = steps.train(snap["seq"], str(folder), config)
    evaluation = steps.evaluate(snap["seq"], model["model_path"], str(folder), config)
    registered = steps.register(snap["seq"], model["model_path"], evaluation, str(folder), run_id, config, drift=drift)
    return registered, evaluation


@pytest.fixture
def loaded(lockstep_home, monkeypatch) -> RecordStore:
    lockstep_home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("LOCKSTEP_MLFLOW_UI_URL", "http://mlflow.test:5000")
    monkeypatch.setenv("LOCKSTEP_AIRFLOW_UI_URL", "http://airflow.test:8080")
    store = RecordStore()
    store.upsert_many(corpus(300))
    return store


def test_a_first_version_logs_its_snapshot_its_model_metrics_and_a_description(loaded, tmp_path):
    registered, evaluation = retrain("run-1", tmp_path)
    registry = Registry()
    info = registry.get_version(registered["version"])
    client = registry._client()

    run = client.get_run(info.run_id)
    [dataset_input] = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    head = loaded.head()
    assert dataset.name == f"lockstep-records@{head}"
    assert dataset.source_type == "lockstep_snapshot"
    assert json.loads(dataset.source) == {"store": settings().database_url, "seq": head, "records": 300}
    snapshot_file = json.loads((tmp_path / "run-1" / steps.SNAPSHOT_FILE).read_text())
    assert snapshot_file["digest"].removeprefix("sha256:").startswith(dataset.digest)
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    model = client.get_logged_model(info.source.removeprefix("models:/"))
    metrics = {m.key: m for m in model.metrics}
    ndcg = evaluation["figures"]["ndcg_at_10"]
    assert metrics["ndcg_at_10"].value == pytest.approx(ndcg)
    assert metrics["ndcg_at_10"].dataset_digest == dataset.digest
    assert model.params["embedder.dim"] == "16"

    text = registry.version_description(info.version)
    assert text.startswith("## Version 1: accepted as challenger\nno champion yet")
    assert "Evaluation against no champion (first model)" in text
    low, high = evaluation["figures"]["ndcg_at_10_ci_low"], evaluation["figures"]["ndcg_at_10_ci_high"]
    assert f"| nDCG@10 | {ndcg:.4f} ({low:.4f} to {high:.4f}) |" in text
    assert f"change-log sequence {head}, 300 records" in text
    assert "no drift event started it" in text
    experiment = run.info.experiment_id
    assert f"(http://mlflow.test:5000/#/experiments/{experiment}/runs/{info.run_id})" in text
    assert f"runs/{info.run_id}/artifactPath/plots/evaluation.png)" in text
    assert "(http://airflow.test:8080/lockstep/)" in text
    assert "`lockstep.review`" in text


def test_a_drift_triggered_challenger_is_described_against_the_champion(loaded, tmp_path):
    first, _ = retrain("run-1", tmp_path)
    registry = Registry()
    registry.promote_champion(first["version"], "first model")
    loaded.upsert_many(corpus(120, seed=9))  # new records after the drift

    second, evaluation = retrain("run-2", tmp_path, drift=DRIFT, config={**CONFIG, "dim": 12})
    info = registry.get_version(second["version"])
    text = registry.version_description(info.version)

    assert evaluation["champion_version"] == "1"
    figures = evaluation["figures"]
    assert "### Evaluation against champion v1" in text
    delta = figures["delta_ndcg_at_10"]
    interval = f"{delta:+.4f} ({figures['delta_ndcg_at_10_ci_low']:+.4f} to {figures['delta_ndcg_at_10_ci_high']:+.4f})"
    assert interval in text
    assert f"{figures['p_better_ndcg_at_10']:.3f}" in text
    assert "| parameter | this version | champion v1 |\n|---|---|---|\n| `dim` | 12 | 16 |\n| `embedder.dim` | 12 | 16 |\n" in text
    assert "Unchanged: " in text and "`min_df=1`" in text
    assert (
        "Started by drift against champion v1, window ending 2026-11-30T00:00:00+00:00 "
        "([drift check run](http://mlflow.test:5000/#/runs/abc123)):"
    ) in text
    assert "- vocabulary share of unseen words 0.31 > 0.10" in text
    assert "- the segment that moved (40% of the window): graphics, jpeg" in text
    assert info.tags["lockstep.trigger"] == "drift" and info.tags["lockstep.drift_run_id"] == "abc123"


def test_a_retried_register_reuses_the_version_and_writes_the_description_again(loaded, tmp_path):
    registered, evaluation = retrain("run-1", tmp_path)
    registry = Registry()
    registry.describe_version(registered["version"], "stale")

    again = steps.register(
        loaded.head(), str(tmp_path / "run-1" / steps.MODEL_FILE), evaluation, str(tmp_path / "run-1"), "run-1", CONFIG
    )

    assert again == {**registered, "reused": True}
    assert [v.version for v in registry.latest_versions()] == ["1"]
    assert registry.version_description("1").startswith("## Version 1")


def test_a_word_vector_challenger_is_judged_against_a_tfidf_champion_and_named_for_its_reviewer(loaded, tmp_path):
    from lockstep.model.word_vectors import WordVectorEmbedder

    first, _ = retrain("run-1", tmp_path)
    registry = Registry()
    registry.promote_champion(first["version"], "first model")
    switch = {**CONFIG, "family": "word_vectors", "min_count": 1, "epochs": 5, "window": 4}

    second, evaluation = retrain("run-2", tmp_path, config=switch)
    info = registry.get_version(second["version"])
    assert info.tags["lockstep.family"] == "word_vectors"
    assert registry.get_version(first["version"]).tags["lockstep.family"] == "tfidf_svd"
    assert evaluation["champion_version"] == "1"
    assert {"ndcg_at_10", "delta_ndcg_at_10"} <= set(evaluation["figures"])
    assert float(info.tags["eval.ndcg_at_10"]) == pytest.approx(evaluation["figures"]["ndcg_at_10"])
    assert type(registry.load_embedder(info.version)) is WordVectorEmbedder

    text = registry.version_description(info.version)
    assert f"- **Model family:** {WordVectorEmbedder.FAMILY}" in text
    assert "| `family` | word_vectors | tfidf_svd |" in text
    assert "| `embedder.sif_a` | 0.001 |  |" in text  # a parameter the champion's family does not have


def test_a_retrain_with_an_unknown_family_names_the_families(loaded, tmp_path):
    from lockstep.training.config import TrainingError

    with pytest.raises(TrainingError, match="unknown model family 'glove'; choose one of: tfidf_svd, word_vectors"):
        retrain("run-1", tmp_path, config={**CONFIG, "family": "glove"})
