"""The streaming loader's throughput against raw store writes of the same records, in one run.

100,000 upsert messages (distinct ids, ~400 characters of text, small metadata) go into a
Redis stream on a local redis-server (Debian's, started here on a free loopback port); the
loader consumes them in-process (read, check, one transaction per batch with the message
ids, XACK, XINFO for the lag) into a fresh store. The baseline writes the same records with
``RecordStore.upsert_many`` into another fresh store, at the loader's batch size and at the
store's default. A third pass rewinds the group (``XGROUP SETID ... 0``) and consumes the
whole stream again: every message is a redelivery, so nothing may change (checked), and its
rate is what a recovery costs.

    flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_streaming.py [--messages 100000] [--batch 500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = [
    "orbit", "launch", "rocket", "planet", "galaxy", "engine", "driver", "kernel", "module", "compile",
    "hockey", "season", "goalie", "pitcher", "inning", "election", "senate", "policy", "budget", "vaccine",
    "clinic", "patient", "doctor", "market", "price", "trade", "window", "screen", "pixel", "codec",
    "camera", "lens", "signal", "noise", "filter", "router", "packet", "socket",
]


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"doc-{i:07d}", "text": " ".join(rng.choices(WORDS, k=60)),
             "metadata": {"category": rng.choice(WORDS), "n": i}} for i in range(n)]


def fill_stream(client, stream: str, items: list[dict]) -> float:
    started = time.perf_counter()
    for start in range(0, len(items), 5000):
        pipe = client.pipeline(transaction=False)
        for item in items[start : start + 5000]:
            pipe.xadd(stream, {"data": json.dumps({"op": "upsert", **item})})
        pipe.execute()
    return time.perf_counter() - started


def timed(label: str, work) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - started
    print(f"  {label}: {elapsed:.2f} s", flush=True)
    return elapsed, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    import redis

    from lockstep.store.db import get_engine
    from lockstep.store.records import RecordStore
    from lockstep.streaming.consumer import ConsumeOptions, StreamLoader
    from lockstep.streaming.sources import open_source
    from tests.redis_harness import running_redis

    items = records(args.messages)
    n = len(items)
    print(f"{n:,} records, batch {args.batch}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp, running_redis(Path(tmp)) as port:
        folder = Path(tmp)
        client = redis.Redis(host="127.0.0.1", port=port)
        fill_s = fill_stream(client, "bench", items)
        print(f"  XADD {n:,} messages: {fill_s:.2f} s (not counted)", flush=True)

        raw_store = RecordStore(get_engine(f"sqlite:///{folder / 'raw.db'}"))
        raw_s, _ = timed(f"raw upsert_many, batches of {args.batch}",
                         lambda: raw_store.upsert_many(items, batch_size=args.batch))
        raw_default_store = RecordStore(get_engine(f"sqlite:///{folder / 'raw_default.db'}"))
        raw_default_s, _ = timed("raw upsert_many, batches of 5000 (its default)",
                                 lambda: raw_default_store.upsert_many(items))

        store = RecordStore(get_engine(f"sqlite:///{folder / 'loader.db'}"))
        url = f"redis://127.0.0.1:{port}/bench"
        options = ConsumeOptions(batch=args.batch, until_idle=True, block_ms=100)

        def consume():
            return StreamLoader(open_source(url, group="g", consumer="c1"), store, group="g", consumer="c1").run(options)

        loader_s, report = timed("stream consume (read, apply + message ids, XACK, lag)", consume)
        assert report.applied == n and store.head() == n and store.count() == n, report
        assert _same(store, raw_store), "the loader must write what the raw path writes"

        client.xgroup_setid("bench", "g", "0")  # every message delivered again
        again_s, again = timed("the whole stream redelivered (all already applied)", consume)
        assert again.duplicates == n and again.applied == 0 and store.head() == n, again
        client.close()

    print()
    print(f"raw upsert_many (batch {args.batch}):    {n / raw_s:>9,.0f} records/s")
    print(f"raw upsert_many (batch 5000):   {n / raw_default_s:>9,.0f} records/s")
    print(f"stream consume (batch {args.batch}):     {n / loader_s:>9,.0f} messages/s  "
          f"= {raw_s / loader_s:.2f}x raw at the same batch, {raw_default_s / loader_s:.2f}x raw at 5000")
    print(f"redelivery of every message:    {n / again_s:>9,.0f} messages/s (no change written)")


def _same(a, b) -> bool:
    """Same live records (id, text, metadata): the loader wrote what the raw path wrote."""
    def rows(store):
        return [(r.id, r.text, r.metadata) for r in store.snapshot().records]
    return rows(a) == rows(b)


if __name__ == "__main__":
    main()
