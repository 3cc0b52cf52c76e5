"""Serving benchmark: the cost of version-paired routing, and how fast replicas follow.

Prints two tables:

1. ``POST /search`` throughput and p50/p99 latency through the Lockstep service
   (routing snapshot, slot lease, request log, metrics) against a bare FastAPI endpoint
   that does the same single-version search (same request model, same embedder fast
   path, same FAISS index, same uvicorn), and the ratio between them. Servers run in
   their own processes; one client process drives them with keep-alive connections.
   The runs alternate (bare, service, bare, service, ...) and the median run counts,
   so a noisy neighbour hurts both sides alike.
2. The time from a committed weight change to every replica serving the new version
   (two replicas on one database; each replica is polled with searches until the
   answer comes from the new version): SQLite (polling) and PostgreSQL (LISTEN/NOTIFY,
   when PostgreSQL binaries are present).

Run: ``.venv/bin/python benchmarks/bench_serving.py [--records 20000] [--requests 3000]``

``--scale N`` (issue 10, "serving at 1M records") instead measures with ``wrk`` (Debian
package) against an HNSW index of N generated records: a bare endpoint and the service,
one process and ``--workers`` processes, 1 and 16 connections, in the same run. The
index is built once and cached under ``--cache`` (the record store stays empty: the
slot is current at sequence 0, which is all serving needs). Run it under
``flock /tmp/lockstep-heavy.lock``.
"""

import argparse
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOPICS = [
    "planet orbit rocket star galaxy comet moon telescope launch astronaut nebula gravity",
    "bread cheese recipe oven flour butter garlic tomato pasta soup spice kitchen",
    "football goal match team player coach league score stadium referee season tennis",
    "guitar piano concert song melody rhythm album band drum chord singer violin",
    "python compiler function variable loop debug server database query index thread cache",
    "river mountain forest valley glacier desert island canyon lake meadow volcano coast",
    "market price stock bond dividend inflation budget invoice revenue profit loss tax",
    "doctor nurse clinic fever vaccine surgery patient therapy dose symptom virus health",
]
VOCAB = [w for t in TOPICS for w in t.split()]


# --- setup ------------------------------------------------------------------------------------


def corpus(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)].split()
        words = [rng.choice(topic) for _ in range(12)] + [rng.choice(VOCAB) for _ in range(4)] + [f"tag{rng.randrange(500)}"]
        out.append({"id": f"doc-{i:06d}", "text": " ".join(words)})
    return out


def prepare(home: Path, database_url: str, records: int, dim: int) -> dict[str, str]:
    """Records, two model versions with built indexes, slot 1 live at 100 %."""
    from lockstep.index.shards import build_index
    from lockstep.index.storage import save_index
    from lockstep.model.embedding import TextEmbedder
    from lockstep.store import routing
    from lockstep.store.db import get_engine
    from lockstep.store.records import RecordStore

    engine = get_engine(database_url)
    store = RecordStore(engine)
    store.upsert_many(corpus(records))
    snap = store.snapshot()
    texts = [r.text for r in snap.records]
    paths = {}
    for version, params in (("1", {"random_state": 1}), ("2", {"random_state": 2, "ngram_range": (1, 2)})):
        model = TextEmbedder(dim=dim, min_df=2, max_df=0.5, stop_words=None, **params).fit(texts)
        model_path = model.save(home / f"model-v{version}.joblib")
        location = home / "indexes" / f"v{version}"
        index = build_index(model, snap.records, location, fingerprint=model.fingerprint, snapshot_seq=snap.seq)
        save_index(index, location, model_name="bench", model_version=version,
                   fingerprint=model.fingerprint, applied_seq=snap.seq)
        routing.register_slot(version, str(model_path), str(location), model.fingerprint, state="ready", engine=engine)
        paths[version] = (str(model_path), str(location))
    routing.set_weights({"1": 100}, engine=engine)
    return {"model": paths["1"][0], "index": paths["1"][1]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, env: dict[str, str], extra: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port), *(extra or [])]
    log = Path(env["LOCKSTEP_HOME"]) / f"{kind}-{port}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600  # a million-record index takes a while to load and verify
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} server did not get ready")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- the servers (run in child processes) --------------------------------------------------------


def bare_app(model_path: str, index_location: str):
    """One version, no routing: embed with the model, search the index, answer."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from lockstep.index.storage import load_index
    from lockstep.model.embedding import TextEmbedder
    from lockstep.serving.bodies import SearchRequest

    model = TextEmbedder.load(model_path)
    index = load_index(index_location, expected_fingerprint=model.fingerprint).index
    app = FastAPI()

    @app.post("/search")
    def search(body: SearchRequest) -> JSONResponse:
        vector = model.embed_query(body.query)
        hits = index.search(vector, body.k)[0]
        return JSONResponse({
            "model_version": "1",
            "results": [{"id": i, "score": s} for i, s in zip(hits.ids, hits.scores, strict=True)],
        })

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    return app


def bare_factory():
    """The bare app for uvicorn worker processes (paths from the environment)."""
    return bare_app(os.environ["BENCH_MODEL"], os.environ["BENCH_INDEX"])


def serve_child(kind: str, port: int, model_path: str | None, index_location: str | None, workers: int = 1,
                stack: str = "auto") -> None:
    """``stack``: uvicorn's loop and HTTP parser, ``auto`` (uvloop and httptools when installed),
    ``asyncio-h11`` (the pure-Python pair, to measure what the fast pair gives)."""
    import logging

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = {"loop": "asyncio", "http": "h11"} if stack == "asyncio-h11" else {}
    os.environ["LOCKSTEP_SERVING_WORKERS"] = str(workers)  # each process's share of the cores (search_batches)
    if workers > 1:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        if kind == "bare":
            os.environ.update(BENCH_MODEL=model_path, BENCH_INDEX=index_location)
        target = "bench_serving:bare_factory" if kind == "bare" else "lockstep.serving.app:create_app"
        uvicorn.run(target, factory=True, workers=workers, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                    **options)
        return
    if kind == "bare":
        app = bare_app(model_path, index_location)
    else:
        from lockstep.serving import create_app

        app = create_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **options)


# --- load and measurements ----------------------------------------------------------------------


def drive(port: int, requests: int, concurrency: int, *, users: bool, seed: int = 0) -> dict[str, float]:
    """Send ``requests`` searches over ``concurrency`` keep-alive connections."""
    rng = random.Random(seed)
    bodies = []
    for i in range(requests):
        body = {"query": " ".join(rng.sample(VOCAB, 3)), "k": 10}
        if users:
            body["user_id"] = f"user-{i % 1000}"
        bodies.append(json.dumps(body).encode())
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    cursor = iter(range(requests))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                break
            started = time.perf_counter()
            conn.request("POST", "/search", body=bodies[i], headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                failures[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for body in bodies[:50]:
        warm.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
        warm.getresponse().read()
    warm.close()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "rps": requests / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "failures": failures[0],
    }


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def measure_follow(database_url: str, env: dict[str, str], changes: int) -> list[float]:
    """Seconds from a committed weight change until both replicas answer from the new version."""
    from lockstep.store import routing
    from lockstep.store.db import get_engine

    engine = get_engine(database_url)
    replicas = [start_server("service", env) for _ in range(2)]
    try:
        body = json.dumps({"query": "planet orbit rocket", "k": 1}).encode()

        def serving(port: int, version: str, since: float, out: list[float]) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while True:
                conn.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.getheader("X-Lockstep-Model-Version") == version:
                    out.append(time.perf_counter() - since)
                    conn.close()
                    return
                time.sleep(0.001)

        delays = []
        for i in range(changes):
            target = "2" if i % 2 == 0 else "1"
            routing.set_weights({target: 100}, engine=engine, reason="bench", actor="bench")
            committed = time.perf_counter()
            seen: list[float] = []
            threads = [threading.Thread(target=serving, args=(port, target, committed, seen)) for _, port in replicas]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            delays.append(max(seen))
            time.sleep(0.05)
        return delays
    finally:
        for proc, _ in replicas:
            stop_server(proc)


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--dim", type=int, help="embedding dimension (default 64; --scale with the posts corpus: 256, the product's)")
    parser.add_argument("--requests", type=int, default=3000, help="searches per run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per endpoint (median counts)")
    parser.add_argument("--changes", type=int, default=20, help="weight changes for the follow measurement")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--scale", type=int, help="wrk at this many records with an HNSW index (issue 10)")
    parser.add_argument("--corpus", choices=["posts", "synthetic"], default="posts",
                        help="--scale: windows of the demo posts (default), or the older bag-of-words records")
    parser.add_argument("--workers", type=int, default=2, help="--scale: worker processes of the multi-process runs")
    parser.add_argument("--duration", type=int, default=15, help="--scale: seconds per wrk run")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lockstep-bench-scale")
    parser.add_argument("--compare-code", action="append", default=[], metavar="[LABEL=]PATH",
                        help="--scale: also serve the service from this tree's include/ (repeat for several; "
                             "LABEL names its rows, default 'before'; 'LABEL@asyncio-h11=PATH' serves it on asyncio and h11)")
    parser.add_argument("--serve", choices=["bare", "service"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--serve-workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--stack", choices=["auto", "asyncio-h11"], default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve, args.port, args.model, args.index, args.serve_workers, args.stack)
        return
    if args.scale:
        scale_main(args)
        return

    args.dim = args.dim or 64
    tmp = Path(tempfile.mkdtemp(prefix="lockstep-bench-serving-"))
    home = tmp / "home"
    home.mkdir()
    database_url = f"sqlite:///{home / 'lockstep.db'}"
    # One OpenMP thread per request thread in both servers (the service also does this
    # itself, per thread; without it a bare FAISS endpoint is several times slower here).
    env = {**os.environ, "LOCKSTEP_HOME": str(home), "LOCKSTEP_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "include"), env.get("PYTHONPATH")) if p)
    os.environ.update({k: env[k] for k in ("LOCKSTEP_HOME", "LOCKSTEP_DATABASE_URL")})

    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {args.records} records, dim {args.dim}")
    t = time.perf_counter()
    paths = prepare(home, database_url, args.records, args.dim)
    print(f"setup (records, two models, two indexes): {time.perf_counter() - t:.1f} s\n")

    from lockstep.store import routing

    results: dict[str, list[dict[str, float]]] = {"bare": [], "service": [], "service_split": [], "bare_omp": []}
    default_omp = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
    proc, port = start_server("bare", default_omp, ["--model", paths["model"], "--index", paths["index"]])
    results["bare_omp"].append(drive(port, args.requests, args.concurrency, users=False))
    stop_server(proc)
    for _ in range(args.rounds):
        proc, port = start_server("bare", env, ["--model", paths["model"], "--index", paths["index"]])
        results["bare"].append(drive(port, args.requests, args.concurrency, users=False))
        stop_server(proc)
        routing.set_weights({"1": 100}, reason="bench")
        proc, port = start_server("service", env)
        results["service"].append(drive(port, args.requests, args.concurrency, users=False))
        routing.set_weights({"1": 50, "2": 50}, reason="bench")
        time.sleep(0.5)
        results["service_split"].append(drive(port, args.requests, args.concurrency, users=True))
        stop_server(proc)
    figures = {name: median_run(runs) for name, runs in results.items()}
    bare = figures["bare"]
    print(f"POST /search: {args.requests} requests x {args.rounds} rounds, {args.concurrency} concurrent keep-alive clients, k=10")
    print(f"{'endpoint':<48}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    labels = {
        "bare_omp": "bare FastAPI, FAISS default OpenMP threads",
        "bare": "bare FastAPI, one version",
        "service": "lockstep, 1 live version (100 %)",
        "service_split": "lockstep, 2 live versions 50/50, sticky users",
    }
    for name, label in labels.items():
        f = figures[name]
        print(f"{label:<48}{f['rps']:>9.0f}{f['p50']:>9.2f}{f['p99']:>9.2f}{f['failures']:>8.0f}")
    for name in ("service", "service_split"):
        f = figures[name]
        print(f"ratio {labels[name]!r} / bare: throughput {f['rps'] / bare['rps']:.2f}x, "
              f"p50 {f['p50'] / bare['p50']:.2f}x, p99 {f['p99'] / bare['p99']:.2f}x")

    follow: dict[str, list[float]] = {}
    routing.set_weights({"1": 100}, reason="bench")
    follow["sqlite (poll every 100 ms)"] = measure_follow(database_url, env, args.changes)
    if not args.no_postgres:
        pg = postgres_follow(args, env)
        if pg is not None:
            follow["postgresql (LISTEN/NOTIFY)"] = pg
    print(f"\nweight change -> both of 2 replicas serving the new version ({args.changes} changes)")
    print(f"{'database':<32}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, delays in follow.items():
        ms = np.array(delays) * 1000
        print(f"{name:<32}{np.percentile(ms, 50):>9.1f}{np.percentile(ms, 95):>9.1f}{ms.max():>9.1f}")

    if args.json:
        args.json.write_text(json.dumps({"search": figures, "follow_seconds": follow}, indent=2))


def postgres_follow(args, env: dict[str, str]) -> list[float] | None:
    sys.path.insert(0, str(ROOT))
    try:
        from tests import postgres_harness
    except ImportError:
        return None
    if not postgres_harness.find_binary("initdb"):
        print("(PostgreSQL binaries not found: skipping the LISTEN/NOTIFY measurement)")
        return None
    server = postgres_harness.start()
    try:
        url = server.create_database("bench")
        pg_env = {**env, "LOCKSTEP_DATABASE_URL": url}
        os.environ["LOCKSTEP_DATABASE_URL"] = url
        prepare(Path(env["LOCKSTEP_HOME"]) / "pg", url, min(args.records, 2000), args.dim)
        return measure_follow(url, pg_env, args.changes)
    finally:
        postgres_harness.stop(server)


# --- serving at scale (wrk) -----------------------------------------------------------------------


def scale_index(cache: Path, n: int, dim: int, corpus_kind: str) -> dict[str, Any]:
    """A model and an HNSW index over ``n`` records, built once per (corpus, n, dim).

    ``posts`` (the default): 30-60-word windows of the demo posts (``bench_scale``'s
    generator), the index the production path builds (``choose_spec``) with the beam its
    validation chooses (``beam.choose_ef_search`` for recall@10 >= 0.955 on stored records
    and on 3-8-word fragments); the wrk bodies are such fragments. ``synthetic``: the
    earlier 17-word bag-of-topic-words records, whose near-duplicates HNSW cannot rank
    (recall@10 ~0.5 at efSearch 96: such an index would fail validation); kept to compare.
    """
    from lockstep.index.beam import choose_for_records, fragment_queries
    from lockstep.index.faiss_ops import all_cores
    from lockstep.index.recall import exact_kth_scores, recall_given_kth
    from lockstep.index.storage import load_index, update_manifest
    from lockstep.model.embedding import TextEmbedder

    folder = cache / f"{corpus_kind}-n{n}-d{dim}"
    model_path, location, facts = folder / "model.joblib", folder / "index", folder / "facts.json"
    if facts.exists():
        return json.loads(facts.read_text())
    ids, texts = _scale_records(cache, n, corpus_kind)
    if (location / "manifest.json").exists():  # built before: choose the beam again only
        model, index = TextEmbedder.load(model_path), load_index(location, expected_fingerprint=None).index
    else:
        model, index = _build_scale_index(ids, texts, corpus_kind, dim, model_path, location)
    rows = random.Random(2).sample(range(n), 200)
    with all_cores():  # as validation chooses it
        choice = choose_for_records(index, index.vectors_of([ids[i] for i in rows]), [texts[i] for i in rows], model,
                                    min_recall=0.95, seed=3)
        if corpus_kind == "posts":
            index.set_ef_search(choice.ef_search)
            update_manifest(location, spec=index.spec.to_dict())
        queries = fragment_queries([texts[i] for i in random.Random(4).sample(range(n), 200)], seed=5)
        vectors = model.transform(queries)
        held_out = recall_given_kth(index, vectors, exact_kth_scores(index, vectors, 10), 10)
    print(f"  beam: efSearch {index.spec.ef_search} (walk {choice.walk}); recall@10 of the wrk queries "
          f"at that beam {held_out:.3f}", flush=True)
    out = {"model": str(model_path), "index": str(location), "spec": index.spec.to_dict(), "walk": choice.walk,
           "recall_wrk_queries": held_out, "queries": queries if corpus_kind == "posts" else []}
    facts.write_text(json.dumps(out))
    return out


def _build_scale_index(ids: list[str], texts: list[str], corpus_kind: str, dim: int, model_path: Path, location: Path):
    from lockstep.index.faiss_ops import all_cores
    from lockstep.index.storage import save_index
    from lockstep.index.vector_index import IndexSpec, VectorIndex, choose_spec
    from lockstep.model.embedding import TextEmbedder

    location.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    sample = random.Random(1).sample(texts, min(len(texts), 100_000))
    model = TextEmbedder(dim=dim, random_state=1).fit(sample) if corpus_kind == "posts" else \
        TextEmbedder(dim=dim, min_df=2, max_df=0.5, stop_words=None, random_state=1).fit(sample)
    model.save(model_path)
    vectors = np.vstack([model.transform(texts[i : i + 50_000]) for i in range(0, len(texts), 50_000)]).astype(np.float32)
    print(f"  embedded {len(texts)} records in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    spec = choose_spec(len(texts), dim) if corpus_kind == "posts" else IndexSpec(kind="hnsw")
    if spec.kind != "hnsw":
        spec = IndexSpec(kind="hnsw", hnsw_m=32, ef_construction=40, ef_search=128)
    with all_cores():
        index = VectorIndex.build(ids, vectors, spec)
    print(f"  HNSW built in {time.perf_counter() - t:.0f} s", flush=True)
    save_index(index, location, model_name="bench", model_version="1", fingerprint=model.fingerprint, applied_seq=0)
    return model, index


def _scale_records(cache: Path, n: int, corpus_kind: str) -> tuple[list[str], list[str]]:
    if corpus_kind == "synthetic":
        docs = corpus(n)
        return [d["id"] for d in docs], [d["text"] for d in docs]
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scale import generate_corpus

    table = pq.read_table(generate_corpus(n, cache / "corpus" / f"corpus-{n}-seed0-v2.parquet", 0), columns=["id", "text"])
    return table.column("id").to_pylist(), table.column("text").to_pylist()


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
bodies = {%s}
i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/search", nil, bodies[i])
end
"""


def wrk(port: int, connections: int, duration: int, script: Path) -> dict[str, float]:
    threads = min(connections, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}"],
        check=True, capture_output=True, text=True,
    ).stdout
    figures = {"rps": float(_after(out, "Requests/sec:").split()[0])}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            figures["p" + parts[0].rstrip("%")] = _ms(parts[1])
    figures["non2xx"] = float(_after(out, "Non-2xx or 3xx responses:").split()[0]) if "Non-2xx" in out else 0.0
    return figures


def _compared(spec: str, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``[LABEL=]PATH`` of ``--compare-code``: the label and the environment that serves PATH's include/."""
    label, _, path = spec.rpartition("=")
    tree = Path(path) / "include" if (Path(path) / "include" / "lockstep").is_dir() else Path(path)
    if not (tree / "lockstep").is_dir():
        sys.exit(f"--compare-code {spec!r}: {tree} has no lockstep package")
    return label or "before", {**env, "PYTHONPATH": os.pathsep.join([str(tree), env["PYTHONPATH"]])}


def _after(text: str, marker: str) -> str:
    return text.split(marker, 1)[1].strip()


def _ms(value: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


def scale_main(args) -> None:
    import shutil

    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    home = Path(tempfile.mkdtemp(prefix="lockstep-bench-scale-"))
    database_url = f"sqlite:///{home / 'lockstep.db'}"
    env = {**os.environ, "LOCKSTEP_HOME": str(home), "LOCKSTEP_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "include"), env.get("PYTHONPATH")) if p)
    os.environ.update({k: env[k] for k in ("LOCKSTEP_HOME", "LOCKSTEP_DATABASE_URL")})
    args.dim = args.dim or (256 if args.corpus == "posts" else 64)
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {args.scale} records ({args.corpus}), dim {args.dim}, HNSW")
    paths = scale_index(args.cache, args.scale, args.dim, args.corpus)
    print(f"index: {paths['spec']}; recall@10 of the wrk queries (held out from the beam's choice): "
          f"{paths['recall_wrk_queries']:.3f}")

    from lockstep.model.embedding import TextEmbedder
    from lockstep.store import routing

    fingerprint = TextEmbedder.load(paths["model"]).fingerprint
    routing.register_slot("1", paths["model"], paths["index"], fingerprint, state="ready")
    routing.set_weights({"1": 100}, reason="bench")
    rng = random.Random(0)
    texts = paths["queries"] or [" ".join(rng.sample(VOCAB, 3)) for _ in range(200)]
    bodies = [json.dumps({"query": q, "k": 10}) for q in texts]
    script = home / "search.lua"
    script.write_text(WRK_SCRIPT % ", ".join(json.dumps(b) for b in bodies))

    compared = [_compared(spec, env) for spec in args.compare_code]
    runs = [("bare", 1, env), *((label, 1, tree) for label, tree in compared), ("service", 1, env)]
    runs += [("bare", args.workers, env), *((label, args.workers, tree) for label, tree in compared[:1]),
             ("service", args.workers, env)]
    rows = []
    for kind, workers, run_env in runs:
        extra = ["--model", paths["model"], "--index", paths["index"], "--serve-workers", str(workers)]
        if "@" in kind:
            extra += ["--stack", kind.split("@", 1)[1]]
        try:
            proc, port = start_server("bare" if kind == "bare" else "service", run_env, extra)
        except RuntimeError as exc:
            print(f"{kind} ({workers} proc) did not start: {str(exc)[-500:]}")
            continue
        try:
            wrk(port, 4, 3, script)  # warm-up
            for connections in (1, 16):
                rows.append((kind, workers, connections, wrk(port, connections, args.duration, script)))
        finally:
            stop_server(proc)
    print(f"\nPOST /search, k=10, wrk {args.duration} s per row")
    print("(" + "; ".join(f"{label}: the service from {tree['PYTHONPATH'].split(os.pathsep)[0]}" for label, tree in compared) + ")"
          if compared else "")
    print(f"{'endpoint':<22}{'procs':>6}{'conns':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for kind, workers, connections, f in rows:
        print(f"{kind:<22}{workers:>6}{connections:>6}{f['rps']:>9.0f}{f['p50']:>9.2f}{f['p99']:>9.2f}{f['non2xx']:>9.0f}")
    by = {(k, w, c): f for k, w, c, f in rows}
    for kind, workers, _ in runs:
        if kind == "bare" or (kind, workers, 1) not in by or ("bare", workers, 1) not in by:
            continue
        for connections in (1, 16):
            b, sv = by[("bare", workers, connections)], by[(kind, workers, connections)]
            print(f"{kind}/bare, {workers} proc, {connections} conn: throughput {sv['rps'] / b['rps']:.2f}x, "
                  f"p50 {sv['p50'] / b['p50']:.2f}x, p99 {sv['p99'] / b['p99']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps([{"kind": k, "workers": w, "connections": c, **f} for k, w, c, f in rows], indent=2))


if __name__ == "__main__":
    main()
