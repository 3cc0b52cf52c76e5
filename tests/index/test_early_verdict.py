"""The early verdict's parts: the first slice is a uniform sample, the restricted search is exact,
and the decision rule stops only what it should (the DAG runs are in tests/dags/test_early_verdict_dag.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lockstep.index.early_verdict import (
    CONTINUE,
    STOP,
    WARN,
    EvalSettings,
    decide,
    is_held_out,
)
from lockstep.index.first_slice import (
    EarlyVerdictError,
    check_settings,
    in_first_slice,
    write_sliced_snapshot,
)
from lockstep.index.snapshot import read_snapshot_shard
from lockstep.index.vector_index import IndexSpec, VectorIndex

N = 6000


@pytest.fixture
def ordered_store(lockstep_home):
    """Records written oldest first, ids in the same order (the old layout's first shard is the oldest)."""
    from lockstep.store.records import RecordStore

    store = RecordStore()
    store.upsert_many({"id": f"r{i:06d}", "text": f"text {i}"} for i in range(N))
    return store


def test_the_first_slice_is_a_uniform_sample_not_the_oldest_rows(ordered_store, tmp_path):
    sliced = write_sliced_snapshot(ordered_store, tmp_path, shard_size=1000, share=0.1)
    path = tmp_path / sliced.file
    first = [rid for s in sliced.first_slice for rid in read_snapshot_shard(path, s).ids]
    rest = [rid for s in sliced.rest for rid in read_snapshot_shard(path, s).ids]

    # every record exactly once, the first slice in the last row groups
    assert sorted(first + rest) == [f"r{i:06d}" for i in range(N)]
    assert not set(first) & set(rest)
    assert sliced.first_slice == list(range(len(sliced.rest), len(sliced.counts)))
    assert all(in_first_slice(rid, 0.1) for rid in first) and not any(in_first_slice(rid, 0.1) for rid in rest)
    # about a tenth (binomial sd ~23 records at N=6000)
    assert abs(len(first) - 0.1 * N) < 4 * np.sqrt(N * 0.1 * 0.9)
    # spread over the whole age range: the positions (oldest = 0) are uniform, not the first 10 %
    positions = np.array([int(rid[1:]) for rid in first]) / N
    assert stats.kstest(positions, "uniform").pvalue > 0.01
    assert positions.min() < 0.05 and positions.max() > 0.95
    assert 0.4 < np.mean(positions < 0.5) < 0.6


def test_a_retried_snapshot_reuses_its_file_and_another_share_gets_its_own(ordered_store, tmp_path):
    a = write_sliced_snapshot(ordered_store, tmp_path, shard_size=1000, share=0.1)
    mtime = (tmp_path / a.file).stat().st_mtime_ns
    again = write_sliced_snapshot(ordered_store, tmp_path, shard_size=1000, share=0.1)
    assert again == a and (tmp_path / a.file).stat().st_mtime_ns == mtime
    b = write_sliced_snapshot(ordered_store, tmp_path, shard_size=1000, share=0.3)
    assert b.file != a.file and sum(b.counts[i] for i in b.first_slice) > sum(a.counts[i] for i in a.first_slice)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no side file left behind


def test_a_tiny_store_still_has_a_first_slice_and_a_rest(lockstep_home, tmp_path):
    from lockstep.store.records import RecordStore

    store = RecordStore()
    store.upsert("only", "one record")
    sliced = write_sliced_snapshot(store, tmp_path, shard_size=100, share=0.1)
    assert len(sliced.first_slice) >= 1 and len(sliced.rest) >= 1
    assert sum(sliced.counts) == 1


def test_settings_are_checked_naming_the_setting():
    check_settings(0.1, 0.01, "warn")
    with pytest.raises(EarlyVerdictError, match="early_verdict_share"):
        check_settings(0.0, 0.01, "warn")
    with pytest.raises(EarlyVerdictError, match="early_verdict_share"):
        check_settings(0.8, 0.01, "warn")
    with pytest.raises(EarlyVerdictError, match="early_verdict_margin"):
        check_settings(0.1, -1, "warn")
    with pytest.raises(EarlyVerdictError, match="early_verdict_action"):
        check_settings(0.1, 0.01, "abort")


def test_the_hold_out_is_the_offline_evaluations():
    from lockstep.training.fit import is_holdout

    ids = [f"doc-{i}" for i in range(5000)] + ["a", "ä", "x" * 200]
    for percent in (5, 10, 30):
        assert [is_held_out(i, percent) for i in ids] == [is_holdout(i, percent) for i in ids]


def test_eval_settings_come_from_the_run_and_default_when_missing():
    s = EvalSettings.from_run_params({"label_key": "topic", "holdout_percent": "20", "k": "10", "seed": "x"})
    assert (s.label_key, s.holdout_percent, s.k, s.seed, s.max_eval_queries) == ("topic", 20, 10, 0, 1500)
    assert EvalSettings.from_run_params({}) == EvalSettings()


# --- the restricted search ---------------------------------------------------------------------


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(ids, vectors, allowed, queries, k):
    rows = [i for i, rid in enumerate(ids) if rid in allowed]
    scores = queries @ vectors[rows].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[rows[j]] for j in row] for row in order]


@pytest.mark.parametrize(("kind", "gather_below"), [("flat", 0.5), ("flat", 0.0), ("ivf", 0.5)],
                         ids=["flat-gathered", "flat-idselector", "ivf-idselector"])
def test_restricted_search_equals_brute_force_over_the_loaded_ids(kind, gather_below):
    rng = np.random.default_rng(1)
    ids = [f"r{i}" for i in range(3000)]
    vectors = _unit(rng, 3000, 24)
    spec = IndexSpec(kind=kind, nlist=8, nprobe=8) if kind == "ivf" else IndexSpec(kind=kind)
    index = VectorIndex.build(ids, vectors, spec)
    index.remove(ids[:5])  # a flat index removes for real: its labels no longer start at row 0
    ids, vectors = ids[5:], vectors[5:]
    allowed = {rid for rid in ids if in_first_slice(rid, 0.1)} | {"not-in-the-index"}
    queries = _unit(rng, 50, 24)
    got = index.search_within(queries, allowed, k=10, gather_below=gather_below)
    want = _brute_force(ids, vectors, allowed, queries, 10)
    assert [h.ids for h in got] == want
    assert all(set(h.ids) <= allowed for h in got)


def test_restricted_search_of_an_hnsw_index_never_returns_other_or_deleted_records():
    rng = np.random.default_rng(2)
    ids = [f"r{i}" for i in range(4000)]
    vectors = _unit(rng, 4000, 16)
    index = VectorIndex.build(ids, vectors, IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=40, ef_search=64))
    allowed = {rid for rid in ids if in_first_slice(rid, 0.1)}
    gone = sorted(allowed)[:40]
    index.remove(gone)  # tombstoned: must not come back through the selector
    queries = _unit(rng, 60, 16)
    got = index.search_within(queries, allowed, k=10, ef_search=512)
    live = allowed - set(gone)
    assert all(set(h.ids) <= live and len(h.ids) == 10 for h in got)
    want = _brute_force(ids, vectors, live, queries, 10)
    recall = np.mean([len(set(h.ids) & set(w)) / 10 for h, w in zip(got, want, strict=True)])
    assert recall >= 0.95


def test_restricted_search_with_nothing_allowed_returns_no_hits():
    rng = np.random.default_rng(3)
    index = VectorIndex.build(["a", "b"], _unit(rng, 2, 4))
    assert [h.ids for h in index.search_within(_unit(rng, 2, 4), {"zz"}, k=5)] == [[], []]
    assert [h.ids for h in index.search_within(_unit(rng, 1, 4), {"b"}, k=5)] == [["b"]]
    assert [h.ids for h in index.search_within(_unit(rng, 1, 4), {"b"}, k=5, gather_below=0)] == [["b"]]


# --- the decision ------------------------------------------------------------------------------


def _figures(diff, low, high):
    return {
        "delta_ndcg_at_10": diff, "delta_ndcg_at_10_ci_low": low, "delta_ndcg_at_10_ci_high": high,
        "ndcg_at_10": 0.5 + diff, "champion_ndcg_at_10": 0.5, "loaded_records": 1000.0, "n_queries": 300.0,
        "share": 0.1,
    }


def test_stop_only_with_action_stop_and_the_whole_interval_below_minus_margin():
    worse = _figures(-0.2, -0.25, -0.15)
    assert decide(worse, margin=0.01, action="stop", champion="1").verdict == STOP
    assert decide(worse, margin=0.01, action="warn", champion="1").verdict == WARN
    assert decide(worse, margin=0.2, action="stop", champion="1").verdict == CONTINUE  # not beyond the margin
    unsure = _figures(-0.05, -0.12, 0.01)  # mean worse, but the interval reaches above -margin
    assert decide(unsure, margin=0.01, action="stop", champion="1").verdict == CONTINUE
    better = decide(_figures(0.1, 0.05, 0.15), margin=0.01, action="stop", champion="1")
    assert better.verdict == CONTINUE and "+0.1000" in better.reason and "v1" in better.reason
