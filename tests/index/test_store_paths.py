"""Issue 21: no version, manifest or routing-table value makes the index store read, write or
delete outside ``LOCKSTEP_INDEX_STORE`` (or outside a version folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lockstep.core.errors import IndexIntegrityError, UnsafePathError
from lockstep.index.manifest import MANIFEST
from lockstep.index.shards import clear_shards, shard_files, shard_paths
from lockstep.index.snapshot import snapshot_name
from lockstep.index.storage import (
    UnsafeIndexPathError,
    delete_index_version,
    index_location,
    load_index,
    save_index,
    store_root,
    verify_index_files,
)
from lockstep.index.vector_index import IndexSpec, VectorIndex


@pytest.fixture
def precious(tmp_path):
    """A folder outside the store that must survive every test untouched."""
    folder = tmp_path / "precious" / "v1"
    folder.mkdir(parents=True)
    (folder / "data.faiss").write_text("keep me")
    return folder


def _untouched(precious) -> bool:
    return sorted(p.name for p in precious.iterdir()) == ["data.faiss"] and (precious / "data.faiss").read_text() == "keep me"


@pytest.mark.parametrize("version", ["../..", "1/../../../precious", "../../precious/v1", "-1", "01", "1 ", "", "0", "1\0"])
def test_a_version_that_is_not_a_plain_integer_never_becomes_a_folder(lockstep_home, precious, version):
    with pytest.raises(UnsafePathError, match="model version of 'm'"):
        index_location("m", version)
    assert not store_root().exists() or list(store_root().rglob("*")) == []
    assert _untouched(precious)


def test_a_model_folder_that_is_a_symlink_out_of_the_store_is_refused(lockstep_home, precious):
    store_root().mkdir(parents=True)
    (store_root() / "m").symlink_to(precious.parent, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside"):
        index_location("m", 1)
    with pytest.raises(UnsafeIndexPathError, match="refusing to delete"):
        delete_index_version(str(store_root() / "m" / "v1"))
    assert _untouched(precious)


@pytest.mark.parametrize(
    "location",
    [
        "{root}/m/v1/../../../precious/v1",  # a routing-table value with '..'
        "{root}/m/../../precious/v1",
        "{root}/m/v1/..",  # the model folder, not a version
        "{root}/m/not-a-version",  # only v<integer> folders are index versions
        "{root}/m/v01",
        "{root}/m/v1\0",
    ],
)
def test_retention_cannot_delete_outside_the_store_whatever_the_slot_says(lockstep_home, precious, location):
    from lockstep.store import routing

    root = store_root()
    for folder in ("v1", "not-a-version", "v01"):
        (root / "m" / folder).mkdir(parents=True, exist_ok=True)
    value = location.format(root=root)
    if "\0" not in value:  # a NUL cannot even be stored in the routing table's text column
        routing.register_slot("1", "models:/m/1", value, "sha256:" + "1" * 64, state="retired")
        value = routing.read_table().slot("1").index_location
    with pytest.raises(UnsafeIndexPathError, match="refusing to delete"):
        delete_index_version(value)
    assert _untouched(precious)
    assert sorted(p.name for p in (root / "m").iterdir()) == ["not-a-version", "v01", "v1"]


def _saved_index(location):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(8, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.build([f"id{i}" for i in range(8)], vectors, IndexSpec(kind="flat"))
    return save_index(index, location, model_name="m", model_version=1, fingerprint="sha256:" + "f" * 64, applied_seq=1)


def test_a_data_file_that_is_a_symlink_out_of_its_folder_is_never_read(tmp_path, precious):
    location = tmp_path / "v1"
    manifest = _saved_index(location)
    (location / manifest.index_file).unlink()
    (location / manifest.index_file).symlink_to(precious / "data.faiss")
    for load in (load_index, verify_index_files):
        with pytest.raises(IndexIntegrityError, match="outside"):
            load(location)
    assert _untouched(precious)


def test_saving_over_a_version_removes_stale_links_not_what_they_point_to(tmp_path, precious):
    location = tmp_path / "v1"
    _saved_index(location)
    (location / "index-000000000000.faiss").symlink_to(precious / "data.faiss")  # stale: in no manifest
    _saved_index(location)
    assert not (location / "index-000000000000.faiss").exists()
    assert _untouched(precious)


def test_a_manifest_naming_a_file_outside_its_folder_is_refused(tmp_path, precious):
    location = tmp_path / "v1"
    _saved_index(location)
    data = json.loads((location / MANIFEST).read_text())
    (location / MANIFEST).write_text(json.dumps({**data, "index_file": "../precious/v1/data.faiss"}))
    with pytest.raises(IndexIntegrityError, match="no path separators"):
        load_index(location)
    assert _untouched(precious)


def test_shard_and_snapshot_values_from_tasks_are_plain_numbers(tmp_path):
    assert shard_files(tmp_path, [0, 2]) == [tmp_path / "shard-00000.npy", tmp_path / "shard-00002.npy"]
    for bad in (-1, "1", "../x", True, 1.0, 10**7):
        with pytest.raises(UnsafePathError, match="shard number"):
            shard_paths(tmp_path, bad)
    assert snapshot_name(3, 5000) == "snapshot-3-5000.parquet"
    for seq, size in ((-1, 10), ("../x", 10), (1, 0), (1, "5/../..")):
        with pytest.raises(UnsafePathError, match="snapshot sequence|shard size"):
            snapshot_name(seq, size)


def test_clearing_shards_that_are_a_symlink_removes_the_link_only(tmp_path, precious):
    location = tmp_path / "v1"
    location.mkdir()
    (location / "shards").symlink_to(precious, target_is_directory=True)
    clear_shards(location)
    assert not (location / "shards").exists() and _untouched(precious)


def test_a_reembed_plan_from_another_task_is_checked_where_it_is_rebuilt(lockstep_home, precious):
    from lockstep.index.slot_plan import SlotPlan

    good = {"model_name": "m", "model_version": "1", "model_uri": "models:/m/1", "fingerprint": "sha256:" + "f" * 64,
            "location": str(index_location("m", 1))}
    assert SlotPlan(**good).location == good["location"]
    for change, problem in [
        ({"location": str(precious)}, "outside"),
        ({"location": f"{store_root()}/m/../../precious/v1"}, "outside"),
        ({"location": "m/v1"}, "absolute path"),
        ({"model_version": "1/../.."}, "model version"),
        ({"model_sha256": "sha256:../../x"}, "model digest"),
    ]:
        with pytest.raises(UnsafePathError, match=problem):
            SlotPlan(**{**good, **change})
    assert _untouched(precious)
