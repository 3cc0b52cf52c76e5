"""The registry layer against real MLflow stores: an embedded SQLite store per test, and
one real ``mlflow server`` reached over HTTP (slow)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lockstep.core.errors import FingerprintMismatchError, RegistryError
from lockstep.model import registry as registry_module
from lockstep.model.embedding import TextEmbedder
from lockstep.model.registry import (
    CHALLENGER,
    CHAMPION,
    ModelVersionInfo,
    Registry,
    TrainingSnapshot,
)
from tests.model.mlflow_server import mlflow_server as running_mlflow_server

TOPICS = {
    "billing": "invoice refund payment card charge receipt subscription price",
    "shipping": "parcel courier delivery tracking warehouse customs package address",
    "accounts": "password login username email verification profile security reset",
    "hardware": "battery screen charger keyboard speaker camera cable firmware",
}


def synthetic_texts(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = list(TOPICS.values())[i % len(TOPICS)].split()
        texts.append(" ".join(rng.choice(words) for _ in range(7)) + f" note{i % 17}")
    return texts


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(dim=16, min_df=1).fit(synthetic_texts())


@pytest.fixture(scope="module")
def other_embedder() -> TextEmbedder:
    return TextEmbedder(dim=8, min_df=1).fit(synthetic_texts(seed=1))


@pytest.fixture(scope="module")
def migrated_store(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite file: creating the schema takes seconds, a copy none."""
    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    Registry(f"sqlite:///{db}", artifact_root=folder / "art").latest_versions()
    return db


@pytest.fixture
def registry(lockstep_home, migrated_store, tmp_path, monkeypatch) -> Registry:
    """A Registry on the defaults of a fresh LOCKSTEP_HOME (its mlflow.db pre-migrated)."""
    lockstep_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_store, lockstep_home / "mlflow.db")
    monkeypatch.chdir(tmp_path)  # anything written to ./mlruns would show up here
    return Registry()


def register(registry: Registry, embedder: TextEmbedder, **overrides) -> ModelVersionInfo:
    kwargs = {
        "params": {"dim": embedder.dim},
        "metrics": {"ndcg_at_10": 0.61, "recall_at_10": 0.83},
        "artifacts": None,
        "tags": {},
        "snapshot_seq": 42,
        **overrides,
    }
    return registry.log_and_register(embedder, **kwargs)


# --- registration ----------------------------------------------------------------------


def test_log_and_register_gives_version_one_with_fingerprint_and_figures(
    registry, embedder, lockstep_home, tmp_path
):
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"ndcg_at_10": 0.61}))

    info = register(
        registry, embedder, artifacts={"reports/eval.json": report}, tags={"trigger": "schedule"}
    )

    assert info.name == "lockstep-embedder"
    assert info.version == "1"
    assert info.fingerprint == embedder.fingerprint
    assert info.tags["fingerprint"] == embedder.fingerprint
    assert info.tags["snapshot_seq"] == "42" and info.snapshot_seq == 42
    assert info.tags["dim"] == "16" and info.dim == 16
    assert info.tags["trigger"] == "schedule"
    assert info.eval_figures == {"ndcg_at_10": 0.61, "recall_at_10": 0.83}
    assert info.model_uri == "models:/lockstep-embedder/1"
    assert info.aliases == []
    described = registry._client().get_registered_model("lockstep-embedder").description
    assert "lockstep.review" in described and "approved" in described

    run = registry._client().get_run(info.run_id)
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(0.61)
    assert run.data.params["dim"] == "16"
    assert run.data.params["embedder.min_df"] == "1"
    logged = [a.path for a in registry._client().list_artifacts(info.run_id, "reports")]
    assert logged == ["reports/eval.json"]

    # Artifacts land in LOCKSTEP_HOME, not in ./mlruns of the working directory, and the
    # caller's MLflow settings are left as they were.
    assert list((lockstep_home / "mlartifacts").rglob("embedder.joblib"))
    assert not (tmp_path / "mlruns").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_second_registration_is_version_two_and_latest_first(registry, embedder, other_embedder):
    register(registry, embedder)
    second = register(registry, other_embedder, snapshot_seq=50)

    assert second.version == "2"
    assert second.fingerprint == other_embedder.fingerprint != embedder.fingerprint
    assert [v.version for v in registry.latest_versions()] == ["2", "1"]
    assert [v.version for v in registry.latest_versions(limit=1)] == ["2"]
    assert registry.resolve("models:/lockstep-embedder/latest").version == "2"


def test_the_snapshot_is_the_runs_training_dataset_and_the_metrics_belong_to_the_logged_model(registry, embedder):
    snapshot = TrainingSnapshot(
        source="postgresql+psycopg://lockstep:secret@db:5432/lockstep", seq=42, records=200, digest="sha256:" + "ab" * 32
    )

    info = register(registry, embedder, snapshot=snapshot)

    client = registry._client()
    [given] = client.get_run(info.run_id).inputs.dataset_inputs
    assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "training", "snapshot_seq": "42"}
    dataset = given.dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == ("lockstep-records@42", "ab" * 8, "lockstep_snapshot")
    assert json.loads(dataset.source) == {"store": "postgresql+psycopg://lockstep:***@db:5432/lockstep", "seq": 42, "records": 200}
    assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == ["id", "text"]

    model = client.get_logged_model(info.source.removeprefix("models:/"))
    metrics = {m.key: m for m in model.metrics}
    assert metrics["ndcg_at_10"].value == pytest.approx(0.61) and metrics["recall_at_10"].value == pytest.approx(0.83)
    assert {m.dataset_name for m in model.metrics} == {"lockstep-records@42"}
    assert model.params["embedder.min_df"] == "1" and model.params["dim"] == "16"


def test_without_a_snapshot_the_run_has_no_dataset_and_the_model_still_has_its_metrics(registry, embedder):
    info = register(registry, embedder)
    client = registry._client()
    assert client.get_run(info.run_id).inputs.dataset_inputs == []
    model = client.get_logged_model(info.source.removeprefix("models:/"))
    assert {m.key: m.value for m in model.metrics} == pytest.approx({"ndcg_at_10": 0.61, "recall_at_10": 0.83})


def test_a_version_description_is_written_read_back_and_linked_from_the_ui(registry, embedder, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_MLFLOW_UI_URL", "http://mlflow.example:5000/")
    monkeypatch.setenv("LOCKSTEP_AIRFLOW_UI_URL", "http://airflow.example:8080")
    info = register(registry, embedder)
    assert registry.version_description(info.version) == ""

    registry.describe_version(info.version, "## Version 1\n- **what changed**")

    assert registry.version_description(info.version) == "## Version 1\n- **what changed**"
    experiment = registry._client().get_run(info.run_id).info.experiment_id
    run_page = f"http://mlflow.example:5000/#/experiments/{experiment}/runs/{info.run_id}"
    model_id = info.source.removeprefix("models:/")
    assert registry.ui_links(info, ["plots/evaluation.png"], drift_run_id="gone") == {
        "version": "http://mlflow.example:5000/#/models/lockstep-embedder/versions/1",
        "lockstep": "http://airflow.example:8080/lockstep/",
        "run": run_page,
        "logged_model": f"http://mlflow.example:5000/#/experiments/{experiment}/models/{model_id}",
        "plots/evaluation.png": f"{run_page}/artifactPath/plots/evaluation.png",
        "drift_run": "http://mlflow.example:5000/#/runs/gone",
    }
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.describe_version(9, "nothing to describe")


def test_missing_artifact_file_fails_before_anything_is_logged(registry, embedder, tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        register(registry, embedder, artifacts={"plot.png": tmp_path / "missing.png"})
    assert registry.latest_versions() == []


# --- loading ---------------------------------------------------------------------------


def test_pyfunc_from_models_uri_predicts_unit_norm_float32_rows(registry, embedder, monkeypatch):
    import mlflow

    info = register(registry, embedder)
    texts = ["refund for my card charge", "courier lost the parcel", "reset password"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{registry.model_name}/{info.version}")
    out = model.predict(texts)

    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, embedder.transform(texts), atol=1e-6)

    framed = registry.load_pyfunc(info.version).predict(pd.DataFrame({"text": texts}))
    np.testing.assert_allclose(framed, out, atol=1e-6)


def test_load_embedder_returns_the_registered_space(registry, embedder):
    info = register(registry, embedder)

    loaded = registry.load_embedder(info.version)

    assert loaded.fingerprint == embedder.fingerprint
    np.testing.assert_allclose(
        loaded.embed_query("invoice refund"), embedder.embed_query("invoice refund"), atol=1e-6
    )


def test_tampered_fingerprint_tag_is_detected(registry, embedder):
    info = register(registry, embedder)
    forged = "sha256:" + "0" * 64
    registry.set_tags(info.version, {"fingerprint": forged})

    with pytest.raises(FingerprintMismatchError) as caught:
        registry.load_embedder(info.version)

    message = str(caught.value)
    assert forged in message and embedder.fingerprint in message


class _Payload:
    """A pickle that writes a marker file when it is unpickled (what an attacker would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_a_swapped_model_artifact_is_refused_before_it_is_unpickled(registry, embedder, lockstep_home, tmp_path, monkeypatch):
    """The version tag lockstep.model_sha256 is checked before joblib opens the downloaded file."""
    import joblib
    import mlflow

    from lockstep.model.integrity import ModelIntegrityError, file_sha256

    info = register(registry, embedder)
    [stored] = list((lockstep_home / "mlartifacts").rglob("embedder.joblib"))
    assert info.tags["lockstep.model_sha256"] == file_sha256(stored)
    marker = tmp_path / "pwned"
    joblib.dump(_Payload(marker), stored)  # someone with write access to the artifact store

    with pytest.raises(ModelIntegrityError, match=r"model file .*embedder\.joblib fails its checksum") as caught:
        registry.load_embedder(info.version)
    assert info.tags["lockstep.model_sha256"] in str(caught.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    with pytest.raises(ValueError, match="fails its checksum.*the registered model_sha256 is " + info.tags["lockstep.model_sha256"]) as caught:
        mlflow.pyfunc.load_model(f"models:/{registry.model_name}/{info.version}")
    assert type(caught.value).__name__ == "ArtifactChecksumError"  # raised by the model's own code
    assert not marker.exists()  # neither path deserialised the planted file


def test_a_version_registered_the_old_way_still_loads(registry, embedder, tmp_path, monkeypatch):
    """Before models were logged as code: a pickled EmbedderPyfunc around a pickled TextEmbedder."""
    import joblib
    import mlflow

    from lockstep.model.integrity import file_sha256

    old_file = tmp_path / "embedder.joblib"
    joblib.dump(embedder, old_file)
    digest = file_sha256(old_file)
    with registry._scoped(), mlflow.start_run(experiment_id=registry._experiment_id("lockstep")):
        logged = mlflow.pyfunc.log_model(
            name="embedder",
            python_model=registry_module.EmbedderPyfunc(digest),
            artifacts={"embedder": str(old_file)},
            pip_requirements=registry_module.pip_requirements(),
        )
        mlflow.register_model(
            logged.model_uri, registry.model_name, tags={"fingerprint": embedder.fingerprint, "lockstep.model_sha256": digest}
        )

    assert registry.load_embedder(1).fingerprint == embedder.fingerprint
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    out = registry.load_pyfunc(1).predict(["parcel delivery", "reset password"])
    np.testing.assert_allclose(out, embedder.transform(["parcel delivery", "reset password"]), atol=1e-6)


def test_a_version_without_the_model_checksum_tag_is_not_loaded(registry, embedder):
    info = register(registry, embedder)
    registry._client().delete_model_version_tag(registry.model_name, info.version, "lockstep.model_sha256")
    with pytest.raises(RegistryError, match="no 'lockstep.model_sha256' tag"):
        registry.load_embedder(info.version)


# --- aliases and lifecycle -------------------------------------------------------------


def test_aliases_set_move_resolve_and_delete(registry, embedder, other_embedder):
    v1 = register(registry, embedder)
    v2 = register(registry, other_embedder)
    assert registry.version_for_alias(CHAMPION) is None

    registry.set_alias(CHAMPION, v1.version)
    assert registry.resolve("models:/lockstep-embedder@champion").version == "1"
    assert registry.get_version(1).aliases == [CHAMPION]

    registry.set_alias(CHAMPION, v2.version)
    resolved = registry.resolve("models:/lockstep-embedder@champion")
    assert resolved.version == "2" and resolved.fingerprint == other_embedder.fingerprint
    assert registry.get_version(1).aliases == []

    assert registry.delete_alias(CHAMPION) is True
    assert registry.delete_alias(CHAMPION) is False
    assert registry.version_for_alias(CHAMPION) is None
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        registry.resolve("models:/lockstep-embedder@champion")
    with pytest.raises(RegistryError, match="not a model URI"):
        registry.resolve("runs:/abc/embedder")


def test_promote_champion_records_the_replacement(registry, embedder, other_embedder):
    v1 = register(registry, embedder)
    v2 = register(registry, other_embedder)

    assert registry.promote_champion(v1.version, "first model") is None
    registry.set_alias(CHALLENGER, v2.version)
    previous = registry.promote_champion(v2.version, "ndcg +0.04")

    assert previous is not None and previous.version == "1"
    assert previous.tags["lockstep.replaced_by"] == "2"
    assert previous.tags["lockstep.replaced_at"].startswith("20")
    assert previous.status == "replaced"
    champion = registry.version_for_alias(CHAMPION)
    assert champion.version == "2" and "lockstep.champion_since" in champion.tags
    assert registry.version_for_alias(CHALLENGER) is None  # the challenger became champion
    history = registry.champion_history()
    assert [(h["version"], h["reason"]) for h in history] == [
        ("1", "first model"),
        ("2", "ndcg +0.04"),
    ]

    # Promoting the champion again is a no-op; rolling back clears the stale replaced_* tags.
    assert registry.promote_champion(v2.version, "again") is None
    assert len(registry.champion_history()) == 2
    registry.promote_champion(v1.version, "rollback")
    back = registry.get_version(1)
    assert CHAMPION in back.aliases and "lockstep.replaced_at" not in back.tags
    assert registry.get_version(2).tags["lockstep.replaced_by"] == "1"


def test_champion_history_is_bounded(registry, embedder, monkeypatch):
    from lockstep.model.registry import champions

    monkeypatch.setattr(champions, "HISTORY_MAX_ENTRIES", 3)
    register(registry, embedder)
    register(registry, embedder)

    for i in range(5):
        registry.promote_champion("1" if i % 2 == 0 else "2", f"step {i}")

    assert [h["reason"] for h in registry.champion_history()] == ["step 2", "step 3", "step 4"]


def test_reject_tags_the_version_and_drops_challenger(registry, embedder, other_embedder):
    v1 = register(registry, embedder)
    v2 = register(registry, other_embedder)
    registry.promote_champion(v1.version, "first")
    registry.set_alias(CHALLENGER, v2.version)

    rejected = registry.reject(
        v2.version, "ndcg dropped 0.05", {"ndcg_at_10": 0.56, "delta": -0.05}
    )

    assert rejected.status == "rejected"
    assert rejected.tags["lockstep.rejected_reason"] == "ndcg dropped 0.05"
    assert rejected.tags["lockstep.rejected.ndcg_at_10"] == "0.56"
    assert rejected.tags["lockstep.rejected.delta"] == "-0.05"
    assert registry.version_for_alias(CHALLENGER) is None
    assert registry.version_for_alias(CHAMPION).version == "1"
    with pytest.raises(RegistryError, match="is the champion"):
        registry.reject(v1.version, "oops", {})


def test_review_decision_reads_the_reviewer_tag(registry, embedder):
    info = register(registry, embedder)
    assert registry.review_decision(info.version) is None

    registry.set_tags(info.version, {"lockstep.review": "Approved "})
    assert registry.review_decision(info.version) == "approved"
    registry.set_review(info.version, "reject")
    assert registry.review_decision(info.version) == "rejected"

    registry.set_tags(info.version, {"lockstep.review": "aproved"})
    with pytest.raises(RegistryError, match="'approved' or 'rejected'"):
        registry.review_decision(info.version)


# --- errors ----------------------------------------------------------------------------


def test_unknown_version_names_model_version_and_what_exists(registry, embedder):
    with pytest.raises(RegistryError, match="no versions of it are registered") as empty:
        registry.get_version(3)
    assert "'lockstep-embedder'" in str(empty.value) and "lockstep train" in str(empty.value)

    register(registry, embedder)
    with pytest.raises(RegistryError) as caught:
        registry.get_version(7)
    message = str(caught.value)
    assert "'lockstep-embedder'" in message and "version 7" in message
    assert "registered versions: 1" in message
    with pytest.raises(RegistryError, match="not a model version"):
        registry.get_version("seven")
    with pytest.raises(RegistryError, match="no version 9"):
        registry.load_embedder(9)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_and_clearly(embedder):
    uri = f"http://127.0.0.1:{closed_port()}"
    unreachable = Registry(uri)

    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        unreachable.get_version(1)
    with pytest.raises(RegistryError):
        register(unreachable, embedder)
    elapsed = time.monotonic() - started

    assert elapsed < 10
    message = str(caught.value)
    assert uri in message and "does not answer" in message and "MLFLOW_TRACKING_URI" in message


# --- a real MLflow server --------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path, migrated_store):
    """``mlflow server`` on a free port, artifacts proxied through it, as in production."""
    port = closed_port()
    shutil.copy(migrated_store, tmp_path / "server.db")
    # The job runner (a handful of huey processes) is not needed for the registry and
    # doubles the start-up time on a small machine.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts")]
    with running_mlflow_server(tmp_path, port, args, env) as uri:
        yield uri, tmp_path / "server-artifacts"


@pytest.mark.slow
def test_register_and_alias_through_a_real_mlflow_server(mlflow_server, embedder, lockstep_home):
    uri, artifact_dir = mlflow_server
    remote = Registry(uri)

    info = register(remote, embedder)
    remote.set_alias(CHALLENGER, info.version)
    remote.promote_champion(info.version, "first over http")

    assert info.version == "1" and info.fingerprint == embedder.fingerprint
    champion = remote.resolve(f"models:/{remote.model_name}@champion")
    assert champion.version == "1" and champion.aliases == [CHAMPION]
    assert remote.version_for_alias(CHALLENGER) is None
    assert remote.load_embedder(1).fingerprint == embedder.fingerprint
    out = remote.load_pyfunc(1).predict(["parcel delivery"])
    np.testing.assert_allclose(out, embedder.transform(["parcel delivery"]), atol=1e-6)
    # The model went through the server's artifact proxy, not the local LOCKSTEP_HOME.
    assert list(artifact_dir.rglob("embedder.joblib"))
    assert not (lockstep_home / "mlartifacts").exists()
