"""Index versions on disk: sharded build, catch-up, manifest, checksums, fingerprints, safe deletes,
and the scale path of the re-embed (chunked snapshots read one row group per shard)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lockstep.core.errors import (
    ConfigurationError,
    FingerprintMismatchError,
    IndexIntegrityError,
    LockstepError,
)
from lockstep.index import snapshot as snapshot_file
from lockstep.index.catch_up import catch_up
from lockstep.index.manifest import MANIFEST, read_manifest
from lockstep.index.shards import (
    build_index,
    build_shard,
    build_shard_columns,
    merge_shards,
    shard_bounds,
)
from lockstep.index.snapshot import (
    DEFAULT_TARGET_SHARDS,
    read_snapshot_shard,
    shard_size_for,
    write_snapshot,
)
from lockstep.index.storage import (
    UnsafeIndexPathError,
    delete_index_version,
    index_location,
    load_index,
    save_index,
    store_root,
    verify_index_files,
)
from lockstep.index.validation import validate_built_index
from lockstep.index.vector_index import IndexSpec, VectorIndex
from lockstep.model.embedding import TextEmbedder
from lockstep.store.records import RecordStore

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
    monkeypatch.setenv("LOCKSTEP_INDEX_STORE", "s3://bucket/indexes")  # an object store: this host's cache
    assert index_location("m", 1) == (lockstep_home / "index-cache" / "m" / "v1").resolve()
    monkeypatch.setenv("LOCKSTEP_INDEX_STORE", "gs://bucket/indexes")
    with pytest.raises(ConfigurationError, match="s3://bucket/prefix"):
        index_location("m", 1)


# --- safety: deletes only inside the store, confined manifests (issue 9 item 10) ---------------


def test_delete_index_version_removes_a_version_folder_inside_the_store(lockstep_home):
    loc = index_location("m", 7)
    (loc / "shards").mkdir(parents=True)
    (loc / "manifest.json").write_text("{}")
    assert delete_index_version(str(loc)) is True
    assert not loc.exists() and loc.parent.exists()  # the model folder and the store stay
    assert delete_index_version(f"file://{loc}") is False  # already gone: nothing to do, no error


@pytest.mark.parametrize(
    "where",
    ["outside", "root", "model_folder", "dotdot_escape", "symlink_out", "nested", "relative", "url"],
)
def test_delete_index_version_refuses_anything_else_and_removes_nothing(lockstep_home, tmp_path, where):
    outside = tmp_path / "precious" / "v1"
    outside.mkdir(parents=True)
    (outside / "data").write_text("keep me")
    root = store_root()
    (root / "m" / "v1" / "deeper").mkdir(parents=True)
    link = root / "m" / "v9"
    link.symlink_to(outside, target_is_directory=True)
    location = {
        "outside": str(outside),
        "root": str(root),
        "model_folder": str(root / "m"),
        "dotdot_escape": f"{root}/m/../../precious/v1",
        "symlink_out": str(link),
        "nested": str(root / "m" / "v1" / "deeper"),
        "relative": "m/v1",
        "url": "s3://bucket/indexes/m/v1",
    }[where]
    with pytest.raises(UnsafeIndexPathError, match="refusing to delete"):
        delete_index_version(location)
    assert (outside / "data").read_text() == "keep me"
    assert (root / "m" / "v1" / "deeper").is_dir()


@pytest.fixture
def saved(model, store, tmp_path):
    _, index = build(model, store, tmp_path / "v1")
    save_index(index, tmp_path / "v1", model_name="m", model_version=1, fingerprint=model.fingerprint, applied_seq=1)
    return tmp_path / "v1"


def _rewrite_manifest(loc, change):
    data = json.loads((loc / MANIFEST).read_text())
    data = change(data)
    (loc / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: [1, 2], "expected a JSON object, got list"),
        (lambda d: {k: v for k, v in d.items() if k not in ("index_file", "dim")}, "missing keys ['dim', 'index_file']"),
        (lambda d: {**d, "dim": "24"}, "dim must be int, got str"),
        (lambda d: {**d, "record_count": True}, "record_count must be int, got bool"),
        (lambda d: {**d, "spec": []}, "spec must be dict, got list"),
        (lambda d: {**d, "index_file": "../../../etc/passwd"}, "no path separators"),
        (lambda d: {**d, "ids_file": "/etc/passwd"}, "no path separators"),
        (lambda d: {**d, "index_file": ".."}, "is not a file name"),
        (lambda d: {**d, "ids_file": "manifest.json"}, "not a hidden file or the manifest"),
        (lambda d: {**d, "index_sha256": "xyz"}, "index_sha256 must be 64 lowercase hex digits"),
    ],
)
def test_malformed_manifests_are_refused_naming_the_file_and_the_problem(saved, change, problem):
    _rewrite_manifest(saved, change)
    for reader in (load_index, verify_index_files, read_manifest):
        with pytest.raises(IndexIntegrityError) as err:
            reader(saved)
        assert str(saved / MANIFEST) in str(err.value) and problem in str(err.value)


def test_a_manifest_that_is_not_json_is_refused_naming_the_file(saved):
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(IndexIntegrityError, match=r"manifest\.json is not valid JSON"):
        load_index(saved)


# --- scale: chunked snapshots, row groups per shard, merge one shard at a time (issue 10) ------


class CountingFile:
    """A read-only file that records every byte range read from it."""

    def __init__(self, path):
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.reads: list[tuple[int, int]] = []
        self.closed = False

    def read(self, n=-1):
        start = self._fh.tell()
        data = self._fh.read(n)
        self.reads.append((start, len(data)))
        return data

    def seek(self, offset, whence=0):
        return self._fh.seek(offset, whence)

    def tell(self):
        return self._fh.tell()

    def seekable(self):
        return True

    def readable(self):
        return True

    def writable(self):
        return False

    def close(self):
        self.closed = True
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_shard_size_follows_the_record_count():
    assert shard_size_for(1_000_000) == 62_500  # 16 shards at 1M records, not 500
    assert len(range(0, 1_000_000, shard_size_for(1_000_000))) == DEFAULT_TARGET_SHARDS
    assert shard_size_for(1_000_000, target_shards=40) == 25_000
    assert shard_size_for(18_000) == 5_000  # a small store: few tasks that each do real work
    assert shard_size_for(0) == 5_000
    assert shard_size_for(100_000_000) == 250_000  # a huge one: more shards, each bounded
    with pytest.raises(LockstepError, match="at least 1"):
        shard_size_for(10, target_shards=0)


def test_each_shard_reads_only_its_own_row_group(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    store = RecordStore(f"sqlite:///{tmp_path / 'long.sqlite'}")
    rng = np.random.default_rng(1)
    store.upsert_many({"id": f"id{i:04d}", "text": " ".join(rng.choice(WORDS, 150))} for i in range(1200))
    counts, seq = write_snapshot(store, tmp_path, 200)
    assert counts == [200] * 6 and seq == store.head()
    path = tmp_path / f"snapshot-{seq}-200.parquet"
    size = path.stat().st_size
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 6

    def byte_range(rg):
        cols = [meta.row_group(rg).column(c) for c in range(meta.num_columns)]
        start = min(c.dictionary_page_offset or c.data_page_offset for c in cols)
        return start, start + sum(c.total_compressed_size for c in cols)

    opened: list[CountingFile] = []

    def counting_open(p):
        opened.append(CountingFile(p))
        return opened[-1]

    monkeypatch.setattr(snapshot_file, "_open_snapshot", counting_open)
    chunk = read_snapshot_shard(path, 2)
    truth = store.snapshot().records[400:600]
    assert chunk.ids == [r.id for r in truth] and chunk.texts == [r.text for r in truth]
    assert opened[0].closed
    # every read but the footer's (one read that ends at the end of the file) stays inside row group 2
    body = [(s, n) for s, n in opened[0].reads if s + n < size]
    lo, hi = byte_range(2)
    assert body and all(lo <= s and s + n <= hi for s, n in body), (body, (lo, hi))
    footer = [(s, n) for s, n in opened[0].reads if s + n >= size]
    assert len(footer) <= 2 and sum(n for _, n in footer) <= 64 * 1024 + meta.serialized_size
    assert sum(n for _, n in opened[0].reads) < size / 2  # a shard reads about 1/6 of the file, not all of it
    with pytest.raises(LockstepError, match="shard 6 does not exist"):
        read_snapshot_shard(path, 6)


def test_a_retried_snapshot_reuses_its_file_and_an_empty_store_is_refused(store, tmp_path):
    first = write_snapshot(store, tmp_path, 500)
    stamp = (tmp_path / f"snapshot-{first[1]}-500.parquet").stat().st_mtime_ns
    assert write_snapshot(store, tmp_path, 500) == first == ([500, 500, 200], store.head())
    assert (tmp_path / f"snapshot-{first[1]}-500.parquet").stat().st_mtime_ns == stamp
    empty = RecordStore(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    with pytest.raises(LockstepError, match="the record store is empty"):
        write_snapshot(empty, tmp_path / "e", 100)
    assert not list((tmp_path / "e").glob("*"))  # nothing half-written


def _sharded_build(model, store, tmp_path, shard_size, spec=None):
    counts, seq = write_snapshot(store, tmp_path / "shards", shard_size)
    path = tmp_path / "shards" / f"snapshot-{seq}-{shard_size}.parquet"
    results = []
    for shard in range(len(counts)):
        chunk = read_snapshot_shard(path, shard)
        results.append(build_shard_columns(
            model, chunk.ids, chunk.texts, shard, tmp_path / "shards",
            fingerprint=model.fingerprint, snapshot_seq=seq, batch_size=64,
        ))
    return seq, merge_shards([r.path for r in results], spec)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_a_sharded_build_and_merge_equals_a_single_build(model, store, tmp_path, kind):
    snap = store.snapshot()
    _, merged = _sharded_build(model, store, tmp_path, 170, IndexSpec(kind=kind))
    single = VectorIndex.build(snap.ids, model.transform([r.text for r in snap.records]), IndexSpec(kind=kind))
    assert sorted(merged.ids) == sorted(single.ids) == snap.ids
    np.testing.assert_allclose(merged.vectors_of(snap.ids), single.vectors_of(snap.ids), atol=1e-6)
    queries = model.transform([r.text for r in snap.records[::50]])
    exact = VectorIndex.build(snap.ids, model.transform([r.text for r in snap.records]))
    if kind == "flat":
        assert [h.ids for h in merged.search(queries, 10)] == [h.ids for h in single.search(queries, 10)]
    else:  # approximate: as good as exact search on these queries, like the single build
        found = [len(set(a.ids) & set(e.ids)) / 10 for a, e in zip(merged.search(queries, 10), exact.search(queries, 10), strict=True)]
        assert np.mean(found) >= 0.95


def test_catch_up_after_a_chunked_snapshot_never_resurrects_deletes(model, store, tmp_path):
    ids = store.snapshot().ids
    with store.stream_snapshot(100) as stream:
        first = next(stream.chunks)
        # written while the snapshot is being read: a record of a later chunk is deleted,
        # one is changed, one is created and deleted, one is deleted and created again
        store.delete(ids[900])
        store.upsert(ids[901], "w1 w2 w3 changed while streaming")
        store.upsert("zz-new", "w4 w5")
        store.delete("zz-new")
        store.delete(ids[5])
        store.upsert(ids[5], "w9 w8 back again")
        rest = [rid for chunk in stream.chunks for rid in chunk.ids]
    assert first.ids + rest == ids  # the stream is one consistent state: the writes are not in it
    seq_before = stream.seq
    seq, index = _sharded_build(model, store, tmp_path, 300)
    assert seq > seq_before
    # writes after this snapshot too
    store.delete(ids[10])
    store.delete(ids[11])
    store.upsert(ids[11], "w1 w6 resurrected by a new upsert only")
    store.upsert("zz-late", "w2 w3")
    store.delete("zz-late")
    applied = catch_up(index, model, store, seq)
    live = store.snapshot()
    assert applied == store.head() and sorted(index.ids) == live.ids
    assert ids[900] not in index and ids[10] not in index and "zz-new" not in index and "zz-late" not in index
    np.testing.assert_allclose(
        index.vectors_of([ids[11]])[0], model.embed_query("w1 w6 resurrected by a new upsert only"), atol=1e-5
    )
    # catching up from the older sequence again (a replayed log) changes nothing
    catch_up(index, model, store, seq_before)
    assert sorted(index.ids) == live.ids


def test_validation_streams_the_store_and_finds_missing_and_extra_records(model, store, tmp_path):
    seq, index = _sharded_build(model, store, tmp_path, 400)
    ok, applied = validate_built_index(index, seq, model, store, expected_fingerprint=model.fingerprint, chunk_size=97)
    assert ok.ok and ok.figures["store_count"] == 1200 and applied == seq, ok.problems
    index.remove(["id0003"])
    index.upsert(["ghost"], model.transform(["w1 w2"]))
    bad, _ = validate_built_index(index, seq, model, store, expected_fingerprint=model.fingerprint, chunk_size=97)
    assert not bad.ok and not bad.checks["id_set"]
    assert "1 records missing from the index (e.g. ['id0003'])" in bad.problems[0]
    assert "1 extra (e.g. ['ghost'])" in bad.problems[0]
