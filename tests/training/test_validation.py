"""Data validation runs a real Great Expectations suite: a clean corpus passes, and each
kind of broken record fails exactly the check meant for it, with a sentence that says so."""

from __future__ import annotations

import json
import time

import pytest

from lockstep.core.errors import ConfigurationError, LockstepError
from lockstep.store.records import Record
from lockstep.training.validation import (
    CHECK_NAMES,
    DataValidationError,
    ValidationConfig,
    ValidationReport,
    raise_for_failures,
    validate_snapshot,
    write_report,
)

# Tighter length bounds than the defaults so too-short and too-long texts stay small.
CONFIG = ValidationConfig(min_rows=100, min_chars=10, max_chars=5_000, max_duplicate_share=0.05)

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
# Whitespace controls, accents, CJK and an astral-plane emoji (one code point, four UTF-8 bytes)
# are all valid text and must not trip the encoding checks.
FLOURISHES = ["", "\tindented", "\r\nwindows line", "\fform feed", "café naïve", "日本語", "🙂 ok"]


def clean_corpus(n: int = 200) -> list[Record]:
    """Unique ids and texts of 40-400 characters, deterministic."""
    records = []
    for i in range(n):
        words = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(5 + i % 60))
        text = f"document {i}: {words} {FLOURISHES[i % len(FLOURISHES)]}"
        records.append(Record(f"doc-{i:04d}", text, {"n": i}))
    return records


def replaced(records: list[Record], index: int, *, id: object = ..., text: object = ...) -> list[Record]:
    out = list(records)
    old = out[index]
    out[index] = Record(old.id if id is ... else id, old.text if text is ... else text)  # type: ignore[arg-type]
    return out


def failed(report: ValidationReport) -> list[str]:
    return [c.name for c in report.checks if not c.success]


@pytest.fixture(scope="module")
def clean_report() -> ValidationReport:
    return validate_snapshot(clean_corpus(), snapshot_seq=42, config=CONFIG)


# --- a clean corpus ----------------------------------------------------------------------


def test_clean_corpus_passes_every_check(clean_report):
    assert clean_report.success, clean_report.failures
    assert [c.name for c in clean_report.checks] == list(CHECK_NAMES)
    assert all(c.success and c.message == "" for c in clean_report.checks)
    assert clean_report.failures == []
    assert clean_report.row_count == 200
    assert clean_report.snapshot_seq == 42
    assert clean_report.check("row_count").observed == 200
    assert clean_report.check("duplicate_texts").observed == 0
    median = clean_report.check("median_length").observed
    assert 40 < median < 400
    assert clean_report.stats["text_length"]["median"] == median
    raise_for_failures(clean_report)  # nothing to raise


def test_the_checks_are_great_expectations_results(clean_report):
    import great_expectations as gx

    assert clean_report.gx_version == gx.__version__
    kinds = {c.name: c.details["expectation"] for c in clean_report.checks}
    assert kinds["unique_ids"] == "expect_column_values_to_be_unique"
    assert kinds["median_length"] == "expect_column_median_to_be_between"
    assert kinds["duplicate_texts"] == "expect_column_proportion_of_unique_values_to_be_between"
    assert kinds["no_control_chars"] == "expect_column_values_to_not_match_regex"


def test_default_config_passes_a_clean_corpus_and_records_may_be_a_generator():
    report = validate_snapshot((r for r in clean_corpus()), snapshot_seq=1)
    assert report.success, report.failures
    assert report.config == ValidationConfig()


# --- each failure mode fails its own check and only it -----------------------------------

CLEAN = clean_corpus()

FAILURES = [
    # (case, records, failing check, figures the sentence must name)
    ("duplicate id", replaced(CLEAN, 5, id="doc-0004"), "unique_ids", ["2 records", "'doc-0004'"]),
    ("missing id", replaced(CLEAN, 5, id=None), "ids_present", ["1 record has no id"]),
    ("empty text", replaced(CLEAN, 7, text=""), "text_present", ["1 record", "'doc-0007'"]),
    ("blank text", replaced(CLEAN, 7, text=" \n\t "), "text_present", ["'doc-0007'"]),
    ("no text", replaced(CLEAN, 7, text=None), "text_present", ["'doc-0007'"]),
    ("too short", replaced(CLEAN, 8, text="tiny"), "min_length", ["shorter than 10", "'doc-0008': 4 chars"]),
    ("too long", replaced(CLEAN, 9, text="ab " * 2_000), "max_length", ["longer than 5000", "'doc-0009': 6000 chars"]),
    (
        "too many duplicate texts",
        [Record(r.id, CLEAN[100 + i % 20].text) if i < 20 else r for i, r in enumerate(CLEAN)],
        "duplicate_texts",
        ["10.0%", "20 of 200", "at most 5.0%"],
    ),
    ("replacement char", replaced(CLEAN, 11, text="caf\ufffd au lait, encore"), "no_replacement_chars", ["'doc-0011': U+FFFD at character 3"]),
    ("NUL", replaced(CLEAN, 12, text="before\x00after the nul"), "no_control_chars", ["'doc-0012': U+0000 at character 6"]),
    ("escape", replaced(CLEAN, 12, text="\x1b[31mred terminal text"), "no_control_chars", ["U+001B at character 0"]),
    ("C1 control", replaced(CLEAN, 12, text="it\x92s cp1252 read as latin-1"), "no_control_chars", ["U+0092"]),
    ("lone surrogate", replaced(CLEAN, 13, text="broken \ud800 surrogate"), "valid_utf8", ["'doc-0013': lone surrogate U+D800 at character 7"]),
    ("split surrogate pair", replaced(CLEAN, 13, text="emoji \ud83d\ude42 as two halves"), "valid_utf8", ["U+D83D"]),
    ("too few rows", CLEAN[:60], "row_count", ["60 records", "at least 100"]),
    ("median too short", [Record(f"m{i}", f"note {i:07d}") for i in range(150)], "median_length", ["median text is 12 characters", "between 16 and 20000"]),
]


@pytest.mark.parametrize(
    ("records", "check", "figures"),
    [pytest.param(records, check, figures, id=case) for case, records, check, figures in FAILURES],
)
def test_a_failure_mode_fails_only_its_own_check(records, check, figures):
    report = validate_snapshot(records, snapshot_seq=7, config=CONFIG)

    assert not report.success
    assert failed(report) == [check], report.failures
    [sentence] = report.failures
    assert sentence.startswith(f"{check}: ")
    for figure in figures:
        assert figure in sentence


def test_the_duplicate_share_at_the_limit_passes():
    # 10 of 200 texts repeat another: exactly the 5 % allowed.
    records = [Record(r.id, CLEAN[100 + i].text) if i < 10 else r for i, r in enumerate(CLEAN)]
    report = validate_snapshot(records, snapshot_seq=7, config=CONFIG)
    assert report.success, report.failures
    assert report.check("duplicate_texts").observed == pytest.approx(0.05)


def test_failing_checks_name_example_records_and_count_them_all():
    records = list(CLEAN)
    for i in range(0, 30, 3):  # ten records with a NUL
        records[i] = Record(records[i].id, records[i].text + "\x00")
    report = validate_snapshot(records, snapshot_seq=7, config=CONFIG)
    check = report.check("no_control_chars")
    assert check.observed == 10
    assert [e["id"] for e in check.details["examples"]] == [f"doc-{i:04d}" for i in (0, 3, 6, 9, 12)]
    assert "10 records contain control characters" in check.message


def test_an_empty_snapshot_is_reported_not_raised():
    report = validate_snapshot([], snapshot_seq=0, config=CONFIG)
    assert not report.success
    assert report.row_count == 0
    assert "row_count" in failed(report)
    assert report.check("median_length").message == (
        "median_length: there is no text to take the median length of."
    )
    assert report.stats == {"records_with_text": 0}


def test_repeated_validations_leave_no_results_behind_in_gx():
    from lockstep.training.validation import _gx_suite

    validate_snapshot(replaced(CLEAN, 12, text="x\x00" * 20), snapshot_seq=1, config=CONFIG)
    validate_snapshot(CLEAN, snapshot_seq=2, config=CONFIG)
    context, _ = _gx_suite(CONFIG)
    assert context.validation_results_store.list_keys() == []


# --- turning a report into an error ------------------------------------------------------


def test_raise_for_failures_lists_every_failure():
    records = replaced(replaced(CLEAN, 5, id="doc-0004"), 7, text="")
    report = validate_snapshot(records, snapshot_seq=9, config=CONFIG)
    assert failed(report) == ["unique_ids", "text_present"]

    with pytest.raises(DataValidationError) as caught:
        raise_for_failures(report)
    error = caught.value
    assert isinstance(error, LockstepError)
    assert error.report is report
    assert "snapshot 9 failed 2 of 11 checks" in str(error)
    for sentence in report.failures:
        assert sentence in str(error)


# --- report files ------------------------------------------------------------------------


def test_write_report_writes_json_and_markdown(tmp_path, clean_report):
    folder = tmp_path / "reports" / "seq-42"
    paths = write_report(clean_report, folder)

    assert set(paths) == {"json", "markdown"}
    assert paths["json"] == folder / "report.json"
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == clean_report.to_dict()
    assert paths["markdown"].read_text(encoding="utf-8") == clean_report.to_markdown()
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "report.md"]  # no temp files left

    failing = validate_snapshot(CLEAN[:60], snapshot_seq=43, config=CONFIG)
    write_report(failing, folder)  # overwrites in place
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["success"] is False


def test_markdown_lists_every_check_and_the_failures():
    report = validate_snapshot(replaced(CLEAN, 12, text="a|b\x00 pipes"), snapshot_seq=5, config=CONFIG)
    markdown = report.to_markdown()

    assert markdown.startswith("## Data validation of snapshot 5: FAILED")
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == list(CHECK_NAMES)
    assert "| no_control_chars | **FAIL** | 1 | 0 records |" in markdown
    assert "### Failures" in markdown
    assert f"- {report.failures[0]}" in markdown


def test_report_dict_is_plain_json(clean_report):
    data = json.loads(json.dumps(clean_report.to_dict(), allow_nan=False))
    assert data["success"] is True
    assert data["snapshot_seq"] == 42
    assert data["config"]["max_chars"] == 5_000
    assert [c["name"] for c in data["checks"]] == list(CHECK_NAMES)
    assert isinstance(data["checks"][0]["observed"], int)
    assert json.loads(clean_report.to_json()) == data


# --- configuration -----------------------------------------------------------------------


def test_config_from_dict_keeps_defaults_and_refuses_unknown_keys():
    assert ValidationConfig.from_dict(None) == ValidationConfig()
    config = ValidationConfig.from_dict({"min_rows": 10, "max_duplicate_share": 0.2})
    assert (config.min_rows, config.max_duplicate_share, config.max_chars) == (10, 0.2, 100_000)
    assert ValidationConfig.from_dict(config.to_dict()) == config

    with pytest.raises(ConfigurationError, match="unknown validation setting.*min_row\\b"):
        ValidationConfig.from_dict({"min_row": 10})


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_duplicate_share": 1.5}, "max_duplicate_share"),
        ({"min_chars": 50, "max_chars": 10}, "min_chars <= max_chars"),
        ({"median_min_chars": 500, "median_max_chars": 100}, "median_min_chars"),
        ({"min_rows": "100"}, "min_rows must be a whole number"),
        ({"max_duplicate_share": "5%"}, "max_duplicate_share must be a number"),
        ({"min_rows": -1}, "min_rows must be >= 0"),
    ],
)
def test_config_refuses_impossible_bounds(settings, named):
    with pytest.raises(ConfigurationError, match=named):
        ValidationConfig.from_dict(settings)


# --- speed -------------------------------------------------------------------------------


def test_twenty_thousand_records_validate_in_seconds(clean_report):
    """The target is well under 5 s once GX is imported (measured ~1 s); the bound here
    is loose because the test machine is shared."""
    records = [
        Record(f"r{i:06d}", f"record {i} " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(20 + i % 200)))
        for i in range(20_000)
    ]
    started = time.perf_counter()
    report = validate_snapshot(records, snapshot_seq=1, config=CONFIG)
    elapsed = time.perf_counter() - started

    assert report.success, report.failures
    assert report.row_count == 20_000
    assert elapsed < 10.0
