"""The gate settings of a rollout (``lockstep.rollout.analysis``) take RolloutConfig's defaults."""

from __future__ import annotations

from lockstep.rollout.analysis import ArmStats, GateSettings, ctr_look, sequential_ctr
from lockstep.rollout.config import DEFAULTS, RolloutConfig


def test_gate_settings_defaults_are_rollout_config_defaults():
    """GateSettings used to write its own defaults beside RolloutConfig's; now it reads them."""
    settings = GateSettings()
    assert (settings.min_samples, settings.alpha, settings.ctr_tau) == (
        DEFAULTS["min_samples"], DEFAULTS["alpha"], DEFAULTS["ctr_tau"]
    )
    assert GateSettings.of(RolloutConfig()) == settings


def test_ctr_look_feeds_only_the_counts_since_the_previous_look():
    settings = GateSettings(min_samples=100)
    test = sequential_ctr(settings)
    seen: dict[str, int] = {}
    first = ctr_look(test, ArmStats("2", requests=300, clicked=30), ArmStats("1", requests=300, clicked=33), seen, settings)
    assert (test.cand_n, test.base_n, len(test.looks)) == (300, 300, 1)
    assert first.name == "ctr_sequential" and first.figures["cand_n"] == 300
    # Cumulative counts again: 200 new impressions per arm, and late clicks of earlier
    # requests that outnumber the new impressions of the candidate are capped to them.
    ctr_look(test, ArmStats("2", requests=310, clicked=60), ArmStats("1", requests=500, clicked=50), seen, settings)
    assert (test.cand_n, test.cand_clicks, test.base_n, test.base_clicks) == (310, 40, 500, 50)
    assert seen == {"cand_clicks": 60, "cand_n": 310, "base_clicks": 50, "base_n": 500}
