"""The environment the real-scheduler tests run ``lockstep demo`` with, as a user's shell would.

Both tests (tests/integration/test_real_scheduler.py, test_real_scheduler_recommender.py) start
``lockstep demo`` in a fresh ``LOCKSTEP_HOME``: the settings a deployment (or an earlier test)
may have exported are dropped, so the demo's own defaults hold, and the tests' shared download
cache is used.

Measured and not adopted (issue 25's time budget): ``AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_
INTERVAL=3600`` (each DAG file parsed once instead of every 30 s) left the recommender demo's
time unchanged within noise (420 s before, 430 s after, same machine), so the demo keeps
Airflow's defaults. Its time goes to starting the stack and to starting each task's process.
"""

from __future__ import annotations

import os
from pathlib import Path

# Settings that would point the demo elsewhere than its own home, or change its story.
DEPLOYMENT_VARS = (
    "LOCKSTEP_DATABASE_URL", "LOCKSTEP_RECOMMENDER_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE",
    "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "LOCKSTEP_FAULTS", "LOCKSTEP_SCHEDULES", "LOCKSTEP_ROLLOUT_DEFAULTS",
    "LOCKSTEP_SERVING_URLS", "LOCKSTEP_AIRFLOW_UI_URL", "LOCKSTEP_MLFLOW_UI_URL", "LOCKSTEP_ALERT_CHANNEL",
    "LOCKSTEP_SYSTEM",
)


def demo_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a ``lockstep demo`` run in ``home`` (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if k not in DEPLOYMENT_VARS}
    env["LOCKSTEP_HOME"] = str(home)
    env.setdefault("LOCKSTEP_CACHE_DIR", str(Path.home() / ".cache" / "lockstep-tests"))
    env.update(extra)
    return env
