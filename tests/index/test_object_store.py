"""The index store on an S3-protocol server (moto): hosts that share no folder share versions.

Each test has a bucket of its own and simulates hosts by their caches (``s3_store.as_host``):
what one host built, another host loads from the store alone, verified by checksum; a
version is published manifest-last; a killed worker's shard checkpoint resumes on another
host; deleting a version deletes it from the store, and only a version folder of this store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lockstep.core.errors import ConfigurationError, IndexIntegrityError
from tests.index.loads_support import CountingEmbedder, corpus, registered_world
from tests.index.test_load_checkpoints import kill_mid_shard

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 300


@pytest.fixture
def world(s3_store):
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(120)]
    return registered_world([" ".join(rng.choice(words, 8)) for _ in range(RECORDS)])


def _store_keys(s3_store) -> dict[str, int]:
    from lockstep.core.config import settings
    from lockstep.index.object_store import object_store

    return object_store(settings().remote_store()).listing("")


def test_a_version_built_on_one_host_is_loaded_on_another_from_the_store_alone(world, s3_store):
    from lockstep.index.build import reembed_version
    from lockstep.index.storage import load_index
    from lockstep.store import routing

    store, registry, model = world
    reembed_version(store, registry, 1, shard_size=100, workers=1)
    location = routing.read_table().slot("1").index_location
    assert location == f"{s3_store.url}/{registry.model_name}/v1"  # what every host resolves
    keys = _store_keys(s3_store)
    assert f"{registry.model_name}/v1/manifest.json" in keys
    assert not any("/shards/" in k for k in keys)  # publish cleared the build's shards in the store too

    built = load_index(location)
    s3_store.as_host("b")
    assert not s3_store.cache("b").exists()
    served = load_index(location, expected_fingerprint=model.fingerprint)
    assert served.location.is_relative_to(s3_store.cache("b"))
    assert served.manifest == built.manifest and len(served.index) == RECORDS
    query = model.transform(["w1 w2 w3"])
    assert served.index.search(query, 5) == built.index.search(query, 5)


def test_a_version_is_published_manifest_last_and_a_torn_publish_leaves_the_old_one(world, s3_store, monkeypatch):
    from lockstep.index import mirror
    from lockstep.index.storage import index_location, load_index, save_index
    from lockstep.index.vector_index import IndexSpec, VectorIndex

    _, registry, model = world
    location = index_location(registry.model_name, 2)
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype("float32")

    def saved(n: int) -> None:
        index = VectorIndex(8, IndexSpec(kind="flat"))
        index.add([f"r{i}" for i in range(n)], vectors[:n])
        save_index(index, location, model_name=registry.model_name, model_version=2,
                   fingerprint=model.fingerprint, applied_seq=n)

    pushed: list[str] = []
    real_push = mirror.push
    monkeypatch.setattr(mirror, "push", lambda path: (pushed.append(Path(path).name), real_push(path)))
    saved(10)
    assert pushed[-1] == "manifest.json" and len(pushed) == 3  # index data, ids, then the manifest

    def torn(path):
        if Path(path).name == "manifest.json":
            raise ConnectionError("the network went away before the manifest")
        real_push(path)

    monkeypatch.setattr(mirror, "push", torn)
    with pytest.raises(ConnectionError):
        saved(20)
    public = mirror.public_location(location)
    assert public.startswith("s3://")
    s3_store.as_host("b")
    seen = load_index(public)
    assert len(seen.index) == 10 and seen.applied_seq == 10  # the old version, whole


def test_the_cache_is_verified_a_torn_copy_is_fetched_again_a_corrupt_store_refused(world, s3_store):
    from lockstep.core.config import settings
    from lockstep.index.build import reembed_version
    from lockstep.index.object_store import object_store
    from lockstep.index.storage import load_index
    from lockstep.store import routing

    store, registry, _ = world
    reembed_version(store, registry, 1, shard_size=150, workers=1)
    location = routing.read_table().slot("1").index_location
    s3_store.as_host("b")
    first = load_index(location)
    data = first.location / first.manifest.index_file
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a torn copy in host b's cache
    again = load_index(location)
    assert again.manifest.index_sha256 == first.manifest.index_sha256 and len(again.index) == RECORDS

    bucket = object_store(settings().remote_store())
    key = f"{registry.model_name}/v1/{first.manifest.index_file}"
    broken = first.location.parent / "broken.faiss"
    broken.write_bytes(b"not an index")
    bucket.put(broken, key)  # the store itself is corrupt
    shutil.rmtree(s3_store.cache("b"))
    with pytest.raises(IndexIntegrityError, match="checksum"):
        load_index(location)


def test_deleting_a_version_deletes_it_in_the_store_and_only_a_version_folder_of_this_store(world, s3_store):
    from lockstep.index.build import reembed_version
    from lockstep.index.storage import UnsafeIndexPathError, delete_index_version
    from lockstep.store import routing

    store, registry, _ = world
    reembed_version(store, registry, 1, shard_size=150, workers=1)
    location = routing.read_table().slot("1").index_location
    before = _store_keys(s3_store)
    for foreign in (
        f"s3://another-bucket/indexes/{registry.model_name}/v1",
        f"{s3_store.url}/{registry.model_name}/v1/../../escape",
        f"{s3_store.url}/{registry.model_name}",
        f"{s3_store.url}/{registry.model_name}/v1/shards",
        f"{s3_store.url}/{registry.model_name}/vx",
        "gs://bucket/indexes/m/v1",
    ):
        with pytest.raises(UnsafeIndexPathError):
            delete_index_version(foreign)
    assert _store_keys(s3_store) == before  # nothing was deleted
    s3_store.as_host("b")  # a host that never cached it deletes it from the store
    assert delete_index_version(location) is True
    assert not any(k.startswith(f"{registry.model_name}/v1/") for k in _store_keys(s3_store))
    assert delete_index_version(location) is False


@pytest.mark.parametrize("store, problem", [
    ("s3://Bad_Bucket/indexes", "lowercase S3 bucket"),
    ("s3://bucket/../indexes", "no '..'"),
    ("s3://bucket/in dexes", "plain path segments"),
    ("gs://bucket/indexes", "s3://bucket/prefix"),
])
def test_an_unusable_store_url_is_refused_naming_what_is_wrong(lockstep_home, monkeypatch, store, problem):
    from lockstep.index.storage import store_root

    monkeypatch.setenv("LOCKSTEP_INDEX_STORE", store)
    with pytest.raises(ConfigurationError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        store_root()


def test_an_endpoint_that_is_not_http_is_refused(lockstep_home, monkeypatch):
    from lockstep.index.storage import store_root

    monkeypatch.setenv("LOCKSTEP_INDEX_STORE", "s3://bucket/indexes")
    monkeypatch.setenv("LOCKSTEP_S3_ENDPOINT_URL", "file:///etc")
    with pytest.raises(ConfigurationError, match="LOCKSTEP_S3_ENDPOINT_URL"):
        store_root()


def test_a_worker_killed_mid_shard_is_resumed_on_another_host_from_the_stored_checkpoint(s3_store, tmp_path):
    from lockstep.index.load_progress import load_status, start_load
    from lockstep.index.shards import ShardPacing, build_shard_columns, shard_paths
    from lockstep.index.storage import index_location

    n, block = 40, 4  # the 4th model call blocks: 3 chunks (12 texts) are checkpointed, and stored
    location_a = index_location("m", 3)
    start_load(location_a, model_version="3", seq=7, counts=[n], file=f"snapshot-7-{n}.parquet")
    kill_mid_shard(location_a / "shards", tmp_path / "marker", n, block, env=s3_store.env("a"))

    s3_store.as_host("b")  # another machine: nothing of host a's disk
    location_b = index_location("m", 3)
    assert not location_b.exists()
    assert load_status(location_b)["shards"][0]["done"] == 12  # what the dead worker told the store
    ids, texts = corpus(n)
    rerun = CountingEmbedder()
    result = build_shard_columns(rerun, ids, texts, 0, location_b / "shards", fingerprint="sha256:" + "0" * 64,
                                 snapshot_seq=7, batch_size=4, pacing=ShardPacing(checkpoint_s=0.0))
    assert rerun.texts == texts[12:] and not result.skipped  # only what followed the stored checkpoint
    assert load_status(location_b)["shards"][0]["state"] == "done"
    keys = _store_keys(s3_store)
    vec, meta = shard_paths(Path("m/v3/shards"), 0)
    assert {str(vec), str(meta)} <= set(keys) and not any(".parts/" in k for k in keys)


def _lockstep_cli(s3_store, host: str, *args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("lockstep"))
    env = {**os.environ, **s3_store.env(host)}
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_cli_checks_the_store_and_shows_a_version_another_host_built(world, s3_store):
    import json

    from lockstep.index.build import reembed_version

    store, registry, _ = world
    fresh = _lockstep_cli(s3_store, "c", "index", "store")
    assert fresh.returncode == 0, fresh.stderr
    checked = json.loads(fresh.stdout)
    assert checked["kind"] == "s3" and checked["store"] == s3_store.url and checked["write_read_delete"] is True
    assert checked["cache"] == str(s3_store.cache("c"))
    assert not any(".lockstep-probe" in k for k in _store_keys(s3_store))  # the probe cleans up after itself

    reembed_version(store, registry, 1, shard_size=150, workers=1)
    shown = _lockstep_cli(s3_store, "c", "index", "show", "--model-version", "1")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["record_count"] == RECORDS  # host c verified the files it pulled

    missing_bucket = subprocess.run(
        [str(Path(sys.executable).with_name("lockstep")), "index", "store"],
        env={**os.environ, **s3_store.env("c"), "LOCKSTEP_INDEX_STORE": "s3://no-such-bucket-here/indexes"},
        capture_output=True, text=True, timeout=300)
    assert missing_bucket.returncode != 0 and "no-such-bucket-here" in missing_bucket.stderr
