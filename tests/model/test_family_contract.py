"""The embedding contract, checked the same way on every model, as scikit-learn's ``check_estimator``.

Every built-in family (``lockstep.model.families.families()``), an imported MLflow pyfunc
model (``tests/model/byo_models.py``, loaded as ``PyfuncEmbedder``) and an ``onnx_text``
model (a tiny ONNX encoder, ``tests/model/onnx_fixtures.py``) go through one set of
checks: shapes and dtype, determinism, a fingerprint that follows the weights, a save/load
round trip, and batch independence. A new family passes these before anything downstream
(the registry, the re-embed, serving) may rely on it. Tiny corpora and small dimensions keep
the whole file to a few seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockstep.model.contract import Embedder
from lockstep.model.families import families, family_class, load_model_file
from lockstep.model.pyfunc_embedder import (
    PyfuncEmbedder,
    check_contract,
    directory_digest,
    write_probe,
)
from tests.model.byo_models import fit_pipeline, save_team_model

TOPICS = {
    "space": "orbit rocket launch nasa shuttle moon satellite mission",
    "hockey": "puck goal ice team season playoff goalie score",
    "crypto": "key encryption cipher clipper privacy algorithm secure chip",
}
COMMON = ["the", "of", "and", "to", "in", "is", "it", "that"]
ATOL = 1e-5


def corpus(n: int = 60, seed: int = 0) -> list[str]:
    """Texts of three topics with a few common words mixed in (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = list(rng.choice(TOPICS[list(TOPICS)[i % 3]].split(), size=6)) + list(rng.choice(COMMON, size=3))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


PROBES = [*corpus(9, seed=7), "zzz qqq", "rocket", ""]  # an unknown word, one word, nothing


# --- how each kind of model is made, changed and saved --------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of model under the contract."""

    name: str
    fit: Callable[[list[str], int, Path], Embedder]  # texts, seed, a scratch folder -> a fitted model
    changed: Callable[[Embedder, Path], Embedder]  # the same model with other weights
    normalised: bool  # rows of unit length (or zero), as the built-in families promise
    refits_alike: bool  # the same texts and seed give the same fingerprint


BUILTIN_PARAMS: dict[str, dict[str, Any]] = {
    "tfidf_svd": {"dim": 6, "min_df": 1, "max_df": 1.0},
    "word_vectors": {"dim": 8, "epochs": 3, "window": 3, "min_count": 1},
}
SEED_PARAM = {"tfidf_svd": "random_state", "word_vectors": "seed"}


def _builtin(name: str) -> Kind:
    def fit(texts: list[str], seed: int, folder: Path) -> Embedder:
        return family_class(name)(**BUILTIN_PARAMS[name], **{SEED_PARAM[name]: seed}).fit(texts)

    def changed(model: Embedder, folder: Path) -> Embedder:
        other = copy.deepcopy(model)
        weights = other.svd_.components_ if name == "tfidf_svd" else other.vectors_
        weights[0, 0] += 0.5
        other._prepare_fast_path()
        other.fingerprint_ = other._compute_fingerprint()
        return other

    return Kind(name, fit, changed, normalised=True, refits_alike=True)


def _imported_from(pipeline: Any, folder: Path) -> PyfuncEmbedder:
    """A team's model imported as Lockstep does it: contract checked, probe stored, digest trusted."""
    import mlflow

    model_dir = save_team_model(folder, pipeline=pipeline)
    write_probe(model_dir, check_contract(mlflow.pyfunc.load_model(str(model_dir))))
    return PyfuncEmbedder.load(model_dir, expected_sha256=directory_digest(model_dir))


def _imported() -> Kind:
    def fit(texts: list[str], seed: int, folder: Path) -> Embedder:
        return _imported_from(fit_pipeline(texts, dim=6, seed=seed), folder)

    def changed(model: Embedder, folder: Path) -> Embedder:
        return _imported_from(fit_pipeline(corpus(60, seed=3), dim=6), folder)

    # MLflow stamps every saved model (time, uuid), so two saves are two artifacts.
    return Kind("imported", fit, changed, normalised=False, refits_alike=False)


def _onnx_text() -> Kind:
    """The onnx_text family: a tiny ONNX encoder (tests/model/onnx_fixtures.py), loaded as an import does."""
    from lockstep.model.onnx_text import open_folder
    from tests.model.onnx_fixtures import make_folder

    def fit(texts: list[str], seed: int, folder: Path) -> Embedder:
        return open_folder(make_folder(folder / "onnx", seed=seed).folder, folder / "work")

    def changed(model: Embedder, folder: Path) -> Embedder:
        return fit([], 1, folder)

    # the fingerprint leaves out MLflow's stamps, so the same files give the same space
    return Kind("onnx_text", fit, changed, normalised=True, refits_alike=True)


KINDS = [_builtin(name) for name in sorted(families())] + [_imported(), _onnx_text()]


@pytest.fixture(scope="module", params=KINDS, ids=lambda kind: kind.name)
def kind(request) -> Kind:
    return request.param


@pytest.fixture(scope="module")
def fitted(kind: Kind, tmp_path_factory) -> Embedder:
    return kind.fit(corpus(), 0, tmp_path_factory.mktemp(f"{kind.name}-fit"))


# --- the checks -----------------------------------------------------------------------------------


def test_it_meets_the_embedder_protocol_with_n_by_dim_float32(kind, fitted):
    assert isinstance(fitted, Embedder)
    out = fitted.transform(PROBES)
    assert out.shape == (len(PROBES), fitted.dim_) and out.dtype == np.float32
    assert np.isfinite(out).all()
    query = fitted.embed_query(PROBES[0])
    assert query.shape == (fitted.dim_,) and query.dtype == np.float32
    assert fitted.transform([]).shape == (0, fitted.dim_)
    assert fitted.fingerprint.startswith("sha256:") and len(fitted.fingerprint) == len("sha256:") + 64


def test_rows_are_unit_length_or_zero_where_the_contract_says_so(kind, fitted):
    if not kind.normalised:
        pytest.skip("an imported model's contract does not promise normalised rows")
    norms = np.linalg.norm(fitted.transform(PROBES), axis=1)
    assert np.all(np.isclose(norms, 1.0, atol=ATOL) | np.isclose(norms, 0.0, atol=ATOL)), norms
    assert np.isclose(norms[0], 1.0, atol=ATOL)  # a text of known words is never the zero vector


def test_the_same_input_gives_the_same_vectors(kind, fitted):
    np.testing.assert_array_equal(fitted.transform(PROBES), fitted.transform(PROBES))
    np.testing.assert_array_equal(fitted.embed_query(PROBES[1]), fitted.embed_query(PROBES[1]))


def test_fitting_again_with_the_same_seed_gives_the_same_fingerprint(kind, fitted, tmp_path):
    again = kind.fit(corpus(), 0, tmp_path)
    if kind.refits_alike:
        assert again.fingerprint == fitted.fingerprint
    np.testing.assert_allclose(again.transform(PROBES), fitted.transform(PROBES), atol=ATOL)


def test_the_fingerprint_changes_when_the_weights_change(kind, fitted, tmp_path):
    other = kind.changed(fitted, tmp_path)
    assert other.fingerprint != fitted.fingerprint
    assert not np.allclose(other.transform(PROBES), fitted.transform(PROBES), atol=ATOL)


def test_save_and_load_give_the_same_vectors_and_fingerprint(kind, fitted, tmp_path):
    path = fitted.save(tmp_path / "saved")
    for loaded in (type(fitted).load(path), load_model_file(path)):
        assert type(loaded) is type(fitted)
        assert loaded.fingerprint == fitted.fingerprint and loaded.dim_ == fitted.dim_
        np.testing.assert_allclose(loaded.transform(PROBES), fitted.transform(PROBES), atol=ATOL)
        np.testing.assert_allclose(loaded.embed_query(PROBES[2]), fitted.embed_query(PROBES[2]), atol=ATOL)


def test_a_text_embeds_alike_alone_and_within_a_batch(kind, fitted):
    batch = fitted.transform(PROBES)
    for i, text in enumerate(PROBES):
        np.testing.assert_allclose(fitted.transform([text])[0], batch[i], atol=ATOL, err_msg=repr(text))
        np.testing.assert_allclose(fitted.embed_query(text), batch[i], atol=ATOL, err_msg=repr(text))
