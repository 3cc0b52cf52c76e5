"""The real-scheduler integration test: ``lockstep demo`` against a real Airflow.

The command starts a real Airflow (api-server, scheduler, dag-processor, triggerer,
LocalExecutor) whose metadata database is a real PostgreSQL server, plus the MLflow UI
and the serving app; it triggers the DAGs through Airflow's REST API and follows the
asset-triggered runs: first model -> traffic -> the other 10 newsgroups arrive as live
writes -> drift -> retrain -> re-embed -> canary rollout to 100 %. ``dag.test()`` alone
does not prove the DAGs work under the scheduler; this does. It is also the headless
variant of the main command, run as a user runs it.

It also checks that a fresh install's first sight is clean (issue 9): no failed DAG run
in the metadata database, no alert but the drift the demo causes on purpose and the
promotion, no clock-driven run at all (the demo turns the time schedules off; a new
install never catches up a past interval), and the rollout pool exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.integration.airflow_stack import DemoLaunch, demo_env, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.timeout(2700)]

# Known secrets for the demo run, so that its logs can be searched for them (issue 21): the API
# token, and a password in the metadata database's URL (the test server trusts loopback logins,
# so the password is carried everywhere the URL goes but never checked).
DEMO_TOKEN = "demo-tok-5f1c9e2a7b"
DEMO_DB_PASSWORD = "demo-dbpw-8d3a6c"


def launch_demo(request) -> DemoLaunch:
    """The ``lockstep demo`` run of this module (started with the session's other demos)."""
    metadata = request.getfixturevalue("postgres_server").create_database("airflow")
    metadata = metadata.replace("@", f":{DEMO_DB_PASSWORD}@", 1)
    home = request.getfixturevalue("tmp_path_factory").mktemp("demo") / "home"
    env = demo_env(home, LOCKSTEP_API_TOKEN=DEMO_TOKEN)
    lockstep = Path(sys.executable).with_name("lockstep")
    argv = [str(lockstep), "demo", "--per-category", "60", "--airflow-db", metadata]
    return DemoLaunch(argv=argv, env=env, home=home, facts={"metadata": metadata})


@pytest.fixture(scope="module")
def demo(request):
    """One ``lockstep demo`` run; every test below reads what it left behind."""
    result, launch = run_demo(request)
    return result, launch.home, launch.facts["metadata"]


def test_demo_lifecycle_under_the_real_scheduler_on_postgres(demo, monkeypatch):
    result, home, _ = demo
    summary = result.stdout
    assert result.returncode == 0, f"{summary}\n--- stderr ---\n{result.stderr[-6000:]}"
    assert "lifecycle completed" in summary
    for step in ("first model", "drift -> retrain", "re-embed + canary rollout", "traffic summary", "clean run"):
        assert step in summary

    from lockstep.model.registry import Registry

    monkeypatch.setenv("LOCKSTEP_HOME", str(home))  # read what the demo left behind
    registry = Registry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    champion = registry.version_for_alias("champion")
    assert champion is not None and champion.version != "1"  # the drift-driven retrain won
    history = registry.champion_history()
    assert [h["version"] for h in history][-2:] == ["1", champion.version]


def test_the_rollout_was_judged_by_canary_steps(demo, monkeypatch):
    _, home, _ = demo
    from lockstep.rollout import record as rollout_record
    from lockstep.store.db import dispose_engines

    monkeypatch.setenv("LOCKSTEP_HOME", str(home))
    monkeypatch.delenv("LOCKSTEP_DATABASE_URL", raising=False)
    dispose_engines()
    try:
        promoted = [r for r in rollout_record.recent() if r["status"] == rollout_record.PROMOTED]
        assert promoted, rollout_record.recent()
        steps = rollout_record.steps(promoted[0]["rollout_id"])
    finally:
        dispose_engines()
    judged = {s["step"] for s in steps if s["phase"] == "canary" and s["verdict"] == "pass"}
    assert {"canary 25%", "canary 50%"} <= judged, steps


def test_a_fresh_install_shows_no_failed_run_and_no_alert(demo):
    result, home, metadata = demo
    from sqlalchemy import create_engine, text

    engine = create_engine(metadata)
    try:
        with engine.connect() as conn:
            failed_runs = conn.execute(text("select dag_id, run_id from dag_run where state = 'failed'")).all()
            failed_tasks = conn.execute(
                text("select dag_id, task_id, run_id from task_instance where state = 'failed'")
            ).all()
            clock_runs = conn.execute(text("select dag_id, run_id from dag_run where run_type = 'scheduled'")).all()
            pool = conn.execute(text("select slots from slot_pool where pool = 'lockstep_rollout'")).scalar()
            retrain_runs = conn.execute(text("select count(*) from dag_run where dag_id = 'lockstep_retrain'")).scalar()
    finally:
        engine.dispose()
    assert failed_runs == [], f"{failed_runs}\n{result.stdout}"
    assert failed_tasks == [], failed_tasks
    assert clock_runs == [], clock_runs  # nothing ran on the clock, above all nothing before the corpus
    assert pool == 8
    assert retrain_runs == 2  # the first model and the drift-driven retrain: no stray run
    alerts = [json.loads(line) for line in (home / "alerts.jsonl").read_text().splitlines() if line.strip()]
    # The drift the demo causes on purpose and the promotion of the better model; nothing else.
    assert {a["event"] for a in alerts} == {"drift_detected", "promoted"}, alerts


def test_no_secret_appears_in_any_log_of_the_demo(demo):
    """The API token and the database password are in none of the run's logs: the demo's own
    output, every component's log (home/logs: api-server, scheduler, dag-processor, triggerer,
    MLflow, serving), every Airflow task log (home/airflow/logs) and the alert log."""
    result, home, metadata = demo
    assert DEMO_DB_PASSWORD in metadata  # the run did carry the password
    logs = [p for p in home.rglob("*") if p.is_file() and (p.suffix in (".log", ".jsonl") or "logs" in p.parts)]
    task_logs = [p for p in logs if (home / "airflow" / "logs") in p.parents]
    assert task_logs and any(p.parent == home / "logs" for p in logs), sorted(map(str, logs))[:20]
    texts = {"demo stdout": result.stdout, "demo stderr": result.stderr}
    texts.update({str(p.relative_to(home)): p.read_text(errors="replace") for p in logs})
    secrets = {"the API token": DEMO_TOKEN, "the database password": DEMO_DB_PASSWORD}
    leaks = sorted(f"{what} in {name}" for name, text in texts.items() for what, value in secrets.items() if value in text)
    assert leaks == [], leaks
