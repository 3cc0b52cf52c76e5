"""Rollouts never move holdback users, and the rollback window's retention keeps their version.

The rollout steps run as a library against a real MLflow store (the fixtures of
tests/rollout/test_steps.py: slots v1 and v2, v1 champion at 100 %).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lockstep.rollout import steps as rollout
from lockstep.store import routing
from tests.rollout.test_steps import FAST, _passed, registry_template, slots, world  # noqa: F401

USERS = [f"user-{i}" for i in range(2000)]


@pytest.mark.slow
def test_a_rollout_to_100_percent_leaves_holdback_users_on_their_version_and_retention_keeps_it(world):  # noqa: F811
    routing.set_holdback("1", 10)
    before = routing.read_table()
    group = {u for u in USERS if before.held_back(u)}
    index = Path(before.slot("1").index_location)

    plan = rollout.start("r1", "2", None, {**FAST, "min_samples": 100})  # re-salts the routing for the rollout
    assert not rollout.tick("canary", plan).done  # the canary's first step, written by its executor
    t = routing.read_table()
    assert t.weights == {"1": 80, "2": 20} and t.salt != before.salt
    assert {t.choose(u).model_version for u in group} == {"1"}
    final = rollout.finalize(_passed(plan), registry=world)
    assert world.version_for_alias("champion").version == "2"

    after = routing.read_table()
    assert after.weights == {"2": 100} and after.holdback == before.holdback
    assert {after.choose(u).model_version for u in group} == {"1"}
    assert {after.choose(u).model_version for u in USERS if u not in group} == {"2"}
    # the rollback window is over: the previous champion would be retired, but it serves the holdback
    out = rollout.retire_previous(plan, final, registry=world)
    assert out["retired"] is None and "serves the holdback group (10 % of users); kept" in out["reason"]
    assert routing.read_table().slot("1").state == "ready" and index.is_dir()
