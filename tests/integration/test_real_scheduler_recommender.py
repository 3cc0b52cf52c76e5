"""``lockstep demo --system recommender`` against a real Airflow, as a user runs it.

The recommender's lifecycle under the real scheduler (LocalExecutor, asset-triggered
runs, deferred rollout looks) on MovieLens-100k: first model -> simulated users -> the
films of 1998 and their ratings arrive through ``POST /interactions`` -> drift on the
interactions -> retrain -> build -> canary rollout to 100 %. The Airflow metadata stays
in the demo's own SQLite file (the search demo's test covers PostgreSQL metadata).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.integration.airflow_stack import DemoLaunch, demo_env, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.timeout(2700)]


def launch_demo(request) -> DemoLaunch:
    """The ``lockstep demo`` run of this module (started with the session's other demos)."""
    home = request.getfixturevalue("tmp_path_factory").mktemp("recommender-demo") / "home"
    lockstep = Path(sys.executable).with_name("lockstep")
    return DemoLaunch(argv=[str(lockstep), "demo", "--system", "recommender"], env=demo_env(home), home=home, facts={})


@pytest.fixture(scope="module")
def demo(request):
    result, launch = run_demo(request)
    return result, launch.home


def test_the_recommender_lifecycle_completes_under_the_real_scheduler(demo, monkeypatch):
    result, home = demo
    summary = result.stdout
    assert result.returncode == 0, f"{summary}\n--- stderr ---\n{result.stderr[-6000:]}"
    assert "lifecycle completed" in summary
    for step in ("first model", "stream the films of 1998", "drift -> retrain", "build + canary rollout", "clean run"):
        assert step in summary

    from lockstep.model.registry import Registry
    from lockstep.rollout import record as rollout_record
    from lockstep.store.db import dispose_engines

    monkeypatch.setenv("LOCKSTEP_HOME", str(home))
    monkeypatch.setenv("LOCKSTEP_SYSTEM", "recommender")
    dispose_engines()
    try:
        registry = Registry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        assert registry.model_name == "lockstep-recommender"
        champion = registry.version_for_alias("champion")
        assert champion is not None and champion.version == "2"  # the drift-driven fit was rolled out
        assert champion.tags["lockstep.trigger"] == "drift"
        promoted = [r for r in rollout_record.recent() if r["status"] == rollout_record.PROMOTED]
        steps = rollout_record.steps(promoted[0]["rollout_id"])
        from lockstep.store.interactions import InteractionStore

        assert InteractionStore().count() > 80_000  # the first load and the ratings of 1998, in recommender.db
    finally:
        dispose_engines()
    judged = {s["step"] for s in steps if s["phase"] == "canary" and s["verdict"] == "pass"}
    assert {"canary 25%", "canary 50%"} <= judged, steps
    alerts = [json.loads(line) for line in (home / "alerts.jsonl").read_text().splitlines() if line.strip()]
    assert {a["event"] for a in alerts} == {"drift_detected", "promoted"}, alerts
