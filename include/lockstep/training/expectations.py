"""The data validation suite: what a snapshot must meet, as Great Expectations expectations.

``ValidationConfig`` holds the bounds (every default suits a corpus of documents, and
says why); ``expectations`` turns them into the suite, each expectation tagged with the
check it implements, so a result can be told back to the person by the check's name.
Running the suite is ``lockstep.training.validation``; its report is
``lockstep.training.validation_report``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from lockstep.core.errors import ConfigurationError

# C0 controls except tab, newline, vertical tab, form feed and carriage return; DEL; the C1
# block (U+0080-U+009F), which in real text almost always means cp1252 read as latin-1.
CONTROL_CHARS = r"[\x00-\x08\x0e-\x1f\x7f-\x9f]"
REPLACEMENT_CHAR = "\ufffd"

# Every check, in report order, with what it asks of the snapshot.
DESCRIPTIONS: dict[str, str] = {
    "row_count": "the snapshot has enough records to train and evaluate on",
    "ids_present": "every record has an id",
    "unique_ids": "no two records share an id",
    "text_present": "every record has text that is not empty or only whitespace",
    "min_length": "no text is shorter than the minimum length",
    "max_length": "no text is longer than the maximum length",
    "median_length": "the median text length is in the expected range",
    "duplicate_texts": "few records repeat another record's text exactly",
    "valid_utf8": "every text can be written as UTF-8 (no lone surrogates)",
    "no_replacement_chars": "no text contains U+FFFD, the mark of a failed decode",
    "no_control_chars": "no text contains NUL or other control characters besides whitespace",
}
CHECK_NAMES: tuple[str, ...] = tuple(DESCRIPTIONS)

@dataclass(frozen=True)
class ValidationConfig:
    """The bounds a snapshot must meet. Every default suits a corpus of documents.

    min_rows             100: fewer records cannot give a train/evaluation split worth trusting.
    min_chars            1: any text with content; raise it to refuse titles or stubs.
    max_chars            100,000: longer texts are whole files that should be chunked
                         (and embed only their beginning); the record store's hard limit is 1 M.
    median_min_chars     16: a lower median means ids or labels, not documents.
    median_max_chars     20,000: a higher one means unsplit files (the demo corpus: 854).
    max_duplicate_share  0.05: share of records whose text repeats an earlier record's;
                         more means a loader ran twice (the demo corpus: 0.18 %).
    max_examples         5: record ids named per failed check in the report.
    """

    min_rows: int = 100
    min_chars: int = 1
    max_chars: int = 100_000
    median_min_chars: int = 16
    median_max_chars: int = 20_000
    max_duplicate_share: float = 0.05
    max_examples: int = 5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            is_share = f.name == "max_duplicate_share"
            wanted = (int, float) if is_share else (int,)
            if isinstance(value, bool) or not isinstance(value, wanted):
                kind = "a number" if is_share else "a whole number"
                raise ConfigurationError(f"validation setting {f.name} must be {kind}, got {value!r}")
        if self.min_rows < 0:
            raise ConfigurationError(f"validation setting min_rows must be >= 0, got {self.min_rows}")
        if not 0 <= self.min_chars <= self.max_chars:
            raise ConfigurationError(
                f"validation settings need 0 <= min_chars <= max_chars, got {self.min_chars} "
                f"and {self.max_chars}"
            )
        if not 0 <= self.median_min_chars <= self.median_max_chars:
            raise ConfigurationError(
                "validation settings need 0 <= median_min_chars <= median_max_chars, got "
                f"{self.median_min_chars} and {self.median_max_chars}"
            )
        if not 0.0 <= self.max_duplicate_share <= 1.0:
            raise ConfigurationError(
                "validation setting max_duplicate_share is a share between 0 and 1, got "
                f"{self.max_duplicate_share}"
            )
        if self.max_examples < 1:
            raise ConfigurationError(
                f"validation setting max_examples must be >= 1, got {self.max_examples}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ValidationConfig:
        """Settings from a mapping (a DAG Param, a YAML block); missing keys keep their defaults."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown validation setting(s) {', '.join(unknown)}; "
                f"the settings are {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expectations(gx: Any, config: ValidationConfig) -> list[Any]:
    """The expectations, each tagged with the check it implements."""
    e = gx.expectations

    def tag(name: str, expectation: Any) -> Any:
        expectation.meta = {"check": name}
        return expectation

    # 1 - share, less a hair so that a share exactly at the limit passes despite rounding.
    min_unique = max(0.0, 1.0 - config.max_duplicate_share - 1e-12)
    return [
        tag("row_count", e.ExpectTableRowCountToBeBetween(min_value=config.min_rows)),
        tag("ids_present", e.ExpectColumnValuesToNotBeNull(column="id")),
        tag("unique_ids", e.ExpectColumnValuesToBeUnique(column="id")),
        tag("text_present", e.ExpectColumnValuesToNotBeNull(column="text_length")),
        tag("min_length", e.ExpectColumnValuesToBeBetween(column="text_length", min_value=config.min_chars)),
        tag("max_length", e.ExpectColumnValuesToBeBetween(column="text_length", max_value=config.max_chars)),
        tag(
            "median_length",
            e.ExpectColumnMedianToBeBetween(
                column="text_length",
                min_value=config.median_min_chars,
                max_value=config.median_max_chars,
            ),
        ),
        tag(
            "duplicate_texts",
            e.ExpectColumnProportionOfUniqueValuesToBeBetween(column="text_hash", min_value=min_unique),
        ),
        tag("valid_utf8", e.ExpectColumnValuesToBeNull(column="utf8_error")),
        tag("no_replacement_chars", e.ExpectColumnValuesToNotMatchRegex(column="text", regex=REPLACEMENT_CHAR)),
        tag("no_control_chars", e.ExpectColumnValuesToNotMatchRegex(column="text", regex=CONTROL_CHARS)),
    ]


def expected_text(name: str, config: ValidationConfig) -> str:
    """What a check demands, in the report's words (its "expected" column)."""
    return {
        "row_count": f">= {config.min_rows} records",
        "min_length": f"0 records under {config.min_chars} chars",
        "max_length": f"0 records over {config.max_chars} chars",
        "median_length": f"{config.median_min_chars}..{config.median_max_chars} chars",
        "duplicate_texts": f"<= {config.max_duplicate_share:g} of records",
    }.get(name, "0 records")
