"""The environment the real-scheduler tests run ``lockstep demo`` with, as a user's shell would,
and the runner that starts their demos together.

Both tests (tests/integration/test_real_scheduler.py, test_real_scheduler_recommender.py) start
``lockstep demo`` in a fresh ``LOCKSTEP_HOME``: the settings a deployment (or an earlier test)
may have exported are dropped, so the demo's own defaults hold, and the tests' shared download
cache is used.

Each demo is a whole stack (its own home, ports, Airflow metadata database and MLflow store),
so the two share nothing but the machine. Most of a demo's time is waiting (for the scheduler's
next loop, a deferred look, a canary's request counts), so ``DemoRuns`` starts every selected
demo when the first one is asked for, and each test module waits for its own
(tests/integration/conftest.py): two demos in about the time of the longer one instead of
their sum. Every demo still runs start to end under its own real scheduler and is judged by the
same assertions.

Measured and not adopted (issue 25's time budget): ``AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_
INTERVAL=3600`` (each DAG file parsed once instead of every 30 s) left the recommender demo's
time unchanged within noise (420 s before, 430 s after, same machine), so the demo keeps
Airflow's defaults. Its time goes to starting the stack and to starting each task's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Settings that would point the demo elsewhere than its own home, or change its story.
DEPLOYMENT_VARS = (
    "LOCKSTEP_DATABASE_URL", "LOCKSTEP_RECOMMENDER_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE",
    "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "LOCKSTEP_FAULTS", "LOCKSTEP_SCHEDULES", "LOCKSTEP_ROLLOUT_DEFAULTS",
    "LOCKSTEP_SERVING_URLS", "LOCKSTEP_AIRFLOW_UI_URL", "LOCKSTEP_MLFLOW_UI_URL", "LOCKSTEP_ALERT_CHANNEL",
    "LOCKSTEP_SYSTEM",
)
DEMO_TIMEOUT = 2400.0  # seconds a demo may take from its start; only guards against a hang
STOP_TIMEOUT = 60.0  # seconds a demo stopped early (SIGTERM) gets to stop its stack


def demo_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a ``lockstep demo`` run in ``home`` (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if k not in DEPLOYMENT_VARS}
    env["LOCKSTEP_HOME"] = str(home)
    env.setdefault("LOCKSTEP_CACHE_DIR", str(Path.home() / ".cache" / "lockstep-tests"))
    env.update(extra)
    return env


@dataclass(frozen=True)
class DemoLaunch:
    """One ``lockstep demo`` command: what to run, where, and what the test wants back with its result."""

    argv: list[str]
    env: dict[str, str]
    home: Path
    facts: dict[str, Any]  # e.g. the metadata URL the test reads afterwards


# A test module that runs a demo defines ``launch_demo(request) -> DemoLaunch`` (module level).
LaunchDemo = Callable[[Any], DemoLaunch]


@dataclass
class _Running:
    launch: DemoLaunch
    process: subprocess.Popen
    stdout: Path
    stderr: Path
    started: float


class DemoRuns:
    """``lockstep demo`` processes running in the background, one per test module, waited for by name.

    Output goes to files in the demo's folder, not pipes: a pipe nobody reads while the test
    waits for another demo would fill and stall the demo.
    """

    def __init__(self) -> None:
        self._runs: dict[str, _Running] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._runs

    def start(self, name: str, launch: DemoLaunch) -> None:
        """Start ``name``'s demo."""
        folder = launch.home.parent
        folder.mkdir(parents=True, exist_ok=True)
        stdout, stderr = folder / "demo.stdout", folder / "demo.stderr"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(launch.argv, env=launch.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self._runs[name] = _Running(launch, process, stdout, stderr, time.monotonic())

    def wait(self, name: str) -> tuple[subprocess.CompletedProcess, DemoLaunch]:
        """Wait for ``name``'s demo to end; its result as ``subprocess.run`` would give it.

        Raises ``subprocess.TimeoutExpired`` (after stopping it) if it runs longer than
        DEMO_TIMEOUT from its start, as ``subprocess.run(timeout=...)`` did.
        """
        run = self._runs[name]
        remaining = max(1.0, DEMO_TIMEOUT - (time.monotonic() - run.started))
        try:
            run.process.wait(remaining)
        except subprocess.TimeoutExpired:
            _stop(run.process)
            raise subprocess.TimeoutExpired(run.launch.argv, DEMO_TIMEOUT, output=_read(run.stdout),
                                            stderr=_read(run.stderr)) from None
        result = subprocess.CompletedProcess(run.launch.argv, run.process.returncode, _read(run.stdout), _read(run.stderr))
        return result, run.launch

    def stop_all(self) -> None:
        """Stop every demo still running (a test failed early, or was deselected after starting it)."""
        for run in self._runs.values():
            if run.process.poll() is None:
                _stop(run.process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (``lockstep demo`` then stops its stack's process groups), SIGKILL if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def run_demo(request: Any) -> tuple[subprocess.CompletedProcess, DemoLaunch]:
    """The calling module's demo result, after starting every selected module's demo not started yet.

    ``request`` is the module fixture's request; the runs are the session's ``demo_runs``
    fixture (tests/integration/conftest.py), which stops any demo still running at the end.
    """
    runs: DemoRuns = request.getfixturevalue("demo_runs")
    modules = {item.module.__name__: item.module for item in request.session.items if getattr(item, "module", None)}
    for name, module in modules.items():
        launch: LaunchDemo | None = getattr(module, "launch_demo", None)
        if launch is not None and name not in runs:
            runs.start(name, launch(request))
    return runs.wait(request.module.__name__)
