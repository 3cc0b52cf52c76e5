"""Imported models under concurrent queries: one predict call per query vs the QueryBatcher.

An imported pyfunc model (here a team's scikit-learn TF-IDF + SVD pipeline, logged as an
MLflow model and loaded through Lockstep's PyfuncEmbedder, as serving loads it) pays its
per-call overhead on every query. ``QueryBatcher`` lets queries that arrive while a call
runs share the next one. The benchmark sends the same held-out queries from
``--concurrency`` concurrent clients, both ways, in one run; it reports queries/s and
the ratio, and checks both ways give the same vectors.

    .venv/bin/python benchmarks/bench_batching.py [--queries 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def _drive(embed, queries: list[str], concurrency: int) -> tuple[float, list[np.ndarray]]:
    out: list[np.ndarray | None] = [None] * len(queries)
    cursor = iter(range(len(queries)))

    async def client() -> None:
        for i in cursor:
            out[i] = await embed(queries[i])

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    from lockstep.model.pyfunc_embedder import (
        PyfuncEmbedder,
        _load_pyfunc,
        check_contract,
        write_probe,
    )
    from lockstep.ops.simulator import held_out_queries
    from lockstep.serving.query_batches import QueryBatcher
    from lockstep.store.corpus import demo_sample
    from tests.model.byo_models import fit_pipeline, save_team_model

    texts = [r.text for r in demo_sample(3000, seed=0)]
    queries = [q.text for q in held_out_queries(limit=args.queries)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_team_model(Path(tmp) / "team", pipeline=fit_pipeline(texts, dim=128))
        write_probe(folder, check_contract(_load_pyfunc(folder)))
        from lockstep.model.pyfunc_embedder import directory_digest

        embedder = PyfuncEmbedder.load(folder, expected_sha256=directory_digest(folder))

        async def one_call(text: str) -> np.ndarray:
            return await run_in_threadpool(embedder.embed_query, text)

        batcher = QueryBatcher(embedder.transform)
        plain_s, plain = asyncio.run(_drive(one_call, queries, args.concurrency))
        batched_s, batched = asyncio.run(_drive(batcher.embed, queries, args.concurrency))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(plain, batched, strict=True))
    print(f"{len(queries)} queries, {args.concurrency} concurrent clients, team model dim 128")
    print(f"one predict call per query : {len(queries) / plain_s:8.0f} queries/s")
    print(f"QueryBatcher               : {len(queries) / batched_s:8.0f} queries/s "
          f"({batcher.batches} calls, {len(queries) / batcher.batches:.1f} queries per call)")
    print(f"ratio batched / one-by-one : {plain_s / batched_s:8.2f}x; max |difference| of the vectors {worst:.2g}")


if __name__ == "__main__":
    main()
