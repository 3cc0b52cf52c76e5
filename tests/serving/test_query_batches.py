"""QueryBatcher: queries that arrive while a batch is in the model share the next predict call."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from lockstep.serving.query_batches import QueryBatcher


class GatedModel:
    """A model whose first call waits until the test releases it, recording every batch."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.inside = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def embed_many(self, texts):
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.inside.set()
            assert self.release.wait(30)
        if self.fail_on in texts:
            raise RuntimeError("the model failed")
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


async def _queue_while_first_batch_runs(batcher: QueryBatcher, model: GatedModel, later: list[str]):
    first = asyncio.create_task(batcher.embed("a"))
    await asyncio.to_thread(model.inside.wait, 30)  # the first batch is inside the model
    rest = [asyncio.create_task(batcher.embed(t)) for t in later]
    while len(batcher._pending) < len(later):  # every later query has queued
        await asyncio.sleep(0)
    model.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_queries_arriving_during_a_batch_share_the_next_call():
    model = GatedModel()
    batcher = QueryBatcher(model.embed_many)
    out = asyncio.run(_queue_while_first_batch_runs(batcher, model, ["bb", "ccc", "dddd"]))
    assert model.calls == [["a"], ["bb", "ccc", "dddd"]] and batcher.batches == 2
    assert [float(v[0]) for v in out] == [1.0, 2.0, 3.0, 4.0]  # each query gets its own vector back


def test_a_batch_is_at_most_max_batch_queries():
    model = GatedModel()
    batcher = QueryBatcher(model.embed_many, max_batch=2)
    out = asyncio.run(_queue_while_first_batch_runs(batcher, model, ["b", "cc", "ddd", "eeee", "fffff"]))
    assert model.calls == [["a"], ["b", "cc"], ["ddd", "eeee"], ["fffff"]]
    assert [float(v[0]) for v in out] == [1.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_failing_batch_fails_its_queries_only():
    model = GatedModel(fail_on="ccc")
    batcher = QueryBatcher(model.embed_many, max_batch=2)
    out = asyncio.run(_queue_while_first_batch_runs(batcher, model, ["bb", "ccc", "dddd"]))
    assert isinstance(out[1], RuntimeError) and isinstance(out[2], RuntimeError)  # "bb" and "ccc" shared a batch
    assert float(out[0][0]) == 1.0 and float(out[3][0]) == 4.0
    assert not batcher._draining


def test_a_lone_query_is_a_batch_of_one_at_once():
    calls = []

    def embed_many(texts):
        calls.append(list(texts))
        return np.ones((len(texts), 3), dtype=np.float32)

    async def main():
        batcher = QueryBatcher(embed_many)
        return [await batcher.embed(t) for t in ("x", "y")]

    out = asyncio.run(main())
    assert calls == [["x"], ["y"]] and all(v.shape == (3,) for v in out)
