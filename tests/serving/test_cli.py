"""The plain functions behind ``lockstep routing show|set``, ``lockstep search`` and ``serve``."""

from __future__ import annotations

import pytest

from lockstep.core.errors import LockstepError
from lockstep.serving.cli import routing_set, routing_show, search_once
from lockstep.store import routing
from lockstep.store.routing import RoutingError


@pytest.fixture
def configured(deployment, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_DATABASE_URL", deployment.url)
    return deployment


def test_routing_set_and_show(configured):
    text = routing_set(["1=90", "2=10"])
    assert routing.read_table().weights == {"1": 90, "2": 10}
    lines = text.splitlines()
    assert lines[0] == f"routing generation {routing.read_generation()}"
    assert lines[1].split()[:4] == ["version", "state", "weight", "shadow"]
    assert lines[2].split()[:3] == ["1", "live", "90"] and lines[3].split()[:3] == ["2", "live", "10"]
    routing_set(["1=100"], ["2"])
    assert "yes" in routing_show().splitlines()[3]
    routing_set(["1=100"], [])  # no --shadow keeps the flags
    assert [s.model_version for s in routing.read_table().shadows] == ["2"]
    routing_set(["1=100"], ["none"])
    assert routing.read_table().shadows == ()
    entry = routing.history(limit=1)[0]
    assert (entry.actor, entry.reason) == ("cli", "lockstep routing set")
    for bad, message in ((["1:100"], "expected VERSION=WEIGHT"), (["1=x"], "expected VERSION=WEIGHT"),
                         (["1=50", "1=50"], "given twice"), (["1=60", "2=30"], "sum to exactly 100")):
        with pytest.raises(RoutingError, match=message):
            routing_set(bad)
    assert routing.read_table().weights == {"1": 100}


def test_search_once_uses_the_routed_version_and_prints(configured, capsys):
    with pytest.raises(LockstepError, match="no model version is live"):
        search_once("rocket planet")
    routing.set_weights({"2": 100}, engine=configured.engine)
    configured.store.upsert("late", "rocket planet orbit comet telescope")  # after the index was built
    outcome = search_once("rocket planet orbit comet telescope", 3)
    assert outcome.model_version == "2" and outcome.hits.ids[0] == "late"  # caught up from the change log
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("model version 2") and "late" in printed[1] and "rocket" in printed[1]
    with pytest.raises(LockstepError, match="k must be between 1 and 100"):
        search_once("rocket", 0)
