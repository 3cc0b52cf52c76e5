"""The validation report: each check's verdict and figure, and the sentences a person reads.

A failure is recorded in the report, not raised: the DAG logs it, attaches it to the
MLflow run (as JSON and as a markdown table) and only then stops with
``raise_for_failures``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lockstep.core.atomic import atomic_write
from lockstep.core.errors import LockstepError
from lockstep.training.expectations import CHECK_NAMES, DESCRIPTIONS, ValidationConfig

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"


class DataValidationError(LockstepError, ValueError):
    """A snapshot failed data validation; the message lists every failed check."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One check of the suite: GX's verdict and figure, and a sentence saying what it means.

    ``observed`` is the number of offending records for per-record checks, and the figure
    itself for the others (row count, median length, duplicate share). ``message`` is
    empty when the check passed.
    """

    name: str
    success: bool
    observed: int | float | None
    expected: str
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def description(self) -> str:
        return DESCRIPTIONS.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "success": self.success,
            "observed": self.observed,
            "expected": self.expected,
            "description": self.description,
            "message": self.message,
            "details": self.details,
        }


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one snapshot; a failure is recorded here, not raised."""

    success: bool
    checks: list[CheckResult]
    row_count: int
    snapshot_seq: int
    generated_at: datetime
    config: ValidationConfig = field(default_factory=ValidationConfig)
    stats: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    gx_version: str = ""

    @property
    def failures(self) -> list[str]:
        """One sentence per failed check, naming it and the figures that failed it."""
        return [c.message for c in self.checks if not c.success]

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; the checks are {', '.join(CHECK_NAMES)}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "success": self.success,
                "snapshot_seq": self.snapshot_seq,
                "row_count": self.row_count,
                "generated_at": self.generated_at.isoformat(),
                "duration_s": round(self.duration_s, 3),
                "gx_version": self.gx_version,
                "config": self.config.to_dict(),
                "failures": self.failures,
                "checks": [c.to_dict() for c in self.checks],
                "stats": self.stats,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_markdown(self) -> str:
        """A table of every check, readable in an Airflow task log and in the MLflow UI."""
        passed = sum(c.success for c in self.checks)
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"## Data validation of snapshot {self.snapshot_seq}: {verdict}",
            "",
            f"{self.row_count} records, {passed} of {len(self.checks)} checks passed, "
            f"generated {self.generated_at.isoformat(timespec='seconds')} "
            f"in {self.duration_s:.2f} s (Great Expectations {self.gx_version or '?'}).",
            "",
            "| check | result | observed | expected | what it checks |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            lines.append(
                f"| {c.name} | {'pass' if c.success else '**FAIL**'} | {_md(_fmt(c.observed))} "
                f"| {_md(c.expected)} | {_md(c.description)} |"
            )
        if self.failures:
            lines += ["", "### Failures", ""]
            lines += [f"- {_md(sentence)}" for sentence in self.failures]
        length = self.stats.get("text_length") or {}
        if length:
            lines += [
                "",
                "Text length (characters): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in length.items()),
            ]
        return "\n".join(lines) + "\n"


def raise_for_failures(report: ValidationReport) -> None:
    """Turn a failed report into a ``DataValidationError`` that lists every failure."""
    if report.success:
        return
    failures = report.failures
    lines = "\n".join(f"- {f}" for f in failures)
    raise DataValidationError(
        f"data validation of snapshot {report.snapshot_seq} failed {len(failures)} of "
        f"{len(report.checks)} checks:\n{lines}\n"
        "Fix the records, or if the data is right, widen the bounds in ValidationConfig.",
        report,
    )


def write_report(report: ValidationReport, folder: str | Path) -> dict[str, Path]:
    """Write report.json and report.md into ``folder``; each appears whole or not at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / REPORT_JSON, "markdown": folder / REPORT_MARKDOWN}
    atomic_write(paths["json"], report.to_json() + "\n")
    atomic_write(paths["markdown"], report.to_markdown())
    return paths


def sentence(name: str, observed: Any, details: Mapping[str, Any], config: ValidationConfig) -> str:
    """What failed, in figures, for the person reading the log."""
    n = int(observed or 0)
    eg = _example_text(details.get("examples") or [])
    if name == "row_count":
        return f"row_count: the snapshot has {n} records; at least {config.min_rows} are needed."
    if name == "ids_present":
        return f"ids_present: {_records(n)} {_have(n)} no id (missing or blank)."
    if name == "unique_ids":
        return f"unique_ids: {_records(n)} share their id with another record{eg}; ids must be unique."
    if name == "text_present":
        return f"text_present: {_records(n)} {_have(n)} no text, or only whitespace{eg}."
    if name == "min_length":
        return f"min_length: {_records(n)} {_be(n)} shorter than {config.min_chars} characters{eg}."
    if name == "max_length":
        return f"max_length: {_records(n)} {_be(n)} longer than {config.max_chars} characters{eg}."
    if name == "median_length":
        if observed is None:
            return "median_length: there is no text to take the median length of."
        return (
            f"median_length: the median text is {_fmt(observed)} characters; it must be between "
            f"{config.median_min_chars} and {config.median_max_chars}."
        )
    if name == "duplicate_texts":
        if observed is None:
            return "duplicate_texts: there is no text to compare."
        groups = details.get("example_groups") or []
        eg = f" (e.g. {'; '.join(' = '.join(repr(i) for i in g[:3]) for g in groups[:3])})" if groups else ""
        return (
            f"duplicate_texts: {observed:.1%} of texts ({details.get('repeated_records')} of "
            f"{details.get('records_with_text')}) repeat an earlier record's text exactly; at most "
            f"{config.max_duplicate_share:.1%} may{eg}."
        )
    if name == "valid_utf8":
        return f"valid_utf8: {_records(n)} {_have(n)} text that is not valid UTF-8{eg}."
    if name == "no_replacement_chars":
        return (
            f"no_replacement_chars: {_records(n)} contain{'s' if n == 1 else ''} U+FFFD, the mark "
            f"of text decoded with the wrong encoding{eg}."
        )
    if name == "no_control_chars":
        return (
            f"no_control_chars: {_records(n)} contain{'s' if n == 1 else ''} control characters "
            f"other than tab, newline, carriage return, vertical tab and form feed{eg}."
        )
    return f"{name}: failed (observed {_fmt(observed)})."


def _example_text(examples: Sequence[Mapping[str, Any]]) -> str:
    if not examples:
        return ""
    parts = []
    for ex in examples[:3]:
        extra = ex.get("problem") or (f"{ex['chars']} chars" if ex.get("chars") is not None else "")
        parts.append(f"{ex.get('id')!r}: {extra}" if extra else repr(ex.get("id")))
    return f" (e.g. {', '.join(parts)})"


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def _have(n: int) -> str:
    return "has" if n == 1 else "have"


def _be(n: int) -> str:
    return "is" if n == 1 else "are"


# --- small helpers ---------------------------------------------------------------------


def number(value: Any) -> int | float | None:
    """A plain int or float from whatever numeric type GX or numpy hands back."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    return int(number) if number.is_integer() and not isinstance(value, float) else number


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars become Python numbers, NaN becomes None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | float) or hasattr(value, "item"):
        return number(value.item() if hasattr(value, "item") else value)
    return str(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md(text: str) -> str:
    """Keep a table cell one cell: escape pipes, fold newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")
