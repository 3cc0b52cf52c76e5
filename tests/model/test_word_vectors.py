"""The word-vector family: Word2Vec trained on the corpus, SIF pooling, L2 norm.

Real gensim training on a small three-topic corpus; the MLflow model is loaded through
``mlflow.pyfunc.load_model`` from a registered version in a temporary SQLite store.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lockstep.model import word_vectors
from lockstep.model.families import families, family_class, family_name, load_model_file
from lockstep.model.integrity import ModelIntegrityError, file_sha256
from lockstep.model.registry import Registry
from lockstep.model.word_vectors import WordVectorEmbedder, tokenize

TOPICS = {
    "space": "orbit rocket launch nasa shuttle moon satellite mission",
    "hockey": "puck goal ice team season playoff goalie score",
    "crypto": "key encryption cipher clipper privacy algorithm secure chip",
}
COMMON = ["the", "of", "and", "to", "in", "is", "it", "that"]


def texts(n: int = 300, seed: int = 1) -> list[str]:
    """Texts of three topics, each with a few common words mixed in."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = list(rng.choice(TOPICS[list(TOPICS)[i % 3]].split(), size=8)) + list(rng.choice(COMMON, size=4))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


SMALL = {"dim": 16, "epochs": 5, "window": 4, "min_count": 1}


@pytest.fixture(scope="module")
def model() -> WordVectorEmbedder:
    return WordVectorEmbedder(**SMALL).fit(texts())


# --- the estimator ---------------------------------------------------------------------------------


def test_it_is_a_registered_family_with_an_estimator_api(model):
    assert families()["word_vectors"] is WordVectorEmbedder is family_class("word_vectors")
    assert family_name(model) == "word_vectors"
    assert model.get_params() == {**WordVectorEmbedder().get_params(), **SMALL}
    assert model.dim_ == 16 and len(model.vocab_) == len(set(" ".join(TOPICS.values()).split()) | set(COMMON))
    out = model.transform(["rocket orbit", "puck goalie"])
    assert out.shape == (2, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_fitting_the_same_texts_twice_gives_the_same_fingerprint_and_vectors(model):
    again = WordVectorEmbedder(**SMALL).fit(texts())
    assert again.fingerprint == model.fingerprint
    np.testing.assert_array_equal(again.pooled_, model.pooled_)
    other_seed = WordVectorEmbedder(**SMALL, seed=1).fit(texts())
    assert other_seed.fingerprint != model.fingerprint


def test_fitting_in_another_process_with_another_hash_seed_gives_the_same_fingerprint(model, tmp_path):
    """Word2Vec's initial vectors must not depend on Python's per-process string hashing."""
    script = (
        "from tests.model.test_word_vectors import SMALL, texts;"
        "from lockstep.model.word_vectors import WordVectorEmbedder;"
        "print(WordVectorEmbedder(**SMALL).fit(texts()).fingerprint)"
    )
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LOCKSTEP_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == model.fingerprint


def test_the_sif_weights_fall_with_frequency_and_the_component_is_removed(model):
    share = {w: 0.0 for w in model.vocab_}
    tokens = [t for text in texts() for t in tokenize(text)]
    for t in tokens:
        share[t] += 1 / len(tokens)
    expected = [model.sif_a / (model.sif_a + share[w]) for w in model.vocab_]
    np.testing.assert_allclose(model.weights_, expected, rtol=1e-5)
    assert abs(float(np.linalg.norm(model.component_)) - 1.0) < 1e-5
    # no pooled row keeps a part along the removed direction, so no embedding does either
    np.testing.assert_allclose(model.pooled_ @ model.component_, 0.0, atol=1e-5)
    np.testing.assert_allclose(model.transform(texts(30, seed=4)) @ model.component_, 0.0, atol=1e-5)


def test_topics_are_near_their_own_kind(model):
    space, hockey = model.transform(["rocket launch moon", "puck goalie playoff"])
    other_space = model.embed_query("shuttle orbit satellite nasa")
    assert float(space @ other_space) > float(hockey @ other_space)


def test_a_text_without_a_known_word_embeds_as_zero(model):
    for text in ["", "zebra xylophone", "a b c", "!!! ???"]:
        assert not model.embed_query(text).any()
    out = model.transform(["zebra xylophone", "rocket orbit", ""])
    assert not out[0].any() and not out[2].any() and out[1].any()


def test_the_single_query_path_equals_transform(model):
    sample = texts(60, seed=7) + ["Rocket ROCKET rocket, orbit!", "unknown words and rocket"]
    bulk = model.transform(sample)
    single = np.stack([model.embed_query(t) for t in sample])
    np.testing.assert_allclose(single, bulk, atol=1e-5)


def test_transform_in_small_batches_gives_the_same_vectors(model, monkeypatch):
    sample = texts(50, seed=8)
    whole = model.transform(sample)
    monkeypatch.setattr(word_vectors, "TRANSFORM_BATCH", 7)
    np.testing.assert_allclose(model.transform(sample), whole, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"dim": 0}, "dim must be a whole number >= 1, got 0"),
        ({"window": 2.5}, "window must be a whole number >= 1, got 2.5"),
        ({"sg": 3}, "sg must be 0 (CBOW) or 1 (skip-gram), got 3"),
        ({"sif_a": 0}, "sif_a must be a number > 0, got 0"),
        ({"max_vocab": 0}, "max_vocab must be a whole number >= 1 or None, got 0"),
        ({"min_count": 50}, "no word occurs at least min_count=50 times"),
    ],
)
def test_bad_parameters_are_named(params, fragment):
    with pytest.raises(ValueError) as caught:
        WordVectorEmbedder(**{**SMALL, **params}).fit(texts(30))
    assert fragment in str(caught.value)


def test_fewer_than_two_texts_and_non_texts_are_refused():
    with pytest.raises(ValueError, match="need at least 2 texts"):
        WordVectorEmbedder(**SMALL).fit(["rocket orbit"])
    with pytest.raises(TypeError, match="single string"):
        WordVectorEmbedder(**SMALL).fit("rocket orbit moon")


def test_an_unfitted_model_says_so():
    from lockstep.core.errors import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted yet"):
        WordVectorEmbedder().embed_query("rocket")


# --- the file --------------------------------------------------------------------------------------


def test_save_and_load_round_trip(model, tmp_path):
    path = model.save(tmp_path / "wv.joblib")
    assert (tmp_path / "wv.joblib.sha256").read_text().split()[0] == file_sha256(path).removeprefix("sha256:")
    loaded = WordVectorEmbedder.load(path)
    same = load_model_file(path, expected_sha256=file_sha256(path))
    assert type(same) is WordVectorEmbedder
    assert loaded.fingerprint == same.fingerprint == model.fingerprint
    assert loaded.get_params() == model.get_params()
    sample = texts(20, seed=9)
    np.testing.assert_array_equal(loaded.transform(sample), model.transform(sample))
    np.testing.assert_array_equal(loaded.embed_query("rocket orbit"), model.embed_query("rocket orbit"))


def test_the_file_needs_neither_gensim_nor_lockstep_to_unpickle(model, tmp_path):
    import joblib

    path = model.save(tmp_path / "wv.joblib")
    payload = joblib.load(path)
    kinds = {type(v).__module__.split(".")[0] for v in payload.values()}
    assert kinds <= {"builtins", "numpy"}, kinds


def test_a_tampered_file_is_refused_before_it_is_unpickled(model, tmp_path):
    path = model.save(tmp_path / "wv.joblib")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="fails its checksum"):
        WordVectorEmbedder.load(path)


def test_changed_weights_with_a_matching_checksum_are_refused_by_the_fingerprint(model, tmp_path):
    import joblib

    from lockstep.core.errors import NotFittedError
    from lockstep.model.integrity import checksum_path

    path = model.save(tmp_path / "wv.joblib")
    payload = joblib.load(path)
    payload["weights"] = payload["weights"] * 2
    joblib.dump(payload, path)  # rewritten with a fresh sidecar: only the fingerprint can tell
    checksum_path(path).write_text(file_sha256(path).removeprefix("sha256:") + "  wv.joblib\n")
    with pytest.raises(NotFittedError, match="stored fingerprint does not match"):
        WordVectorEmbedder.load(path)


def test_a_tfidf_file_is_not_loaded_as_word_vectors(tmp_path):
    from lockstep.model.embedding import TextEmbedder

    path = TextEmbedder(dim=4, min_df=1, max_df=1.0).fit(texts(30)).save(tmp_path / "tfidf.joblib")
    with pytest.raises(TypeError, match="holds a TextEmbedder, not a WordVectorEmbedder"):
        WordVectorEmbedder.load(path)


# --- the MLflow model --------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    monkeypatch.chdir(tmp_path)
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", "wv-test", artifact_root=tmp_path / "artifacts")


def test_the_registered_pyfunc_model_gives_the_vectors_of_transform(model, registry, monkeypatch):
    import mlflow
    import pandas as pd

    info = registry.log_and_register(model, params={}, metrics={"ndcg_at_10": 0.5}, snapshot_seq=1)
    assert info.tags["lockstep.family"] == "word_vectors" and info.dim == 16
    assert info.fingerprint == model.fingerprint
    params = registry.run_params(info.run_id)
    assert params["embedder.sif_a"] == "0.001" and params["embedder.window"] == "4"

    sample = texts(40, seed=11) + ["nothing known here", "Rocket, ROCKET!"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.model_name}/{info.version}")
    out = pyfunc.predict(sample)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (len(sample), 16)
    np.testing.assert_allclose(out, model.transform(sample), atol=1e-5)
    framed = registry.load_pyfunc(info.version).predict(pd.DataFrame({"text": sample}))
    np.testing.assert_allclose(framed, out, atol=1e-6)

    loaded = registry.load_embedder(info.version)
    assert type(loaded) is WordVectorEmbedder and loaded.fingerprint == model.fingerprint


def test_the_logged_model_requires_neither_gensim_nor_lockstep(model, registry, tmp_path):
    import mlflow

    info = registry.log_and_register(model, params={}, metrics={}, snapshot_seq=1)
    with registry._scoped():
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path / "dl")))
    names = {line.split("==")[0] for line in (folder / "requirements.txt").read_text().split() if "==" in line}
    assert names == set(WordVectorEmbedder.MODEL_REQUIREMENTS)
    code = next(folder.rglob("word_vectors_pyfunc.py")).read_text()
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "lockstep" in line or "gensim" in line]


def test_the_pyfunc_tokenizer_is_the_embedders(model):
    spec = Path(word_vectors.__file__).with_name("word_vectors_pyfunc.py")
    namespace: dict = {}
    source = spec.read_text().replace("mlflow.models.set_model(WordVectorModel())", "")
    exec(compile(source, str(spec), "exec"), namespace)  # the file without registering a model
    sample = ["Don't PANIC: it's 42 rockets", "e-mail café naïve", "a I x  yz", "tab\tand\nlines"]
    assert [namespace["tokenize"](t) for t in sample] == [tokenize(t) for t in sample]
    assert namespace["TOKEN_PATTERN"] == word_vectors.TOKEN_PATTERN and namespace["FILE_FORMAT"] == word_vectors.FILE_FORMAT


def test_a_swapped_artifact_is_refused_by_the_pyfunc_model(model, registry, monkeypatch):
    import joblib
    import mlflow

    info = registry.log_and_register(model, params={}, metrics={}, snapshot_seq=1)
    [stored] = list(Path(registry.artifact_root).rglob("embedder.joblib"))
    payload = joblib.load(stored)
    payload["weights"] = payload["weights"] * 2
    joblib.dump(payload, stored)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    with pytest.raises(ValueError, match="fails its checksum") as caught:
        mlflow.pyfunc.load_model(f"models:/{registry.model_name}/{info.version}")
    assert type(caught.value).__name__ == "ArtifactChecksumError"
    with pytest.raises(ModelIntegrityError):
        registry.load_embedder(info.version)


@pytest.mark.slow
def test_a_fresh_environment_with_only_the_models_requirements_predicts_its_vectors(model, registry, tmp_path,
                                                                                   tmp_path_factory):
    """No gensim and no Lockstep where the model runs: its requirements.txt alone (one pip install).

    The environment is the session's (``model_environment``): the TF-IDF packaging test's when
    this model's requirements install exactly the same distributions, else one of its own.
    """
    import json
    import subprocess

    import mlflow

    from tests.model.test_packaging import PREDICT, _clean_env, model_environment

    info = registry.log_and_register(model, params={}, metrics={}, snapshot_seq=1)
    with registry._scoped():
        requirements = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri))
    python = model_environment(tmp_path_factory, requirements)
    sample = ["rocket orbit moon", "Puck, GOALIE and the playoff", "zzz unknown words"]
    probe = "import importlib.util, sys\nif importlib.util.find_spec('gensim'): sys.exit('gensim is importable')\n"
    done = subprocess.run(
        [str(python), "-c", probe + PREDICT, f"models:/{registry.model_name}/{info.version}", json.dumps(sample)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env=_clean_env(MLFLOW_TRACKING_URI=registry.tracking_uri),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = np.asarray(result["rows"], dtype=np.float32)
    assert result["dtype"] == "float32"
    np.testing.assert_allclose(rows, model.transform(sample), atol=1e-5)
    assert not rows[-1].any()
