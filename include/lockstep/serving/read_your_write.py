"""Read-your-write for searches: ``X-Lockstep-Min-Seq: N``.

A write answered ``durable`` (``write_acks``) is applied by each version shortly after.
A client that must see it sends the write's ``seq`` with its search; the version that
answers waits, bounded by ``LOCKSTEP_WRITE_APPLY_TIMEOUT``, until it has applied that
sequence (the wait holds no thread: ``AppliedSeq.wait_async``). When it has not by then
the search is refused with 503 and ``Retry-After``, naming the version and the sequence it
has applied, rather than answered from an index that lacks the write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lockstep.serving.asked import Asked
from lockstep.serving.bodies import APPLIED_SEQ_HEADER, MIN_SEQ_HEADER, MODEL_VERSION_HEADER
from lockstep.serving.slot_manager import ServingView
from lockstep.serving.slots import ServingSlot

if TYPE_CHECKING:
    from lockstep.serving.runtime import ServingRuntime

BEHIND_RETRY_AFTER = "1"
_MAX_DIGITS = 18  # a change-log sequence is a BIGINT


def min_seq_of(raw: str | None) -> int | None:
    """The header's sequence (None without it); 422 naming the header when it is not one."""
    if raw is None:
        return None
    value = raw.strip()
    if not value.isdigit() or not value.isascii() or len(value) > _MAX_DIGITS:
        raise HTTPException(
            422, f"header {MIN_SEQ_HEADER}: {raw[:40]!r} is not a change-log sequence (a whole number >= 0, "
                 "the `seq` of a write's answer)",
        )
    return int(value)


async def caught_up(rt: ServingRuntime, slot: ServingSlot, seq: int) -> bool:
    """Whether ``slot`` has applied ``seq``, waiting (bounded) for its applier if not yet."""
    if slot.applied_seq >= seq:
        return True
    applier = rt.manager.appliers().get(slot.version)
    if applier is None or applier.slot is not slot:  # no apply thread (not started): catch up here
        await run_in_threadpool(rt.manager.system.catch_up, slot)
        return slot.applied_seq >= seq
    applier.wake()  # the write may be another replica's: apply now, not at the tail's next poll
    return await applier.applied.wait_async(seq, rt.limits.write_apply_timeout)


def behind(rt: ServingRuntime, view: ServingView, slot: ServingSlot, asked: Asked, seq: int) -> JSONResponse:
    """503: the version that would answer has not applied ``seq`` in time (counted and logged against it)."""
    rt.metrics.errors.labels(slot.version, "503").inc()
    rt.answers.remember(asked.request_id, [], asked.pinned)
    applied = slot.applied_seq
    detail = (f"model version {slot.version} has applied the change log up to seq {applied}, not {MIN_SEQ_HEADER} "
              f"{seq}, within {rt.limits.write_apply_timeout:g} s (LOCKSTEP_WRITE_APPLY_TIMEOUT); "
              f"retry in {BEHIND_RETRY_AFTER} s")
    return JSONResponse(
        {"detail": detail, "request_id": asked.request_id, "model_version": slot.version,
         "applied_seq": applied, "min_seq": seq},
        status_code=503,
        headers={MODEL_VERSION_HEADER: slot.version, APPLIED_SEQ_HEADER: str(applied),
                 "Retry-After": BEHIND_RETRY_AFTER},
    )
