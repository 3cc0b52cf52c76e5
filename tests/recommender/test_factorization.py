"""ALSRecommender: deterministic fits, id maps, fingerprint, one checksummed file."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from lockstep.core.errors import NotFittedError
from lockstep.model.integrity import ModelIntegrityError, checksum_path
from lockstep.recommender.factorization import FILE_FORMAT, ALSRecommender
from lockstep.recommender.fold_in import UnknownIdError
from tests.recommender import ml100k


def test_two_fits_give_the_same_factors_bit_for_bit_whatever_the_row_order():
    data = ml100k.interactions()
    first = ml100k.fitted("small")
    second = ALSRecommender(**ml100k.SMALL).fit(data.sample(frac=1.0, random_state=3))
    assert np.array_equal(first.user_factors_, second.user_factors_)
    assert np.array_equal(first.item_factors_, second.item_factors_)
    assert first.fingerprint == second.fingerprint


def test_fitted_attributes_and_id_maps():
    model = ml100k.fitted("small")
    assert model.user_factors_.shape == (943, 16) and model.item_factors_.shape == (1682, 16)
    assert model.user_factors_.dtype == np.float32 and model.dim_ == 16
    assert model.user_ids_ == sorted(model.user_ids_) and model.item_ids_ == sorted(model.item_ids_)
    assert np.all(np.isfinite(model.user_factors_)) and np.all(np.isfinite(model.item_factors_))
    row = model.user_ids_.index("196")
    assert np.array_equal(model.user_vectors(["196"])[0], model.user_factors_[row])
    assert np.array_equal(model.item_vectors(["242", "1"]), model.item_factors_[[model.item_ids_.index("242"), model.item_ids_.index("1")]])
    assert model.get_params()["factors"] == 16  # scikit-learn's get_params/clone work
    assert model.fingerprint.startswith("sha256:") and len(model.fingerprint) == 71


def test_the_fingerprint_changes_with_params_and_with_data():
    data = ml100k.interactions().head(20_000)
    base = ALSRecommender(**ml100k.SMALL).fit(data)
    other_seed = ALSRecommender(**{**ml100k.SMALL, "random_state": 1}).fit(data)
    fewer = ALSRecommender(**ml100k.SMALL).fit(data.head(19_000))
    assert len({base.fingerprint, other_seed.fingerprint, fewer.fingerprint}) == 3


def test_repeated_interactions_of_a_pair_add_up():
    data = ml100k.interactions().head(5_000)
    once = data.assign(value=data["value"] * 2)
    twice = pd.concat([data, data], ignore_index=True)
    a = ALSRecommender(**ml100k.SMALL).fit(once)
    b = ALSRecommender(**ml100k.SMALL).fit(twice)
    assert np.array_equal(a.user_factors_, b.user_factors_) and a.fingerprint == b.fingerprint


def test_unknown_ids_are_named():
    model = ml100k.fitted("small")
    with pytest.raises(UnknownIdError, match=r"unknown user ids: 'ghost', 'nobody'; this model version knows 943 users"):
        model.user_vectors(["196", "nobody", "ghost"])
    with pytest.raises(UnknownIdError, match=r"unknown item id: '99999'"):
        model.item_vectors(["99999"])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}), r"missing \['value'\]"),
        (pd.DataFrame({"user_id": [], "item_id": [], "value": []}), "zero interactions"),
        (pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "value": [1.0, float("nan")]}), "finite and >= 0, found nan"),
        (pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "value": [-1.0]}), "finite and >= 0, found -1.0"),
    ],
)
def test_bad_interactions_are_refused_by_name(frame, message):
    with pytest.raises(ValueError, match=message):
        ALSRecommender(**ml100k.SMALL).fit(frame)


def test_bad_params_are_refused_by_name():
    with pytest.raises(ValueError, match=r"factors must be a positive int, got 0; regularization must be > 0"):
        ALSRecommender(factors=0, regularization=0.0).fit(ml100k.interactions().head(10))


def test_not_fitted_is_an_error():
    with pytest.raises(NotFittedError, match="call fit"):
        _ = ALSRecommender().fingerprint


def test_save_and_load_give_the_same_model(tmp_path):
    model = ml100k.fitted("small")
    path = model.save(tmp_path / "model.npz")
    assert checksum_path(path).read_text().split()[0] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    loaded = ALSRecommender.load(path)
    assert loaded.fingerprint == model.fingerprint and loaded.get_params() == model.get_params()
    assert loaded.user_ids_ == model.user_ids_ and loaded.item_ids_ == model.item_ids_
    assert np.array_equal(loaded.user_factors_, model.user_factors_)
    assert np.array_equal(loaded.item_factors_, model.item_factors_)
    # The file is plain arrays: it opens without pickle, and holds nothing else.
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["item_factors.npy", "item_ids.npy", "meta.npy", "user_factors.npy", "user_ids.npy"]
    with np.load(path, allow_pickle=False) as arrays:
        assert FILE_FORMAT in str(arrays["meta"])


def test_a_changed_file_is_refused_before_it_is_read(tmp_path):
    model = ml100k.fitted("small")
    path = model.save(tmp_path / "model.npz")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="fails its checksum"):
        ALSRecommender.load(path)
    checksum_path(path).unlink()
    with pytest.raises(ModelIntegrityError, match="no checksum to verify"):
        ALSRecommender.load(path)


def test_a_file_whose_factors_do_not_match_its_fingerprint_is_refused(tmp_path):
    model = ml100k.fitted("small")
    arrays = model._arrays()
    arrays["item_factors"] = arrays["item_factors"] * 2  # a file written by hand, checksum recomputed
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = tmp_path / "forged.npz"
    path.write_bytes(buffer.getvalue())
    from lockstep.model.integrity import file_sha256

    with pytest.raises(NotFittedError, match="does not match the file's factors"):
        ALSRecommender.load(path, expected_sha256=file_sha256(path))
