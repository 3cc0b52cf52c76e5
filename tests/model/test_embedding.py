"""The embedding model: sklearn estimator, fast single-query path, fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from lockstep.core.errors import NotFittedError
from lockstep.model.embedding import TextEmbedder
from lockstep.model.integrity import (
    ModelIntegrityError,
    checksum_path,
    file_sha256,
    verify_model_file,
)

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


def test_weights_changed_under_a_valid_checksum_are_refused_by_the_fingerprint(fitted, tmp_path):
    import joblib

    path = fitted.save(tmp_path / "m.joblib")
    saved = joblib.load(path)
    saved["pipeline"].named_steps["svd"].components_[0, 0] += 0.5
    joblib.dump(saved, path)
    checksum_path(path).write_text(file_sha256(path).removeprefix("sha256:") + "  m.joblib\n")
    with pytest.raises(NotFittedError, match="does not match the model's weights"):
        TextEmbedder.load(path)


def test_the_file_holds_plain_scikit_learn_that_embeds_alike_and_old_files_still_load(fitted, tmp_path):
    """The saved file names no Lockstep class (the MLflow model loads it without Lockstep)."""
    import joblib

    path = fitted.save(tmp_path / "m.joblib")
    saved = joblib.load(path)
    assert b"lockstep.model" not in path.read_bytes()
    assert saved["format"] == "lockstep.text-embedder/2" and saved["fingerprint"] == fitted.fingerprint
    texts = corpus(9, seed=4)[0] + ["zzz qqq"]
    np.testing.assert_allclose(saved["pipeline"].transform(texts), fitted.transform(texts), atol=1e-6)

    old = tmp_path / "old.joblib"  # the format before: the pickled estimator itself
    joblib.dump(fitted, old)
    loaded = TextEmbedder.load(old, expected_sha256=file_sha256(old))
    assert loaded.fingerprint == fitted.fingerprint
    np.testing.assert_allclose(loaded.embed_query(texts[0]), fitted.embed_query(texts[0]), atol=1e-6)


class _Payload:
    """A pickle that writes a marker file when it is unpickled (what an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_a_tampered_model_file_is_refused_before_anything_is_unpickled(fitted, tmp_path):
    import joblib

    path = fitted.save(tmp_path / "m.joblib")
    trusted = file_sha256(path)
    assert checksum_path(path).read_text().split() == [trusted.removeprefix("sha256:"), "m.joblib"]
    marker = tmp_path / "pwned"
    joblib.dump(_Payload(marker), path)  # the file is replaced; its sidecar still vouches for the old one

    with pytest.raises(ModelIntegrityError, match=r"model file .*m\.joblib fails its checksum") as err:
        TextEmbedder.load(path)
    assert trusted in str(err.value) and "sidecar m.joblib.sha256" in str(err.value)
    with pytest.raises(ModelIntegrityError, match="expected sha256 says " + trusted):
        TextEmbedder.load(path, expected_sha256=trusted)
    assert not marker.exists()  # nothing was deserialised

    path.write_bytes(path.read_bytes()[:-3])  # a truncated copy is refused the same way
    with pytest.raises(ModelIntegrityError, match="fails its checksum"):
        TextEmbedder.load(path)
    assert not marker.exists()


def test_a_model_file_without_any_checksum_is_refused(fitted, tmp_path):
    path = fitted.save(tmp_path / "m.joblib")
    digest = file_sha256(path)
    checksum_path(path).unlink()
    with pytest.raises(ModelIntegrityError, match=r"m\.joblib has no checksum to verify.*m\.joblib\.sha256 is missing"):
        TextEmbedder.load(path)
    assert TextEmbedder.load(path, expected_sha256=digest).fingerprint == fitted.fingerprint
    assert verify_model_file(path, digest) == digest
    assert TextEmbedder.load(path, expected_sha256=digest.removeprefix("sha256:").upper()).dim_ == fitted.dim_
    with pytest.raises(ModelIntegrityError, match="is not a sha256"):
        TextEmbedder.load(path, expected_sha256="sha256:abc")
    with pytest.raises(ModelIntegrityError, match=r"model file .*nope\.joblib does not exist"):
        TextEmbedder.load(tmp_path / "nope.joblib")


def test_bulk_transform_in_batches_equals_one_batch(fitted, monkeypatch):
    import lockstep.model.embedding as embedding

    texts, _ = corpus(7, seed=3)
    whole = fitted.transform(texts)
    monkeypatch.setattr(embedding, "TRANSFORM_BATCH", 4)
    batched = fitted.transform(texts)
    np.testing.assert_array_equal(batched, whole)
    assert fitted.transform([]).shape == (0, fitted.dim_)


def test_unfitted_and_bad_input_errors():
    with pytest.raises(NotFittedError, match="call fit"):
        TextEmbedder().transform(["x"])
    with pytest.raises(TypeError, match="single string"):
        TextEmbedder(dim=2, min_df=1, stop_words=None).fit("just one string")
    with pytest.raises(ValueError, match="at least 2 texts"):
        TextEmbedder().fit(["one"])
