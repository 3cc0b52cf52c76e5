"""A fit registered in a real (SQLite) MLflow store, loaded back by Lockstep and by plain pyfunc."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from lockstep.core.config import Settings
from lockstep.core.errors import FingerprintMismatchError, RegistryError
from lockstep.model.integrity import ModelIntegrityError
from lockstep.model.recommender_model import FAMILY, _artifact_path, recommender_registry
from lockstep.model.registry import TAG_MODEL_SHA256
from lockstep.recommender.registration import load_version, register_fit
from tests.recommender import ml100k

USERS = ["1", "196", "943", "500"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    registry = recommender_registry(f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "artifacts")
    model = ml100k.fitted("small")
    figures = {"recall_at_10": 0.19, "ndcg_at_10": 0.2, "popularity_ndcg_at_10": 0.11}
    info = register_fit(model, figures, registry=registry, snapshot_seq=100_000, run_name="test fit")
    return registry, model, info


def test_the_model_name_is_a_setting():
    assert Settings.from_env({}).recommender_model_name == "lockstep-recommender"
    assert Settings.from_env({"LOCKSTEP_RECOMMENDER_MODEL_NAME": "recs"}).recommender_model_name == "recs"


def test_the_version_carries_fingerprint_dim_counts_and_figures(registered):
    registry, model, info = registered
    assert info.name == "lockstep-recommender" and info.version == "1"
    assert info.fingerprint == model.fingerprint and info.dim == 16
    assert info.tags["users"] == "943" and info.tags["items"] == "1682"
    assert info.tags["lockstep.family"] == FAMILY and info.snapshot_seq == 100_000
    assert info.eval_figures == {"recall_at_10": 0.19, "ndcg_at_10": 0.2, "popularity_ndcg_at_10": 0.11}
    assert info.tags[TAG_MODEL_SHA256].startswith("sha256:")
    run = mlflow.MlflowClient(registry.tracking_uri).get_run(info.run_id)
    assert run.data.params["recommender.factors"] == "16" and run.data.metrics["ndcg_at_10"] == 0.2


def test_plain_pyfunc_gives_the_fitted_user_vectors(registered):
    registry, model, info = registered
    with registry._scoped():  # MLflow's process-wide tracking URI, restored afterwards
        loaded = mlflow.pyfunc.load_model(f"models:/{info.name}/{info.version}")
    vectors = loaded.predict(USERS)
    assert vectors.dtype == np.float32
    assert np.array_equal(vectors, model.user_vectors(USERS))
    with pytest.raises(Exception, match=r"unknown user ids: 'ghost', 'nobody'; this version knows 943 users"):
        loaded.predict(["1", "nobody", "ghost"])


def test_lockstep_loads_the_same_model_checked(registered):
    registry, model, info = registered
    again, again_info = load_version(info.version, registry)
    assert again_info.version == info.version and again.fingerprint == model.fingerprint
    assert np.array_equal(again.item_factors_, model.item_factors_)
    assert again.user_ids_ == model.user_ids_


def test_a_changed_artifact_or_tag_is_refused(registered, tmp_path):
    registry, model, info = registered
    local = registry.download_version(info, tmp_path)
    path = _artifact_path(local)
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    from lockstep.recommender.factorization import ALSRecommender

    with pytest.raises(ModelIntegrityError, match="fails its checksum"):
        ALSRecommender.load(path, info.tags[TAG_MODEL_SHA256])
    registry.set_tags(info.version, {"fingerprint": "sha256:" + "0" * 64})
    try:
        with pytest.raises(FingerprintMismatchError, match="register the model again"):
            load_version(info.version, registry)
    finally:
        registry.set_tags(info.version, {"fingerprint": model.fingerprint})


def test_a_missing_version_is_named(registered):
    registry, _, _ = registered
    with pytest.raises(RegistryError, match="version 99"):
        load_version(99, registry)
