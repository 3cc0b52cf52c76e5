"""Does the new version really serve? The routing table read back, then every replica probed.

Used after a rollout's final traffic update (``steps.verify``) and after a manual
rollback (``lockstep_rollback``): a replica must report the routing generation written
(or a newer one) and answer plain searches with the version several times in a row.
A recommender replica is probed with ``POST /recommend`` for users it does not know: the
404 still names the version that answered (header ``X-Lockstep-Model-Version``).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine

from lockstep.rollout.config import VerificationFailed
from lockstep.rollout.traffic import default_engine
from lockstep.store import routing

PROBE_QUERY = "lockstep verification probe"
PROBE_ANSWERS = 3


def verify_serving(
    version: str,
    generation: int,
    serving_url: str,
    timeout: float,
    *,
    poll: float = 0.2,
    engine: Engine | None = None,
    probe: Any = None,
) -> dict[str, float]:
    """Check ``version`` serves 100 %: in the routing table, then on every replica in ``serving_url``.

    A replica must report ``generation`` (or a newer one) and answer plain searches (no
    pin) with the version ``PROBE_ANSWERS`` times in a row. Returns the seconds each
    replica took; raises VerificationFailed naming the first one that did not follow.
    ``probe`` is the system's request (``System.verify_probe``; default: a search).
    """
    version = str(version)
    table = routing.read_table(engine or default_engine())
    slot = table.slot(version)
    if slot is None or slot.weight != 100 or slot.state != routing.LIVE:
        raise VerificationFailed(
            f"the routing table reads back {table.weights} (generation {table.generation}), not v{version} at 100 %",
            phase="verify",
        )
    urls = [u.strip().rstrip("/") for u in (serving_url or "").split(",") if u.strip()]
    deadline = time.monotonic() + timeout
    took: dict[str, float] = {}
    import httpx

    ask = probe or search_probe
    with httpx.Client(timeout=5.0) as client:
        for url in urls:
            seconds, problem = _probe(client, url, version, max(generation, 0), deadline, poll, ask)
            if problem:
                raise VerificationFailed(f"{url} did not serve v{version} within {timeout:.0f} s: {problem}", phase="verify")
            took[url] = seconds
    return took


def search_probe(client: Any, url: str, i: int) -> str:
    response = client.post(f"{url}/search", json={"query": PROBE_QUERY, "k": 1, "user_id": f"lockstep-verify-{i}"})
    return response.json().get("model_version") if response.status_code == 200 else f"HTTP {response.status_code}"


def _probe(
    client: Any, url: str, version: str, generation: int, deadline: float, poll: float, ask: Any = search_probe
) -> tuple[float, str | None]:
    """Seconds until ``url`` serves ``version``, or the last problem seen when time ran out."""
    started = time.monotonic()
    problem = "no answer yet"
    while True:
        try:
            table = client.get(f"{url}/routing").json()
            slot = next((s for s in table.get("slots", []) if s.get("model_version") == version), None)
            if table.get("generation", -1) < generation:
                problem = f"replica is at generation {table.get('generation')}, waiting for {generation}"
            elif slot is None or slot.get("weight") != 100 or slot.get("loaded") is False:
                problem = f"replica holds v{version} as {slot}"
            else:
                answered = [ask(client, url, i) for i in range(PROBE_ANSWERS)]
                if all(a == version for a in answered):
                    return time.monotonic() - started, None
                problem = f"requests answered by {answered}, not v{version}"
        except Exception as exc:  # connection refused, bad JSON: keep probing until the deadline
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return time.monotonic() - started, problem
        time.sleep(min(poll, 0.2))


__all__ = ["PROBE_ANSWERS", "PROBE_QUERY", "search_probe", "verify_serving"]
