"""``POST /recommend`` over HTTP at MovieLens scale, against the library call it wraps.

A recommender deployment in a temporary home (MovieLens-100k loaded, the default ALS fit
registered and built), served by uvicorn on loopback; one client sends every user's
request in turn (k=10, seen items excluded), twice. Reports the client-side p50/p99 and
the raw ``LiveVersion.recommend`` p50 on the same version in the same run (the ratio is
what the HTTP path costs). Target (issue 12): /recommend p50 <= 3 ms at 1,682 items.

    flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_recommend_http.py
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _serve(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    import httpx

    with tempfile.TemporaryDirectory() as home:
        os.environ.update(LOCKSTEP_HOME=home, LOCKSTEP_SYSTEM="recommender")
        from lockstep.core.config import Settings
        from lockstep.recommender import movielens
        from lockstep.recommender.build import build_version
        from lockstep.recommender.factorization import ALSRecommender
        from lockstep.recommender.live_version import LiveVersion
        from lockstep.recommender.registration import register_fit
        from lockstep.serving import ServingConfig, create_app
        from lockstep.store.interactions import InteractionStore

        store = InteractionStore()
        store.upsert_items(movielens.items())
        store.add_many(movielens.interactions())
        model = ALSRecommender().fit(store.snapshot())
        version = register_fit(model, {}, snapshot_seq=store.max_seq()).version
        build_version(version)
        app = create_app(Settings.from_env(), api_token="bench", config=ServingConfig(log_flush_interval=0.5, replica="bench"))
        server, thread, url = _serve(app)
        users = sorted(model.user_ids_)
        try:
            with httpx.Client(base_url=url, timeout=10) as client:
                while client.get("/readyz").status_code != 200:
                    time.sleep(0.05)
                for user in users[:50]:  # warm-up
                    client.post("/recommend", json={"user_id": user})
                http_ms = []
                for _ in range(2):
                    for user in users:
                        t = time.perf_counter()
                        r = client.post("/recommend", json={"user_id": user, "k": 10})
                        http_ms.append((time.perf_counter() - t) * 1000)
                        assert r.status_code == 200, r.text
        finally:
            server.should_exit = True
            thread.join(10)
        live = LiveVersion(model, version)
        seen = store.snapshot().groupby("user_id")["item_id"].apply(set).to_dict()
        raw_ms = []
        for user in users * 2:
            t = time.perf_counter()
            live.recommend(user, 10, exclude=seen.get(user, ()))
            raw_ms.append((time.perf_counter() - t) * 1000)
    p = np.percentile
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; MovieLens-100k, {len(model.item_ids_)} items, dim {model.dim_}")
    print(f"POST /recommend (HTTP, one client): p50 {p(http_ms, 50):.2f} ms, p99 {p(http_ms, 99):.2f} ms over {len(http_ms)} requests")
    print(f"LiveVersion.recommend (library)   : p50 {p(raw_ms, 50):.3f} ms, p99 {p(raw_ms, 99):.3f} ms")
    print(f"HTTP / library at p50             : {p(http_ms, 50) / p(raw_ms, 50):.1f}x")


if __name__ == "__main__":
    main()
