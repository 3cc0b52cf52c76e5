"""A transformer-shaped ONNX model goes import -> reembed (early verdict) -> canary -> serving -> rollback.

The model is an ONNX graph with a BERT export's inputs and output (``input_ids``,
``attention_mask`` -> ``last_hidden_state [B, T, D]``) and a WordLevel ``tokenizer.json``,
registered with ``lockstep model import --onnx DIR`` as family ``onnx_text`` and run by
onnxruntime + tokenizers as MiniLM is. So that the suite stays fast and the model means
something, its token table is *distilled* from a TF-IDF + SVD model of the corpus (each
word's row is its idf-weighted SVD direction): mean pooling over the tokens then gives a
latent-semantic embedding of the text, 48 dimensions against the champion's 8, a better
model the canary rightly promotes. Every later step is the DAGs' own, run with dag.test().
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.dags.conftest import point_at_fresh_home, task_states
from tests.dags.test_rollout_dags import _assert_promoted, _params, _run, replica

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900, method="thread")]

DISTILLED_DIM = 48


def write_distilled_onnx(folder: Path, texts: list[str]) -> Path:
    """An onnx_text folder whose token table comes from TF-IDF + SVD fitted on ``texts``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    from lockstep.model.embedding import TextEmbedder

    lsa = TextEmbedder(dim=DISTILLED_DIM, min_df=2, max_df=0.5).fit(texts)
    terms = lsa.vectorizer_.vocabulary_
    specials = ["[PAD]", "[UNK]"]
    vocab = {**{w: i for i, w in enumerate(specials)}, **{t: j + len(specials) for t, j in terms.items()}}
    table = np.zeros((len(vocab), lsa.dim_), dtype=np.float32)
    term_rows = lsa.vectorizer_.idf_[:, None].astype(np.float32) * lsa.components_t_
    for term, j in terms.items():
        table[vocab[term]] = term_rows[j]

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))

    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["last_hidden_state"]),
    ]
    init = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"]) for n in ("input_ids", "attention_mask")]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", lsa.dim_])
    model = helper.make_model(helper.make_graph(nodes, "distilled_encoder", inputs, [output], init),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(folder / "model.onnx"))
    (folder / "onnx_text.json").write_text(json.dumps({"pooling": "mean", "normalize": True, "max_length": 256}))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Demo records, a weak built-in champion (v1, dim 8) with its index, the ONNX model imported as v2."""
    home = tmp_path_factory.mktemp("transformer-home")
    with pytest.MonkeyPatch.context() as mp:
        point_at_fresh_home(mp, home)
        from typer.testing import CliRunner

        from lockstep.cli import app
        from lockstep.index.build import reembed_version
        from lockstep.model.embedding import TextEmbedder
        from lockstep.model.registry import Registry
        from lockstep.ops.simulator import held_out_queries, record_categories
        from lockstep.store.corpus import demo_sample
        from lockstep.store.db import dispose_engines
        from lockstep.store.records import RecordStore

        store = RecordStore()
        records = demo_sample(1000, seed=5)
        store.upsert_many(records)
        texts = [r.text for r in records]
        registry = Registry()
        champion = TextEmbedder(dim=8, min_df=2, max_df=0.5).fit(texts)
        registry.log_and_register(champion, params={"dim": 8}, metrics={}, snapshot_seq=store.head())
        reembed_version(store, registry, "1")
        folder = write_distilled_onnx(home / "distilled", texts)
        result = CliRunner().invoke(app, ["model", "import", "--onnx", str(folder)])
        assert result.exit_code == 0, result.output
        assert registry.version_for_alias("challenger").version == "2"
        yield {
            "home": home, "store": store, "registry": registry, "folder": folder, "texts": {r.id: r.text for r in records},
            "queries": held_out_queries(limit=1500), "categories": record_categories(store),
        }
        dispose_engines()


def test_the_import_registers_an_onnx_text_version(world):
    from lockstep.model.registry.tags import TAG_FAMILY

    info = world["registry"].get_version("2")
    assert info.tags[TAG_FAMILY] == "onnx_text"
    assert info.dim == DISTILLED_DIM


def test_reembed_dag_builds_the_transformer_index_after_its_early_verdict(world):
    import lockstep_reembed

    from lockstep.index.early_verdict import early_verdict_of
    from lockstep.index.manifest import read_manifest
    from lockstep.store.routing import read_table

    conf = {"model_version": "2", "shard_size": 300, "early_verdict_share": 0.2,
            "early_verdict_action": "stop", "early_verdict_margin": 0.01}
    run = lockstep_reembed.dag.test(run_conf=conf)
    states = task_states(run)
    assert run.state == "success", states
    assert states["early_verdict"] == "success" and states["stop_load"] == "skipped", states
    verdict = early_verdict_of("2", world["registry"])
    assert verdict is not None and verdict["figures"]["delta_ndcg_at_10"] > 0  # the better model, seen on the slice
    slot = read_table().slot("2")
    assert slot.state == "ready" and slot.fingerprint == world["registry"].get_version("2").fingerprint
    assert read_manifest(slot.index_location).fingerprint == slot.fingerprint


def test_canary_promotes_the_transformer_and_serving_pairs_it_with_its_own_index(world):
    import httpx
    import lockstep_rollout

    from lockstep.model.onnx_text import open_folder

    with replica() as url:
        world["url"] = url
        # onnxruntime takes a millisecond or more per query where the built-in fast path takes
        # 0.1 ms: the latency gate rightly calls it slower, so the switch allows it.
        params = {"model_version": "2", **_params(url), "latency_tolerance": 100.0}
        run, states, report = _run(lockstep_rollout.dag, params, world)
        _assert_promoted(world, run, states, "2", "1", "canary")
        assert report.by_version["2"]["ctr"] > report.by_version["1"]["ctr"]
        model = open_folder(world["folder"], world["home"] / "check")
        for query in world["queries"][:10]:
            body = httpx.post(f"{url}/search", json={"query": query.text, "k": 5}, timeout=10).json()
            assert body["model_version"] == "2"
            q = model.embed_query(query.text)
            for hit in body["results"]:
                expected = float(np.dot(q, model.transform([world["texts"][hit["id"]]])[0]))
                assert hit["score"] == pytest.approx(expected, abs=1e-4)


def test_rollback_dag_returns_traffic_from_the_transformer(world):
    import lockstep_rollback

    from lockstep.index.build import reembed_version
    from lockstep.store.routing import read_table

    reembed_version(world["store"], world["registry"], "1", promote_if_first=False)  # retention removed it at promotion
    with replica() as url:
        world["url"] = url
        conf = {"reason": "the transformer is too slow for the p99 budget", "to_version": "1", "serving_url": url,
                "verify_timeout_seconds": 30}
        run, states, _ = _run(lockstep_rollback.dag, conf, world)
        assert run.state == "success", states
        assert read_table().weights == {"1": 100}
        assert world["registry"].version_for_alias("champion").version == "1"
