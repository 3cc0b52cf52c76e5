"""The word-vector family against TF-IDF + SVD on the demo corpus, and its single-query path.

Prints, on the 20 Newsgroups demo corpus (every post, both splits):
- offline evaluation as ``lockstep train`` runs it (the stable 10 % holdout, at most
  1,500 queries, relevance = same newsgroup): nDCG@10 and precision@10 with their 95 %
  bootstrap intervals, and the fit time, for ``tfidf_svd`` and ``word_vectors``;
- single-query embedding latency of ``WordVectorEmbedder``: ``embed_query(text)`` (a dict
  lookup per token and a sum of rows) against ``transform([text])`` (the bulk path with
  its sparse matrix), on held-out posts and on their first 8 words, same run
  (``--families word_vectors --epochs 1`` measures it alone: latency does not depend on
  the training passes).

Run: `flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_word_vectors.py [--dim 256]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256, help="the embedding dimension of both families")
    parser.add_argument("--families", default="tfidf_svd,word_vectors")
    parser.add_argument("--queries", type=int, default=1000, help="queries timed in the latency comparison")
    parser.add_argument("--epochs", type=int, default=10, help="word_vectors passes (latency does not depend on it)")
    args = parser.parse_args()

    from lockstep.model.evaluation import bootstrap_ci
    from lockstep.store.corpus import load_demo_corpus
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import (
        evaluate_embedder,
        fit_embedder,
        fit_texts,
        split_holdout,
    )

    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    records = load_demo_corpus("all")
    print(f"corpus: {len(records)} posts")
    models = {}
    for family in args.families.split(","):
        config = TrainConfig(family=family, dim=args.dim, epochs=args.epochs)
        holdout = split_holdout(records, config)
        texts = fit_texts(holdout.train, config)
        started = time.perf_counter()
        model = fit_embedder(texts, config)
        fit_s = time.perf_counter() - started
        result = evaluate_embedder(model, holdout, config)
        ndcg, prec = _interval(result.ndcg, bootstrap_ci), _interval(result.precision, bootstrap_ci)
        print(
            f"{family:13s} dim {model.dim_:4d}  fit {fit_s:6.1f} s on {len(texts)} texts  "
            f"queries {result.n_queries}  nDCG@10 {ndcg}  P@10 {prec}"
        )
        models[family] = (model, [r.text for r in holdout.queries])
    if "word_vectors" in models:
        _latency(*models["word_vectors"], args.queries)


def _interval(values: np.ndarray, bootstrap_ci) -> str:
    mean, low, high = bootstrap_ci(np.asarray(values, dtype=np.float64))
    return f"{mean:.4f} ({low:.4f} to {high:.4f})"


def _latency(model, posts: list[str], n: int) -> None:
    """embed_query against transform([text]), interleaved, in ms: whole posts, then 8-word queries."""
    posts = (posts * (n // max(len(posts), 1) + 1))[:n]
    _compare(model, posts, "held-out posts")
    _compare(model, [" ".join(p.split()[:8]) for p in posts], "8-word queries")


def _compare(model, queries: list[str], label: str) -> None:
    fast, bulk = [], []
    for text in queries:
        started = time.perf_counter()
        model.embed_query(text)
        fast.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        model.transform([text])
        bulk.append((time.perf_counter() - started) * 1000)
    p50f, p50b = float(np.median(fast)), float(np.median(bulk))
    p99f, p99b = float(np.percentile(fast, 99)), float(np.percentile(bulk, 99))
    print(
        f"single query ({len(queries)} {label}): embed_query p50 {p50f:.3f} ms p99 {p99f:.3f} ms; "
        f"transform([text]) p50 {p50b:.3f} ms p99 {p99b:.3f} ms; ratio p50 {p50b / p50f:.1f}x"
    )


if __name__ == "__main__":
    main()
