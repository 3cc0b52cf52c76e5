"""A failed demo says which step, which gate and which figures decided, read from the rollout record."""

from __future__ import annotations

from lockstep.rollout import record
from lockstep.rollout.gates import SequentialCTRTest, error_rate_gate, latency_gate


def _failed_rollout() -> None:
    """v2's canary: 25 % passes, then 50 % fails on click-through (real gates, real counts)."""
    record.begin("rollout-7", "2", "1", "canary", {"canary_steps": [25, 50, 100]})
    ok = error_rate_gate(0, 1000, 0, 3000, min_samples=100)
    fast = latency_gate([40.0 + i % 7 for i in range(1000)], [40.0 + i % 7 for i in range(3000)], min_samples=100)
    record.record_step("rollout-7", "canary 25%", "canary", "pass", gates=[ok, fast], weight=25, action="promote")
    ctr = SequentialCTRTest(tau2=0.09, burn_in=100)
    ctr.update(300, 2000, 1000, 2000)
    worse = ctr.analyse(min_samples=100, non_inferiority_margin=0.1)
    assert worse.verdict == "fail"
    record.record_step("rollout-7", "canary 50%", "canary", "fail", gates=[ok, worse], weight=50, look=2,
                       action="rollback", reason=worse.reason)
    record.finish("rollout-7", record.ROLLED_BACK, f"v2 failed at canary 50%: {worse.reason}")


def test_explanation_names_step_gate_and_figures(lockstep_home):
    from lockstep.ops.demo import explain_rollout, rollout_steps_of

    _failed_rollout()
    text = explain_rollout("2")
    assert "rollout rollout-7 of v2: rolled_back" in text
    assert "step 'canary 50%' look 2, 50 % of traffic: verdict fail, action rollback" in text
    assert "gate ctr_sequential: fail: candidate is significantly worse" in text
    assert "cand_rate=0.15" in text and "base_rate=0.5" in text and "p_value=" in text
    assert "gate error_rate" not in text  # the gates that passed are not the story
    assert [s["step"] for s in rollout_steps_of("2")] == ["canary 25%", "canary 50%"]


def test_explanation_when_nothing_was_recorded(lockstep_home):
    from lockstep.ops.demo import explain_rollout

    assert explain_rollout("9") == "no rollout of v9 was recorded"
    record.begin("rollout-8", "3", "1", "canary", {})
    assert explain_rollout("3").endswith("no step was recorded")
