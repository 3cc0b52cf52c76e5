"""The batch job as a library (``lockstep batch run``): full, incremental, unchanged, retention.

A real record store (SQLite and PostgreSQL), two real model versions with real FAISS
indexes; the truth is a brute-force FAISS search over the same stored vectors.
"""

from __future__ import annotations

import pytest

from lockstep.batch import steps
from lockstep.batch.plan import BatchPlanError
from lockstep.index.catch_up import catch_up
from lockstep.index.storage import load_index
from lockstep.store import routing
from lockstep.store.batch_results import RELATED, BatchResultStore
from lockstep.store.db import get_engine
from lockstep.store.records import RecordStore
from tests.batch.helpers import brute_force_related, mismatches, rows_of
from tests.serving.harness import fill_store, fit_models, make_slot

K = 5


@pytest.fixture
def world(database_url, lockstep_home, tmp_path, monkeypatch):
    """300 records, versions 1 (live, 100 %) and 2 (ready), on the configured database."""
    monkeypatch.setenv("LOCKSTEP_DATABASE_URL", database_url)
    engine = get_engine(database_url)
    store = RecordStore(engine)
    fill_store(store, 300)
    v1, v2 = fit_models(store)
    make_slot(engine, store, v1, "1", tmp_path)
    make_slot(engine, store, v2, "2", tmp_path)
    routing.set_weights({"1": 100}, engine=engine)
    return {"engine": engine, "store": store, "models": {"1": v1, "2": v2}, "root": tmp_path}


def truth(world, version: str) -> dict:
    """Brute force over the version's index caught up to the store's head."""
    slot = routing.read_table(world["engine"]).slot(version)
    loaded = load_index(slot.index_location, expected_fingerprint=slot.fingerprint)
    catch_up(loaded.index, world["models"][version], world["store"], loaded.applied_seq)
    return brute_force_related(loaded.index, K)


def test_a_full_run_makes_every_row_equal_to_brute_force_and_marks_the_version_complete(world):
    summary = steps.run(k=K, shard_size=70)  # 300 keys in 5 shards
    [v1] = summary["versions"]
    assert (v1["model_version"], v1["mode"], v1["computed"], v1["rows"]) == ("1", "full", 300, 300)
    state = BatchResultStore(world["engine"]).state(RELATED, "1")
    assert state.complete and state.through_seq == world["store"].head() and state.k == K
    assert BatchResultStore(world["engine"]).state(RELATED, "2") is None  # ready, no weight: not served, not computed
    rows = rows_of(RELATED, "1", world["engine"])
    assert len(rows) == 300 and all(len(r) == K for r in rows.values())
    assert all(key not in {i for i, _ in r} for key, r in rows.items())  # never itself
    assert mismatches(rows, truth(world, "1")) == []


def test_an_incremental_run_recomputes_only_the_affected_keys_and_equals_a_full_recompute(world):
    steps.run(k=K)
    before = rows_of(RELATED, "1", world["engine"])
    first = world["store"].head()
    store = world["store"]
    store.upsert("r0001", "orbit rocket launch hockey goalie season")
    store.upsert("r0002", "completely new words nobody used before")
    store.upsert("brand-new", "rocket orbit launch pad fuel")
    store.delete("r0003")
    store.delete("r0004")

    [v1] = steps.run(k=K)["versions"]
    assert v1["mode"] == "incremental" and v1["removed"] == 2
    after = rows_of(RELATED, "1", world["engine"])
    assert set(after) == set(before) - {"r0003", "r0004"} | {"brand-new"}
    recomputed = {row.key for row in BatchResultStore(world["engine"]).iter_rows(RELATED, "1") if row.input_seq > first}
    assert len(recomputed) == v1["computed"]
    assert {"r0001", "r0002", "brand-new"} <= recomputed  # changed records, and the new one
    assert 3 < v1["computed"] < 100  # only the affected keys: the rest kept their rows
    # every list that a neighbour's change or deletion touched was recomputed
    gone = {"r0001", "r0002", "r0003", "r0004"}
    assert {k for k, r in before.items() if gone & {i for i, _ in r} and k in after} <= recomputed
    # the result is what a full recompute gives, and what brute force gives
    assert mismatches(after, truth(world, "1")) == []
    [full] = steps.run(k=K, full=True)["versions"]
    assert full["mode"] == "full" and full["computed"] == 299
    assert mismatches(after, rows_of(RELATED, "1", world["engine"])) == []


def test_a_run_without_new_writes_computes_nothing(world):
    steps.run(k=K)
    [v1] = steps.run(k=K)["versions"]
    assert (v1["mode"], v1["computed"], v1["removed"], v1["rows"]) == ("unchanged", 0, 0, 300)


def test_another_k_recomputes_in_full(world):
    steps.run(k=K)
    [v1] = steps.run(k=3)["versions"]
    assert v1["mode"] == "full" and v1["reason"] == f"k changed from {K} to 3"
    assert all(len(r) == 3 for r in rows_of(RELATED, "1", world["engine"]).values())


def test_bad_input_names_what_is_wrong_and_changes_nothing(world):
    with pytest.raises(BatchPlanError, match=r"model version\(s\) 7 are not serving \(serving: 1\)"):
        steps.run(versions=["7"])
    with pytest.raises(steps.BatchRunError, match="k must be an integer 1..100"):
        steps.run(k=0)
    with pytest.raises(steps.BatchRunError, match="unknown system 'books'"):
        steps.run("books")
    assert BatchResultStore(world["engine"]).versions() == set()


def test_a_retired_versions_rows_go_and_the_serving_ones_stay(world):
    engine = world["engine"]
    routing.set_weights({"1": 50, "2": 50}, engine=engine)
    summary = steps.run(k=K)
    assert [v["model_version"] for v in summary["versions"]] == ["1", "2"]
    routing.set_weights({"1": 100}, engine=engine)
    routing.set_state("2", "retired", engine=engine)
    assert steps.drop_retired() == {"related/v2": 300}
    assert BatchResultStore(engine).versions() == {(RELATED, "1")}
    assert len(rows_of(RELATED, "1", engine)) == 300


def test_the_cli_runs_the_library_path_and_refuses_a_version_that_is_not_serving(world):
    from typer.testing import CliRunner

    from lockstep.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["batch", "run", "--k", "5"])
    assert done.exit_code == 0, done.output
    assert "related v1: full, 300 keys computed, 0 removed; 300 rows complete through seq 300" in done.output
    again = runner.invoke(app, ["batch", "run", "--k", "5", "--model-version", "1", "--json"])
    assert again.exit_code == 0 and '"mode": "unchanged"' in again.output
    refused = runner.invoke(app, ["batch", "run", "--model-version", "2"])
    assert refused.exit_code == 1 and isinstance(refused.exception, BatchPlanError)
    assert "model version(s) 2 are not serving (serving: 1)" in str(refused.exception)


def test_a_change_log_compacted_past_the_last_run_forces_a_full_run(world):
    """Compaction may delete a tombstone the incremental rule would need: recompute everything."""
    from sqlalchemy import insert

    from lockstep.store.schema import sequences

    steps.run(k=K)
    seq = world["store"].upsert("r0010", "a late edit about rockets")
    with world["engine"].begin() as conn:
        conn.execute(insert(sequences).values(name="changes_compacted", value=seq))
    [v1] = steps.run(k=K)["versions"]
    assert v1["mode"] == "full" and "compacted through" in v1["reason"] and v1["rows"] == 300
