"""The embedding model: sklearn estimator, fast single-query path, fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from lockstep.embedding import TextEmbedder
from lockstep.errors import NotFittedError

TOPICS = {
    "space": "orbit rocket launch nasa shuttle moon satellite mission astronaut",
    "hockey": "puck goal ice team season playoff goalie score league",
    "crypto": "key encryption cipher clipper privacy algorithm secure nsa chip",
}


def corpus(n_per_topic: int = 40, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, words in TOPICS.items():
        vocab = words.split()
        for _ in range(n_per_topic):
            texts.append(" ".join(rng.choice(vocab, size=12)) + " common words here")
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def fitted():
    texts, _ = corpus()
    return TextEmbedder(dim=8, min_df=1, max_df=1.0, stop_words=None).fit(texts)


def test_fit_returns_self_and_transform_gives_unit_float32_rows(fitted):
    texts, labels = corpus(5, seed=1)
    x = fitted.transform(texts)
    assert x.dtype == np.float32 and x.shape == (len(texts), fitted.dim_)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # same-topic texts are closer than cross-topic ones
    sims = x @ x.T
    same = np.array([[a == b for b in labels] for a in labels])
    np.fill_diagonal(same, False)
    diff = ~same
    np.fill_diagonal(diff, False)
    assert sims[same].mean() > sims[diff].mean() + 0.3


def test_fast_query_path_equals_the_sklearn_path(fitted):
    texts, _ = corpus(3, seed=2)
    texts += ["unknownword only", "Orbit ROCKET, launch!"]
    bulk = fitted.transform(texts)
    one = np.stack([fitted.embed_query(t) for t in texts])
    np.testing.assert_allclose(one, bulk, atol=1e-5)
    assert not fitted.embed_query("zzz qqq").any()  # out-of-vocabulary text embeds to zero


def test_fingerprint_is_stable_for_an_artifact_and_differs_between_fits(fitted, tmp_path):
    path = fitted.save(tmp_path / "model.joblib")
    again = TextEmbedder.load(path)
    assert again.fingerprint == fitted.fingerprint
    assert again.fingerprint.startswith("sha256:")
    texts, _ = corpus()
    other_params = clone(fitted).set_params(dim=6).fit(texts)
    other_data = clone(fitted).fit(corpus(seed=5)[0])
    assert len({fitted.fingerprint, other_params.fingerprint, other_data.fingerprint}) == 3


def test_a_tampered_artifact_is_refused(fitted, tmp_path):
    import joblib

    path = fitted.save(tmp_path / "m.joblib")
    model = joblib.load(path)
    model.svd_.components_[0, 0] += 0.5
    joblib.dump(model, path)
    with pytest.raises(NotFittedError, match="does not match the model's weights"):
        TextEmbedder.load(path)


def test_unfitted_and_bad_input_errors():
    with pytest.raises(NotFittedError, match="call fit"):
        TextEmbedder().transform(["x"])
    with pytest.raises(TypeError, match="single string"):
        TextEmbedder(dim=2, min_df=1, stop_words=None).fit("just one string")
    with pytest.raises(ValueError, match="at least 2 texts"):
        TextEmbedder().fit(["one"])
