"""Transformer quality: MiniLM (onnx_text) against TF-IDF + SVD on the demo corpus (issue 24 item 8).

On a seeded subset of the 20 Newsgroups demo corpus (``--records``, balanced over the 20
categories; the transformer embeds ~20 texts/s on 2 cores, so the whole corpus takes ~15 min
for MiniLM alone), it:

1. splits the records as a retrain does (``lockstep.training.fit.split_holdout``: the stable
   id hash, 10 % held-out queries, at most 1,500), fits TF-IDF + SVD on the training records
   (``TrainConfig`` defaults), and opens the shipped all-MiniLM-L6-v2 int8 ONNX model as an
   ``onnx_text`` model (``lockstep.model.minilm.minilm_folder`` + ``onnx_text.open_folder``;
   mean pooling, L2 normalisation, 256 tokens);
2. runs the offline evaluation both ways (``lockstep.model.evaluation``: exact search,
   nDCG@10 and precision@10 per query, 95 % percentile-bootstrap intervals, the paired
   interval of the difference), MiniLM as the challenger of the TF-IDF champion;
3. repeats the comparison as the early verdict sees it: the same held-out queries over the
   first slice only (``lockstep.index.first_slice.in_first_slice``, ``--share`` of the records
   by a seeded id hash; documents are the loaded, labelled, not-held-out records, as
   ``lockstep.index.early_verdict.held_out_set`` takes them; both sides searched exactly, as the
   early verdict does with flat indexes), and checks that the slice's difference has the same
   sign as the full one.

Prints one JSON object: sizes, seconds (embedding rate of each model), both figures with
their intervals, the difference, and ``same_sign``. No database, registry or Airflow is used.

Run (heavy: the transformer runs for minutes):
    flock /tmp/lockstep-heavy.lock nice -n 10 .venv/bin/python benchmarks/transformer_quality.py --records 4000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000, help="demo records used (balanced, seeded); 0: all 18,821")
    parser.add_argument("--share", type=float, default=0.1, help="the early verdict's first slice (share of records)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256, help="MiniLM's tokens per text")
    args = parser.parse_args(argv)
    if args.records < 0 or not 0.0 < args.share <= 0.5:
        parser.error("--records must be >= 0 and --share in (0, 0.5]")
    return args


def corpus(records: int, seed: int) -> list[Any]:
    from lockstep.store.corpus import demo_sample, load_demo_corpus

    return load_demo_corpus("all") if records == 0 else demo_sample(records, seed=seed, split="all")


def minilm(work: Path, max_length: int):
    """The shipped MiniLM as Lockstep loads an onnx_text version."""
    from lockstep.model.minilm import minilm_folder
    from lockstep.model.onnx_text import open_folder

    folder = minilm_folder(work / "minilm")
    return open_folder(folder, work / "open", {"max_length": max_length})


def timed_eval(name: str, embedder, data, cfg) -> tuple[Any, np.ndarray, np.ndarray, dict[str, float]]:
    """(EvalResult, query vectors, doc vectors, timing) of one model on the evaluation set."""
    from lockstep.training.fit import evaluate_vectors

    started = time.perf_counter()
    queries = embedder.transform(data.query_texts)
    docs = embedder.transform(data.doc_texts)
    seconds = time.perf_counter() - started
    texts = len(data.query_texts) + len(data.doc_texts)
    print(f"  {name}: embedded {texts} texts in {seconds:.1f} s ({texts / seconds:.1f}/s)", file=sys.stderr, flush=True)
    return evaluate_vectors(queries, docs, data, cfg), queries, docs, {"seconds": seconds, "texts_per_second": texts / seconds}


def slice_comparison(data, vectors: dict[str, tuple[np.ndarray, np.ndarray]], share: float, cfg) -> dict[str, float]:
    """nDCG@10 of both models with the documents restricted to the first slice (the early verdict's view)."""
    from lockstep.index.first_slice import in_first_slice
    from lockstep.model.evaluation import compare, evaluate_retrieval

    rows = [i for i, rid in enumerate(data.doc_ids) if in_first_slice(rid, share)]
    labels = [data.doc_labels[i] for i in rows]
    results = {
        name: evaluate_retrieval(q, data.query_labels, d[rows], labels, k=cfg.k) for name, (q, d) in vectors.items()
    }
    verdict = compare(results["minilm"], results["tfidf"], cfg.margin, cfg.metric, n_boot=cfg.n_boot, seed=cfg.seed)
    return {"judged_docs": float(len(rows)), **verdict.figures}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lockstep.model.evaluation import compare
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import EvalSet, fit_embedder, fit_texts, split_holdout

    args = parse_args(argv)
    cfg = TrainConfig(n_boot=args.n_boot, seed=args.seed)
    records = corpus(args.records, args.seed)
    holdout = split_holdout(records, cfg)
    data = EvalSet.from_holdout(holdout, cfg.label_key)
    print(f"{len(records)} records: {data.summary}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    tfidf = fit_embedder(fit_texts(holdout.train, cfg), cfg)
    fit_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="lockstep-quality-") as tmp:
        transformer = minilm(Path(tmp), args.max_length)
        champion, tq, td, tfidf_time = timed_eval("tfidf_svd", tfidf, data, cfg)
        challenger, mq, md, minilm_time = timed_eval("minilm", transformer, data, cfg)
    full = compare(challenger, champion, cfg.margin, cfg.metric, n_boot=cfg.n_boot, seed=cfg.seed)
    sliced = slice_comparison(data, {"minilm": (mq, md), "tfidf": (tq, td)}, args.share, cfg)
    same_sign = bool(np.sign(full.figures["delta_ndcg_at_10"]) == np.sign(sliced["delta_ndcg_at_10"]))
    report = {
        "records": len(records), "split": data.summary, "share": args.share, "max_length": args.max_length,
        "tfidf": {"fit_seconds": fit_seconds, **tfidf_time}, "minilm": minilm_time,
        "full": _key_figures(full.figures), "verdict": full.reason,
        "first_slice": {"judged_docs": int(sliced["judged_docs"]), **_key_figures(sliced)},
        "same_sign": same_sign,
    }
    print(json.dumps(report, indent=2))
    return report


def _key_figures(figures: dict[str, float]) -> dict[str, float]:
    keys = [
        "ndcg_at_10", "ndcg_at_10_ci_low", "ndcg_at_10_ci_high",
        "champion_ndcg_at_10", "champion_ndcg_at_10_ci_low", "champion_ndcg_at_10_ci_high",
        "delta_ndcg_at_10", "delta_ndcg_at_10_ci_low", "delta_ndcg_at_10_ci_high",
        "precision_at_10", "champion_precision_at_10", "n_queries",
    ]
    return {k: round(float(figures[k]), 4) for k in keys if k in figures}


if __name__ == "__main__":
    main()
