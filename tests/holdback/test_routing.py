"""The holdback in the routing table: sticky, independent of the routing salt, never moved by weights."""

from __future__ import annotations

import pytest

from lockstep.store import routing
from lockstep.store.db import get_engine

USERS = [f"user-{i}" for i in range(4000)]


@pytest.fixture
def table(lockstep_home):
    """Slots v1, v2, v3 ready; v1 takes all traffic."""
    for v in ("1", "2", "3"):
        routing.register_slot(v, f"models:/m/{v}", f"/idx/v{v}", f"sha256:{v * 8}", state="ready")
    routing.set_weights({"1": 100})
    return get_engine()


def held(users=USERS) -> set[str]:
    t = routing.read_table()
    return {u for u in users if t.held_back(u) is not None}


def test_a_sticky_share_of_users_is_served_by_the_holdback_version_whatever_the_weights(table):
    routing.set_holdback("1", 10)
    group = held()
    assert 300 < len(group) < 500  # 10 % of 4,000 users, binomial sd 19
    routing.set_weights({"2": 100}, new_salt=True, reason="promote v2", actor="lockstep_rollout")
    t = routing.read_table()
    assert t.holdback.model_version == "1" and t.slot("1").state == "ready" and t.slot("1").weight == 0
    assert {t.choose(u).model_version for u in group} == {"1"}
    assert {t.choose(u).model_version for u in USERS if u not in group} == {"2"}
    # rollouts re-salt the routing again and again: the same users stay held back
    for _ in range(3):
        routing.set_weights({"2": 50, "3": 50}, new_salt=True)
        assert held() == group
    t = routing.read_table()
    outside = [u for u in USERS if u not in group]
    assert {t.choose(u).model_version for u in group} == {"1"}
    share_v3 = sum(t.choose(u).model_version == "3" for u in outside) / len(outside)
    assert 0.45 < share_v3 < 0.55  # everybody else is routed by the weights as before


def test_users_without_a_user_id_are_never_held_back(table):
    routing.set_holdback("1", 50)
    routing.set_weights({"2": 100})
    t = routing.read_table()
    assert t.held_back(None) is None
    assert {t.choose(None).model_version for _ in range(200)} == {"2"}


def test_the_holdback_salt_is_its_own_and_setting_the_same_version_again_keeps_its_users(table):
    routing.set_holdback("1", 5)
    first = routing.read_holdback()
    assert first.salt != routing.read_table().salt
    small = held()
    routing.set_holdback("1", 20)
    assert routing.read_holdback().salt == first.salt and small < held()  # a larger share keeps everyone
    routing.set_holdback("2", 20)
    assert routing.read_holdback().salt != first.salt  # another version draws a new population


def test_the_percent_is_exact_in_basis_points():
    hb = routing.Holdback("1", 2.5, salt="s")
    expected = {u for u in USERS if routing.bucket_of(u, "s", 10_000) < 250}
    assert {u for u in USERS if hb.holds(u)} == expected


@pytest.mark.parametrize(("version", "percent", "message"), [
    ("9", 5, r"no slot for model version 9 \(registered slots: 1, 2, 3\)"),
    ("1", 0, "must be above 0 and at most 50"),
    ("1", 50.5, "must be above 0 and at most 50"),
    ("1", -3, "must be above 0 and at most 50"),
    ("1", 1.234, "in steps of 0.01"),
    ("1", "ten", "must be a number"),
])
def test_bad_holdbacks_are_refused_naming_what_is_wrong(table, version, percent, message):
    before = routing.read_generation()
    with pytest.raises(routing.RoutingError, match=message):
        routing.set_holdback(version, percent)
    assert routing.read_holdback() is None and routing.read_generation() == before


def test_the_holdback_version_must_be_loaded_and_stays_loaded(table):
    routing.register_slot("4", "models:/m/4", "/idx/v4", "sha256:4", state="loading")
    with pytest.raises(routing.RoutingError, match="slot 4 is loading; the holdback version must be ready or live"):
        routing.set_holdback("4", 5)
    routing.set_holdback("1", 5)
    routing.set_weights({"2": 100})
    for state in ("draining", "retired", "loading"):
        with pytest.raises(routing.RoutingError, match=r"slot 1 is the holdback version .* \(lockstep holdback clear\)"):
            routing.set_state("1", state)
    with pytest.raises(routing.RoutingError, match="cannot be registered again"):
        routing.register_slot("1", "models:/m/1", "/idx/elsewhere", "sha256:x", state="ready")
    assert routing.read_table().slot("1").state == "ready"
    assert routing.clear_holdback().model_version == "1"
    routing.set_state("1", "retired")  # once cleared, it goes like any version
    assert routing.clear_holdback() is None


def test_a_holdback_change_is_no_override_of_a_rollout_in_flight(table):
    """A rollout compares the traffic with its last write; a holdback set meanwhile changes no weights."""
    generation = routing.set_weights({"1": 80, "2": 20}, actor="lockstep_rollout")
    routing.set_holdback("1", 5, actor="lockstep holdback set")
    assert routing.foreign_changes(generation, "lockstep_rollout") == []
    entry = routing.history(limit=1)[0]
    assert entry.reason == "holdback: 5 % of users on version 1 by lockstep holdback set"


def test_choose_gives_a_holdback_user_its_version_or_nothing(table):
    routing.set_holdback("1", 50)
    routing.set_weights({"2": 100})
    t = routing.read_table()
    user = next(u for u in USERS if t.held_back(u))
    assert t.choose(user).model_version == "1"
    assert t.choose(user, available=["2"]) is None  # never handed to another version
    assert t.to_dict()["holdback"] == {"model_version": "1", "percent": 50.0,
                                       "set_at": t.holdback.set_at.isoformat(), "set_by": None}
    assert "salt" not in t.to_dict()["holdback"]
