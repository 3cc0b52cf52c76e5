"""Offline evaluation: metric values on hand-made rankings, exact search, bootstrap
intervals that cover the truth, and a champion/challenger decision on embeddings whose
quality is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lockstep.core.errors import LockstepError
from lockstep.model.evaluation import (
    EvalResult,
    EvaluationError,
    bootstrap_ci,
    compare,
    evaluate_retrieval,
    ndcg_at_k,
    paired_bootstrap_diff,
    parse_metric,
    precision_at_k,
)
from lockstep.model.evaluation_plot import plot_evaluation

LOG2_3 = math.log2(3)


# --- metrics on hand-made rankings --------------------------------------------------------


def test_precision_at_k_counts_relevant_results_in_the_first_k():
    ranked = np.array(
        [
            [True, False, True, False, False],
            [False, False, False, False, False],
            [True, True, True, True, True],
            [False, True, False, False, True],
        ]
    )
    assert precision_at_k(ranked, k=5) == pytest.approx([0.4, 0.0, 1.0, 0.4])
    assert precision_at_k(ranked, k=2) == pytest.approx([0.5, 0.0, 1.0, 0.5])


def test_ndcg_known_values():
    ranked = np.array(
        [
            [1, 0, 1],  # hits at ranks 1 and 3, two relevant in the collection
            [0, 1, 0],  # one relevant document, found at rank 2
            [1, 1, 1],  # perfect, and the collection holds more than k relevant
            [0, 0, 0],  # nothing relevant exists
            [0, 0, 1],  # one hit at rank 3 of five relevant: ideal fills all 3 ranks
        ]
    )
    got = ndcg_at_k(ranked, [2, 1, 10, 0, 5], k=3)
    expected = [
        (1 + 1 / 2) / (1 + 1 / LOG2_3),
        (1 / LOG2_3) / 1,
        1.0,
        0.0,
        (1 / 2) / (1 + 1 / LOG2_3 + 1 / 2),
    ]
    assert got == pytest.approx(expected)


def test_ndcg_ideal_uses_the_whole_collection_not_just_the_retrieved():
    # Same ranking, but one more relevant document exists that the model missed.
    found_all = ndcg_at_k(np.array([[1, 1, 0]]), [2], k=3)
    missed_one = ndcg_at_k(np.array([[1, 1, 0]]), [3], k=3)
    assert found_all[0] == pytest.approx(1.0)
    assert missed_one[0] == pytest.approx((1 + 1 / LOG2_3) / (1 + 1 / LOG2_3 + 1 / 2))


def test_ndcg_graded_relevance_needs_ideal_gains():
    graded = np.array([[2.0, 3.0, 0.0]])
    got = ndcg_at_k(graded, [3], k=3, ideal_gains=np.array([[1.0, 3.0, 2.0]]))
    assert got[0] == pytest.approx((2 + 3 / LOG2_3) / (3 + 2 / LOG2_3 + 1 / 2))
    with pytest.raises(EvaluationError, match="ideal_gains"):
        ndcg_at_k(graded, [3], k=3)


def test_ndcg_refuses_counts_that_contradict_the_ranking():
    with pytest.raises(EvaluationError, match="relevant results"):
        ndcg_at_k(np.array([[1, 1, 1]]), [2], k=3)


def test_metrics_refuse_rankings_shorter_than_k():
    with pytest.raises(EvaluationError, match="k=10"):
        precision_at_k(np.ones((2, 5), dtype=bool), k=10)
    with pytest.raises(LockstepError):
        ndcg_at_k(np.ones((2, 5), dtype=bool), [5, 5], k=0)


# --- exact retrieval ----------------------------------------------------------------------


def _tiny_collection():
    """Four 2-D documents: two 'a' near the x axis, two 'b' near the y axis."""
    docs = np.array([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]], dtype=np.float32)
    labels = np.array(["a", "a", "b", "b"])
    return docs, labels


def test_evaluate_retrieval_on_a_hand_made_collection():
    docs, labels = _tiny_collection()
    # The query looks like an 'a' but is labelled 'b': a mislabelled or hard query.
    queries = np.array([[1.0, 0.05], [0.05, 1.0]], dtype=np.float32)
    result = evaluate_retrieval(queries, ["a", "b"], docs, labels, k=2)
    assert result.precision == pytest.approx([1.0, 1.0])
    assert result.ndcg == pytest.approx([1.0, 1.0])
    assert result.n_relevant.tolist() == [2, 2]

    swapped = evaluate_retrieval(queries, ["b", "a"], docs, labels, k=2)
    assert swapped.precision == pytest.approx([0.0, 0.0])
    # k=3 reaches one relevant document at rank 3.
    deeper = evaluate_retrieval(queries, ["b", "a"], docs, labels, k=3)
    assert deeper.precision == pytest.approx([1 / 3, 1 / 3])
    assert deeper.ndcg == pytest.approx([(1 / 2) / (1 + 1 / LOG2_3)] * 2)


def test_evaluate_retrieval_excludes_each_querys_own_document():
    docs, labels = _tiny_collection()
    # Queries are the documents themselves: without exclusion each finds itself first.
    with_self = evaluate_retrieval(docs, labels, docs, labels, k=1)
    assert with_self.precision == pytest.approx([1, 1, 1, 1])

    rows = np.arange(4)
    without = evaluate_retrieval(docs, labels, docs, labels, k=2, exclude_self_ids=rows)
    # Own document gone: one same-label neighbour left, found first; the second slot
    # can only hold a document of the other label.
    assert without.precision == pytest.approx([0.5] * 4)
    assert without.n_relevant.tolist() == [1, 1, 1, 1]
    assert without.ndcg == pytest.approx([1.0] * 4)

    by_id = evaluate_retrieval(
        docs,
        labels,
        docs,
        labels,
        k=2,
        exclude_self_ids=["d0", "d1", "d2", "d3"],
        doc_ids=["d0", "d1", "d2", "d3"],
    )
    assert by_id.precision == pytest.approx(without.precision)
    assert by_id.n_relevant.tolist() == [1, 1, 1, 1]


def test_evaluate_retrieval_matches_brute_force_on_random_vectors():
    rng = np.random.default_rng(3)
    docs = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    doc_labels = rng.integers(0, 5, size=500)
    query_labels = rng.integers(0, 5, size=37)
    result = evaluate_retrieval(queries, query_labels, docs, doc_labels, k=7, batch_size=10)

    order = np.argsort(-(queries @ docs.T), axis=1)[:, :7]
    relevant = doc_labels[order] == query_labels[:, None]
    assert result.precision == pytest.approx(relevant.mean(axis=1))
    counts = np.array([(doc_labels == q).sum() for q in query_labels])
    assert result.ndcg == pytest.approx(ndcg_at_k(relevant, counts, k=7))


def test_evaluate_retrieval_names_bad_input():
    docs, labels = _tiny_collection()
    with pytest.raises(EvaluationError, match="dimension"):
        evaluate_retrieval(np.ones((1, 3)), ["a"], docs, labels, k=1)
    with pytest.raises(EvaluationError, match="lower k"):
        evaluate_retrieval(docs, labels, docs, labels, k=5)
    with pytest.raises(EvaluationError, match="NaN"):
        evaluate_retrieval(np.array([[np.nan, 0.0]]), ["a"], docs, labels, k=1)
    with pytest.raises(EvaluationError, match="query_labels"):
        evaluate_retrieval(docs, ["a"], docs, labels, k=1)


# --- bootstrap ----------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    trials, covered = 200, 0
    for trial in range(trials):
        sample = rng.exponential(1.0, size=80)  # skewed; true mean 1
        mean, low, high = bootstrap_ci(sample, n_boot=400, seed=trial)
        assert low <= mean <= high
        covered += low <= 1.0 <= high
    # Percentile intervals run slightly narrow on skewed data with n = 80.
    assert 0.86 <= covered / trials <= 0.99


def test_bootstrap_ci_is_reproducible_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = rng.normal(size=50)
    large = rng.normal(size=5000)
    assert bootstrap_ci(small, seed=4) == bootstrap_ci(small, seed=4)
    _, lo_s, hi_s = bootstrap_ci(small)
    _, lo_l, hi_l = bootstrap_ci(large)
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5


def test_paired_bootstrap_sees_a_small_consistent_gain_that_unpaired_intervals_hide():
    rng = np.random.default_rng(5)
    difficulty = rng.uniform(0.2, 0.9, size=300)  # queries vary a lot
    champion = difficulty + rng.normal(0, 0.01, size=300)
    challenger = champion + 0.02 + rng.normal(0, 0.01, size=300)

    diff, low, high, p_better = paired_bootstrap_diff(challenger, champion)
    assert diff == pytest.approx(0.02, abs=0.003)
    assert 0 < low < diff < high
    assert p_better == 1.0
    # The unpaired intervals overlap: they could not tell the two apart.
    _, ch_low, _ = bootstrap_ci(challenger)
    _, _, cp_high = bootstrap_ci(champion)
    assert ch_low < cp_high


def test_paired_bootstrap_on_identical_results_is_undecided():
    values = np.random.default_rng(1).uniform(size=100)
    diff, low, high, p_better = paired_bootstrap_diff(values, values.copy())
    assert (diff, low, high) == (0.0, 0.0, 0.0)
    assert p_better == 0.5
    with pytest.raises(EvaluationError, match="same queries"):
        paired_bootstrap_diff(values, values[:-1])
    with pytest.raises(EvaluationError, match="empty"):
        bootstrap_ci([])


# --- challenger vs champion ---------------------------------------------------------------


def _clustered_corpus(seed: int = 0, n_docs: int = 1200, n_labels: int = 8, dim: int = 32):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, size=n_docs)
    centres = rng.normal(size=(n_labels, dim))
    return rng, labels, centres


def _embed(rng, labels, centres, noise: float) -> np.ndarray:
    """Label-aware vectors: the label's centre plus noise, L2-normalised."""
    vectors = centres[labels] + rng.normal(scale=noise, size=(labels.size, centres.shape[1]))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _self_eval(vectors: np.ndarray, labels: np.ndarray, n_queries: int = 300) -> EvalResult:
    rows = np.arange(n_queries)
    return evaluate_retrieval(
        vectors[rows], labels[rows], vectors, labels, k=10, exclude_self_ids=rows
    )


def test_compare_prefers_label_aware_embeddings_over_random_ones():
    rng, labels, centres = _clustered_corpus()
    good = _self_eval(_embed(rng, labels, centres, noise=1.5), labels)
    random_vectors = rng.normal(size=(labels.size, centres.shape[1])).astype(np.float32)
    poor = _self_eval(random_vectors, labels)
    assert good.mean_ndcg > 0.6 > 0.3 > poor.mean_ndcg

    verdict = compare(good, poor, margin=0.01)
    assert verdict.better is True
    assert verdict.reason.startswith("better:")
    assert f"{good.mean_ndcg:.4f}" in verdict.reason
    assert verdict.metric == "ndcg_at_10"
    f = verdict.figures
    assert f["delta_ndcg_at_10"] == pytest.approx(good.mean_ndcg - poor.mean_ndcg)
    assert f["delta_ndcg_at_10_ci_low"] > 0
    assert f["ndcg_at_10_ci_low"] <= f["ndcg_at_10"] <= f["ndcg_at_10_ci_high"]
    assert f["champion_precision_at_10"] == pytest.approx(poor.mean_precision)
    assert f["better"] == 1.0 and f["n_queries"] == 300.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
    assert all(key.replace("_", "").isalnum() for key in f)  # valid MLflow metric names

    backwards = compare(poor, good, margin=0.01, metric="precision@10")
    assert backwards.better is False
    assert backwards.reason.startswith("not better:")
    assert backwards.metric == "precision_at_10"
    assert backwards.figures["better"] == 0.0


def test_compare_demands_both_a_real_gain_and_the_margin():
    rng, labels, centres = _clustered_corpus(seed=2)
    vectors = _embed(rng, labels, centres, noise=2.0)
    same = _self_eval(vectors, labels)
    tie = compare(same, _self_eval(vectors.copy(), labels), margin=0.0)
    assert tie.better is False
    assert "not above 0" in tie.reason

    better_model = _self_eval(_embed(rng, labels, centres, noise=1.6), labels)
    real_gain = compare(better_model, same, margin=0.0)
    assert real_gain.better is True
    gain = real_gain.figures["delta_ndcg_at_10"]
    too_small = compare(better_model, same, margin=gain + 0.05)
    assert too_small.better is False
    assert "below the margin" in too_small.reason


def test_compare_without_champion_accepts_the_challenger():
    rng, labels, centres = _clustered_corpus(seed=1)
    result = _self_eval(_embed(rng, labels, centres, noise=2.0), labels)
    verdict = compare(result, None, margin=0.05)
    assert verdict.better is True
    assert verdict.reason.startswith("no champion yet")
    assert "delta_ndcg_at_10" not in verdict.figures
    assert verdict.figures["ndcg_at_10"] == pytest.approx(result.mean_ndcg)


def test_compare_refuses_results_from_different_queries_or_metrics():
    rng, labels, centres = _clustered_corpus(seed=1)
    vectors = _embed(rng, labels, centres, noise=2.0)
    a = _self_eval(vectors, labels, n_queries=100)
    b = _self_eval(vectors, labels, n_queries=120)
    with pytest.raises(EvaluationError, match="different queries"):
        compare(a, b, margin=0.0)
    with pytest.raises(EvaluationError, match="k=5"):
        compare(a, a, margin=0.0, metric="ndcg@5")
    with pytest.raises(EvaluationError, match="unknown metric"):
        compare(a, a, margin=0.0, metric="recall@10")
    assert parse_metric("NDCG_at_10") == ("ndcg", 10)


def test_plot_evaluation_writes_a_png(tmp_path):
    rng, labels, centres = _clustered_corpus(seed=4)
    challenger = _self_eval(_embed(rng, labels, centres, noise=1.5), labels, n_queries=200)
    champion = _self_eval(_embed(rng, labels, centres, noise=2.5), labels, n_queries=200)
    names = {i: f"category-{i}" for i in range(8)}
    path = plot_evaluation(challenger, champion, tmp_path / "plots" / "eval.png", label_names=names)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    alone = plot_evaluation(challenger, None, tmp_path / "alone.png")
    assert alone.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["alone.png", "eval.png", "plots"]


# --- bounded memory at scale ----------------------------------------------------------------


def test_score_budget_batches_give_the_same_ranking(monkeypatch):
    """At a million documents the query batch shrinks to keep the score block bounded."""
    import lockstep.model.evaluation as evaluation

    rng = np.random.default_rng(4)
    docs = rng.normal(size=(400, 8)).astype(np.float32)
    queries = rng.normal(size=(50, 8)).astype(np.float32)
    doc_labels, query_labels = rng.integers(0, 4, 400), rng.integers(0, 4, 50)
    whole = evaluate_retrieval(queries, query_labels, docs, doc_labels, k=5)
    monkeypatch.setattr(evaluation, "SCORE_BUDGET_ELEMENTS", 1000)  # 2 queries per block
    small = evaluate_retrieval(queries, query_labels, docs, doc_labels, k=5)
    np.testing.assert_array_equal(small.precision, whole.precision)
    np.testing.assert_array_equal(small.ndcg, whole.ndcg)


def test_fit_sample_is_seeded_and_bounds_what_the_model_is_fitted_on():
    from lockstep.store.records import Record
    from lockstep.training.config import TrainConfig, TrainingError
    from lockstep.training.fit import fit_texts

    records = [Record(f"r{i:04d}", f"text number {i}") for i in range(1000)]
    assert fit_texts(records, TrainConfig()) == [r.text for r in records]  # under the sample size: all
    picked = fit_texts(records, TrainConfig(fit_sample=100))
    assert len(picked) == len(set(picked)) == 100
    assert picked == fit_texts(records, TrainConfig(fit_sample=100))  # same seed, same sample
    assert picked != fit_texts(records, TrainConfig(fit_sample=100, seed=1))
    assert picked == sorted(picked, key=lambda t: int(t.split()[-1]))  # corpus order kept
    assert len(fit_texts(records, TrainConfig(fit_sample=None))) == 1000
    with pytest.raises(TrainingError, match="fit_sample must be at least 2"):
        TrainConfig(fit_sample=1)
    with pytest.raises(TrainingError, match="fit_sample"):
        TrainConfig.from_dict({"fit_sample": 0})


def test_an_eval_set_without_records_evaluates_like_the_holdout():
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import (
        EvalSet,
        evaluate_embedder,
        fit_embedder,
        fit_texts,
        split_holdout,
    )

    config = TrainConfig(dim=16, min_df=1, holdout_percent=20, fit_sample=300)
    holdout = split_holdout(_labelled_records(), config)
    model = fit_embedder(fit_texts(holdout.train, config), config)
    via_records = evaluate_embedder(model, holdout, config)
    data = EvalSet.from_holdout(holdout, config.label_key)
    assert data.summary == holdout.summary() and len(data.doc_texts) == len(holdout.docs)
    via_columns = evaluate_embedder(model, data, config)
    np.testing.assert_array_equal(via_columns.ndcg, via_records.ndcg)
    assert via_columns.n_queries == len(holdout.queries) > 0


def _labelled_records():
    from lockstep.store.records import Record

    topics = {
        "space": "orbit rocket launch nasa shuttle moon satellite mission",
        "hockey": "puck goal ice team season playoff goalie score",
        "crypto": "key encryption cipher clipper privacy algorithm secure chip",
    }
    rng = np.random.default_rng(5)
    out = []
    for i in range(600):
        label = list(topics)[i % 3]
        words = rng.choice(topics[label].split(), size=10)
        out.append(Record(f"d{i:04d}", " ".join(words), {"category": label}))
    return out


def test_bootstrap_is_seeded_bounded_in_memory_and_takes_a_single_query(monkeypatch):
    """scipy.stats.bootstrap draws the resamples: the same seed gives the same figures,
    however many resamples are held at once, and one query gives a zero-width interval."""
    import lockstep.model.evaluation as evaluation

    rng = np.random.default_rng(8)
    champion = rng.uniform(size=400)
    challenger = champion + rng.normal(0.01, 0.05, size=400)
    whole = paired_bootstrap_diff(challenger, champion, n_boot=500, seed=3)
    assert whole == paired_bootstrap_diff(challenger, champion, n_boot=500, seed=3)
    assert whole != paired_bootstrap_diff(challenger, champion, n_boot=500, seed=4)
    monkeypatch.setattr(evaluation, "BOOTSTRAP_CHUNK_ELEMENTS", 400 * 7)  # 7 resamples a batch
    assert paired_bootstrap_diff(challenger, champion, n_boot=500, seed=3) == pytest.approx(whole)

    assert bootstrap_ci([0.7], n_boot=50) == (0.7, 0.7, 0.7)
    assert paired_bootstrap_diff([0.9], [0.4], n_boot=50) == pytest.approx((0.5, 0.5, 0.5, 1.0))
    with pytest.raises(EvaluationError, match="n_boot"):
        bootstrap_ci([0.1, 0.2], n_boot=0)
    with pytest.raises(EvaluationError, match="alpha"):
        bootstrap_ci([0.1, 0.2], alpha=1.0)
