"""Issue 21: an imported model is trusted by the registry's digest only, and that digest is checked
before it names a folder.

The attacker here can write one MLflow tag, or the local model cache (or a re-embed's
scratch folder), but not the registry's artifacts: nothing outside the cache is ever
read, written or removed, and nothing in a tampered folder runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from lockstep.core.errors import UnsafePathError
from lockstep.index import slot_plan
from lockstep.index.storage import index_location
from lockstep.model.importing import import_model
from lockstep.model.integrity import ModelIntegrityError
from lockstep.model.pyfunc_embedder import META_FILE, PyfuncEmbedder, directory_digest
from lockstep.model.registry import TAG_MODEL_SHA256
from tests.model.byo_models import save_team_model
from tests.model.test_importing import pipeline, registry  # noqa: F401 (fixtures)
from tests.model.test_registry import migrated_store  # noqa: F401 (a fixture)

# Code an attacker would put in the model folder: it leaves a marker when it is imported.
PAYLOAD = "from pathlib import Path\nPath({marker!r}).write_text('code ran')\n"


@pytest.fixture
def imported(registry, pipeline, tmp_path):  # noqa: F811
    return import_model(registry, str(save_team_model(tmp_path / "team", pipeline=pipeline)))


def _sentinels(home: Path, tmp_path: Path) -> list[Path]:
    """A file in the index store and one beside the home, where escaping tags would point."""
    found = []
    for folder in (home / "indexes", tmp_path / "indexes", tmp_path / "elsewhere"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "keep.txt").write_text("keep me")
        found.append(folder / "keep.txt")
    return found


@pytest.mark.parametrize(
    "tag",
    [
        "sha256:../../../indexes",  # the finding: resolves beside LOCKSTEP_HOME
        "sha256:../../indexes",  # the index store itself
        "../../../elsewhere",
        "sha256:/tmp",
        "sha256:" + "a" * 31 + "\0" + "a" * 32,
        "sha256:" + "a" * 65,
    ],
)
def test_a_tag_that_is_not_a_digest_is_refused_and_nothing_outside_the_cache_is_touched(
    registry, imported, lockstep_home, tmp_path, tag  # noqa: F811
):
    keep = _sentinels(lockstep_home, tmp_path)
    mlflow.MlflowClient(registry.tracking_uri).set_model_version_tag(registry.model_name, imported.version, TAG_MODEL_SHA256, tag)
    with pytest.raises(UnsafePathError, match=f"tag {TAG_MODEL_SHA256} of version {imported.version}.*not a sha256"):
        registry.load_embedder(imported.version)
    assert all(p.read_text() == "keep me" for p in keep)
    assert sorted(p.name for p in (lockstep_home / "indexes").iterdir()) == ["keep.txt"]
    cache = lockstep_home / "cache" / "models"
    assert not cache.exists() or list(cache.iterdir()) == []  # not even a download was started


def test_a_tampered_cached_copy_with_a_matching_lockstep_json_is_downloaded_again_never_run(
    registry, imported, lockstep_home, tmp_path  # noqa: F811
):
    first = registry.load_embedder(imported.version)
    folder = Path(first.model_dir)
    assert folder.parent == (lockstep_home / "cache" / "models").resolve()
    marker = tmp_path / "pwned"
    (folder / "team_model.py").write_text(PAYLOAD.format(marker=str(marker)))
    # The attacker also writes the "sidecar": a lockstep.json vouching for the tampered folder.
    (folder / META_FILE).write_text(json.dumps({"digest": directory_digest(folder)}))
    with pytest.raises(ModelIntegrityError, match="fails its checksum"):  # the registry's digest is not fooled
        PyfuncEmbedder.load(folder, expected_sha256=imported.tags[TAG_MODEL_SHA256])
    again = registry.load_embedder(imported.version)
    assert not marker.exists()  # the tampered code never ran
    assert again.fingerprint == imported.fingerprint
    assert directory_digest(again.model_dir) == imported.tags[TAG_MODEL_SHA256]
    assert "pwned" not in (Path(again.model_dir) / "team_model.py").read_text()


def test_a_symlink_planted_as_the_cache_folder_is_removed_not_followed(registry, imported, lockstep_home, tmp_path):  # noqa: F811
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep me")
    cache = lockstep_home / "cache" / "models"
    cache.mkdir(parents=True)
    (cache / imported.tags[TAG_MODEL_SHA256].removeprefix("sha256:")[:32]).symlink_to(outside, target_is_directory=True)
    embedder = registry.load_embedder(imported.version)
    assert embedder.fingerprint == imported.fingerprint and not Path(embedder.model_dir).is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (outside / "keep.txt").read_text() == "keep me"


def test_a_registry_artifact_that_does_not_match_its_tag_never_enters_the_cache(registry, imported, lockstep_home):  # noqa: F811
    other = "sha256:" + "0" * 64  # a well-formed digest that the artifact does not have
    mlflow.MlflowClient(registry.tracking_uri).set_model_version_tag(registry.model_name, imported.version, TAG_MODEL_SHA256, other)
    with pytest.raises(ModelIntegrityError, match=f"content digest .* but its {TAG_MODEL_SHA256} tag says {other}"):
        registry.load_embedder(imported.version)
    assert list((lockstep_home / "cache" / "models").iterdir()) == []  # the staging download was removed


def test_a_symlink_inside_a_model_folder_is_refused_before_anything_loads(registry, imported, tmp_path):  # noqa: F811
    copy = registry.load_embedder(imported.version).save(tmp_path / "copy")
    (tmp_path / "secret").write_text("not part of the model")
    (copy / "extra").symlink_to(tmp_path / "secret")
    with pytest.raises(ModelIntegrityError, match="symbolic links \\(extra\\)"):
        PyfuncEmbedder.load(copy)


def test_the_reembed_copy_is_checked_against_the_plan_not_its_own_lockstep_json(registry, imported, lockstep_home, tmp_path):  # noqa: F811
    """``prepare`` records the local copy's digest in the plan; a copy changed later is refused."""
    embedder = registry.load_embedder(imported.version)
    location = index_location(registry.model_name, imported.version)
    saved = embedder.save(location / "shards" / "model")
    plan = slot_plan.SlotPlan(
        model_name=registry.model_name, model_version=imported.version, model_uri=imported.model_uri,
        fingerprint=imported.fingerprint, location=str(location), model_sha256=directory_digest(saved),
    )
    assert slot_plan.load_embedder(plan).fingerprint == imported.fingerprint
    slot_plan._EMBEDDERS.clear()
    marker = tmp_path / "pwned"
    (saved / "team_model.py").write_text(PAYLOAD.format(marker=str(marker)))
    (saved / META_FILE).write_text(json.dumps({"digest": directory_digest(saved)}))
    with pytest.raises(ModelIntegrityError, match="fails its checksum"):
        slot_plan.load_embedder(plan)
    assert not marker.exists()
