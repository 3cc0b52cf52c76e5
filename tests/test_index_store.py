"""Index versions on disk: sharded build, catch-up, manifest, checksums, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lockstep.embedding import TextEmbedder
from lockstep.errors import ConfigurationError, FingerprintMismatchError, IndexIntegrityError
from lockstep.index_store import (
    MANIFEST,
    build_index,
    build_shard,
    catch_up,
    index_location,
    load_index,
    merge_shards,
    save_index,
    shard_bounds,
    verify_index_files,
)
from lockstep.records import RecordStore
from lockstep.vector_index import IndexSpec

WORDS = [f"w{i}" for i in range(300)]


@pytest.fixture
def store(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    rng = np.random.default_rng(0)
    store.upsert_many({"id": f"id{i:04d}", "text": " ".join(rng.choice(WORDS, 20))} for i in range(1200))
    return store


@pytest.fixture
def model(store):
    return TextEmbedder(dim=24, min_df=1, stop_words=None).fit([r.text for r in store.snapshot().records])


def build(model, store, location, **kw):
    snap = store.snapshot()
    index = build_index(model, snap.records, location, fingerprint=model.fingerprint, snapshot_seq=snap.seq, **kw)
    return snap, index


def test_sharded_build_equals_one_shot_embedding(model, store, tmp_path):
    snap, index = build(model, store, tmp_path / "v1", shard_size=250)
    assert len(list((tmp_path / "v1" / "shards").glob("*.npy"))) == 5
    assert sorted(index.ids) == snap.ids
    sample = snap.ids[::97]
    fresh = model.transform([r.text for r in snap.records][::97])
    np.testing.assert_allclose(index.vectors_of(sample), fresh, atol=1e-6)


def test_catch_up_applies_writes_after_the_snapshot_and_never_resurrects_deletes(model, store, tmp_path):
    snap, index = build(model, store, tmp_path / "v1")
    store.upsert("id0001", "w1 w2 w3 changed text")
    store.delete("id0002")
    store.upsert("id9999", "w5 w6 brand new")
    store.delete("id9999")  # created and deleted after the snapshot
    store.upsert("id0003", "w7 w8")
    store.delete("id0003")
    applied = catch_up(index, model, store, snap.seq)
    assert applied == store.head()
    assert sorted(index.ids) == store.snapshot().ids
    np.testing.assert_allclose(index.vectors_of(["id0001"])[0], model.embed_query("w1 w2 w3 changed text"), atol=1e-5)
    # replaying the same changes again is harmless
    assert catch_up(index, model, store, snap.seq) == applied
    assert sorted(index.ids) == store.snapshot().ids
    assert catch_up(index, model, store, applied) == applied


def test_save_load_round_trip_with_manifest(model, store, tmp_path):
    snap, index = build(model, store, tmp_path / "v1", spec=IndexSpec(kind="hnsw"))
    loc = tmp_path / "v1"
    manifest = save_index(index, loc, model_name="m", model_version=3, fingerprint=model.fingerprint, applied_seq=snap.seq)
    data = json.loads((loc / MANIFEST).read_text())
    for key in ("model_name", "model_version", "fingerprint", "dim", "metric", "index_type", "record_count",
                "applied_seq", "index_sha256", "built_at"):
        assert key in data
    assert manifest.record_count == 1200 and manifest.index_type == "hnsw" and manifest.model_version == "3"
    loaded = load_index(loc, expected_fingerprint=model.fingerprint)
    assert loaded.applied_seq == snap.seq
    q = model.transform(["w1 w2 w3"])
    assert loaded.index.search(q, 5)[0].ids == index.search(q, 5)[0].ids
    # a second save replaces the manifest atomically and drops nothing still referenced
    index.remove(["id0000"])
    save_index(index, loc, model_name="m", model_version=3, fingerprint=model.fingerprint, applied_seq=snap.seq + 1)
    assert len(load_index(loc).index) == 1199
    assert not list(loc.glob(".*.tmp"))


def test_corrupt_truncated_or_missing_files_are_refused(model, store, tmp_path):
    _, index = build(model, store, tmp_path / "v1")
    loc = tmp_path / "v1"
    manifest = save_index(index, loc, model_name="m", model_version=1, fingerprint=model.fingerprint, applied_seq=1)
    path = loc / manifest.index_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexIntegrityError, match="fails its checksum"):
        load_index(loc)
    with pytest.raises(IndexIntegrityError, match="fails its checksum"):
        verify_index_files(loc)
    path.unlink()
    with pytest.raises(IndexIntegrityError, match="is missing"):
        load_index(loc)
    with pytest.raises(IndexIntegrityError, match="manifest.json is missing"):
        load_index(tmp_path / "nothing-here")


def test_fingerprint_mismatch_names_both_spaces(model, store, tmp_path):
    _, index = build(model, store, tmp_path / "v1")
    save_index(index, tmp_path / "v1", model_name="m", model_version=1, fingerprint=model.fingerprint, applied_seq=1)
    other = TextEmbedder(dim=2, min_df=1, max_df=1.0, stop_words=None).fit(
        ["alpha beta gamma", "beta gamma delta", "gamma delta epsilon", "delta epsilon zeta"]
    )
    with pytest.raises(FingerprintMismatchError) as err:
        load_index(tmp_path / "v1", expected_fingerprint=other.fingerprint, model_label="m v2")
    assert model.fingerprint in str(err.value) and other.fingerprint in str(err.value)


def test_shards_are_reused_when_they_match_and_redone_when_not(model, store, tmp_path):
    records = store.snapshot().records[:100]
    first = build_shard(model, records, 0, tmp_path, fingerprint=model.fingerprint, snapshot_seq=5)
    again = build_shard(model, records, 0, tmp_path, fingerprint=model.fingerprint, snapshot_seq=5)
    assert not first.skipped and again.skipped
    other_seq = build_shard(model, records, 0, tmp_path, fingerprint=model.fingerprint, snapshot_seq=6)
    assert not other_seq.skipped
    (tmp_path / "shard-00000.npy").write_bytes(b"garbage")
    with pytest.raises(IndexIntegrityError, match="fails its checksum"):
        merge_shards([tmp_path / "shard-00000.npy"])
    assert shard_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]


def test_locations_live_under_the_store(lockstep_home, monkeypatch):
    loc = index_location("lockstep-embedder", 4)
    assert loc == (lockstep_home / "indexes" / "lockstep-embedder" / "v4").resolve()
    monkeypatch.setenv("LOCKSTEP_INDEX_STORE", "s3://bucket/indexes")
    with pytest.raises(ConfigurationError, match="only local paths"):
        index_location("m", 1)
