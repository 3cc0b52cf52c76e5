"""``lockstep model import``: any pyfunc model meeting the contract becomes a version; others are refused.

The models are the team's own (tests/model/byo_models.py: a plain MLflow PythonModel,
nothing from Lockstep), logged as a team would log them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lockstep.core.errors import FingerprintMismatchError
from lockstep.model.importing import import_model
from lockstep.model.integrity import ModelIntegrityError
from lockstep.model.pyfunc_embedder import PROBE_FILE, ModelContractError, PyfuncEmbedder
from lockstep.model.registry import Registry
from tests.model.byo_models import fit_pipeline, log_team_model, save_team_model
from tests.model.test_registry import migrated_store, synthetic_texts  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def pipeline():
    return fit_pipeline(synthetic_texts(300), dim=12)


@pytest.fixture
def registry(lockstep_home, migrated_store, tmp_path, monkeypatch) -> Registry:  # noqa: F811
    lockstep_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_store, lockstep_home / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return Registry()


def test_a_team_model_from_a_run_becomes_a_version_with_the_same_vectors(registry, pipeline, tmp_path):
    uri = log_team_model(registry.tracking_uri, tmp_path / "team", pipeline=pipeline)
    info = import_model(registry, uri)
    assert info.version == "1" and "challenger" in info.aliases
    assert info.dim == 12 and info.tags["lockstep.family"] == "imported" and info.tags["lockstep.source_uri"] == uri
    embedder = registry.load_embedder(info.version)
    assert isinstance(embedder, PyfuncEmbedder) and embedder.fingerprint == info.fingerprint
    texts = synthetic_texts(20, seed=5)
    expected = pipeline.transform(texts).astype(np.float32)
    np.testing.assert_allclose(embedder.transform(texts), expected, atol=1e-6)
    np.testing.assert_allclose(embedder.embed_query(texts[3]), expected[3], atol=1e-6)
    # The registered version loads with MLflow alone, as the contract says.
    np.testing.assert_allclose(np.asarray(registry.load_pyfunc(info.version).predict(texts)), expected, atol=1e-6)


def test_a_local_model_folder_imports_and_two_spaces_never_share_a_fingerprint(registry, pipeline, tmp_path):
    first = import_model(registry, str(save_team_model(tmp_path / "a", pipeline=pipeline)))
    again = import_model(registry, str(save_team_model(tmp_path / "b", pipeline=pipeline)))
    other = import_model(registry, str(save_team_model(tmp_path / "c", pipeline=fit_pipeline(synthetic_texts(300, seed=1), dim=12))))
    assert [first.version, again.version, other.version] == ["1", "2", "3"]
    assert other.fingerprint != first.fingerprint
    # Saved twice, the model folder differs (MLflow stamps each save), so it is another artifact.
    assert again.fingerprint != first.fingerprint


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("flat", "2-D array"),
        ("nan", "NaN or infinite values"),
        ("rows", "rows for"),
        ("changing", "dimension"),
        ("random", "deterministic"),
        ("batch_dependent", "must not depend on the other texts"),
        ("strings", "real numbers"),
        ("raises", "the GPU is not there"),
    ],
)
def test_a_model_that_breaks_the_contract_is_refused_and_nothing_is_registered(registry, tmp_path, kind, message):
    with pytest.raises(ModelContractError, match=message):
        import_model(registry, str(save_team_model(tmp_path / kind, kind=kind)))
    assert registry.latest_versions() == []


def test_a_uri_that_is_not_a_model_is_refused_with_its_name(registry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelContractError, match="no MLmodel file"):
        import_model(registry, str(tmp_path / "empty"))
    with pytest.raises(ModelContractError, match="could not fetch the model at 'runs:/0123456789abcdef/nothing'"):
        import_model(registry, "runs:/0123456789abcdef/nothing")
    assert registry.latest_versions() == []


def test_a_changed_model_folder_is_refused_before_it_is_loaded(registry, pipeline, tmp_path):
    info = import_model(registry, str(save_team_model(tmp_path / "team", pipeline=pipeline)))
    embedder = registry.load_embedder(info.version)
    (embedder.model_dir / "team_model.py").write_text("raise SystemExit('this must never run')\n")
    # The cached copy no longer matches: it is downloaded again and verified.
    assert registry.load_embedder(info.version).fingerprint == info.fingerprint
    copy = embedder.save(tmp_path / "copy")
    assert PyfuncEmbedder.load(copy).fingerprint == info.fingerprint  # a local copy vouched for by lockstep.json
    (copy / "team_model.py").write_text("raise SystemExit('this must never run')\n")
    with pytest.raises(ModelIntegrityError, match="fails its checksum"):
        PyfuncEmbedder.load(copy)


def test_a_model_that_now_embeds_differently_is_a_different_space(registry, pipeline, tmp_path):
    """Same files, other vectors (e.g. another library version): the probe set catches it at load."""
    info = import_model(registry, str(save_team_model(tmp_path / "team", pipeline=pipeline)))
    copy = registry.load_embedder(info.version).save(tmp_path / "copy")
    probe = np.load(copy / PROBE_FILE)
    np.save(copy / PROBE_FILE, probe + 0.01)
    meta = (copy / "lockstep.json").read_text()
    import json

    from lockstep.model.pyfunc_embedder import directory_digest

    data = json.loads(meta)
    data["digest"] = directory_digest(copy)  # even with a digest that vouches for the change
    (copy / "lockstep.json").write_text(json.dumps(data))
    with pytest.raises(FingerprintMismatchError, match="embeds the probe set differently"):
        PyfuncEmbedder.load(copy)


def test_the_cli_imports_a_model_and_refuses_a_broken_one(registry, pipeline, tmp_path):
    from typer.testing import CliRunner

    from lockstep.cli import app

    runner = CliRunner()
    good = runner.invoke(app, ["model", "import", "--model-uri", str(save_team_model(tmp_path / "g", pipeline=pipeline))])
    assert good.exit_code == 0, good.output
    assert "registered lockstep-embedder version 1 (dim 12" in good.output and "alias challenger" in good.output
    bad = runner.invoke(app, ["model", "import", "--model-uri", str(save_team_model(tmp_path / "b", kind="nan"))])
    assert bad.exit_code == 1 and isinstance(bad.exception, ModelContractError)
    assert [v.version for v in registry.latest_versions()] == ["1"]
    usage = runner.invoke(app, ["model", "import"])
    assert usage.exit_code == 2 and "--model-uri" in usage.output


def test_the_probe_embeddings_travel_inside_the_registered_model(registry, pipeline, tmp_path):
    info = import_model(registry, str(save_team_model(tmp_path / "team", pipeline=pipeline)))
    folder = Path(registry.load_embedder(info.version).model_dir)
    stored = np.load(folder / PROBE_FILE)
    assert stored.shape[1] == 12 and stored.dtype == np.float32
