"""The interaction store on both back ends (the SQLite default and a real PostgreSQL), its
migration 0002 -> 0003, and a load of the real MovieLens-100k."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from alembic import command
from sqlalchemy import inspect, select

from lockstep.store.db import get_engine
from lockstep.store.interactions import (
    MAX_TIMESTAMP,
    InteractionStore,
    InvalidInteractionError,
    UnknownItemError,
    content_message_ids,
)
from lockstep.store.migrations import (
    current_revision,
    head_revision,
    schema_differences,
    upgrade_database,
)
from lockstep.store.migrations.runner import alembic_config
from lockstep.store.records import RecordStore
from lockstep.store.schema import interactions, items, users

T0 = 1_700_000_000  # an event time in seconds


@pytest.fixture
def store(database_url):
    store = InteractionStore(database_url)
    store.upsert_items(pd.DataFrame({"item_id": ["i1", "i2", "i3"], "title": ["One", "Two", "Three"]}))
    return store


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "value", "timestamp"])


def test_add_appends_in_sequence_and_users_and_items_join_with_their_first_interaction(store):
    s1 = store.add("u1", "i1", 5.0, T0)
    s2 = store.add("u2", "i1", timestamp=T0 + 1)
    s3 = store.add("u1", "i2", 3.0, T0 + 2)

    assert (s1, s2, s3) == (1, 2, 3) and store.max_seq() == 3 and store.count() == 3
    log = store.changes_since(0)
    assert log.to_dict("records") == [
        {"seq": 1, "user_id": "u1", "item_id": "i1", "value": 5.0, "timestamp": T0},
        {"seq": 2, "user_id": "u2", "item_id": "i1", "value": 1.0, "timestamp": T0 + 1},
        {"seq": 3, "user_id": "u1", "item_id": "i2", "value": 3.0, "timestamp": T0 + 2},
    ]
    assert store.user_count() == 2
    catalogue = store.items().set_index("item_id")
    assert catalogue["first_seen_seq"].to_dict() == {"i1": 1, "i2": 3, "i3": None}
    assert store.items_first_seen_since(1) == ["i2"]
    with store.engine.connect() as conn:
        assert dict(conn.execute(select(users.c.user_id, users.c.first_seen_seq)).all()) == {"u1": 1, "u2": 2}


def test_add_without_a_timestamp_takes_the_time_of_the_write(store):
    before = int(datetime.now(UTC).timestamp())
    store.add("u1", "i1")
    after = int(datetime.now(UTC).timestamp())
    assert before <= int(store.changes_since(0)["timestamp"].iloc[0]) <= after


def test_an_unknown_item_is_refused_naming_it_unless_new_items_are_allowed(store):
    with pytest.raises(UnknownItemError) as caught:
        store.add("u1", "nope", 1.0, T0)
    assert caught.value.item_ids == ["nope"] and "'nope'" in str(caught.value)
    assert store.count() == 0 and store.max_seq() == 0

    seq = store.add("u1", "fresh", 1.0, T0, allow_new_item=True)

    fresh = store.items().set_index("item_id").loc["fresh"]
    assert fresh["title"] is None and fresh["first_seen_seq"] == seq
    assert store.unknown_items(["i1", "fresh", "other", "other"]) == ["other"]


def test_a_message_id_already_stored_is_the_same_event(store):
    first = store.add("u1", "i1", 4.0, T0, source_message_id="m-1")
    again = store.add("u1", "i1", 4.0, T0, source_message_id="m-1")
    other = store.add("u1", "i1", 4.0, T0, source_message_id="m-2")
    assert (first, again, other) == (1, 1, 2) and store.count() == 2


def test_add_many_writes_in_batches_with_progress_and_reads_back_exactly(store):
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({
        "user_id": [f"u{n}" for n in rng.integers(0, 20, 250)],
        "item_id": [f"i{n}" for n in rng.integers(1, 4, 250)],
        "value": rng.integers(1, 6, 250).astype(np.float32),
        "timestamp": T0 + np.arange(250, dtype=np.int64),
    })
    steps: list[int] = []

    done = store.add_many(frame, batch_size=60, progress=steps.append)

    assert (done.added, done.skipped, done.first_seq, done.last_seq) == (250, 0, 1, 250)
    assert steps == [60, 60, 60, 60, 10]
    snap = store.snapshot()
    assert snap.attrs["seq"] == 250
    assert dict(snap.dtypes.astype(str)) == {"seq": "int64", "user_id": "str", "item_id": "str",
                                             "value": "float32", "timestamp": "int64"}
    pd.testing.assert_frame_equal(snap.drop(columns="seq"), frame, check_dtype=False)
    assert snap["seq"].tolist() == list(range(1, 251))
    paged = pd.concat(list(store.iter_snapshot(page=17)), ignore_index=True)
    pd.testing.assert_frame_equal(paged, snap)


def test_bad_rows_are_refused_naming_them_and_nothing_is_written(store):
    frame = pd.DataFrame({
        "user_id": ["u1", "", None, "u4", "u5", "u6", "u7"],
        "item_id": ["i1", "i1", "i1", "i1" * 200, "i1", "i1", "i1"],
        "value": [1.0, 1.0, 1.0, 1.0, float("nan"), float("inf"), 1.0],
        "timestamp": [T0, T0, T0, T0, T0, T0, T0 * 1000],
    })

    with pytest.raises(InvalidInteractionError) as caught:
        store.add_many(frame, batch_size=2)

    message = str(caught.value)
    assert "nothing was written" in message
    assert "user_id is empty: index 1 (1 of 7 rows)" in message
    assert "user_id is missing or not a string: index 2 (1 of 7 rows)" in message
    assert "item_id is longer than 256 characters: index 3" in message
    assert "value is not a finite number: index 4, 5 (2 of 7 rows)" in message
    assert "timestamp is not whole seconds" in message and "index 6" in message
    assert store.count() == 0 and store.max_seq() == 0
    with pytest.raises(InvalidInteractionError, match="need columns 'user_id' and 'item_id'; missing 'item_id'"):
        store.add_many(pd.DataFrame({"user_id": ["u1"]}))


def test_unknown_items_in_a_bulk_load_are_all_named_and_nothing_is_written(store):
    frame = _frame([("u1", "i1", 1.0, T0)] * 5 + [("u2", f"x{n}", 1.0, T0) for n in range(12)])
    with pytest.raises(UnknownItemError) as caught:
        store.add_many(frame, batch_size=3)
    assert caught.value.item_ids == [f"x{n}" for n in range(12)]
    assert "12 item id(s) not in the item catalogue: 'x0', 'x1'" in str(caught.value)
    assert "and 2 more" in str(caught.value)
    assert store.count() == 0

    done = store.add_many(frame, allow_new_items=True)
    assert done.added == 17 and store.item_count() == 3 + 12


def test_loading_the_same_rows_again_writes_only_what_is_new(store):
    frame = _frame([("u1", "i1", 5.0, T0), ("u1", "i1", 5.0, T0), ("u2", "i2", 3.0, T0 + 5)])
    frame["source_message_id"] = content_message_ids(frame, "test")
    assert len(set(frame["source_message_id"])) == 3  # the repeated event stays two events

    assert store.add_many(frame).describe() == "3 interactions at sequences 1..3"
    again = store.add_many(frame)
    assert (again.added, again.skipped) == (0, 3)
    assert again.describe() == "nothing new: all 3 interactions were stored before"

    longer = pd.concat([frame.drop(columns="source_message_id"), _frame([("u3", "i3", 1.0, T0 + 9)])],
                       ignore_index=True)
    longer["source_message_id"] = content_message_ids(longer, "test")
    grown = store.add_many(longer)
    assert (grown.added, grown.skipped, grown.first_seq, grown.last_seq) == (1, 3, 4, 4)
    assert store.count() == 4


def test_snapshots_as_of_a_past_sequence_and_the_catch_up_log(store):
    store.add_many(_frame([("u1", "i1", 1.0, T0), ("u2", "i2", 2.0, T0), ("u1", "i3", 3.0, T0)]))  # 1..3
    store.add("u3", "i1", 4.0, T0)  # 4
    store.add("u1", "i2", 5.0, T0)  # 5

    past = store.snapshot(at_seq=3)
    assert past.attrs["seq"] == 3 and past["seq"].tolist() == [1, 2, 3]
    assert store.snapshot(at_seq=0).empty and list(store.snapshot(at_seq=0).columns) == [
        "seq", "user_id", "item_id", "value", "timestamp"]
    with pytest.raises(ValueError, match=r"sequence 9 is outside the interaction log \(0..5\)"):
        store.snapshot(at_seq=9)
    assert store.changes_since(3)["seq"].tolist() == [4, 5]
    assert store.changes_since(1, until=4, limit=2)["seq"].tolist() == [2, 3]
    assert store.users_changed_since(3) == ["u1", "u3"]
    assert store.items_changed_since(3) == ["i1", "i2"]
    assert store.users_changed_since(2, until=3) == ["u1"]

    item_ids, values = store.interactions_of("u1")
    assert item_ids == ["i1", "i3", "i2"] and values.dtype == np.float32 and values.tolist() == [1.0, 3.0, 5.0]
    assert store.interactions_of("u1", until=3)[0] == ["i1", "i3"]
    assert store.users_of("i1")[0] == ["u1", "u3"]
    assert store.interactions_of("nobody") == ([], pytest.approx(np.array([], dtype=np.float32)))


def test_the_catalogue_keeps_metadata_and_first_seen_when_items_are_updated(store):
    store.add("u1", "i2", 1.0, T0)
    new = store.upsert_items(pd.DataFrame({
        "item_id": ["i2", "i9"], "title": ["Two, remastered", None],
        "release_year": pd.array([1995, pd.NA], dtype="Int64"), "genres": ["Drama", "Comedy|Drama"],
    }))
    assert new == 1
    catalogue = store.items().set_index("item_id")
    assert catalogue.loc["i2", "title"] == "Two, remastered"
    assert catalogue.loc["i2", "metadata"] == {"release_year": 1995, "genres": "Drama"}
    assert catalogue.loc["i2", "first_seen_seq"] == 1
    assert catalogue.loc["i9", "metadata"] == {"genres": "Comedy|Drama"} and catalogue.loc["i9", "title"] is None
    with pytest.raises(InvalidInteractionError, match="items refused, nothing was written"):
        store.upsert_items(pd.DataFrame({"item_id": ["ok", " "]}))
    assert store.item_count() == 4


def test_concurrent_writers_get_every_sequence_once_and_in_commit_order(store):
    """A reader tailing the log sees no gaps: the counter row orders the commits."""
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(20):
                if i % 5 == 0:
                    store.add_many(_frame([(f"w{w}", "i1", 1.0, T0 + i), (f"w{w}", "i2", 1.0, T0 + i)]))
                else:
                    store.add(f"w{w}", "i3", float(i), T0 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    seqs = store.snapshot()["seq"].tolist()
    assert seqs == list(range(1, 4 * 24 + 1)) and store.max_seq() == len(seqs)


def test_the_interaction_log_has_its_own_sequence(database_url, store):
    """Record writes and interactions number independently: each log is gap-free."""
    RecordStore(database_url).upsert("r1", "text")
    assert store.add("u1", "i1", 1.0, T0) == 1


def test_timestamps_past_the_year_9999_are_refused(store):
    with pytest.raises(InvalidInteractionError, match="milliseconds"):
        store.add("u1", "i1", 1.0, MAX_TIMESTAMP + 1)
    assert store.add("u1", "i1", 1.0, MAX_TIMESTAMP) == 1


# --- migration 0002 -> 0003 -------------------------------------------------------------------------


def test_a_database_at_0002_upgrades_to_0003_with_its_rows(database_url, lockstep_home):
    engine = get_engine(database_url, migrate=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
    RecordStore(engine).upsert("r1", "kept")
    assert "lockstep_interactions" not in inspect(engine).get_table_names()

    done = upgrade_database(engine)

    assert (done.before, done.after) == ("0002", head_revision())
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert schema_differences(conn) == []
    assert RecordStore(engine).get("r1").text == "kept"
    store = InteractionStore(engine)
    store.upsert_items(pd.DataFrame({"item_id": ["i1"]}))
    assert store.add("u1", "i1", 1.0, T0) == 1


def test_0003_goes_down_to_0002_and_up_again(database_url, lockstep_home):
    engine = get_engine(database_url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert not {interactions.name, items.name, users.name} & set(inspect(engine).get_table_names())
    upgrade_database(engine)
    with engine.connect() as conn:
        assert schema_differences(conn) == []


# --- the real MovieLens-100k ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def movielens():
    from lockstep.recommender import movielens as ml
    from tests.conftest import DEMO_CACHE

    return ml.items(DEMO_CACHE), ml.users(DEMO_CACHE), ml.interactions(DEMO_CACHE)


@pytest.mark.slow
def test_movielens_100k_loads_whole_and_a_second_load_adds_nothing(database_url, movielens):
    catalogue, people, ratings = movielens
    ratings = ratings.assign(source_message_id=content_message_ids(ratings, "ml-100k"))
    store = InteractionStore(database_url)

    assert store.upsert_items(catalogue) == 1682 and store.upsert_users(people) == 943
    done = store.add_many(ratings)

    assert (done.added, done.first_seq, done.last_seq) == (100_000, 1, 100_000)
    assert (store.count(), store.user_count(), store.item_count()) == (100_000, 943, 1682)
    snap = store.snapshot()
    pd.testing.assert_frame_equal(snap.drop(columns="seq"), ratings.drop(columns="source_message_id"))
    assert store.add_many(ratings).added == 0 and store.max_seq() == 100_000
    assert store.items().set_index("item_id").loc["1", "title"] == catalogue.set_index("item_id").loc["1", "title"]
