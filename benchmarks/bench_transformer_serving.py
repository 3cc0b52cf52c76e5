"""Two transformer versions on one replica: live writes, their apply lag, and search latency.

The issue's serving targets with two transformer versions loaded (all-MiniLM-L6-v2 int8
ONNX imported twice, cut at 128 and at 256 tokens: two versions, two vector spaces), routed
50/50 on one replica process:

- writes: ``PUT /records`` at ``--write-rate`` writes/s for ``--seconds`` seconds
  (acknowledged when durable: ``LOCKSTEP_WRITE_ACK=auto`` with slow models); PUT p50/p99;
- lag: seconds from sending a write until both versions have applied it, read from
  ``GET /routing`` (``applied_seq`` per version) polled every 20 ms (so lag is measured to
  within ~20 ms);
- search: p50/p99 of ``POST /search`` at ``--search-clients`` concurrent clients, idle and
  during the writes (target: p99 during writes <= 1.5x idle);
- queries: p50/p99 at 1, 8 and 16 concurrent clients, against one raw ``session.run`` of one
  text (measured in this process before the replica starts).

Clients run in this process on the same 2 cores as the replica: their CPU is part of what the
replica competes with, as it would be beside a bulk load.

Run: flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_transformer_serving.py
     [--records 600] [--write-rate 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformer import pct, raw_one  # noqa: E402


def start_replica(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = f"from lockstep.serving.runner import run; run('127.0.0.1', {port}, log_level='warning', app='lockstep.systems:create_app')"
    log = open(home / "replica.log", "w")  # noqa: SIM115 (the replica's whole life)
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the replica exited ({proc.returncode}); see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the replica did not become ready")


def search_load(url: str, queries: list[str], clients: int, stop: threading.Event, limit: int | None = None) -> list[tuple[float, str]]:
    """Searches from ``clients`` threads until ``stop`` (or ``limit`` in all); (seconds, version) each."""
    import httpx

    out: list[tuple[float, str]] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                i = next(counter)
                if limit is not None and i >= limit:
                    return
                started = time.perf_counter()
                resp = http.post("/search", json={"query": queries[i % len(queries)], "k": 10, "user_id": f"u{i % 997}"})
                secs = time.perf_counter() - started
                if resp.status_code == 200:
                    with lock:
                        out.append((secs, resp.json()["model_version"]))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--write-rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--search-clients", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lockstep-bench-tserving-"))
    home = tmp / "home"
    token = "bench-token"
    os.environ.update(LOCKSTEP_HOME=str(home), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", LOCKSTEP_API_TOKEN=token)

    import httpx

    from lockstep.index.build import reembed_version
    from lockstep.model.minilm import minilm_folder
    from lockstep.model.onnx_text import import_onnx
    from lockstep.model.registry import Registry
    from lockstep.ops.simulator import held_out_queries
    from lockstep.store.corpus import demo_sample
    from lockstep.store.records import RecordStore
    from lockstep.store.routing import set_weights

    store = RecordStore()
    records = demo_sample(args.records + 2000, seed=0)
    store.upsert_many(records[: args.records])
    writes = records[args.records:]
    folder = minilm_folder(tmp / "minilm")
    registry = Registry()
    v1 = import_onnx(registry, folder, {"max_length": 128}, set_challenger=False).version
    v2 = import_onnx(registry, folder, {"max_length": 256}, set_challenger=False).version
    print("... building both indexes", file=sys.stderr, flush=True)
    reembed_version(store, registry, v1)
    reembed_version(store, registry, v2, promote_if_first=False)
    set_weights({v1: 50, v2: 50}, reason="bench: two transformer versions 50/50")
    queries = [q.text for q in held_out_queries(limit=args.queries)]
    raw = raw_one(folder, queries, max_length=128, threads=len(os.sched_getaffinity(0)))

    proc, url = start_replica(home)
    try:
        wait_ready(url, proc)
        never = threading.Event()
        search_load(url, queries, 2, never, limit=40)  # warm-up
        by_clients = {c: search_load(url, queries, c, never, limit=max(60, 12 * c)) for c in (1, 8, 16)}
        idle_stop = threading.Event()
        timer = threading.Timer(args.seconds / 2, idle_stop.set)
        timer.start()
        idle = search_load(url, queries, args.search_clients, idle_stop)

        put_times: list[float] = []
        sent: dict[int, float] = {}
        applied_at: dict[str, dict[int, float]] = {v1: {}, v2: {}}
        stop = threading.Event()

        def watch() -> None:
            with httpx.Client(base_url=url, timeout=10) as http:
                while not stop.is_set() or any(len(a) < len(sent) for a in applied_at.values()):
                    now = time.perf_counter()
                    for slot in http.get("/routing").json()["slots"]:
                        seen = applied_at.get(slot["model_version"])
                        if seen is None or slot.get("applied_seq") is None:
                            continue
                        for seq in [s for s in sent if s <= slot["applied_seq"] and s not in seen]:
                            seen[seq] = now
                    if stop.is_set() and time.perf_counter() - stopped_at[0] > 30:
                        return
                    time.sleep(0.02)

        def write() -> None:
            interval = 1.0 / args.write_rate
            with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
                due = time.perf_counter()
                for r in writes[: int(args.write_rate * args.seconds)]:
                    due += interval
                    started = time.perf_counter()
                    resp = http.put(f"/records/{r.id}", json={"text": r.text + " (edited)"})
                    resp.raise_for_status()
                    put_times.append(time.perf_counter() - started)
                    sent[resp.json()["seq"]] = started
                    time.sleep(max(0.0, due - time.perf_counter()))

        stopped_at = [0.0]
        busy_stop = threading.Event()
        watcher = threading.Thread(target=watch, daemon=True)
        writer = threading.Thread(target=write, daemon=True)
        searches: list[list[tuple[float, str]]] = []
        searcher = threading.Thread(target=lambda: searches.append(search_load(url, queries, args.search_clients, busy_stop)), daemon=True)
        watcher.start()
        searcher.start()
        writer.start()
        writer.join()
        busy_stop.set()
        searcher.join()
        stopped_at[0] = time.perf_counter()
        stop.set()
        watcher.join()
    finally:
        proc.terminate()
        proc.wait(30)

    lags = [max(applied_at[v].get(seq, np.inf) for v in (v1, v2)) - t0 for seq, t0 in sent.items()]
    unapplied = sum(1 for x in lags if not np.isfinite(x))
    finite = [x for x in lags if np.isfinite(x)]
    busy = searches[0] if searches else []
    print(f"\nmachine: {len(os.sched_getaffinity(0))} cores; {args.records:,} records; two MiniLM int8 versions (128 / 256 tokens) 50/50 on one replica\n")
    print(f"writes: {len(put_times)} at {args.write_rate:g}/s: PUT p50 {1000 * pct(put_times, 50):.1f} ms, p99 {1000 * pct(put_times, 99):.1f} ms")
    if finite:
        print(f"lag until both versions applied a write: p50 {pct(finite, 50):.2f} s, p99 {pct(finite, 99):.2f} s, max {max(finite):.2f} s"
              + (f"; {unapplied} not seen applied within 30 s" if unapplied else ""))
    idle_s = [s for s, _ in idle]
    busy_s = [s for s, _ in busy]
    print(f"search at {args.search_clients} clients: idle p50 {1000 * pct(idle_s, 50):.1f} ms p99 {1000 * pct(idle_s, 99):.1f} ms; "
          f"during writes p50 {1000 * pct(busy_s, 50):.1f} ms p99 {1000 * pct(busy_s, 99):.1f} ms "
          f"({pct(busy_s, 99) / pct(idle_s, 99):.2f}x idle p99)")
    print(f"\nraw onnxruntime, one text: p50 {1000 * pct(raw, 50):.1f} ms, p99 {1000 * pct(raw, 99):.1f} ms")
    print(f"{'clients':>7} {'searches':>9} {'req/s':>7} " + " ".join(f"{'v' + v + ' p50':>9} {'p99':>7}" for v in (v1, v2)))
    for c, rows in by_clients.items():
        span = sum(s for s, _ in rows) / max(c, 1)
        cells = []
        for v in (v1, v2):
            mine = [s for s, ver in rows if ver == v] or [float("nan")]
            cells.append(f"{1000 * pct(mine, 50):8.1f}ms {1000 * pct(mine, 99):6.1f}ms")
        print(f"{c:>7} {len(rows):>9} {len(rows) / span:7.1f} " + " ".join(cells))


if __name__ == "__main__":
    main()
