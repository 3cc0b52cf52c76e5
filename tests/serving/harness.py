"""Helpers for the serving tests: a small corpus, two model versions, a real uvicorn server.

The server runs ``uvicorn.Server`` in a background thread on a loopback socket bound to
port 0 (no race for a free port); the app's lifespan starts and stops its threads as in
production.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from lockstep.index.shards import build_index
from lockstep.index.storage import save_index
from lockstep.model.embedding import TextEmbedder
from lockstep.store import routing
from lockstep.store.records import RecordStore
from tests.serving.load import WORDS, topic_text  # noqa: F401  (re-exported for tests)

TOKEN = "test-token"


def fill_store(store: RecordStore, n: int = 300, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    records = {f"r{i:04d}": topic_text(rng) for i in range(n)}
    store.upsert_many({"id": rid, "text": text} for rid, text in records.items())
    return records


def fit_models(store: RecordStore) -> tuple[TextEmbedder, TextEmbedder]:
    """Two differently fitted embedders: different dimensions and training texts."""
    texts = [r.text for r in store.snapshot().records]
    v1 = TextEmbedder(dim=16, min_df=1, max_df=1.0, stop_words=None, random_state=1).fit(texts[: len(texts) // 2])
    v2 = TextEmbedder(dim=24, min_df=1, max_df=1.0, stop_words=None, ngram_range=(1, 2), random_state=2).fit(texts)
    return v1, v2


def make_slot(
    engine,
    store: RecordStore,
    embedder: TextEmbedder,
    version: str,
    root: Path,
    *,
    state: str = "ready",
    model_name: str = "test-embedder",
) -> Path:
    """Save the model, build and save its index from a snapshot, register the slot."""
    model_path = embedder.save(root / f"model-v{version}.joblib")
    location = root / "indexes" / f"v{version}"
    snap = store.snapshot()
    index = build_index(embedder, snap.records, location, fingerprint=embedder.fingerprint, snapshot_seq=snap.seq)
    save_index(index, location, model_name=model_name, model_version=version,
               fingerprint=embedder.fingerprint, applied_seq=snap.seq)
    routing.register_slot(version, str(model_path), str(location), embedder.fingerprint, state=state, engine=engine)
    return location


@dataclass
class RunningServer:
    url: str
    app: object
    server: uvicorn.Server

    @property
    def runtime(self):
        return self.app.state.lockstep


@contextmanager
def serve(app, *, ready: bool = True, timeout: float = 15.0) -> Iterator[RunningServer]:
    """Run ``app`` on loopback in a thread; wait for /readyz unless ``ready`` is False."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        if ready:
            # /readyz is 200 once every version with traffic is loaded (issue 24); a test whose
            # version fails to load on purpose waits for one live version and the others settled
            wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200
                     or (app.state.lockstep.manager.view.live and _settled(app)), timeout, "the app to be ready")
            # /readyz needs one live version; tests expect every serving version settled
            # (loaded, or its load failed), so none depends on how fast a second one loads
            wait_for(lambda: _settled(app), timeout, "every serving version to load or fail")
        yield RunningServer(url, app, server)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def _settled(app) -> bool:
    manager = app.state.lockstep.manager
    return all(st.loaded or st.error for st in manager.status() if st.weight > 0 or st.shadow)


def wait_for(condition, timeout: float = 5.0, what: str = "a condition", interval: float = 0.01) -> float:
    """Poll until ``condition()`` is true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
