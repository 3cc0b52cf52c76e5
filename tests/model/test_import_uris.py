"""Issue 24 item 0: ``lockstep model import`` takes every model URI MLflow 3 hands a team.

Each model is made with the calls a team would use: ``mlflow.pyfunc.log_model(name=...)``
(a LoggedModel, ``models:/m-<id>``), ``mlflow.register_model`` and an alias
(``models:/<name>/<version>``, ``models:/<name>@<alias>``), artifacts logged to a run
(``runs:/<id>/<path>``), and a saved folder (a path, a ``file://`` URI).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from lockstep.model.importing import import_model
from lockstep.model.pyfunc_embedder import ModelContractError
from tests.model.byo_models import MODEL_CODE, log_team_model, save_team_model
from tests.model.test_importing import pipeline, registry  # noqa: F401 (fixtures)
from tests.model.test_registry import migrated_store, synthetic_texts  # noqa: F401 (a fixture)

TEAM_MODEL = "team-encoder"  # the team's own registered model, not Lockstep's


@pytest.fixture
def logged(registry, pipeline, tmp_path):  # noqa: F811
    """``log_model(name=...)`` in a run of the team's experiment: the LoggedModel's URI."""
    import joblib

    code = tmp_path / "team_model.py"
    code.write_text(MODEL_CODE, encoding="utf-8")
    joblib.dump(pipeline, tmp_path / "pipeline.joblib")
    client = mlflow.MlflowClient(registry.tracking_uri)
    experiment = client.create_experiment("team-encoders", artifact_location=(tmp_path / "team-art").as_uri())
    with registry._scoped(), mlflow.start_run(experiment_id=experiment):  # MLflow's global URIs, put back after
        info = mlflow.pyfunc.log_model(
            name="encoder", python_model=str(code), artifacts={"pipeline": str(tmp_path / "pipeline.joblib")},
            model_config={"kind": "good"}, pip_requirements=["mlflow", "scikit-learn", "numpy", "joblib"],
        )
    return info.model_uri


def _registered(registry, model_uri: str) -> str:  # noqa: F811
    """``register_model`` the LoggedModel under the team's name, alias ``prod``; its version."""
    with registry._scoped():
        version = mlflow.register_model(model_uri, TEAM_MODEL).version
    mlflow.MlflowClient(registry.tracking_uri).set_registered_model_alias(TEAM_MODEL, "prod", version)
    return str(version)


def _imports_with_the_team_vectors(registry, pipeline, uri: str) -> None:  # noqa: F811
    info = import_model(registry, uri)
    assert info.tags["lockstep.family"] == "imported" and info.tags["lockstep.source_uri"] == uri and info.dim == 12
    texts = synthetic_texts(10, seed=7)
    got = registry.load_embedder(info.version).transform(texts)
    np.testing.assert_allclose(got, pipeline.transform(texts).astype(np.float32), atol=1e-6)


def test_a_logged_model_uri_from_log_model_name_imports(registry, pipeline, logged):  # noqa: F811
    assert logged.startswith("models:/m-")
    _imports_with_the_team_vectors(registry, pipeline, logged)


def test_a_registered_version_uri_imports(registry, pipeline, logged):  # noqa: F811
    version = _registered(registry, logged)
    _imports_with_the_team_vectors(registry, pipeline, f"models:/{TEAM_MODEL}/{version}")


def test_a_registered_alias_uri_imports(registry, pipeline, logged):  # noqa: F811
    _registered(registry, logged)
    _imports_with_the_team_vectors(registry, pipeline, f"models:/{TEAM_MODEL}@prod")


def test_a_run_artifact_uri_imports(registry, pipeline, tmp_path):  # noqa: F811
    uri = log_team_model(registry.tracking_uri, tmp_path / "team", pipeline=pipeline)
    assert uri.startswith("runs:/")
    _imports_with_the_team_vectors(registry, pipeline, uri)


def test_a_local_folder_imports(registry, pipeline, tmp_path):  # noqa: F811
    folder = save_team_model(tmp_path / "team", pipeline=pipeline)
    _imports_with_the_team_vectors(registry, pipeline, str(folder))
    assert (folder / "MLmodel").is_file()  # the team's folder is copied, never moved or changed


def test_a_file_uri_imports_including_an_escaped_path(registry, pipeline, tmp_path):  # noqa: F811
    folder = save_team_model(tmp_path / "team folder", pipeline=pipeline)
    uri = Path(folder).as_uri()
    assert "%20" in uri  # as Path.as_uri() writes it
    _imports_with_the_team_vectors(registry, pipeline, uri)


def test_a_uri_that_names_nothing_is_refused_by_name_and_leaves_no_download(registry, tmp_path):  # noqa: F811
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("lockstep-import-*"))
    with pytest.raises(ModelContractError, match="could not fetch the model at 'models:/m-0000'"):
        import_model(registry, "models:/m-0000")
    with pytest.raises(ModelContractError, match="names another host"):
        import_model(registry, "file://example.org/models/team")
    with pytest.raises(ModelContractError, match="no MLmodel file"):
        import_model(registry, (tmp_path / "missing").as_uri())
    assert set(Path(tempfile.gettempdir()).glob("lockstep-import-*")) == before
    assert registry.latest_versions() == []
