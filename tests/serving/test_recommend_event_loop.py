"""The recommender's event loop never waits on an item index lock (issue 21).

``/recommend`` searches a version's item index on the event loop. A search that met a
writer there (a fold-in placing a new item, from ``/interactions`` or the tail) used to
wait on the loop, so ``/healthz``, ``/readyz`` and the recommendations of every other
version waited too. Here the write lock of v1's item index is held from the test
itself (or a writer is queued on it), over a real uvicorn server on the MovieLens
deployment of ``test_recommend``: the probes and a ``/recommend`` pinned to v2 answer
while it is held, and the v1 request that met it completes, with the answer it gives
when nothing is locked, once it is let go.

Nothing is timed: a request is known to wait on the lock when it sits in the lock's
condition (``waiting``, from ``test_event_loop``); timeouts are failure guards only.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from lockstep.recommender.item_index import ItemIndex
from lockstep.serving.bodies import MODEL_VERSION_HEADER, PIN_HEADER
from tests.serving.test_event_loop import (
    TIMEOUT,
    Request,
    wait_until,
    waiting,
    writer_holding,
    writer_waiting,
)
from tests.serving.test_recommend import deployment, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(600, method="thread")


def recommend(url: str, user: str, version: str) -> httpx.Response:
    return httpx.post(f"{url}/recommend", json={"user_id": user, "k": 10}, headers={PIN_HEADER: version}, timeout=TIMEOUT * 3)


@pytest.mark.parametrize("writer", [writer_holding, writer_waiting], ids=["writer-holds", "writer-waits"])
def test_a_writer_on_one_item_index_freezes_neither_the_probes_nor_other_versions(deployment, server, writer):  # noqa: F811
    user = sorted(deployment["fits"]["1"].user_ids_)[11]
    lock = server.runtime.manager.view.slots["1"].live.index._lock
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        unlocked = recommend(server.url, user, "1")
        assert unlocked.status_code == 200, unlocked.text
        with writer(lock):
            before = waiting(lock)
            blocked = Request(lambda: recommend(server.url, user, "1"))
            # the v1 request met the writer and waits on the lock -- in a worker thread, not the loop
            wait_until(lambda: waiting(lock) == before + 1, "the v1 recommend to wait on its item index lock")
            assert client.get("/healthz").json() == {"status": "ok"}
            ready = client.get("/readyz")
            assert ready.status_code == 200 and "1" in ready.json()["live"]
            assert "lockstep_" in client.get("/metrics").text
            other = client.post("/recommend", json={"user_id": user, "k": 10}, headers={PIN_HEADER: "2"})
            assert other.status_code == 200, other.text
            assert other.json()["model_version"] == "2" == other.headers[MODEL_VERSION_HEADER] and len(other.json()["results"]) == 10
            assert not blocked.done.is_set(), "the v1 recommend answered while its item index was write-locked"
        answer = blocked.join()
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "1"
        assert answer.json()["results"] == unlocked.json()["results"]  # the same answer as with no writer
        # after the writer: v1 is searched on the loop again, and still the same answer
        assert recommend(server.url, user, "1").json()["results"] == unlocked.json()["results"]


def test_an_unknown_user_is_a_404_whether_or_not_the_index_is_locked(deployment, server):  # noqa: F811
    """The user lookup comes before the lock: a locked index changes nothing about a 404."""
    lock = server.runtime.manager.view.slots["1"].live.index._lock
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, writer_holding(lock):
        r = client.post("/recommend", json={"user_id": "nobody-here"}, headers={PIN_HEADER: "1"})
        assert r.status_code == 404 and r.headers[MODEL_VERSION_HEADER] == "1"
        assert "unknown to model version 1" in r.json()["detail"]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_try_recommend_answers_as_recommend_and_is_none_exactly_while_a_writer_holds_or_waits(kind):
    rng = np.random.default_rng(3)
    ids = [f"i{n}" for n in range(50)]
    index = ItemIndex.build(ids, rng.normal(size=(50, 8)).astype(np.float32), kind=kind)
    user = rng.normal(size=8).astype(np.float32)
    expected = index.recommend(user, 5, exclude={"i1", "i2"})
    assert index.try_recommend(user, 5, exclude={"i1", "i2"}) == expected and len(expected) == 5
    with writer_holding(index._lock):
        assert index.try_recommend(user, 5) is None
    with writer_waiting(index._lock):
        assert index.try_recommend(user, 5) is None  # a queued writer is not starved by new readers
    assert index._lock._readers == 0 and index.try_recommend(user, 5, exclude={"i1", "i2"}) == expected
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        index.try_recommend(user, 0)  # checked before the lock, like recommend
