"""The drift check's report: the JSON result and its plot on disk, the text a person
reads, and the flat numbers and parameters an MLflow run records."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lockstep.core import jsonio
from lockstep.drift.plots import plot_drift
from lockstep.drift.verdict import DriftReport

REPORT_FILE = "drift.json"
PLOT_FILE = "drift.png"


def finish_report(
    report: DriftReport,
    status: str,
    context: dict[str, Any],
    work_dir: str | Path | None,
    ref_vectors: Any = None,
    cur_vectors: Any = None,
    seed: int = 0,
    segment_members: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The check's JSON result; with ``work_dir`` also written there with its plot (the
    report atomically, so a reader never sees half of one), their paths under ``files``."""
    result = {**jsonio.plain(report.to_dict()), "status": status, **context}
    if work_dir is not None:
        folder = Path(work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        plot = plot_drift(
            report, ref_vectors, cur_vectors, folder / PLOT_FILE, seed=seed,
            segment_members=segment_members,
        )
        result["files"] = {"report": str(folder / REPORT_FILE), "plot": str(plot)}
        _atomic_write_json(folder / REPORT_FILE, result)
    return result


def _atomic_write_json(path: Path, value: Any) -> None:
    from lockstep.core.atomic import atomic_write

    atomic_write(path, jsonio.dumps(value, indent=2, sort_keys=True))


def summary(report: Mapping[str, Any]) -> str:
    """``describe`` cut to what an MLflow run note holds comfortably."""
    return describe(report)[:5000]


def describe(report: Mapping[str, Any]) -> str:
    """The report as a person reads it: verdict, reasons, the segment that moved, notes."""
    verdict = "Drift" if report.get("drifted") else "No drift"
    window = report.get("window") or {}
    lines = [
        f"{verdict} ({report.get('status')}), champion {report.get('champion_version')}, "
        f"window {window.get('start', '?')} to {window.get('end', '?')}"
    ]
    lines += [f"- {r}" for r in report.get("reasons", [])]
    segment = report.get("segment")
    if segment:
        words = ", ".join(str(w) for w, _ in segment.get("top_words", []))
        lines.append(
            f"Segment that moved most: {segment['current_share']:.1%} of the window vs "
            f"{segment['reference_share']:.1%} of the reference ({segment['n_current']} records, "
            f"chi-square p = {segment['p_value']:.2g})" + (f"; words: {words}" if words else "")
        )
        lines += [f"  e.g. {example}" for example in segment.get("examples", [])]
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def flat_numbers(report: Mapping[str, Any]) -> dict[str, float]:
    """The figures and counts as MLflow metrics (finite numbers only)."""
    numbers: dict[str, float] = {}
    for key, value in (report.get("figures") or {}).items():
        if isinstance(value, int | float) and math.isfinite(value):
            numbers[key] = float(value)
    for key, value in (report.get("counts") or {}).items():
        if isinstance(value, int | float) and math.isfinite(value):
            numbers[f"count_{key}"] = float(value)
    numbers["drifted"] = 1.0 if report.get("drifted") else 0.0
    return numbers


def run_params(report: Mapping[str, Any]) -> dict[str, Any]:
    """The window, sizes and thresholds as MLflow params: what to filter drift runs by."""
    params: dict[str, Any] = {
        "window_hours": (report.get("window") or {}).get("hours"),
        "window_end": (report.get("window") or {}).get("end"),
        "min_records": report.get("min_records"),
        "max_samples": report.get("max_samples"),
        "reference_snapshot_seq": report.get("reference_snapshot_seq"),
        "accumulate_hours": report.get("accumulate_hours"),
    }
    for key, value in (report.get("thresholds") or {}).items():
        params[f"threshold.{key}"] = value
    return {k: v for k, v in params.items() if v is not None}


def metric_key(name: str) -> str:
    """A figure's name as MLflow accepts it (it refuses most punctuation in metric keys)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)
