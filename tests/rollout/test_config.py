"""RolloutConfig is the one place a rollout's settings are written; RolloutPlan travels as JSON and back."""

from __future__ import annotations

import json
from dataclasses import fields

import jsonschema
import pytest

from lockstep.rollout.config import (
    DEFAULTS,
    SECTIONS,
    RolloutConfig,
    RolloutError,
    overrides_from_json,
)
from lockstep.rollout.plan import RolloutPlan, as_plan
from lockstep.rollout.policy import CanaryPolicy, GateThresholds

# --- one source of defaults ------------------------------------------------------------------------


def test_gate_thresholds_and_canary_policy_take_their_defaults_from_the_config():
    """Reproduction: gates.py had its own defaults (min_overlap 0.5, bake 600 s) beside RolloutConfig's (0.2, 60 s)."""
    config = RolloutConfig()
    assert GateThresholds() == GateThresholds.of(config)
    assert CanaryPolicy() == CanaryPolicy.of(config)
    assert (GateThresholds().min_overlap, CanaryPolicy().bake_seconds) == (0.2, 60.0)  # the values the DAG has always used
    assert GateThresholds().non_inferiority_margin == config.ctr_margin


def test_every_field_says_what_the_form_shows_and_its_default_fits_its_schema():
    seen: list[str] = []
    for f in fields(RolloutConfig):
        meta = f.metadata
        assert meta["title"] and meta["description"] and meta["section"] in SECTIONS, f.name
        assert meta["schema"].get("type") or meta["schema"].get("enum"), f.name
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        jsonschema.validate(default, meta["schema"])
        assert DEFAULTS[f.name] == f.default
        if not seen or seen[-1] != meta["section"]:
            seen.append(meta["section"])
    assert seen == sorted(seen, key=SECTIONS.index) and len(seen) == len(set(seen))  # one block per section, in form order


def test_the_schema_refuses_what_the_config_refuses():
    """The form stops a bad value before a run starts; the config stops it when a library caller passes it."""
    schema = {f.name: f.metadata["schema"] for f in fields(RolloutConfig)}
    for name, bad in (("strategy", "linear"), ("ab_split", 100), ("bandit_floor", 0.6), ("ctr_tau", 0), ("poll_seconds", 0)):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema[name])
        with pytest.raises(RolloutError, match=name):
            RolloutConfig.from_params({name: bad})


def test_canary_steps_that_are_not_numbers_are_a_rollout_error():
    with pytest.raises(RolloutError, match="rollout parameters"):
        RolloutConfig.from_params({"canary_steps": ["a", "b"]})


def test_overrides_are_checked_where_they_are_set():
    assert overrides_from_json('{"bake_seconds": 15}') == {"bake_seconds": 15}
    assert overrides_from_json(None) == {} and overrides_from_json("") == {}
    with pytest.raises(RolloutError, match="LOCKSTEP_ROLLOUT_DEFAULTS is not valid JSON"):
        overrides_from_json("{bake_seconds: 15}")
    with pytest.raises(RolloutError, match="must be a JSON object"):
        overrides_from_json("[15]")
    with pytest.raises(RolloutError, match=r"the demo names no rollout setting 'bake_secs'"):
        overrides_from_json('{"bake_secs": 15}', source="the demo")


def test_the_demo_rollout_is_a_valid_override_of_the_config():
    from lockstep.ops.demo import DEMO_ROLLOUT

    assert overrides_from_json(json.dumps(DEMO_ROLLOUT)) == DEMO_ROLLOUT
    config = RolloutConfig.from_params(DEMO_ROLLOUT)
    assert config.canary_steps == tuple(DEMO_ROLLOUT["canary_steps"]) and config.min_samples == DEMO_ROLLOUT["min_samples"]


# --- the plan ----------------------------------------------------------------------------------------


def _plan(**config) -> RolloutPlan:
    return RolloutPlan("r1", "2", "1", RolloutConfig.from_params(config), started_at="2026-01-01T00:00:00+00:00",
                       generation=7, review_markdown="## review", drift={"status": "ok"})


def test_a_plan_travels_as_json_and_reads_back_equal():
    plan = _plan(strategy="ab", canary_steps=[10, 100])
    data = json.loads(json.dumps(plan.to_dict()))  # what XCom keeps
    assert data["strategy"] == "ab" and data["model_version"] == "2" and data["review_markdown"] == "## review"
    assert RolloutPlan.from_dict(data) == plan
    assert as_plan(data) == plan and as_plan(plan) is plan


def test_a_plan_that_is_not_start_output_is_refused_naming_what_is_missing():
    with pytest.raises(RolloutError, match="lacks model_version, config"):
        RolloutPlan.from_dict({"rollout_id": "r1", "baseline_version": "1"})
    data = _plan().to_dict()
    with pytest.raises(RolloutError, match="strategy 'bandit' but its config says 'canary'"):
        RolloutPlan.from_dict({**data, "strategy": "bandit"})
    with pytest.raises(RolloutError, match="strategy 'linear'"):
        RolloutPlan.from_dict({**data, "config": {**data["config"], "strategy": "linear"}, "strategy": None})
