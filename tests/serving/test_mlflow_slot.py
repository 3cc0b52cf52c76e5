"""A slot whose model comes from the MLflow registry (``models:/<name>/<version>``)."""

from __future__ import annotations

import httpx
import pytest

from lockstep.index.shards import build_index
from lockstep.index.storage import save_index
from lockstep.model.registry import Registry
from lockstep.serving.cli import search_once
from lockstep.store import routing
from lockstep.store.db import get_engine
from lockstep.store.records import RecordStore
from tests.serving.conftest import FAST
from tests.serving.harness import fill_store, fit_models, serve


@pytest.mark.slow
def test_a_registered_model_version_serves_through_mlflow(lockstep_home, tmp_path):
    from lockstep.core.config import Settings
    from lockstep.serving import create_app

    engine = get_engine()  # the defaults of a fresh LOCKSTEP_HOME, as `lockstep serve` uses
    store = RecordStore(engine)
    fill_store(store)
    model, _ = fit_models(store)
    registry = Registry()
    info = registry.log_and_register(model, params={}, metrics={"ndcg_at_10": 0.5}, snapshot_seq=store.head())
    snap = store.snapshot()
    location = tmp_path / "indexes" / f"v{info.version}"
    index = build_index(model, snap.records, location, fingerprint=model.fingerprint, snapshot_seq=snap.seq)
    save_index(index, location, model_name=registry.model_name, model_version=info.version,
               fingerprint=model.fingerprint, applied_seq=snap.seq)
    uri = f"models:/{registry.model_name}/{info.version}"
    routing.register_slot(info.version, uri, str(location), info.fingerprint, state="ready", engine=engine)
    routing.set_weights({info.version: 100}, engine=engine)
    # a slot naming a model version the registry does not have is refused, the other serves
    routing.register_slot("99", f"models:/{registry.model_name}/99", str(location), info.fingerprint,
                          state="ready", engine=engine)

    with serve(create_app(Settings.from_env(), api_token=None, config=FAST)) as s, httpx.Client(base_url=s.url) as client:
        answer = client.post("/search", json={"query": "rocket planet orbit", "k": 3}).json()
        assert answer["model_version"] == info.version and answer["fingerprint"] == info.fingerprint
        top = answer["results"][0]
        vector = index.vectors_of([top["id"]])[0]
        assert abs(top["score"] - float(model.embed_query("rocket planet orbit") @ vector)) < 1e-5
        slots = {row["model_version"]: row for row in client.get("/routing").json()["slots"]}
        assert slots[info.version]["loaded"] and not slots["99"]["loaded"]
        assert slots["99"]["error"] == "registry_error"  # the open endpoint shows a category only
        assert "99" in next(st.error for st in s.runtime.manager.status() if st.model_version == "99")

    outcome = search_once("rocket planet orbit", 3, echo=False)  # the CLI path, no HTTP
    assert outcome.model_version == info.version
    assert outcome.hits.ids == [r["id"] for r in answer["results"]]
