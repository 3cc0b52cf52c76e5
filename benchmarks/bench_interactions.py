"""Interaction store benchmark: MovieLens-100k into SQLite and PostgreSQL, against raw inserts.

Prints, per back end, with a raw DB-API baseline measured in the same run:
- bulk load of the 100,000 ratings (``InteractionStore.add_many`` with content message ids:
  the ``lockstep interactions load --demo`` path) vs one ``executemany`` of the same rows
  into a bare table with no sequence counter, message-id check or first-seen bookkeeping;
- the same load again (every row already stored: nothing written);
- a snapshot of all 100,000 rows as a DataFrame vs a raw ``SELECT`` + ``fetchall``;
- one ``add`` (the serving path of ``POST /interactions``: its own transaction) p50/p99 vs
  a raw single-row INSERT and commit.

Run under the heavy lock: ``flock /tmp/lockstep-heavy.lock .venv/bin/python
benchmarks/bench_interactions.py [--no-postgres] [--adds 500]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.postgres_harness, when no server URL is given

_BARE = ("CREATE TABLE bare (seq BIGINT PRIMARY KEY, user_id VARCHAR(256), item_id VARCHAR(256), "
         "value FLOAT, timestamp BIGINT)")


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench(new_database, frames, adds: int, repeat: int) -> list[tuple[str, str, str, str]]:
    """Rows (measure, lockstep, baseline, ratio) for one back end; each load on a fresh
    database from ``new_database()`` (a URL)."""
    from lockstep.store.db import dispose_engines
    from lockstep.store.interactions import InteractionStore, content_message_ids

    items, users, ratings = frames
    ratings = ratings.assign(source_message_id=content_message_ids(ratings, "ml-100k"))
    rows = list(zip(range(1, len(ratings) + 1), ratings["user_id"].tolist(), ratings["item_id"].tolist(),
                    ratings["value"].astype(float).tolist(), ratings["timestamp"].tolist(), strict=True))
    timings: list[float] = []
    for _ in range(repeat):
        store = InteractionStore(new_database())
        store.upsert_items(items)
        store.upsert_users(users)
        started = time.perf_counter()
        store.add_many(ratings)
        timings.append(time.perf_counter() - started)
    load = min(timings)
    engine = store.engine
    raw_load = _best(lambda: _raw_insert(engine, rows), repeat)
    again = _best(lambda: store.add_many(ratings), repeat)
    snap = _best(lambda: store.snapshot(), repeat)
    raw_snap = _best(lambda: _raw_select(engine), repeat)
    add_ms = _latencies(lambda i: store.add(f"bench-u{i % 50}", str(1 + i % 1682), 4.0, 1_700_000_000 + i), adds)
    raw_ms = _latencies(lambda i: _raw_single(engine, (10**9 + i, "u", "1", 4.0, 1_700_000_000)), adds)
    dispose_engines()
    n = len(ratings)
    return [
        ("bulk load 100k (add_many)", f"{n / load:,.0f} rows/s ({load:.2f} s)", f"{n / raw_load:,.0f} rows/s (raw executemany)",
         f"{load / raw_load:.1f}x the raw time"),
        ("same load again (all stored)", f"{n / again:,.0f} rows/s ({again:.2f} s)", "—", "—"),
        ("snapshot 100k to a DataFrame", f"{snap:.2f} s", f"{raw_snap:.2f} s (raw fetchall)", f"{snap / raw_snap:.1f}x"),
        ("one add(), p50 / p99", f"{_pct(add_ms, 50):.2f} / {_pct(add_ms, 99):.2f} ms",
         f"{_pct(raw_ms, 50):.2f} / {_pct(raw_ms, 99):.2f} ms (raw INSERT + commit)",
         f"{_pct(add_ms, 50) / _pct(raw_ms, 50):.1f}x at p50"),
    ]


def _raw_insert(engine, rows) -> None:
    """The baseline: one executemany of the same tuples into a bare table, one transaction."""
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("DROP TABLE IF EXISTS bare")
        cursor.execute(_BARE)
        p = "%s" if pg else "?"
        cursor.executemany(f"INSERT INTO bare VALUES ({p}, {p}, {p}, {p}, {p})", rows)
        cursor.close()


def _raw_select(engine) -> None:
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("SELECT seq, user_id, item_id, value, timestamp FROM lockstep_interactions ORDER BY seq")
        cursor.fetchall()
        cursor.close()


def _raw_single(engine, row) -> None:
    p = "%s" if engine.dialect.name == "postgresql" else "?"
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute(f"INSERT INTO bare VALUES ({p}, {p}, {p}, {p}, {p})", row)
        cursor.close()


def _latencies(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only (no PostgreSQL server started)")
    parser.add_argument("--adds", type=int, default=500, help="single adds timed per back end")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per measure")
    args = parser.parse_args()

    from lockstep.recommender import movielens

    frames = (movielens.items(), movielens.users(), movielens.interactions())
    workdir = Path(tempfile.mkdtemp(prefix="bench-interactions-"))
    os.environ["LOCKSTEP_HOME"] = str(workdir)
    counter = iter(range(1000))
    results = {"SQLite": bench(lambda: f"sqlite:///{workdir / f'db{next(counter)}.db'}", frames, args.adds, args.repeat)}
    if not args.no_postgres:
        from tests import postgres_harness

        server = postgres_harness.start()
        try:
            results["PostgreSQL 15"] = bench(server.create_database, frames, args.adds, args.repeat)
        finally:
            postgres_harness.stop(server)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
    for backend, rows in results.items():
        print(f"\n### {backend}\n\n| measure | lockstep | baseline (same run) | ratio |\n|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
