"""The serving event loop while an index is write-locked, and searches during an HNSW compaction (issue 21).

A writer on one version's index (a live write, a fold-in placing an item, the swap of a
compaction) used to freeze the whole serving process: fast searches run on the event
loop, and one that met the writer waited there. This measures that it no longer does.

1. **HTTP.** A deployment served by uvicorn on loopback (``tests.serving.harness``),
   with two versions: the search system (``--records`` records, versions of dim 16 and
   24, as in the serving tests) and the recommender (two ALS fits of MovieLens-100k).
   ``--requests`` requests per endpoint (``/healthz``, ``/readyz``, ``/metrics`` and a
   search or ``/recommend`` pinned to v2) are timed client-side, first idle, then while
   this process holds the write lock of v1's index and a v1 request waits on it. A
   request that does not answer within ``--timeout`` seconds counts as frozen (the
   old behaviour); the v1 request must answer after the lock is let go.
2. **Compaction.** An HNSW index of ``--compaction-size`` random unit vectors of
   ``--dim`` dimensions, 30 % of them removed, compacted while another thread searches
   it every 2 ms: the compaction's time, the longest hold of the index's write lock
   during it (only the swap should hold it), how many searches ran meanwhile, and
   their latency.

    flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_event_loop.py

A smoke run (well under a minute)::

    .venv/bin/python benchmarks/bench_event_loop.py --records 300 --requests 50 --compaction-size 20000 --dim 32
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.serving.harness: the serving tests' deployment and server

REMOVED_SHARE = 0.3  # of the compaction benchmark's vectors, removed before it compacts
SEARCH_PAUSE = 0.002  # seconds between two searches during the compaction


# --- figures ------------------------------------------------------------------------------------


@dataclass
class Latencies:
    """Client-side latencies of one endpoint in one phase, in ms; ``frozen`` counts timeouts."""

    ms: list[float] = field(default_factory=list)
    frozen: int = 0

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile (``nan`` when nothing answered)."""
        if not self.ms:
            return math.nan
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    def cells(self) -> str:
        if self.frozen:
            return f"FROZEN: timed out after {len(self.ms)} answers"
        return f"{self.quantile(0.5):8.2f} {self.quantile(0.99):8.2f} {max(self.ms):8.2f}"


def timed_requests(client: Any, method: str, path: str, count: int, **kwargs: Any) -> Latencies:
    """``count`` requests in turn; stops at the first that times out (the process is frozen)."""
    import httpx

    out = Latencies()
    for _ in range(count):
        began = time.perf_counter()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            out.frozen += 1
            break
        out.ms.append((time.perf_counter() - began) * 1000.0)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
    return out


# --- part 1: HTTP while a version's index is write-locked ----------------------------------------


@dataclass
class Probe:
    name: str
    method: str
    path: str
    kwargs: dict[str, Any]


def probes(pin_header: str, search: tuple[str, dict[str, Any]]) -> list[Probe]:
    """The endpoints timed: the probes, /metrics, and the system's own search pinned to v2."""
    path, body = search
    return [
        Probe("GET /healthz", "GET", "/healthz", {}),
        Probe("GET /readyz", "GET", "/readyz", {}),
        Probe("GET /metrics", "GET", "/metrics", {}),
        Probe(f"POST {path} (v2)", "POST", path, {"json": body, "headers": {pin_header: "2"}}),
    ]


def waiting(lock: Any) -> int:
    """Threads waiting inside the lock right now (as tests/serving/test_event_loop.py counts them)."""
    with lock._cond:
        return len(lock._cond._waiters)


def measure_locked(url: str, lock: Any, endpoints: list[Probe], blocked: Callable[[], Any], args: argparse.Namespace) -> None:
    """Time every endpoint idle, then with ``lock`` write-held and ``blocked`` (a v1 request) waiting on it."""
    import httpx

    with httpx.Client(base_url=url, timeout=args.timeout) as client:
        for probe in endpoints:  # warm-up
            timed_requests(client, probe.method, probe.path, 20, **probe.kwargs)
        idle = {p.name: timed_requests(client, p.method, p.path, args.requests, **p.kwargs) for p in endpoints}
        answer: list[Any] = []

        def wait_for_answer() -> None:
            try:
                answer.append(blocked())
            except httpx.HTTPError as exc:  # reported below: the v1 request never answered
                answer.append(exc)

        with lock.write():
            before = waiting(lock)
            thread = threading.Thread(target=wait_for_answer, daemon=True)
            thread.start()
            deadline = time.monotonic() + args.timeout
            while waiting(lock) <= before and time.monotonic() < deadline:
                time.sleep(0.001)
            if waiting(lock) <= before:
                raise RuntimeError("the v1 request never reached its index lock")
            locked = {p.name: timed_requests(client, p.method, p.path, args.requests, **p.kwargs) for p in endpoints}
        thread.join(blocked_timeout(args))
    print(f"{'endpoint':24s} | {'idle p50':>8} {'p99':>8} {'max':>8} | {'locked p50':>10} {'p99':>8} {'max':>8}  (ms)")
    for probe in endpoints:
        print(f"{probe.name:24s} | {idle[probe.name].cells()} | {'':2}{locked[probe.name].cells()}")
    response = answer[0] if answer else None
    if not isinstance(response, httpx.Response):
        print(f"the v1 request that met the writer: no answer after the release ({type(response).__name__})")
    else:
        print(f"the v1 request that met the writer: {response.status_code} from version "
              f"{response.json().get('model_version')} after the release")


def blocked_timeout(args: argparse.Namespace) -> float:
    """The v1 request's own timeout: the locked phase itself lasts up to one ``--timeout`` per endpoint."""
    return args.timeout * 6


def search_part(home: Path, args: argparse.Namespace) -> None:
    """The search system: ``--records`` records, v1 and v2 at 50 % each."""
    import httpx

    from lockstep.core.config import Settings
    from lockstep.serving import ServingConfig, create_app
    from lockstep.serving.bodies import PIN_HEADER
    from lockstep.store import routing
    from lockstep.store.db import get_engine
    from lockstep.store.records import RecordStore
    from tests.serving.harness import TOKEN, fill_store, fit_models, make_slot, serve

    os.environ["LOCKSTEP_SYSTEM"] = "search"
    root = home / "search"
    root.mkdir(parents=True, exist_ok=True)
    engine = get_engine(f"sqlite:///{root / 'lockstep.db'}")
    store = RecordStore(engine)
    fill_store(store, n=args.records)
    for version, model in zip(("1", "2"), fit_models(store), strict=True):
        make_slot(engine, store, model, version, root)
    routing.set_weights({"1": 50, "2": 50}, engine=engine)
    config = ServingConfig(log_flush_interval=0.5, replica="bench")
    print(f"\nsearch system: {args.records} records, v1 (dim 16) and v2 (dim 24), flat indexes, SQLite; "
          f"{args.requests} requests per endpoint and phase; locked: v1's index write-held, a v1 search waiting")
    with serve(create_app(Settings.from_env(), engine=engine, api_token=TOKEN, config=config), timeout=120) as s:
        lock = s.runtime.manager.view.slots["1"].index._lock
        body = {"query": "rocket planet", "k": 5}
        measure_locked(s.url, lock, probes(PIN_HEADER, ("/search", body)),
                       lambda: httpx.post(f"{s.url}/search", json=body, headers={PIN_HEADER: "1"}, timeout=blocked_timeout(args)),
                       args)


def recommender_part(home: Path, args: argparse.Namespace) -> None:
    """The recommender: two quick ALS fits of MovieLens-100k, v1 the champion, v2 reached by pin."""
    import httpx

    from lockstep.core.config import Settings
    from lockstep.recommender import movielens
    from lockstep.recommender.build import build_version
    from lockstep.recommender.factorization import ALSRecommender
    from lockstep.recommender.registration import register_fit
    from lockstep.serving import ServingConfig, create_app
    from lockstep.serving.bodies import PIN_HEADER
    from lockstep.store.db import dispose_engines
    from lockstep.store.interactions import InteractionStore
    from tests.conftest import DEMO_CACHE
    from tests.serving.harness import TOKEN, serve, wait_for

    os.environ.update(LOCKSTEP_HOME=str(home / "recommender"), LOCKSTEP_SYSTEM="recommender")
    dispose_engines()
    store = InteractionStore()
    store.upsert_items(movielens.items(DEMO_CACHE))
    store.add_many(movielens.interactions(DEMO_CACHE))
    snapshot = store.snapshot()
    fits = [ALSRecommender(factors=16, iterations=5, random_state=seed).fit(snapshot) for seed in (0, 1)]
    for expected, model in zip(("1", "2"), fits, strict=True):
        version = register_fit(model, {}, snapshot_seq=snapshot.attrs["seq"]).version
        if version != expected:
            raise RuntimeError(f"the fresh registry gave version {version}, not {expected}")
        build_version(version, promote_if_first=version == "1")
    user = sorted(fits[0].user_ids_)[0]
    config = ServingConfig(log_flush_interval=0.5, replica="bench")
    print(f"\nrecommender: MovieLens-100k, v1 and v2 (16 factors, {len(fits[0].item_ids_)} items, flat), SQLite; "
          f"{args.requests} requests per endpoint and phase; locked: v1's item index write-held, a v1 /recommend waiting")
    with serve(create_app(Settings.from_env(), api_token=TOKEN, config=config), timeout=120) as s:
        wait_for(lambda: set(s.runtime.manager.loaded()) == {"1", "2"}, 120, "both versions to load")
        lock = s.runtime.manager.view.slots["1"].live.index._lock
        body = {"user_id": user, "k": 10}
        measure_locked(s.url, lock, probes(PIN_HEADER, ("/recommend", body)),
                       lambda: httpx.post(f"{s.url}/recommend", json=body, headers={PIN_HEADER: "1"}, timeout=blocked_timeout(args)),
                       args)
    dispose_engines()


# --- part 2: searches during a compaction --------------------------------------------------------


class WriteHolds:
    """Times every hold of ``lock``'s write side from now on (wraps the instance's ``write``)."""

    def __init__(self, lock: Any) -> None:
        self.longest_ms = 0.0
        self.count = 0
        original = lock.write

        @contextmanager
        def timed() -> Iterator[None]:
            with original():
                began = time.perf_counter()
                try:
                    yield
                finally:
                    self.count += 1
                    self.longest_ms = max(self.longest_ms, (time.perf_counter() - began) * 1000.0)

        lock.write = timed


def compaction_part(args: argparse.Namespace) -> None:
    """Compact an HNSW index with 30 % of it removed while another thread keeps searching it."""
    from lockstep.index.vector_index import IndexSpec, VectorIndex

    n, dim = args.compaction_size, args.dim
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"r{i}" for i in range(n)]
    began = time.perf_counter()
    index = VectorIndex.build(ids, vectors, IndexSpec(kind="hnsw", max_dead_fraction=1.0, ef_construction=40))
    built_s = time.perf_counter() - began
    removed = int(n * REMOVED_SHARE)
    index.remove(ids[:removed])
    holds = WriteHolds(index._lock)
    compacting, done = threading.Event(), threading.Event()
    latencies = Latencies()

    def searcher() -> None:
        query = vectors[n // 2 : n // 2 + 1]
        while not done.is_set():
            t = time.perf_counter()
            index.search(query, 10)
            if compacting.is_set():
                latencies.ms.append((time.perf_counter() - t) * 1000.0)
            time.sleep(SEARCH_PAUSE)

    thread = threading.Thread(target=searcher, daemon=True)
    thread.start()
    compacting.set()
    began = time.perf_counter()
    compacted = index.compact()
    took_s = time.perf_counter() - began
    compacting.clear()
    done.set()
    thread.join(30)
    if not compacted or len(index) != n - removed or index.dead_fraction != 0.0:
        raise RuntimeError(f"the compaction did not leave {n - removed} live records and no dead ones")
    print(f"\ncompaction: HNSW {n:,} x {dim} (M 32, efConstruction 40; built in {built_s:.1f} s), "
          f"{removed:,} removed ({REMOVED_SHARE:.0%}), searched every {SEARCH_PAUSE * 1000:.0f} ms from another thread")
    rows = [
        ("compaction time", f"{took_s * 1000:.1f} ms"),
        ("longest write-lock hold", f"{holds.longest_ms:.2f} ms ({holds.count} holds)"),
        ("searches during compaction", f"{len(latencies.ms)}"),
        ("search latency p50 / p99", f"{latencies.quantile(0.5):.2f} / {latencies.quantile(0.99):.2f} ms"),
        ("max search latency", f"{max(latencies.ms, default=math.nan):.2f} ms"),
    ]
    for name, value in rows:
        print(f"  {name:28s} {value}")


# --- the run ------------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=positive, default=5000, help="records of the search deployment")
    parser.add_argument("--requests", type=positive, default=500, help="timed requests per endpoint and phase")
    parser.add_argument("--compaction-size", type=positive, default=200_000, help="vectors of the compacted HNSW index")
    parser.add_argument("--dim", type=positive, default=64, help="dimensions of the compacted index's vectors")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds after which a request counts as frozen")
    parser.add_argument("--parts", default="search,recommender,compaction",
                        help="comma-separated parts to run: search, recommender, compaction")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"search", "recommender", "compaction"})
    if unknown or not parts:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown) or '(none given)'}; use search, recommender, compaction")
    if not args.timeout > 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    print(f"python {platform.python_version()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-event-loop-") as tmp:
        home = Path(tmp)
        os.environ["LOCKSTEP_HOME"] = str(home / "search")
        for var in ("LOCKSTEP_DATABASE_URL", "LOCKSTEP_RECOMMENDER_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE"):
            os.environ.pop(var, None)
        if "search" in parts:
            search_part(home, args)
        if "recommender" in parts:
            recommender_part(home, args)
    if "compaction" in parts:
        compaction_part(args)


if __name__ == "__main__":
    main()
