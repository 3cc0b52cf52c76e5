"""Training a candidate, step by step: the stable holdout split, fitting on a seeded
sample, embedding in batches, evaluating, judging, writing the report; and bad
parameters refused with an error that names them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lockstep.model import embedding
from lockstep.store.records import Record
from lockstep.training.config import TrainConfig, TrainingError
from lockstep.training.fit import (
    EvalReport,
    EvalSet,
    evaluate_embedder,
    fit_embedder,
    fit_texts,
    is_holdout,
    judge,
    split_holdout,
    write_eval_artifacts,
)

TOPICS = {
    "space": "orbit rocket launch nasa shuttle moon satellite mission",
    "hockey": "puck goal ice team season playoff goalie score",
    "crypto": "key encryption cipher clipper privacy algorithm secure chip",
}
SMALL = TrainConfig(dim=16, min_df=1, max_df=1.0, holdout_percent=20, n_boot=200)


def corpus(n: int = 600, seed: int = 5, *, unlabelled_every: int = 0) -> list[Record]:
    """Records of three topics (their label in ``category``); every ``unlabelled_every``-th has none."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        text = " ".join(rng.choice(TOPICS[label].split(), size=10))
        labelled = not unlabelled_every or i % unlabelled_every
        out.append(Record(f"d{i:04d}", text, {"category": label} if labelled else {"note": "no label"}))
    return out


def ids(records: list[Record]) -> list[str]:
    return [r.id for r in records]


# --- TrainConfig -----------------------------------------------------------------------------------


def test_a_config_round_trips_through_a_dict_and_builds_its_embedder():
    config = TrainConfig(dim=32, max_features=1000, min_df=3, max_df=0.7, ngram_max=2, seed=9)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict(None) == TrainConfig() == TrainConfig.from_dict({})
    params = config.embedder().get_params()
    assert {k: params[k] for k in ("dim", "max_features", "min_df", "max_df", "ngram_range", "random_state")} == {
        "dim": 32, "max_features": 1000, "min_df": 3, "max_df": 0.7, "ngram_range": (1, 2), "random_state": 9,
    }


def test_unknown_parameters_are_named():
    with pytest.raises(TrainingError, match=r"unknown training parameters: \['dimension', 'epoch'\]"):
        TrainConfig.from_dict({"dim": 8, "epoch": 3, "dimension": 8})


def test_the_family_picks_the_estimator_and_its_parameters():
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.word_vectors import WordVectorEmbedder

    assert type(TrainConfig().embedder()) is TextEmbedder  # the default family is tfidf_svd
    config = TrainConfig(family="word_vectors", dim=24, max_features=900, window=3, min_count=4, epochs=2, sif_a=0.01, seed=5)
    embedder = config.embedder()
    assert type(embedder) is WordVectorEmbedder
    assert embedder.get_params() == {
        **WordVectorEmbedder().get_params(),
        "dim": 24, "max_vocab": 900, "window": 3, "min_count": 4, "epochs": 2, "sif_a": 0.01, "seed": 5,
    }
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_an_unknown_family_is_refused_with_the_families_there_are():
    with pytest.raises(TrainingError, match=r"unknown model family 'bert'; choose one of: tfidf_svd, word_vectors"):
        TrainConfig.from_dict({"family": "bert"})


def test_a_word_vector_model_is_fitted_reproducibly_and_retrieves_its_topics():
    config = TrainConfig(family="word_vectors", dim=16, min_count=1, epochs=5, window=4, holdout_percent=20, n_boot=200)
    holdout = split_holdout(corpus(), config)
    texts = fit_texts(holdout.train, config)
    model = fit_embedder(texts, config)
    assert fit_embedder(texts, config).fingerprint == model.fingerprint
    assert model.dim_ == 16
    result = evaluate_embedder(model, holdout, config)
    assert result.n_queries == len(holdout.queries) and result.mean_ndcg > 0.9


def test_a_parameter_the_family_cannot_fit_with_is_a_training_error():
    config = TrainConfig(family="word_vectors", dim=8, min_count=10_000)
    with pytest.raises(TrainingError, match="cannot fit the word_vectors model: no word occurs at least min_count=10000"):
        fit_embedder([r.text for r in corpus(60)], config)


@pytest.mark.parametrize("fit_sample", [1, 0, -5, True])
def test_a_fit_sample_below_two_records_is_refused(fit_sample):
    with pytest.raises(TrainingError, match=f"fit_sample must be at least 2 records .*got {fit_sample!r}"):
        TrainConfig.from_dict({"fit_sample": fit_sample})


def test_a_fit_sample_that_is_not_a_number_is_named():
    with pytest.raises(TrainingError, match="fit_sample"):
        TrainConfig.from_dict({"fit_sample": "many"})


# --- the holdout split -----------------------------------------------------------------------------


def test_holdout_membership_is_a_stable_function_of_the_id():
    names = [f"record-{i}" for i in range(20_000)]
    ten = [n for n in names if is_holdout(n, 10)]
    assert ten == [n for n in names if is_holdout(n, 10)]  # the same answer every time
    assert 0.09 < len(ten) / len(names) < 0.11  # about the share asked for
    twenty = {n for n in names if is_holdout(n, 20)}
    assert set(ten) <= twenty  # raising the share only adds queries: old ones stay held out
    assert not any(is_holdout(n, 0) for n in names[:1000])
    assert all(is_holdout(n, 100) for n in names[:1000])


def test_the_split_does_not_depend_on_the_order_of_the_snapshot():
    records = corpus()
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    a, b = split_holdout(records, SMALL), split_holdout(shuffled, SMALL)
    assert sorted(ids(a.queries)) == sorted(ids(b.queries))
    assert sorted(ids(a.train)) == sorted(ids(b.train))
    assert sorted(ids(a.docs)) == sorted(ids(b.docs))


def test_held_out_queries_are_never_trained_on_and_unlabelled_records_only_train():
    records = corpus(unlabelled_every=4)
    holdout = split_holdout(records, SMALL)
    queries, train, docs = set(ids(holdout.queries)), set(ids(holdout.train)), set(ids(holdout.docs))
    unlabelled = {r.id for r in records if "category" not in r.metadata}
    assert queries and not queries & train and not queries & docs
    assert unlabelled <= train and not unlabelled & (queries | docs)
    assert train | queries == {r.id for r in records}
    assert docs == {r.id for r in records} - unlabelled - queries
    assert queries == {r.id for r in records if r.id not in unlabelled and is_holdout(r.id, 20)}
    assert holdout.summary() == {"train": len(train), "eval_queries": len(queries), "eval_docs": len(docs)}


def test_an_empty_label_counts_as_no_label():
    records = [Record(f"e{i}", "rocket orbit moon", {"category": ""}) for i in range(50)]
    holdout = split_holdout(records, TrainConfig(holdout_percent=50))
    assert (len(holdout.train), holdout.queries, holdout.docs) == (50, [], [])


def test_capped_queries_are_a_seeded_sample_and_the_rest_stay_out_of_training():
    records = corpus(2000)
    config = TrainConfig(holdout_percent=30, max_eval_queries=50, seed=1)
    holdout = split_holdout(records, config)
    everyone_held = {r.id for r in records if is_holdout(r.id, 30)}
    assert len(holdout.queries) == 50 and set(ids(holdout.queries)) < everyone_held
    assert ids(holdout.queries) == sorted(ids(holdout.queries))  # snapshot order kept
    assert ids(split_holdout(records, config).queries) == ids(holdout.queries)  # same seed, same sample
    other = split_holdout(records, TrainConfig(holdout_percent=30, max_eval_queries=50, seed=2))
    assert ids(other.queries) != ids(holdout.queries)
    # a held-out record that was not picked as a query is still not trained on (nor a document):
    # the next run may pick it, and no model may have seen its query
    assert not everyone_held & set(ids(holdout.train)) and not everyone_held & set(ids(holdout.docs))


def test_another_label_key_decides_what_is_labelled():
    records = [Record(f"t{i}", "puck goal", {"topic": "hockey"} if i % 2 else {"category": "hockey"}) for i in range(400)]
    holdout = split_holdout(records, TrainConfig(label_key="topic", holdout_percent=20))
    assert {r.metadata.get("topic") for r in holdout.queries + holdout.docs} == {"hockey"}


def test_an_empty_snapshot_says_how_to_load_a_corpus():
    with pytest.raises(TrainingError, match=r"no records: load a corpus first \(lockstep corpus load --demo\)"):
        split_holdout([], SMALL)


# --- fitting ---------------------------------------------------------------------------------------


def test_the_model_is_fitted_on_the_sample_only():
    """A word that appears only in records outside the sample is not in the vocabulary."""
    records = [Record(f"r{i:03d}", f"common words here marker{i}") for i in range(200)]
    config = TrainConfig(dim=8, min_df=1, max_df=1.0, fit_sample=40, seed=3)
    texts = fit_texts(records, config)
    model = fit_embedder(texts, config)
    markers = {w for w in model.vectorizer_.vocabulary_ if w.startswith("marker")}
    assert len(texts) == 40 and markers == {t.split()[-1] for t in texts}


def test_fitting_is_reproducible_and_the_seed_matters():
    texts = [r.text for r in corpus(300)]
    a, b = fit_embedder(texts, SMALL), fit_embedder(texts, SMALL)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.transform(texts[:20]), b.transform(texts[:20]))
    assert fit_embedder(texts, TrainConfig(dim=16, min_df=1, max_df=1.0, seed=1)).fingerprint != a.fingerprint
    assert a.dim_ == 16


@pytest.mark.parametrize("texts", [[], ["just one"]])
def test_fewer_than_two_texts_cannot_be_fitted(texts):
    with pytest.raises(TrainingError, match=f"need at least 2 training texts, got {len(texts)}"):
        fit_embedder(texts, SMALL)


def test_embedding_in_batches_gives_the_same_vectors_and_the_same_evaluation(monkeypatch):
    holdout = split_holdout(corpus(), SMALL)
    model = fit_embedder(fit_texts(holdout.train, SMALL), SMALL)
    texts = [r.text for r in holdout.docs]
    whole = model.transform(texts)
    whole_eval = evaluate_embedder(model, holdout, SMALL)
    monkeypatch.setattr(embedding, "TRANSFORM_BATCH", 8)  # many small batches, the last one short
    assert len(texts) % 8
    np.testing.assert_array_equal(model.transform(texts), whole)
    chunked_eval = evaluate_embedder(model, holdout, SMALL)
    np.testing.assert_array_equal(chunked_eval.ndcg, whole_eval.ndcg)
    np.testing.assert_array_equal(chunked_eval.precision, whole_eval.precision)
    np.testing.assert_allclose(model.embed_query(texts[3]), whole[3], atol=1e-6)  # the single-query path agrees


# --- evaluating and judging ------------------------------------------------------------------------


def test_a_model_of_the_topics_retrieves_same_topic_documents():
    holdout = split_holdout(corpus(), SMALL)
    model = fit_embedder(fit_texts(holdout.train, SMALL), SMALL)
    result = evaluate_embedder(model, holdout, SMALL)
    assert result.n_queries == len(holdout.queries)
    assert result.mean_ndcg > 0.9  # three well-separated topics: neighbours share the label


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (TrainConfig(dim=16, min_df=1, holdout_percent=0), "0 labelled queries"),
        (TrainConfig(dim=16, min_df=1, holdout_percent=20, label_key="topic"), "'topic' metadata field"),
        (TrainConfig(dim=16, min_df=1, holdout_percent=20, k=1000), "more than k=1000 documents"),
    ],
)
def test_an_evaluation_without_enough_labelled_data_says_what_is_missing(config, fragment):
    holdout = split_holdout(corpus(), config)
    model = fit_embedder([r.text for r in holdout.train], config)
    with pytest.raises(TrainingError, match="cannot evaluate") as caught:
        evaluate_embedder(model, holdout, config)
    assert fragment in str(caught.value)


def test_judging_against_no_champion_and_against_itself():
    holdout = split_holdout(corpus(), SMALL)
    model = fit_embedder(fit_texts(holdout.train, SMALL), SMALL)
    data = EvalSet.from_holdout(holdout, SMALL.label_key)
    result = evaluate_embedder(model, data, SMALL)
    first = judge(result, None, SMALL, None, data)
    assert first.better and first.champion_version is None and first.holdout == holdout.summary()
    same = judge(result, result, SMALL, "4", holdout)
    assert not same.better and same.champion_version == "4"  # no gain over itself, whatever the margin
    assert same.holdout == holdout.summary()


def test_the_report_and_its_plot_are_written_for_the_run(tmp_path):
    holdout = split_holdout(corpus(), SMALL)
    model = fit_embedder(fit_texts(holdout.train, SMALL), SMALL)
    result = evaluate_embedder(model, holdout, SMALL)
    report = judge(result, None, SMALL, None, holdout)
    paths = write_eval_artifacts(report, result, None, tmp_path / "run" / "eval")
    assert set(paths) == {"reports/evaluation.json", "plots/evaluation.png"}
    saved = json.loads(paths["reports/evaluation.json"].read_text())
    assert saved == json.loads(report.to_json())
    assert EvalReport(**saved) == report
    assert paths["plots/evaluation.png"].read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "run" / "eval").iterdir()) == ["evaluation.json", "evaluation.png"]
