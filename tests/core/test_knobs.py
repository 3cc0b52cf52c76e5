"""Knobs: a config field's default plus what a DAG's form shows; forms list them in order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lockstep.core.config import DagForm, knob, knobs


@dataclass(frozen=True)
class Example:
    steps: tuple[int, ...] = knob((1, 5), "Steps", "A", "Traffic steps.", type="array")
    hidden: int = 3  # a library setting, no knob
    share: float = knob(0.1, "Share", "B", "A share.", type="number", minimum=0, maximum=1)


def test_knobs_are_the_fields_with_form_metadata_in_field_order():
    found = knobs(Example)
    assert [k.name for k in found] == ["steps", "share"]
    steps, share = found
    assert (steps.default, steps.form_default) == ((1, 5), [1, 5])  # a tuple is a JSON list on the form
    assert (share.title, share.section, share.description) == ("Share", "B", "A share.")
    assert share.schema == {"type": "number", "minimum": 0, "maximum": 1}
    assert Example().share == 0.1  # the field keeps its default for the library


def test_names_pick_knobs_in_their_order_and_refuse_what_is_no_knob():
    assert [k.name for k in knobs(Example, ("share", "steps"))] == ["share", "steps"]
    with pytest.raises(ValueError, match="Example has no knob hidden, nope"):
        knobs(Example, ("hidden", "nope"))


def test_a_form_lists_its_defaults_and_refuses_a_knob_named_twice():
    form = DagForm("example", knobs(Example))
    assert form.names == ("steps", "share")
    assert form.defaults() == {"steps": [1, 5], "share": 0.1}
    with pytest.raises(ValueError, match="example: knobs named twice: share"):
        DagForm("example", (*knobs(Example), *knobs(Example, ("share",))))


def test_the_rollout_config_reads_as_knobs_too():
    from lockstep.rollout.config import RolloutConfig

    assert knobs(RolloutConfig)[0].name == "strategy"
