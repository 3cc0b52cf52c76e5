"""Where a DAG run's time went: task run time summed over mapped instances, and overlap.

Shared by bench_reembed.py and bench_scale.py (both run as scripts from benchmarks/).
``task_seconds`` reads a ``dag.test()`` run; ``run_timeline`` reads the task instances of
a run a real executor ran (rows from Airflow's metadata DB), where tasks overlap and
the scheduler's own time shows up as gaps between them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
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


@dataclass(frozen=True)
class TaskRun:
    """One task instance as the metadata DB recorded it (times in UTC)."""

    task_id: str
    map_index: int
    state: str | None
    queued: datetime | None
    start: datetime | None
    end: datetime | None

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.start and self.end else 0.0


def max_overlap(intervals: Iterable[tuple[datetime, datetime]]) -> int:
    """The most intervals running at one moment (an end at t comes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], ev[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def busy_seconds(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    """Length of the union of the intervals: the time at least one of them was running."""
    total, current = 0.0, None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total += (current[1] - current[0]).total_seconds()
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current is not None:
        total += (current[1] - current[0]).total_seconds()
    return total


def run_timeline(tasks: list[TaskRun], shard_task: str = "embed") -> dict[str, Any]:
    """Per task id: seconds summed, count, longest instance, span (first start to last end),
    mean wait in the queue; for the run: span, busy time (some task running), idle time (none
    running: the scheduler between tasks), and the most instances of ``shard_task`` (and of any
    task) that ran at once."""
    ran = [t for t in tasks if t.start and t.end and t.state != "skipped"]  # a skipped task starts and ends at once
    if not ran:
        return {}
    first, last = min(t.start for t in ran), max(t.end for t in ran)
    per_task: dict[str, dict[str, Any]] = {}
    for task_id in sorted({t.task_id for t in ran}, key=lambda k: min(t.start for t in ran if t.task_id == k)):
        mine = [t for t in ran if t.task_id == task_id]
        waits = [(t.start - t.queued).total_seconds() for t in mine if t.queued]
        per_task[task_id] = {
            "count": len(mine),
            "sum_s": round(sum(t.seconds for t in mine), 2),
            "max_s": round(max(t.seconds for t in mine), 2),
            "span_s": round((max(t.end for t in mine) - min(t.start for t in mine)).total_seconds(), 2),
            "starts_at_s": round((min(t.start for t in mine) - first).total_seconds(), 2),
            "queue_wait_mean_s": round(sum(waits) / len(waits), 2) if waits else None,
        }
    intervals = [(t.start, t.end) for t in ran]
    busy = busy_seconds(intervals)
    span = (last - first).total_seconds()
    return {
        "span_s": round(span, 2),
        "busy_s": round(busy, 2),
        "idle_s": round(span - busy, 2),
        "task_instances": len(ran),
        "skipped": sorted({t.task_id for t in tasks if t.state == "skipped"}),
        "max_concurrency": max_overlap(intervals),
        "max_shard_concurrency": max_overlap([(t.start, t.end) for t in ran if t.task_id == shard_task]),
        "per_task": per_task,
    }
