"""Where a `dag.test()` run's time went: task run time summed over mapped instances.

Shared by bench_reembed.py and bench_scale.py (both run as scripts from benchmarks/).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def task_seconds(run: Any) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds and instance count per task id of a finished DAG run (instances without both times skipped)."""
    seconds: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for ti in run.get_task_instances():
        if ti.start_date and ti.end_date:
            seconds[ti.task_id] += (ti.end_date - ti.start_date).total_seconds()
            count[ti.task_id] += 1
    return dict(seconds), dict(count)
