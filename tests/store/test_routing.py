"""The routing table on both back ends: validation, one transaction per change, stickiness."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from lockstep.store import routing
from lockstep.store.db import get_engine
from lockstep.store.routing import RoutingError, bucket_of, pick


@pytest.fixture
def engine(database_url):
    engine = get_engine(database_url)
    for version in ("1", "2", "3"):
        routing.register_slot(version, f"models:/m/{version}", f"/idx/v{version}", f"sha256:{version}", engine=engine)
    routing.set_state("1", "ready", engine=engine)
    routing.set_state("2", "ready", engine=engine)
    return engine  # slot 3 stays loading


def test_set_weights_is_one_change_with_history(engine):
    before = routing.read_generation(engine)
    gen = routing.set_weights({"1": 90, 2: 10}, reason="canary", actor="test", engine=engine)
    assert gen == before + 1 == routing.read_generation(engine)
    table = routing.read_table(engine)
    assert table.generation == gen and len(table.salt) == 16
    assert [(s.model_version, s.state, s.weight) for s in table.slots] == [
        ("1", "live", 90), ("2", "live", 10), ("3", "loading", 0)
    ]
    assert table.weights == {"1": 90, "2": 10}
    entry = routing.history(limit=1, engine=engine)[0]
    assert (entry.generation, entry.weights, entry.reason, entry.actor) == (gen, {"1": 90, "2": 10}, "canary", "test")
    # the version that loses all traffic stays loaded (ready), for an instant rollback
    routing.set_weights({"2": 100}, engine=engine)
    states = {s.model_version: (s.state, s.weight) for s in routing.read_table(engine).slots}
    assert states == {"1": ("ready", 0), "2": ("live", 100), "3": ("loading", 0)}
    assert routing.read_table(engine).to_dict()["slots"][1] == {
        "model_version": "2", "state": "live", "weight": 100, "shadow": False
    }


BAD_WEIGHTS = [
    ({"1": 90, "2": 5}, "sum to exactly 100, got 95"),
    ({"1": 101}, "weights are integers 0..100"),
    ({"1": 110, "2": -10}, "weights are integers 0..100"),
    ({"1": 50.0, "2": 50}, "must be an integer"),
    ({"1": True, "2": 99}, "must be an integer"),
    ({"9": 100}, "no slot for model version 9"),
    ({"1": 50, "3": 50}, "slot 3 is loading and cannot take traffic"),
    ({}, "at least one VERSION=WEIGHT"),
]


def test_bad_weights_are_refused_and_change_nothing(engine):
    routing.set_weights({"1": 100}, engine=engine)
    routing.set_state("2", "retired", engine=engine)
    before = routing.read_table(engine)
    for weights, message in [*BAD_WEIGHTS, ({"1": 50, "2": 50}, "slot 2 is retired")]:
        with pytest.raises(RoutingError, match=message):
            routing.set_weights(weights, engine=engine)
        assert routing.read_table(engine) == before
    assert routing.history(limit=1, engine=engine)[0].generation == before.generation


def test_shadow_flags_set_keep_and_clear(engine):
    routing.set_weights({"1": 100}, shadow=["2"], engine=engine)
    assert [s.model_version for s in routing.read_table(engine).shadows] == ["2"]
    routing.set_weights({"1": 100}, engine=engine)  # None keeps
    assert [s.model_version for s in routing.read_table(engine).shadows] == ["2"]
    assert routing.history(limit=1, engine=engine)[0].shadow == ["2"]
    routing.set_weights({"1": 90, "2": 10}, engine=engine)  # going live ends the shadow
    assert routing.read_table(engine).shadows == ()
    routing.set_weights({"1": 100}, shadow=["2"], engine=engine)
    routing.set_weights({"1": 100}, shadow=[], engine=engine)
    assert routing.read_table(engine).shadows == ()
    with pytest.raises(RoutingError, match="both live"):
        routing.set_weights({"1": 50, "2": 50}, shadow=["2"], engine=engine)
    with pytest.raises(RoutingError, match="slot 3 is loading"):
        routing.set_weights({"1": 100}, shadow=["3"], engine=engine)


def test_set_state_and_register_refuse_a_slot_with_traffic(engine):
    routing.set_weights({"1": 100}, engine=engine)
    with pytest.raises(RoutingError, match="live with weight 100"):
        routing.set_state("1", "retired", engine=engine)
    with pytest.raises(RoutingError, match="use set_weights"):
        routing.set_state("2", "live", engine=engine)
    with pytest.raises(RoutingError, match="unknown slot state 'gone'"):
        routing.set_state("2", "gone", engine=engine)
    with pytest.raises(RoutingError, match="no slot for model version 7"):
        routing.set_state("7", "ready", engine=engine)
    with pytest.raises(RoutingError, match="live with weight 100"):
        routing.register_slot("1", "models:/m/1", "/elsewhere", "sha256:x", engine=engine)
    with pytest.raises(RoutingError, match="becomes live through set_weights"):
        routing.register_slot("4", "models:/m/4", "/idx/v4", "sha256:4", state="live", engine=engine)
    gen = routing.set_state("2", "draining", note="leaving", engine=engine)
    slot = routing.read_table(engine).slot("2")
    assert (slot.state, slot.note) == ("draining", "leaving") and routing.read_generation(engine) == gen
    # re-registering a slot without traffic re-points it and starts it over
    routing.register_slot("2", "models:/m/2", "/idx/v2-rebuilt", "sha256:2b", engine=engine)
    slot = routing.read_table(engine).slot("2")
    assert (slot.state, slot.index_location, slot.fingerprint) == ("loading", "/idx/v2-rebuilt", "sha256:2b")


def test_concurrent_changes_serialise(engine):
    """Two writers whose changes exclude each other: exactly one can win each round."""
    start = routing.read_generation(engine)
    outcomes: list[tuple[str, bool]] = []
    for _ in range(5):
        routing.set_weights({"1": 100}, engine=engine)
        routing.set_state("2", "ready", engine=engine)
        barrier = threading.Barrier(2)

        def attempt(name, change, barrier=barrier):
            barrier.wait()
            try:
                change()
                outcomes.append((name, True))
            except RoutingError:
                outcomes.append((name, False))

        threads = [
            threading.Thread(target=attempt, args=("weights", lambda: routing.set_weights({"2": 100}, engine=engine))),
            threading.Thread(target=attempt, args=("retire", lambda: routing.set_state("2", "retired", engine=engine))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins = [name for name, ok in outcomes[-2:] if ok]
        assert len(wins) == 1, outcomes[-2:]
        slot = routing.read_table(engine).slot("2")
        assert (slot.state, slot.weight) == (("live", 100) if wins == ["weights"] else ("retired", 0))
        if wins == ["weights"]:
            routing.set_weights({"1": 100}, engine=engine)
    generations = [h.generation for h in routing.history(engine=engine) if h.generation > start]
    assert len(generations) == len(set(generations))  # no generation was handed out twice


def test_many_concurrent_set_weights_each_get_their_own_generation(engine):
    start = routing.read_generation(engine)
    results: list[int] = []

    def worker(i):
        results.append(routing.set_weights({"1": 100 - i, "2": i}, engine=engine))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(start + 1, start + 9))
    final = routing.read_table(engine)
    last = max(routing.history(engine=engine), key=lambda h: h.generation)
    assert final.weights == last.weights and sum(final.weights.values()) == 100


def test_sticky_buckets_follow_the_weights_and_keep_canary_users():
    users = [f"user-{i}" for i in range(20_000)]
    candidates = [("1", 90), ("2", 10)]
    first = {u: pick(candidates, u, "salt-a") for u in users}
    share = Counter(first.values())["2"] / len(users)
    assert 0.09 < share < 0.11
    assert all(pick(candidates, u, "salt-a") == v for u, v in list(first.items())[:500])  # sticky
    grown = {u: pick([("1", 75), ("2", 25)], u, "salt-a") for u in users}
    assert all(grown[u] == "2" for u, v in first.items() if v == "2")  # a canary user stays as it grows
    reshuffled = {u: pick(candidates, u, "salt-b") for u in users}
    moved = sum(1 for u in users if first[u] == "2" and reshuffled[u] == "2")
    assert moved < 0.3 * sum(1 for v in first.values() if v == "2")  # a new salt reshuffles
    assert 0 <= bucket_of("u", "s") < 100 and bucket_of("u", "s") == bucket_of("u", "s")
    # without a user id the split is random but by weight
    random_share = Counter(pick(candidates, None, "x") for _ in range(20_000))["2"] / 20_000
    assert 0.08 < random_share < 0.12
    assert pick([("1", 0)], "u", "s") is None


def test_new_salt_and_an_empty_table(engine, tmp_path):
    table = routing.read_table(engine)
    routing.set_weights({"1": 100}, new_salt=True, engine=engine)
    assert routing.read_table(engine).salt != table.salt
    empty = get_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert routing.read_generation(empty) == 0
    assert routing.read_table(empty).slots == () and routing.history(engine=empty) == []


def test_postgres_notifies_listeners_on_commit(postgres_url):
    import psycopg

    engine = get_engine(postgres_url)
    routing.register_slot("1", "models:/m/1", "/idx/v1", "sha256:1", state="ready", engine=engine)
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"LISTEN {routing.NOTIFY_CHANNEL}")
        gen = routing.set_weights({"1": 100}, engine=engine)
        payloads = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
    assert payloads == [str(gen)]


def test_compare_and_set_refuses_a_writer_whose_generation_is_stale(engine):
    """A rollout writes with expect_generation; an operator's change in between makes it write nothing."""
    mine = routing.set_weights({"1": 75, "2": 25}, actor="lockstep_rollout", engine=engine)
    routing.set_weights({"1": 100}, reason="manual: hold", actor="alice", engine=engine)
    with pytest.raises(routing.RoutingConflict, match="by alice .manual: hold.") as conflict:
        routing.set_weights({"1": 50, "2": 50}, actor="lockstep_rollout", expect_generation=mine, engine=engine)
    assert (conflict.value.expected, conflict.value.current) == (mine, mine + 1)
    assert routing.read_table(engine).weights == {"1": 100}
    assert routing.history(limit=1, engine=engine)[0].actor == "alice"  # the refused write left no history row


def test_compare_and_set_ignores_slot_bookkeeping_but_not_a_change_put_back(engine):
    mine = routing.set_weights({"1": 75, "2": 25}, actor="lockstep_rollout", engine=engine)
    routing.set_state("3", "retired", note="old index", engine=engine)  # generation moves, traffic does not
    assert routing.foreign_changes(mine, "lockstep_rollout", engine=engine) == []
    assert routing.set_weights({"1": 50, "2": 50}, actor="lockstep_rollout", expect_generation=mine, engine=engine) == mine + 2
    mine += 2
    routing.set_weights({"1": 100}, engine=engine)  # an unnamed writer moves traffic...
    routing.set_weights({"1": 50, "2": 50}, engine=engine)  # ...and puts it back: still someone else's change
    changes = routing.foreign_changes(mine, "lockstep_rollout", engine=engine)
    assert [c.weights for c in changes] == [{"1": 100}]
    with pytest.raises(routing.RoutingConflict):
        routing.set_weights({"1": 25, "2": 75}, actor="lockstep_rollout", expect_generation=mine, engine=engine)


def test_compare_and_set_serialises_two_writers_racing_from_the_same_generation(engine):
    """Both read generation g and write with expect_generation=g: exactly one wins."""
    start = routing.set_weights({"1": 100}, actor="a", engine=engine)
    barrier, outcomes = threading.Barrier(2), []

    def writer(actor: str, weights: dict) -> None:
        barrier.wait()
        try:
            routing.set_weights(weights, actor=actor, expect_generation=start, engine=engine)
            outcomes.append((actor, "written"))
        except routing.RoutingConflict:
            outcomes.append((actor, "refused"))

    threads = [threading.Thread(target=writer, args=("a", {"1": 80, "2": 20})), threading.Thread(target=writer, args=("b", {"2": 100}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o for _, o in outcomes) == ["refused", "written"], outcomes  # whoever came second saw the other's change
