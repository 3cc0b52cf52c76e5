"""The session's background ``lockstep demo`` runs (tests/integration/airflow_stack.py).

A module that runs a demo defines ``launch_demo(request) -> DemoLaunch`` and takes its result
with ``airflow_stack.run_demo(request)`` in its module fixture. The first such fixture starts
the demo of every module selected in this session (``-k`` and deselection respected: a demo
whose tests do not run is not started); each then waits for its own. Demos still running when
the session ends (a test failed first) are stopped here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.airflow_stack import DemoRuns


@pytest.fixture(scope="session")
def demo_runs() -> Iterator[DemoRuns]:
    runs = DemoRuns()
    yield runs
    runs.stop_all()
