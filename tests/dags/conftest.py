"""A throwaway Airflow home for DAG tests: set before Airflow is first imported.

``dag.test()`` runs real task instances against a real (SQLite) metadata database;
the database is migrated once per test session (about 15 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    AIRFLOW_HOME as _HOME,  # the session's Airflow home, set before any import of Airflow
)

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"

# AIRFLOW_HOME, DAGS_FOLDER and the rest of Airflow's test configuration: tests/conftest.py.
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
if str(DAGS) not in sys.path:
    sys.path.insert(0, str(DAGS))


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the metadata database of the session's Airflow home once."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return _HOME


def point_at_fresh_home(mp: pytest.MonkeyPatch, home: Path, **env: str) -> None:
    """Point every Lockstep setting of this process at ``home`` (a module's world), plus ``env``.

    The settings a deployment may have set are cleared, the demo download cache is the
    tests' shared one, and cached database engines are dropped so the next use opens the
    new home's databases.
    """
    from lockstep.store.db import dispose_engines
    from tests.conftest import DEMO_CACHE

    mp.setenv("LOCKSTEP_HOME", str(home))
    for var in ("LOCKSTEP_DATABASE_URL", "LOCKSTEP_RECOMMENDER_DATABASE_URL", "MLFLOW_TRACKING_URI",
                "LOCKSTEP_INDEX_STORE", "LOCKSTEP_API_TOKEN", "LOCKSTEP_FAULTS"):
        mp.delenv(var, raising=False)
    mp.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
    mp.setenv("LOCKSTEP_SYSTEM", env.pop("LOCKSTEP_SYSTEM", "search"))
    for name, value in env.items():
        mp.setenv(name, value)
    dispose_engines()


def task_states(dagrun) -> dict[str, str]:
    """task_id (with map index for mapped tasks) -> final state of one DAG run."""
    states = {}
    for ti in dagrun.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
    return states


def task_tries(dagrun) -> dict[str, int]:
    """task_id (with map index) -> the attempt that finished it (2 means one retry)."""
    return {
        (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): ti.try_number
        for ti in dagrun.get_task_instances()
    }
