"""lockstep_drift end to end with dag.test(): the issue's drift scenario emits the asset.

A champion fitted on 10 newsgroups, then posts of the other 10 arrive: the run checks,
logs the report to MLflow, takes the ``emit_drift`` branch (``no_drift`` is skipped) and
records a drift asset event whose extra names the champion version and the figures.
"""

from __future__ import annotations

import random

import pytest

from tests.dags.conftest import task_states

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


@pytest.fixture
def drifting_store(lockstep_home, monkeypatch):
    """Champion version 1 fitted on 10 newsgroups; 200 posts of the other 10 since."""
    from lockstep.model.registry import Registry
    from lockstep.store.corpus import DEMO_CATEGORIES, demo_sample, load_demo_corpus
    from lockstep.store.records import Record, RecordStore
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import fit_embedder, split_holdout

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    store = RecordStore()
    seq = store.upsert_many(demo_sample(900, seed=1, categories=DEMO_CATEGORIES[::2]))
    config = TrainConfig(dim=48)
    holdout = split_holdout(store.snapshot().records, config)
    registry = Registry()
    info = registry.log_and_register(
        fit_embedder([r.text for r in holdout.train], config),
        params=config.to_dict(),
        metrics={},
        snapshot_seq=seq,
    )
    registry.promote_champion(info.version, "first model")
    arriving = random.Random(4).sample(load_demo_corpus("test", DEMO_CATEGORIES[1::2]), 200)
    store.upsert_many([Record(f"live-{r.id}", r.text, r.metadata) for r in arriving])
    return store


def drift_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "lockstep_drift", AssetEvent.source_run_id == run_id)
        ).all()
        return [dict(e.extra) for e in rows]


def test_drift_is_detected_logged_and_emitted(drifting_store, airflow_db):
    import mlflow
    from lockstep_drift import lockstep_drift_dag

    from lockstep.core.alerts import recent_alerts
    from lockstep.core.config import settings

    run = lockstep_drift_dag.test(run_conf={"min_records": 50})
    states = task_states(run)
    assert run.state == "success", states
    assert states == {
        "check": "success",
        "log_report": "success",
        "decide": "success",
        "emit_drift": "success",
        "no_drift": "skipped",
    }

    (extra,) = drift_events(run.run_id)
    assert extra["model_version"] == "1"
    assert extra["drifted"] is True and extra["forced"] is False
    assert extra["figures"]["embedding_auc"] > 0.7
    assert any("classifier tells current from reference" in r for r in extra["reasons"])

    client = mlflow.MlflowClient(tracking_uri=settings().mlflow_tracking_uri)
    logged = client.get_run(extra["mlflow_run_id"])
    assert logged.data.tags["lockstep.check_id"] == run.run_id
    assert logged.data.tags["lockstep.champion_version"] == "1"
    assert {a.path for a in client.list_artifacts(logged.info.run_id, "plots")} == {"plots/drift.png"}

    assert [a["event"] for a in recent_alerts()].count("drift_detected") == 1
