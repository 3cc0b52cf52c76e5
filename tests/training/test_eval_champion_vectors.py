"""The champion's side of the offline evaluation reads the vectors its published index holds.

One Lockstep home: 300 labelled records, a TF-IDF champion with a published flat index
(``reembed_version``), then live changes after the index was built (texts changed, a record
deleted, records added). The champion's model is wrapped in a counter: it must be asked for
exactly the evaluation texts its index lacks or holds in an older state, and the figures
must equal those of a full re-embed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lockstep.index.champion_vectors import published_location, read_stored_vectors
from lockstep.model.stored_vectors import StoredVectors
from lockstep.store.records import Record, RecordStore
from lockstep.training import steps
from lockstep.training.champion_side import champion_vectors, evaluate_champion
from lockstep.training.fit import EvalSet, evaluate_embedder, split_holdout
from tests.training.test_fit import SMALL, TOPICS, corpus

CHANGED = ["d0003", "d0010", "d0042", "d0100", "d0201"]


class Counting:
    """The champion's model, counting the texts it is asked to embed."""

    def __init__(self, model) -> None:
        self.model = model
        self.texts: list[str] = []

    def transform(self, texts):
        self.texts.extend(texts)
        return self.model.transform(texts)


def fresh_home(mp: pytest.MonkeyPatch, home) -> None:
    """Every Lockstep setting of this process at ``home`` (the module's world), as ``lockstep_home`` does."""
    from lockstep.store.db import dispose_engines
    from tests.conftest import DEMO_CACHE

    mp.setenv("LOCKSTEP_HOME", str(home))
    for var in ("LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE", "LOCKSTEP_API_TOKEN"):
        mp.delenv(var, raising=False)
    mp.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
    mp.setenv("LOCKSTEP_SYSTEM", "search")
    dispose_engines()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Built once for the module; the tests only read it (one registers a second version, last)."""
    from lockstep.store.db import dispose_engines

    with pytest.MonkeyPatch.context() as mp:
        fresh_home(mp, tmp_path_factory.mktemp("eval-vectors") / "home")
        yield _build_world()
        dispose_engines()


def _build_world():
    from lockstep.index.build import reembed_version
    from lockstep.model.registry import Registry
    from lockstep.training.fit import fit_embedder

    store = RecordStore()
    records = corpus(300)
    store.upsert_many(records)
    registry = Registry()
    model = fit_embedder([r.text for r in records], SMALL)
    registry.log_and_register(model, params={}, metrics={}, snapshot_seq=store.head())
    built = reembed_version(store, registry, "1", shard_size=100)
    assert built["became_champion"]
    # Live changes after the index was published: new texts, a delete, two new records.
    rng = np.random.default_rng(1)
    for rid in CHANGED:
        label = store.get(rid).metadata["category"]
        store.upsert(rid, " ".join(rng.choice(TOPICS[label].split(), size=12)), {"category": label})
    store.delete("d0007")
    store.upsert_many([Record("n0001", "orbit rocket moon launch", {"category": "space"}),
                       Record("n0002", "puck goalie ice season", {"category": "hockey"})])
    return {"store": store, "registry": registry, "model": model}


def _eval_set(store: RecordStore) -> EvalSet:
    seq = store.head()
    return EvalSet.from_holdout(split_holdout(store.snapshot(at_seq=seq).records, SMALL), SMALL.label_key, seq=seq)


def test_only_changed_and_missing_texts_are_embedded_and_the_figures_equal_a_full_reembed(world):
    store, registry = world["store"], world["registry"]
    champion = registry.version_for_alias("champion")
    data = _eval_set(store)
    counting = Counting(world["model"])

    result, reuse = evaluate_champion(lambda: counting, champion, data, SMALL, reader=read_stored_vectors, store=store)

    expected_embedded = {rid for rid in [*data.query_ids, *data.doc_ids] if rid in {*CHANGED, "n0001", "n0002"}}
    texts_of = dict(zip([*data.query_ids, *data.doc_ids], [*data.query_texts, *data.doc_texts], strict=True))
    assert sorted(counting.texts) == sorted(texts_of[rid] for rid in expected_embedded)
    assert reuse.embedded == len(expected_embedded) == 7 and reuse.reused == len(texts_of) - 7
    assert "flat index" in reuse.reason and "5 of them changed" in reuse.reason

    full = evaluate_embedder(world["model"], data, SMALL)
    np.testing.assert_allclose(result.ndcg, full.ndcg, atol=1e-6)
    np.testing.assert_allclose(result.precision, full.precision, atol=1e-6)
    assert abs(result.mean_ndcg - full.mean_ndcg) <= 1e-6


def test_the_retrain_step_reports_the_reuse_as_figures(world, tmp_path):
    """``evaluate`` with the index reader (what the DAG and ``lockstep train`` pass)."""
    store = world["store"]
    folder = tmp_path / "run"
    folder.mkdir()
    config = {"dim": 16, "min_df": 1, "max_df": 1.0, "holdout_percent": 20, "n_boot": 200}
    model = steps.train(store.head(), str(folder), config)
    evaluation = steps.evaluate(store.head(), model["model_path"], str(folder), config, stored=read_stored_vectors)
    assert evaluation["champion_version"] == "1"
    figures = evaluation["figures"]
    assert figures["champion_vectors_embedded"] == 7.0  # 5 changed since the index, 2 added
    assert figures["champion_vectors_reused"] + figures["champion_vectors_embedded"] == 300 - 1 + 2


def test_without_a_reader_or_with_an_index_that_cannot_serve_every_text_is_embedded(world):
    store, registry = world["store"], world["registry"]
    champion = registry.version_for_alias("champion")
    data = _eval_set(store)
    total = len(data.query_texts) + len(data.doc_texts)
    for reader, why in ((None, "no index reader"), (lambda info, ids: "the index is of type pq", "type pq")):
        counting = Counting(world["model"])
        _, _, reuse = champion_vectors(lambda c=counting: c, champion, data, reader=reader, store=store)
        assert reuse.embedded == total == len(counting.texts) and reuse.reused == 0 and why in reuse.reason
    # An evaluation set without ids (built by hand) cannot be matched to the index either.
    bare = replace(data, query_ids=[], doc_ids=[], seq=None)
    _, _, reuse = champion_vectors(lambda: world["model"], champion, bare, reader=read_stored_vectors, store=store)
    assert reuse.reused == 0 and "names no record ids" in reuse.reason


def test_an_index_newer_than_the_snapshot_is_compared_through_the_change_log_too(world):
    """The evaluation's snapshot taken before the live changes, the index current after them."""
    store, registry = world["store"], world["registry"]
    champion = registry.version_for_alias("champion")
    stored = read_stored_vectors(champion, ["d0003"])
    assert isinstance(stored, StoredVectors) and stored.applied_seq < store.head()
    seq = stored.applied_seq  # the snapshot as of the index build: the old texts, d0007 still there
    data = EvalSet.from_holdout(split_holdout(store.snapshot(at_seq=seq).records, SMALL), SMALL.label_key, seq=seq)
    newer = read_stored_vectors(champion, [*data.query_ids, *data.doc_ids])
    pretended = replace(newer, applied_seq=store.head())  # as if the index had caught up with every change
    counting = Counting(world["model"])
    _, _, reuse = champion_vectors(lambda: counting, champion, data, reader=lambda info, ids: pretended, store=store)
    # The five changed records and the deleted one changed between the snapshot and the index:
    # embedded with the snapshot's texts; the two added ones are not in the snapshot at all.
    old = {r.id: r.text for r in store.snapshot(at_seq=seq).records}
    assert reuse.embedded == 6 and sorted(counting.texts) == sorted(old[rid] for rid in [*CHANGED, "d0007"])


def test_a_version_without_a_published_index_gives_a_reason(world):
    from lockstep.model.registry import Registry

    registry: Registry = world["registry"]
    info = registry.get_version("1")
    assert published_location(info) is not None
    registry.log_and_register(world["model"], params={}, metrics={}, snapshot_seq=0)
    assert read_stored_vectors(registry.get_version("2"), ["d0001"]) == "v2 has no published index"
