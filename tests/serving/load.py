"""Load generators for the serving tests, run in child processes.

The weight churn and the clients run in their own processes (own interpreter, own
GIL), as the Airflow task that changes weights and the users would in production; the
server under test then shares its GIL with nobody. This module imports only light
modules so a spawned child starts quickly.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

TOPICS = {
    "space": "planet orbit rocket star galaxy comet moon telescope launch astronaut nebula gravity",
    "food": "bread cheese recipe oven flour butter garlic tomato pasta soup spice kitchen",
    "sport": "football goal match team player coach league score stadium referee season tennis",
    "music": "guitar piano concert song melody rhythm album band drum chord singer violin",
    "code": "python compiler function variable loop debug server database query index thread cache",
}
WORDS = [w for words in TOPICS.values() for w in words.split()]


def topic_text(rng: random.Random, n_words: int = 10) -> str:
    topic = TOPICS[rng.choice(list(TOPICS))].split()
    return " ".join([*(rng.choice(topic) for _ in range(n_words - 3)), *(rng.choice(WORDS) for _ in range(3))])


def churn_weights(database_url: str, plans: list[dict[str, int]], pause: float, duration: float, barrier: Any, out: Any) -> None:
    """Change the weights in a loop; report (generation, committed by, plan) for each change."""
    from lockstep.store import routing
    from lockstep.store.db import get_engine

    engine = get_engine(database_url)
    timeline = []
    barrier.wait()
    end = time.monotonic() + duration
    i = 0
    while time.monotonic() < end:
        plan = plans[i % len(plans)]
        generation = routing.set_weights(plan, engine=engine, reason="churn", actor="test")
        timeline.append((generation, time.monotonic(), plan))
        i += 1
        time.sleep(pause)
    out.put(("weights", timeline))


def client_load(
    url: str, token: str, duration: float, searchers: int, writers: list[tuple[list[str], list[str]]], barrier: Any, out: Any
) -> None:
    """Searcher and writer threads in one process; report every response and every write."""
    barrier.wait()
    end = time.monotonic() + duration
    searches: list[list] = [[] for _ in range(searchers)]
    writes: list[tuple[list, list]] = [([], []) for _ in writers]
    threads = [threading.Thread(target=search_load, args=(url, i, end, searches[i])) for i in range(searchers)]
    threads += [
        threading.Thread(target=write_load, args=(url, token, i, owned, live, end, *writes[i]))
        for i, (owned, live) in enumerate(writers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(("clients", ([r for batch in searches for r in batch], writes)))


def search_load(url: str, seed: int, end: float, results: list) -> None:
    """Search with random queries, half of them as a sticky user; record every response."""
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < end:
            query = " ".join(rng.sample(WORDS, 3))
            body: dict[str, Any] = {"query": query, "k": 5}
            if rng.random() < 0.5:
                body["user_id"] = f"user-{rng.randrange(40)}"
            started = time.monotonic()
            response = client.post("/search", json=body)
            ended = time.monotonic()
            payload = response.json() if response.headers.get("content-type") == "application/json" else None
            results.append((started, ended, query, response.status_code, payload, response.headers.get("X-Lockstep-Model-Version")))


def write_load(url: str, token: str, seed: int, owned: list[str], live: list[str], end: float, statuses: list, texts: list) -> None:
    """PUT and DELETE the records this writer owns; record statuses and every text written."""
    import httpx

    rng = random.Random(seed)
    alive = set(live)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while time.monotonic() < end:
            rid = rng.choice(owned)
            if rid in alive and rng.random() < 0.4:
                response = client.delete(f"/records/{rid}")
                alive.discard(rid)
            else:
                text = topic_text(rng)
                texts.append((rid, text))
                response = client.put(f"/records/{rid}", json={"text": text})
                alive.add(rid)
            statuses.append(response.status_code)
