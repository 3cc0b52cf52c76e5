"""The recommender's serving on the real MovieLens-100k: /recommend and /interactions over HTTP.

A recommender deployment (``LOCKSTEP_SYSTEM=recommender``) with two versions fitted on
the first 95 % of the ratings (by time); the last 5 % arrive after the fits, so serving
must fold them in when it loads a version (catch-up). Every score is checked against
the version's own factors (or an independent fold-in of the user's history), never
against the slot's internals.
"""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from lockstep.core.config import Settings
from lockstep.serving import ServingConfig
from lockstep.systems import create_app
from tests.recommender.ml100k import SMALL, interactions
from tests.serving.harness import TOKEN, auth, serve, wait_for

FAST = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, replica="test")
pytestmark = pytest.mark.timeout(600, method="thread")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Interactions up to the 95th percentile of time fitted into v1 (champion) and v2; the rest logged after."""
    from lockstep.recommender import movielens
    from lockstep.recommender.build import build_version
    from lockstep.recommender.factorization import ALSRecommender
    from lockstep.recommender.registration import register_fit
    from lockstep.store.db import dispose_engines
    from lockstep.store.interactions import InteractionStore
    from tests.conftest import DEMO_CACHE

    home = tmp_path_factory.mktemp("recommender-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKSTEP_HOME", str(home))
        mp.setenv("LOCKSTEP_SYSTEM", "recommender")
        for var in ("LOCKSTEP_RECOMMENDER_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE"):
            mp.delenv(var, raising=False)
        dispose_engines()
        store = InteractionStore()
        store.upsert_items(movielens.items(DEMO_CACHE))
        ratings = interactions().sort_values(["timestamp", "user_id", "item_id"], kind="stable")
        cut = int(len(ratings) * 0.95)
        store.add_many(ratings.iloc[:cut])
        snapshot = store.snapshot()
        fits = {
            "1": ALSRecommender(**SMALL).fit(snapshot),
            "2": ALSRecommender(factors=24, iterations=5, random_state=1).fit(snapshot),
        }
        for version, model in fits.items():
            info = register_fit(model, {}, snapshot_seq=snapshot.attrs["seq"])
            assert info.version == version
            build_version(version, promote_if_first=version == "1")
        late = ratings.iloc[cut:]
        store.add_many(late)
        yield {"store": store, "fits": fits, "late": late, "snapshot_seq": snapshot.attrs["seq"]}
        dispose_engines()


@pytest.fixture
def server(deployment, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_SYSTEM", "recommender")
    with serve(create_app(Settings.from_env(), api_token=TOKEN, config=FAST), timeout=120) as s:
        wait_for(lambda: set(s.runtime.manager.loaded()) == {"1", "2"}, 120, "both versions to load")
        yield s


def _seen(store, user: str) -> set[str]:
    return set(store.interactions_of(user)[0])


def _expected_vector(model, store, user: str) -> np.ndarray:
    """The user's vector as an independent fold-in of the user's whole history in the fit's item space."""
    items, values = store.interactions_of(user)
    known = [i for i, item in enumerate(items) if item in set(model.item_ids_)]
    return model.user_fold_in().vector([items[i] for i in known], np.asarray(values)[known])


def test_recommend_answers_with_one_version_and_its_own_factors(deployment, server):
    store, fits = deployment["store"], deployment["fits"]
    untouched = sorted(set(fits["1"].user_ids_) - set(deployment["late"]["user_id"]))[:15]
    with httpx.Client(base_url=server.url) as client:
        for pin in ("1", "2"):
            model = fits[pin]
            for user in untouched:
                r = client.post("/recommend", json={"user_id": user, "k": 10}, headers={"X-Lockstep-Pin": pin})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["model_version"] == pin == r.headers["X-Lockstep-Model-Version"]
                assert body["fingerprint"] == model.fingerprint and len(body["results"]) == 10
                user_vec = model.user_factors_[model.user_ids_.index(user)]
                scores = [hit["score"] for hit in body["results"]]
                assert scores == sorted(scores, reverse=True)
                for hit in body["results"]:
                    item_vec = model.item_factors_[model.item_ids_.index(hit["id"])]
                    assert hit["score"] == pytest.approx(float(np.dot(user_vec, item_vec)), abs=1e-4)
                assert not {h["id"] for h in body["results"]} & _seen(store, user)  # nothing the user has rated
        routed = client.post("/recommend", json={"user_id": untouched[0]}).json()
        assert routed["model_version"] == "1"  # the champion has 100 %


def test_interactions_logged_after_the_fit_are_folded_in_when_a_version_loads(deployment, server):
    store, model = deployment["store"], deployment["fits"]["1"]
    late_users = sorted(set(deployment["late"]["user_id"]) & set(model.user_ids_))[:5]
    with httpx.Client(base_url=server.url) as client:
        for user in late_users:
            body = client.post("/recommend", json={"user_id": user, "k": 20}, headers={"X-Lockstep-Pin": "1"}).json()
            vector = _expected_vector(model, store, user)
            for hit in body["results"]:
                item_vec = model.item_factors_[model.item_ids_.index(hit["id"])]
                assert hit["score"] == pytest.approx(float(np.dot(vector, item_vec)), abs=1e-3)
            assert not {h["id"] for h in body["results"]} & _seen(store, user)


def test_an_interaction_refolds_the_user_in_every_loaded_version_before_the_answer(deployment, server):
    store, fits = deployment["store"], deployment["fits"]
    user = sorted(fits["1"].user_ids_)[7]
    with httpx.Client(base_url=server.url) as client:
        before = client.post("/recommend", json={"user_id": user, "k": 5}, headers={"X-Lockstep-Pin": "2"}).json()
        top = before["results"][0]["id"]
        r = client.post("/interactions", json={"user_id": user, "item_id": top, "value": 5.0}, headers=auth())
        assert r.status_code == 200, r.text
        assert r.json()["seq"] == store.max_seq()
        for pin in ("1", "2"):
            body = client.post("/recommend", json={"user_id": user, "k": 5}, headers={"X-Lockstep-Pin": pin}).json()
            assert top not in {h["id"] for h in body["results"]}  # now seen, in both versions at once
            vector = _expected_vector(fits[pin], store, user)
            hit = body["results"][0]
            item_vec = fits[pin].item_factors_[fits[pin].item_ids_.index(hit["id"])]
            assert hit["score"] == pytest.approx(float(np.dot(vector, item_vec)), abs=1e-3)


def test_a_new_user_is_folded_in_from_its_first_interactions(deployment, server):
    store = deployment["store"]
    with httpx.Client(base_url=server.url) as client:
        unknown = client.post("/recommend", json={"user_id": "newcomer-1"})
        assert unknown.status_code == 404 and "newcomer-1" in unknown.json()["detail"]
        assert unknown.headers["X-Lockstep-Model-Version"] == "1"  # the version that answered
        for item in ("50", "181", "100"):  # Star Wars, Return of the Jedi, Fargo
            assert client.post("/interactions", json={"user_id": "newcomer-1", "item_id": item}, headers=auth()).status_code == 200
        body = client.post("/recommend", json={"user_id": "newcomer-1", "k": 10}).json()
        assert len(body["results"]) == 10 and not {h["id"] for h in body["results"]} & {"50", "181", "100"}
        model = deployment["fits"][body["model_version"]]
        vector = _expected_vector(model, store, "newcomer-1")
        first = body["results"][0]
        assert first["score"] == pytest.approx(float(np.dot(vector, model.item_factors_[model.item_ids_.index(first["id"])])), abs=1e-3)


def test_a_new_catalogue_item_joins_every_version_after_its_first_interactions(deployment, server):
    store = deployment["store"]
    store.upsert_items(pd.DataFrame({"item_id": ["new-movie"], "title": ["A film after the fit"]}))
    users = sorted(deployment["fits"]["1"].user_ids_)[:3]
    with httpx.Client(base_url=server.url) as client:
        for user in users:
            assert client.post("/interactions", json={"user_id": user, "item_id": "new-movie"}, headers=auth()).status_code == 200
    loaded = server.runtime.manager.loaded()
    first = {}
    for version in ("1", "2"):
        assert "new-movie" in loaded[version].live.index
        first[version] = loaded[version].live.index.vectors_of(["new-movie"])[0].copy()
    with httpx.Client(base_url=server.url) as client:  # more users: the new item is placed again from all of them
        for user in sorted(deployment["fits"]["1"].user_ids_)[3:6]:
            assert client.post("/interactions", json={"user_id": user, "item_id": "new-movie"}, headers=auth()).status_code == 200
    for version in ("1", "2"):
        model = deployment["fits"][version]
        users, values = store.users_of("new-movie")
        expected = model.item_fold_in().vector(users, values)
        now = loaded[version].live.index.vectors_of(["new-movie"])[0]
        assert not np.allclose(now, first[version]) and np.allclose(now, expected, atol=1e-4)


def test_bad_interactions_are_refused_and_change_nothing(deployment, server):
    store = deployment["store"]
    before = store.count()
    with httpx.Client(base_url=server.url) as client:
        unknown_item = client.post("/interactions", json={"user_id": "1", "item_id": "no-such-movie"}, headers=auth())
        assert unknown_item.status_code == 422 and "no-such-movie" in unknown_item.json()["detail"]
        assert client.post("/interactions", json={"user_id": "1", "item_id": "50"}).status_code == 401
        assert client.post("/interactions", json={"user_id": "1", "item_id": "50", "value": -1}, headers=auth()).status_code == 422
        assert client.post("/interactions", json={"user_id": "", "item_id": "50"}, headers=auth()).status_code == 422
        assert client.post("/recommend", json={"user_id": "1", "k": 0}).status_code == 422
        assert client.post("/recommend", json={"user_id": "1"}, headers={"X-Lockstep-Pin": "9"}).status_code == 404
        assert client.post("/search", json={"query": "x"}).status_code == 404  # a recommender deployment
    assert store.count() == before


def test_a_failing_version_answers_500_and_is_counted_against_that_version(deployment, server, monkeypatch):
    from tests.serving.test_api import metric

    user = sorted(deployment["fits"]["1"].user_ids_)[30]
    monkeypatch.setenv("LOCKSTEP_FAULTS", "serving.recommend:2*")  # every request on v2 fails
    with httpx.Client(base_url=server.url) as client:
        broken = client.post("/recommend", json={"user_id": user}, headers={"X-Lockstep-Pin": "2"})
        assert broken.status_code == 500 and broken.headers["X-Lockstep-Model-Version"] == "2"
        assert broken.json()["request_id"] == broken.headers["X-Request-Id"] and "recommend on model version 2 failed" in broken.json()["detail"]
        assert client.post("/recommend", json={"user_id": user}, headers={"X-Lockstep-Pin": "1"}).status_code == 200
        assert metric(client.get("/metrics").text, "lockstep_search_errors_total", model_version="2", status="500") == 1.0  # the metric names predate the recommender


def test_a_click_on_a_recommendation_counts_once(deployment, server):
    user = sorted(deployment["fits"]["1"].user_ids_)[20]
    with httpx.Client(base_url=server.url) as client:
        body = client.post("/recommend", json={"user_id": user}).json()
        click = {"request_id": body["request_id"], "record_id": body["results"][0]["id"], "event": "click"}
        assert client.post("/feedback", json=click).json() == {"accepted": True, "counted": True}
        wait_for(lambda: client.post("/feedback", json=click).status_code == 422, 10, "the repeated click to be refused")


@pytest.mark.parametrize("mode", ["valid", "invalid"])
def test_every_recommender_operation_answers_only_documented_statuses_and_never_a_5xx(deployment, server, mode):
    """Schemathesis over the recommender deployment's own OpenAPI document (last: it writes interactions)."""
    import schemathesis
    from schemathesis import GenerationMode

    from lockstep.batch import steps as batch
    from tests.serving.test_fuzz import fuzz, takes_input

    batch.run("recommender")  # batch rows for both versions: GET /recommendations answers, never a 503
    generation = GenerationMode.POSITIVE if mode == "valid" else GenerationMode.NEGATIVE
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    names = {f"{op.method.upper()} {op.path}" for op in operations}
    assert names >= {"POST /recommend", "POST /interactions", "POST /feedback", "GET /routing", "GET /readyz", "GET /metrics",
                     "GET /recommendations/{user_id}"}
    assert "POST /search" not in names and "PUT /records/{record_id}" not in names
    for operation in operations:
        if generation is GenerationMode.NEGATIVE and not takes_input(operation):
            continue
        fuzz(operation, server.url, generation)
