"""When a record write is answered, and what its answer says (issue 24, item 3).

A write is durable once the change log has committed it; each loaded version applies it
afterwards on its own apply thread (``appliers``). A client picks per request with the
header ``X-Lockstep-Consistency``:

* ``applied``: answered once every loaded version has applied the write (today's
  behaviour), waiting at most ``LOCKSTEP_WRITE_APPLY_TIMEOUT`` seconds (default 10). A
  write still not applied by then is answered 200 all the same, because it *is* durable,
  with the versions that had not applied it in ``pending``; never a 5xx.
* ``durable``: answered right after the commit; ``pending`` names the versions that
  apply it later.

Without the header ``LOCKSTEP_WRITE_ACK`` decides (``auto`` | ``applied`` | ``durable``,
default ``auto``): ``auto`` is ``applied`` while every loaded version's model is fast (the
built-in families: a write costs them well under a millisecond) and ``durable`` once one
is slow (an imported pyfunc or a transformer, ~50 ms per write each), so a write never
waits for a transformer unless its client asks.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException

from lockstep.model.contract import FAST
from lockstep.serving.bodies import CONSISTENCY_HEADER, RecordWritten
from lockstep.serving.slot_manager import SlotManager, version_key

APPLIED = "applied"
DURABLE = "durable"
CONSISTENCIES = (APPLIED, DURABLE)


def consistency(requested: str | None, default: str, manager: SlotManager) -> str:
    """The acknowledgement this write gets: the header's, else the knob's (``auto`` resolved)."""
    if requested is not None:
        value = requested.strip().lower()
        if value not in CONSISTENCIES:
            raise HTTPException(
                422, f"header {CONSISTENCY_HEADER}: {requested!r} is not one of {', '.join(CONSISTENCIES)}"
            )
        return value
    if default in CONSISTENCIES:
        return default
    slots = manager.loaded().values()
    return APPLIED if all(getattr(slot, "cost", FAST) == FAST for slot in slots) else DURABLE


def acknowledge(
    manager: SlotManager, record_id: str, seq: int, *, mode: str, timeout: float, on_pending: Callable[[str], None] | None = None,
) -> RecordWritten:
    """Wake the appliers for ``seq`` and answer as ``mode`` says (the write is already durable)."""
    manager.written(seq)
    if mode == APPLIED:
        applied, pending = manager.wait_applied(seq, timeout)
    else:
        applied, pending = _now(manager, seq)
    if on_pending is not None:
        for version in pending:
            on_pending(version)
    return RecordWritten(id=record_id, seq=seq, consistency=mode, applied=applied, pending=pending)


def _now(manager: SlotManager, seq: int) -> tuple[list[str], list[str]]:
    """Which loaded versions have applied ``seq`` already (nothing is applied here)."""
    applied, pending = [], []
    for version, slot in sorted(manager.loaded().items(), key=lambda item: version_key(item[0])):
        (applied if slot.applied_seq >= seq else pending).append(version)
    return applied, pending
