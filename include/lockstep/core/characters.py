"""The characters no stored string may hold: one rule for every edge that takes strings in.

Identifiers (record ids, user ids, request ids, metadata keys) may hold no control
character (Unicode Cc) and no lone surrogate (Cs, which no UTF-8 database column can
store); free text may hold tab, line feed and carriage return, but no other control
character. The serving API (``lockstep.serving.inputs``) and the streaming loader
(``lockstep.streaming.messages``) both refuse by this rule, each in its own words.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and UTF-16 surrogates (a JSON "\ud800" escape parses to one).
_BAD_IN_ID = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def bad_character(value: str, *, text: bool) -> str | None:
    """``"contains <what> U+XXXX at position N"`` for the first refused character, or None."""
    found = (_BAD_IN_TEXT if text else _BAD_IN_ID).search(value)
    if found is None:
        return None
    kind = "a lone surrogate" if "\ud800" <= found.group() <= "\udfff" else "control character"
    return f"contains {kind} U+{ord(found.group()):04X} at position {found.start()}"
