"""The holdback simulation: seeded, routed by the real routing table, reported by the real report."""

from __future__ import annotations

from lockstep.ops.holdback_simulation import SimulationConfig, plot, simulate
from lockstep.store.db import get_engine

SMALL = SimulationConfig(users=800, holdback_percent=20, days=6, promotions=((2, "2"), (4, "3")),
                         ctr={"1": 0.1, "2": 0.3, "3": 0.5}, active=0.5, seed=3)


def _run(tmp_path, name):
    return simulate(SMALL, get_engine(f"sqlite:///{tmp_path / name}"))


def test_the_simulation_is_seeded_and_tracks_three_promotions(lockstep_home, tmp_path):
    first, second = _run(tmp_path, "a.db"), _run(tmp_path, "b.db")
    assert first.report.days == second.report.days and first.requests == second.requests

    days = first.report.days
    assert len(days) == SMALL.days and not any(d.partial for d in days)
    assert [d.champion_version for d in days] == ["1", "1", "1", "2", "2", "3"]  # the canary day keeps its champion
    assert {v for d in days for v in d.holdback_versions} == {"1"}  # promotions never moved the holdback
    share = days[0].holdback_user_days / (days[0].holdback_user_days + days[0].champion_user_days)
    assert 0.15 < share < 0.25
    # v3's click-through is five times the holdback's: the lift is large and its interval excludes 0
    assert days[-1].low > 0.5 and days[-1].low <= first.true_lift[days[-1].day] <= days[-1].high
    assert abs(days[0].lift) < days[-1].lift and first.true_lift[days[0].day] == 0


def test_the_chart_is_written(lockstep_home, tmp_path):
    out = plot(_run(tmp_path, "c.db"), tmp_path / "lift.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
