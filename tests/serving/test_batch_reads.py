"""GET /related/{record_id} over real HTTP: one version per answer, only versions with complete rows.

The deployment of the serving tests (300 records, versions 1 and 2) with rows computed
by the real batch job (``lockstep.batch.steps.run``) into the same database.
"""

from __future__ import annotations

import httpx
import pytest

from lockstep.batch import steps
from lockstep.store import routing
from lockstep.store.batch_results import RELATED, BatchResultStore
from lockstep.store.routing import bucket_of
from tests.serving.harness import serve

USERS = [f"user-{i}" for i in range(60)]


@pytest.fixture
def deployment(deployment, monkeypatch):
    """The serving deployment, with the batch job pointed at its database."""
    monkeypatch.setenv("LOCKSTEP_DATABASE_URL", deployment.url)
    return deployment


def test_no_version_with_complete_rows_is_a_503_with_a_message(deployment):
    routing.set_weights({"1": 100}, engine=deployment.engine)
    with serve(deployment.app()) as s:
        r = httpx.get(f"{s.url}/related/r0001")
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert "no serving model version has complete batch rows" in r.json()["detail"]


def test_answers_come_from_the_routed_version_only_and_never_from_an_incomplete_one(deployment):
    engine = deployment.engine
    routing.set_weights({"1": 50, "2": 50}, engine=engine)
    steps.run(k=5, versions=["1"])  # version 2 is live but has no rows
    with serve(deployment.app()) as s:
        answers = [httpx.get(f"{s.url}/related/r0001", params={"user_id": u}) for u in USERS]
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["model_version"] for a in answers} == {"1"}  # the incomplete version takes no batch traffic
        pinned = httpx.get(f"{s.url}/related/r0001", headers={"X-Lockstep-Pin": "2"})
        assert pinned.status_code == 503 and "version 2 has no complete batch rows" in pinned.json()["detail"]

        steps.run(k=5)  # now version 2 is complete too: each user gets their sticky bucket's version
        table = routing.read_table(engine)
        answers = {u: httpx.get(f"{s.url}/related/r0001", params={"user_id": u}) for u in USERS}
        for user, answer in answers.items():
            body = answer.json()
            expected = "1" if bucket_of(user, table.salt) < 50 else "2"
            assert body["model_version"] == expected == answer.headers["X-Lockstep-Model-Version"]
            row = BatchResultStore(engine).read(RELATED, expected, "r0001")
            assert body["results"] == [{"id": i, "score": sc} for i, sc in row.results]
            assert body["computed_at"] == row.computed_at.isoformat() and body["input_seq"] == row.input_seq
        assert {a.json()["model_version"] for a in answers.values()} == {"1", "2"}
        again = httpx.get(f"{s.url}/related/r0001", params={"user_id": USERS[0]})
        assert again.json() == answers[USERS[0]].json()  # sticky

        pinned = httpx.get(f"{s.url}/related/r0002", headers={"X-Lockstep-Pin": "2"})
        assert pinned.status_code == 200 and pinned.json()["model_version"] == "2"
        assert len(pinned.json()["results"]) == 5 and "r0002" not in {h["id"] for h in pinned.json()["results"]}


def test_unknown_keys_pins_and_bad_ids_are_refused_with_a_message(deployment):
    routing.set_weights({"1": 100}, engine=deployment.engine)
    steps.run(k=5)
    with serve(deployment.app()) as s:
        missing = httpx.get(f"{s.url}/related/no-such-record")
        assert missing.status_code == 404 and "'no-such-record' has no precomputed related" in missing.json()["detail"]
        wrong_pin = httpx.get(f"{s.url}/related/r0001", headers={"X-Lockstep-Pin": "9"})
        assert wrong_pin.status_code == 404 and "not serving" in wrong_pin.json()["detail"]
        bad = httpx.get(f"{s.url}/related/a%01b")
        assert bad.status_code == 422
        bad_user = httpx.get(f"{s.url}/related/r0001", params={"user_id": "x\x02y"})
        assert bad_user.status_code == 422
        spec = httpx.get(f"{s.url}/openapi.json").json()
    statuses = set(spec["paths"]["/related/{record_id}"]["get"]["responses"])
    assert statuses >= {"200", "404", "422", "500", "503"}


def test_a_deleted_record_loses_its_row_after_the_next_run(deployment):
    routing.set_weights({"1": 100}, engine=deployment.engine)
    steps.run(k=5)
    deployment.store.delete("r0005")
    with serve(deployment.app()) as s:
        assert httpx.get(f"{s.url}/related/r0005").status_code == 200  # until the next run: the last complete row
        steps.run(k=5)
        assert httpx.get(f"{s.url}/related/r0005").status_code == 404
        listed = {h["id"] for h in httpx.get(f"{s.url}/related/r0006").json()["results"]}
        assert "r0005" not in listed


def test_holdback_users_read_the_holdback_versions_rows_and_only_those(deployment):
    engine = deployment.engine
    routing.set_weights({"2": 100}, engine=engine)
    routing.set_holdback("1", 50, engine=engine)  # version 1: ready at weight 0, held back for half the users
    summary = steps.run(k=5)
    assert [v["model_version"] for v in summary["versions"]] == ["1", "2"]  # the holdback version is computed too
    holdback = routing.read_table(engine).holdback
    with serve(deployment.app()) as s:
        answers = {u: httpx.get(f"{s.url}/related/r0001", params={"user_id": u}).json()["model_version"] for u in USERS}
    assert answers == {u: "1" if holdback.holds(u) else "2" for u in USERS}
    assert set(answers.values()) == {"1", "2"}
    assert steps.drop_retired() == {}  # retention never removes the holdback version's rows
