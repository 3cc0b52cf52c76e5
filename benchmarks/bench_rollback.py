"""Rollback benchmark: time from a failed gate to 100 % of traffic back on the champion.

When a rollout step sees a gate fail it calls the same function every time
(``lockstep.rollout.traffic.abort_traffic``): champion at 100 %, no shadow, in one routing
transaction, before it raises. This script puts a candidate at 25 % on several serving
replicas (separate processes, one database) under live search traffic, then per trial:

- **commit**: the routing transaction, from the failed gate to COMMIT;
- **replicas follow**: until every replica's ``GET /routing`` reports the new generation;
- **traffic back**: until every replica answers plain searches (sticky users that were on
  the candidate) with the champion three times in a row.

Searches running meanwhile must all succeed (a failed one is counted and printed). The
Airflow scheduler's reaction to the failed task is not in these figures: the traffic is
back before the rollback task even starts; that task only does the bookkeeping.

Run: ``.venv/bin/python benchmarks/bench_rollback.py [--replicas 3] [--trials 20] [--no-postgres]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPICS = [
    "planet orbit rocket star galaxy comet moon telescope launch astronaut nebula gravity",
    "bread cheese recipe oven flour butter garlic tomato pasta soup spice kitchen",
    "football goal match team player coach league score stadium referee season tennis",
    "guitar piano concert song melody rhythm album band drum chord singer violin",
    "river mountain forest valley glacier desert island canyon lake meadow volcano coast",
    "doctor nurse clinic fever vaccine surgery patient therapy dose symptom virus health",
]


def corpus(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"id": f"doc-{i:06d}", "text": " ".join(rng.choice(TOPICS[i % len(TOPICS)].split()) for _ in range(14))}
        for i in range(n)
    ]


def prepare(home: Path, database_url: str, records: int) -> None:
    """Records and two versions with built indexes: champion v1 and candidate v2, both ready."""
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
    for version, dim in (("1", 32), ("2", 48)):
        model = TextEmbedder(dim=dim, min_df=2, max_df=0.5, stop_words=None, random_state=int(version)).fit(texts)
        model_path = model.save(home / f"model-v{version}.joblib")
        location = home / "indexes" / f"v{version}"
        index = build_index(model, snap.records, location, fingerprint=model.fingerprint, snapshot_seq=snap.seq)
        save_index(index, location, model_name="bench", model_version=version, fingerprint=model.fingerprint, applied_seq=snap.seq)
        routing.register_slot(version, str(model_path), str(location), model.fingerprint, state="ready", engine=engine)
    routing.set_weights({"1": 100}, engine=engine)


def start_replica(env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from lockstep.serving.runner import run; run('127.0.0.1', {port}, log_level='warning', app='lockstep.systems:create_app')"
    log = Path(env["LOCKSTEP_HOME"]) / f"replica-{port}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica exited: {log.read_text()[-2000:]}")
        try:
            if _get(port, "/readyz")[0] == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("replica did not get ready")


def _get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def _search(conn: http.client.HTTPConnection, user: str) -> tuple[int, str | None]:
    conn.request("POST", "/search", body=json.dumps({"query": "rocket orbit launch", "k": 5, "user_id": user}),
                 headers={"content-type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read() or b"{}")
    return response.status, body.get("model_version")


class Load:
    """Live traffic on every replica while the trials run; counts failed searches."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.stop, self.sent, self.failed = ports, threading.Event(), 0, []
        self.threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in ports]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _run(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        rng = random.Random(port)
        while not self.stop.is_set():
            try:
                status, _ = _search(conn, f"u{rng.randrange(1000)}")
            except OSError as exc:
                status = f"{type(exc).__name__}"
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            self.sent += 1
            if status != 200:
                self.failed.append(status)
            time.sleep(0.005)


def candidate_users(salt: str, weights: dict[str, int], n: int = 3) -> list[str]:
    """Users whose sticky bucket puts them on the candidate under ``weights``: they must move back."""
    from lockstep.store.routing import RoutingTable, SlotRow

    table = RoutingTable(0, salt, tuple(SlotRow(v, "m", "i", "f", "live", w, False) for v, w in sorted(weights.items())))
    users = [f"u{i}" for i in range(5000) if table.choose(f"u{i}").model_version == "2"]
    return users[:n]


def trial(database_url: str, ports: list[int]) -> dict[str, float]:
    from lockstep.rollout.plan import RolloutPlan
    from lockstep.rollout.traffic import abort_traffic
    from lockstep.store import routing

    routing.set_weights({"1": 75, "2": 25}, reason="bench: canary 25 %", engine=database_url)
    generation = routing.read_generation(database_url)
    for port in ports:  # every replica serves the canary before the gate fails
        while _get(port, "/routing")[1].get("generation", -1) < generation:
            time.sleep(0.005)
    users = candidate_users(routing.read_table(database_url).salt, {"1": 75, "2": 25})
    plan = RolloutPlan("bench", "2", "1")

    failed_gate = time.perf_counter()
    generation = abort_traffic(plan, "bench: gate failed", _engine(database_url))
    commit = time.perf_counter() - failed_gate

    followed: dict[int, float] = {}
    traffic: dict[int, float] = {}

    def watch(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while _get(port, "/routing")[1].get("generation", -1) < generation:
            time.sleep(0.001)
        followed[port] = time.perf_counter() - failed_gate
        streak = 0
        while streak < 3:
            status, version = _search(conn, users[streak % len(users)])
            streak = streak + 1 if (status, version) == (200, "1") else 0
        traffic[port] = time.perf_counter() - failed_gate

    threads = [threading.Thread(target=watch, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"commit": commit, "follow": max(followed.values()), "traffic": max(traffic.values())}


def _engine(url: str):
    from lockstep.store.db import get_engine

    return get_engine(url)


def run_backend(name: str, database_url: str, home: Path, args) -> dict[str, list[float]] | None:
    env = {**os.environ, "LOCKSTEP_HOME": str(home), "LOCKSTEP_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT / "include")}
    env.pop("LOCKSTEP_FAULTS", None)
    prepare(home, database_url, args.records)
    replicas = [start_replica(env) for _ in range(args.replicas)]
    ports = [port for _, port in replicas]
    results: dict[str, list[float]] = {"commit": [], "follow": [], "traffic": []}
    try:
        with Load(ports) as load:
            for _ in range(args.trials):
                for key, value in trial(database_url, ports).items():
                    results[key].append(value)
                time.sleep(0.2)
        print(f"{name}: {load.sent} searches during the trials, {len(load.failed)} failed {load.failed[:5]}")
    finally:
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(10)
    return results


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"{statistics.median(ms):8.1f} {p95:8.1f} {ms[-1]:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-rollback-") as tmp:
        home = Path(tmp) / "sqlite"
        home.mkdir()
        rows["sqlite (polling)"] = run_backend("sqlite", f"sqlite:///{home / 'lockstep.db'}", home, args)
        if not args.no_postgres:
            from tests import postgres_harness

            if postgres_harness.find_binary("initdb"):
                server = postgres_harness.start()
                try:
                    home = Path(tmp) / "postgres"
                    home.mkdir()
                    rows["postgresql (LISTEN/NOTIFY)"] = run_backend("postgresql", server.create_database(), home, args)
                finally:
                    postgres_harness.stop(server)
            else:
                print("postgresql: initdb not found, skipped")
    print(f"\nfailed gate -> 100 % on the champion, {args.replicas} replicas, {args.trials} trials (ms: median, p95, max)")
    print(f"{'backend':<28} {'stage':<34} {'median':>8} {'p95':>8} {'max':>8}")
    stages = {"commit": "routing transaction committed", "follow": "every replica at the new generation",
              "traffic": "every replica answers with champion"}
    for backend, result in rows.items():
        for key, label in stages.items():
            print(f"{backend:<28} {label:<34} {summary(result[key])}")


if __name__ == "__main__":
    main()
