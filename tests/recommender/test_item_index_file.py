"""The item index is built once with the version, stored beside the fit, and read (never built) on load.

Also: the MIPS -> nearest-neighbour reduction of the HNSW kind returns exactly the exact
inner-product top k where the graph search is exhaustive (a small catalogue).
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import numpy as np
import pytest

from lockstep.core.errors import IndexIntegrityError
from lockstep.recommender import mips
from lockstep.recommender.build import MANIFEST_FILE, read_slot_files, write_slot_files
from lockstep.recommender.item_index import ItemIndex, exact_score
from lockstep.recommender.live_version import LiveVersion
from tests.recommender import ml100k


def _catalogue(n: int, dim: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Items with heavy-tailed (lognormal) norms, as ALS gives popular items big norms."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = rng.lognormal(0.0, 0.8, size=(n, 1))
    return [f"i{i}" for i in range(n)], (directions * norms).astype(np.float32)


def _exact_top(user: np.ndarray, ids: list[str], vectors: np.ndarray, k: int, exclude: set[str] = frozenset()) -> list[str]:
    scored = sorted((-Fraction(exact_score(user, v)), i) for i, v in zip(ids, vectors, strict=True) if i not in exclude)
    return [i for _, i in scored[:k]]


def _build_counter(monkeypatch) -> list[str]:
    """Every ItemIndex build or add from now on is recorded (a replica must make none)."""
    calls: list[str] = []
    real_build, real_add = ItemIndex.build.__func__, ItemIndex.add

    def build(cls, *args, **kwargs):
        calls.append("build")
        return real_build(cls, *args, **kwargs)

    def add(self, *args, **kwargs):
        calls.append("add")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(ItemIndex, "build", classmethod(build))
    monkeypatch.setattr(ItemIndex, "add", add)
    return calls


# --- the reduction -------------------------------------------------------------------------------


def test_augmented_items_share_one_norm_and_keep_their_vectors_bit_for_bit():
    _, vectors = _catalogue(500, 8, seed=1)
    norm = mips.max_norm(vectors)
    augmented = mips.augment_items(vectors, norm)
    assert augmented.shape == (500, 9) and np.array_equal(augmented[:, :8], vectors)
    assert np.allclose(np.linalg.norm(augmented.astype(np.float64), axis=1), norm, rtol=1e-5)
    assert len(mips.beyond(vectors, norm)) == 0
    assert mips.beyond(vectors * 2, norm).size > 0
    assert np.array_equal(mips.augment_queries(vectors[:2])[:, 8], [0.0, 0.0])


def test_hnsw_over_augmented_vectors_returns_exactly_the_exact_inner_product_top_k():
    # efSearch (512) >= the catalogue (400): the graph search visits every item, so the
    # reduction itself is what is tested: the L2 nearest are exactly the largest inner products.
    ids, vectors = _catalogue(400, 16, seed=2)
    index = ItemIndex.build(ids, vectors, kind="hnsw")
    assert index.kind == "hnsw" and index.ef_search >= len(ids)
    rng = np.random.default_rng(3)
    for user in rng.normal(size=(25, 16)).astype(np.float32):
        exclude = {ids[j] for j in rng.choice(len(ids), 5, replace=False)}
        hits = index.recommend(user, k=10, exclude=exclude)
        assert [i for i, _ in hits] == _exact_top(user, ids, vectors, 10, exclude)
        assert all(score == exact_score(user, vectors[ids.index(i)]) for i, score in hits)


def test_an_item_added_beyond_the_build_norm_is_still_found():
    ids, vectors = _catalogue(300, 8, seed=4)
    index = ItemIndex.build(ids, vectors, kind="hnsw")
    big = vectors[:1] / np.linalg.norm(vectors[0]) * (10 * index.max_norm)
    index.add(["big"], big)
    assert index.recommend(vectors[0], k=1) == [("big", exact_score(vectors[0], big[0]))]
    index.update(["big"], vectors[1:2] * 0)  # moved back inside: the old (beyond) label is gone
    assert "big" not in [i for i, _ in index.recommend(vectors[0], k=3)]


# --- stored with the version, read by replicas ---------------------------------------------------------


@pytest.fixture(scope="module")
def built_folder(tmp_path_factory):
    """A small fit's slot files with an HNSW item index (forced: MovieLens is below the threshold), built once."""
    model = ml100k.fitted("small")
    folder = tmp_path_factory.mktemp("recommender-build") / "v1"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LOCKSTEP_INDEX_STORE", raising=False)  # a local store: the mirror is a no-op
        manifest = write_slot_files(folder, model, "1", snapshot_seq=7, index_kind="hnsw")
    return folder, model, manifest


@pytest.fixture
def version_folder(built_folder, lockstep_home):
    """This test's own copy of the built version folder (tests tamper with it)."""
    source, model, manifest = built_folder
    folder = lockstep_home / "store" / "recommender" / "v1"
    shutil.copytree(source, folder)
    return folder, model, manifest


def test_the_build_stores_the_item_index_file_with_its_sha256_in_the_manifest(version_folder):
    folder, model, manifest = version_folder
    entry = manifest.item_index
    assert entry["kind"] == "hnsw" and entry["items"] == len(model.item_ids_) and entry["dim"] == model.dim_
    assert (folder / entry["file"]).is_file() and entry["file"] == f"items-{entry['sha256'][:16]}.faiss"
    on_disk = json.loads((folder / MANIFEST_FILE).read_text())
    assert on_disk["format"] == "lockstep.recommender-slot/2" and on_disk["item_index"] == entry
    assert not list(folder.glob(".*"))  # no temporary left behind


def test_a_replica_reads_the_stored_item_index_and_builds_nothing(version_folder, monkeypatch):
    folder, model, _ = version_folder
    built_here = LiveVersion(model, "1", index_kind="hnsw")  # the reference: what a build gives
    calls = _build_counter(monkeypatch)
    loaded, manifest = read_slot_files(folder, model.fingerprint)
    live = LiveVersion(loaded, "1")
    assert calls == [] and live.index.kind == "hnsw" and len(live.index) == len(model.item_ids_)
    for user in ["1", "196", "500"]:
        assert live.recommend(user, 10) == built_here.recommend(user, 10)
    # The stored index is taken once: a second LiveVersion of the same model builds its own.
    LiveVersion(loaded, "1")
    assert calls[0] == "build"
    # The loaded index still takes fold-ins.
    result = live.fold_in_item("new-item", ["1", "2"])
    assert "new-item" in live.index and result.skipped == []


def test_a_missing_item_index_file_is_a_clear_error(version_folder):
    folder, model, manifest = version_folder
    (folder / manifest.item_index["file"]).unlink()
    with pytest.raises(IndexIntegrityError, match=r"items-[0-9a-f]{16}\.faiss is missing.*rebuild the version"):
        read_slot_files(folder, model.fingerprint)


def test_a_corrupt_item_index_file_is_a_clear_error(version_folder):
    folder, model, manifest = version_folder
    path = folder / manifest.item_index["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="fails its checksum .*corrupt or truncated"):
        read_slot_files(folder, model.fingerprint)
    path.write_bytes(b"not a faiss file")  # checksum made to match: FAISS itself refuses it
    _rewrite_entry(folder, path)
    with pytest.raises(IndexIntegrityError, match="is not a FAISS index FAISS can read"):
        read_slot_files(folder, model.fingerprint)


def test_an_item_index_of_other_vectors_is_refused(version_folder):
    folder, model, manifest = version_folder
    other = ItemIndex.build(list(model.item_ids_), model.item_factors_ * 2, kind="hnsw")
    path = folder / manifest.item_index["file"]
    other.write(str(path))
    path = _rewrite_entry(folder, path, max_norm=other.max_norm)
    with pytest.raises(IndexIntegrityError, match="holds other item vectors than the version's fit"):
        read_slot_files(folder, model.fingerprint)
    _rewrite_entry(folder, path, kind="flat")
    with pytest.raises(IndexIntegrityError, match="does not fit this version: .*is not a 'flat' item index"):
        read_slot_files(folder, model.fingerprint)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("file", "../items-0123456789abcdef.faiss", "is not an items-<16 hex>.faiss name"),
    ("file", "items-0123456789abcdef.faiss", "is not named by its sha256"),
    ("sha256", "xyz", "is not a sha256"),
    ("kind", "ivf", "kind 'ivf' is not one of flat, hnsw"),
])
def test_a_malformed_manifest_entry_is_refused_by_name(version_folder, field, value, message):
    folder, model, _ = version_folder
    manifest_path = folder / MANIFEST_FILE
    data = json.loads(manifest_path.read_text())
    data["item_index"][field] = value
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(IndexIntegrityError, match=message):
        read_slot_files(folder, model.fingerprint)


def test_a_version_built_before_the_index_was_stored_still_loads_and_builds_it(version_folder, monkeypatch):
    folder, model, manifest = version_folder
    manifest_path = folder / MANIFEST_FILE
    data = json.loads(manifest_path.read_text())
    (folder / data.pop("item_index")["file"]).unlink()
    data["format"] = "lockstep.recommender-slot/1"
    manifest_path.write_text(json.dumps(data))
    calls = _build_counter(monkeypatch)
    loaded, old = read_slot_files(folder, model.fingerprint)
    assert old.item_index is None
    LiveVersion(loaded, "1")
    assert calls[0] == "build"


def test_a_version_built_on_one_host_is_read_on_another_from_the_store(s3_store, monkeypatch):
    from lockstep.index import mirror
    from lockstep.index.storage import index_location

    model = ml100k.fitted("small")
    manifest = write_slot_files(index_location("recommender", 1), model, "1", snapshot_seq=0)
    public = mirror.public_location(index_location("recommender", 1))
    assert public.startswith("s3://") and manifest.item_index["kind"] == "flat"
    s3_store.as_host("b")
    assert not index_location("recommender", 1).exists()
    calls = _build_counter(monkeypatch)
    loaded, _ = read_slot_files(public, model.fingerprint)
    live = LiveVersion(loaded, "1")
    assert calls == [] and (index_location("recommender", 1) / manifest.item_index["file"]).is_file()
    assert [i for i, _ in live.recommend("1", 5)] == _exact_top(
        model.user_vectors(["1"])[0], list(model.item_ids_), model.item_factors_, 5)


def _rewrite_entry(folder, path, **changes):
    """Point the manifest at ``path`` as it now is (its sha256 and content name), plus ``changes``."""
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    renamed = path.with_name(f"items-{sha[:16]}.faiss")
    path.rename(renamed)
    manifest_path = folder / MANIFEST_FILE
    data = json.loads(manifest_path.read_text())
    data["item_index"].update(file=renamed.name, sha256=sha, **changes)
    manifest_path.write_text(json.dumps(data))
    return renamed
