"""The HNSW beam chosen at validation from a recall target (``lockstep.index.beam``)."""

from __future__ import annotations

import numpy as np
import pytest

from lockstep.core.errors import LockstepError
from lockstep.index.beam import EF_LADDER, choose_ef_search, fragment_queries
from lockstep.index.manifest import read_manifest
from lockstep.index.recall import exact_kth_scores, measure_recall, recall_given_kth
from lockstep.index.storage import load_index, save_index
from lockstep.index.validation import validate_built_index
from lockstep.index.vector_index import IndexSpec, VectorIndex
from lockstep.model.embedding import TextEmbedder
from lockstep.store.records import RecordStore


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 50 centres: the shape of real embeddings (topics), seeded."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = centres[rng.integers(0, 50, n)] + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def weak_graph():
    """An HNSW graph built cheaply (M=8, efConstruction 16): narrow beams miss neighbours.

    200 more vectors from the same clusters are kept out of the index as queries.
    """
    vectors = _clustered(20_200, 32, seed=1)
    ids = [f"r{i}" for i in range(20_000)]
    index = VectorIndex.build(ids, vectors[:20_000], IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=16, ef_search=16))
    return index, vectors


def test_the_smallest_beam_reaching_the_target_is_chosen(weak_graph):
    index, vectors = weak_graph
    records, queries = vectors[:200], vectors[20_000:]
    choice = choose_ef_search(index, records, queries, target=0.9)
    assert choice.reached and choice.recall >= 0.9
    walk = {ef: min(r, q) for ef, r, q in choice.walk}
    assert choice.ef_search > EF_LADDER[0]  # the weak graph needs a wider beam than the narrowest
    assert [ef for ef, _, _ in choice.walk] == [ef for ef in EF_LADDER if ef <= choice.ef_search]
    assert all(recall < 0.9 for ef, recall in walk.items() if ef < choice.ef_search)  # every narrower beam missed
    # the figures are the ones an independent measurement at that beam gives
    kth = exact_kth_scores(index, queries, 10)
    assert recall_given_kth(index, queries, kth, 10, ef_search=choice.ef_search) == pytest.approx(choice.recall_queries)
    assert index.spec.ef_search == 16  # choosing does not change the index


def test_an_unreachable_target_returns_the_widest_beam_and_says_so(weak_graph):
    index, vectors = weak_graph
    choice = choose_ef_search(index, vectors[:50], vectors[50:100], target=1.01)
    assert not choice.reached and choice.ef_search == EF_LADDER[-1] and len(choice.walk) == len(EF_LADDER)


def test_a_wider_beam_finds_more_and_set_ef_search_applies_it(weak_graph):
    index, vectors = weak_graph
    queries = vectors[20_000:]
    kth = exact_kth_scores(index, queries, 10)
    narrow = recall_given_kth(index, queries, kth, 10, ef_search=16)
    wide = recall_given_kth(index, queries, kth, 10, ef_search=256)
    assert wide > narrow
    copy = VectorIndex.build(index.ids[:2000], vectors[:2000], IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=16))
    copy.set_ef_search(200)
    assert copy.spec.ef_search == 200 and copy.spec.hnsw_m == 8
    with pytest.raises(LockstepError, match="efSearch is a setting of HNSW indexes"):
        VectorIndex.build(["a"], vectors[:1], IndexSpec(kind="flat")).set_ef_search(32)
    with pytest.raises(LockstepError, match="at least 1"):
        copy.set_ef_search(0)


def test_fragments_are_short_seeded_windows_of_the_texts():
    texts = ["one two three four five six seven eight nine ten eleven", "tiny", "a b c d"]
    first, again = fragment_queries(texts, seed=4), fragment_queries(texts, seed=4)
    assert first == again
    assert all(3 <= len(q.split()) <= 8 for q in first[:1]) and first[1] == "tiny"
    assert all(q in t for q, t in zip(first, texts, strict=True))
    three = fragment_queries(texts, seed=4, per_text=3)
    assert len(three) == 9 and three[3:6] == ["tiny"] * 3 and len(set(three[:3])) > 1  # three different windows


def test_validation_chooses_the_beam_and_the_loaded_index_uses_it(tmp_path):
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(400)]
    topics = [rng.choice(words, 40, replace=False) for _ in range(20)]
    store = RecordStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.upsert_many({"id": f"d{i:05d}", "text": " ".join(rng.choice(topics[i % 20], 25))} for i in range(6000))
    snap = store.snapshot()
    model = TextEmbedder(dim=32, min_df=1, stop_words=None).fit([r.text for r in snap.records])
    vectors = model.transform([r.text for r in snap.records])
    index = VectorIndex.build(snap.ids, vectors, IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=16, ef_search=512))
    save_index(index, tmp_path / "v1", model_name="m", model_version=1, fingerprint=model.fingerprint, applied_seq=snap.seq)

    result, _ = validate_built_index(index, snap.seq, model, store, expected_fingerprint=model.fingerprint)
    assert result.ok, result.problems
    chosen = int(result.figures["ef_search"])
    assert chosen in EF_LADDER and chosen < 512 and index.spec.ef_search == chosen
    figures = result.figures
    # Held to the floor: each held-out kind's one-sided 95 % lower bound, on >= 1,000 fragments (issue 26).
    assert min(figures["recall_at_10_records_lower_95"], figures["recall_at_10_fragments_lower_95"]) >= 0.95
    assert figures["recall_at_10_lower_95"] == min(figures["recall_at_10_records_lower_95"], figures["recall_at_10_fragments_lower_95"])
    assert figures["recall_at_10"] == min(figures["recall_at_10_records"], figures["recall_at_10_fragments"])
    assert figures["recall_at_10_fragments_lower_95"] < figures["recall_at_10_fragments"]
    assert figures["queries_fragments"] >= 1000 and figures["queries_records"] == 500 and figures["held_out_disjoint"] == 1.0

    from lockstep.index.storage import update_manifest

    update_manifest(tmp_path / "v1", spec=index.spec.to_dict())  # what validate_and_save does
    assert read_manifest(tmp_path / "v1").spec["ef_search"] == chosen
    loaded = load_index(tmp_path / "v1", expected_fingerprint=model.fingerprint).index
    assert loaded.spec.ef_search == chosen  # the files were written with 512; the manifest's beam wins
    assert measure_recall(loaded, vectors[::60], 10) >= 0.95
