"""Which clicks count: only on a record that was among its request's results, and once.

Without this check any client could post clicks for any ``request_id`` and record and
steer the CTR gates (30 pinned searches and 30 forged clicks made a 0-weight candidate
show a CTR of 1.0). ``ClickJudge`` decides every ``POST /feedback``:

1. An in-process table of recent answers (request id -> the ids it returned, whether
   it was pinned, which of them were clicked) answers at once for searches this replica
   served, including those whose log row is still in the writer's buffer.
2. Otherwise the request log in the database answers for searches another replica
   served (or this one, before a restart).
3. A request known to neither may still be in another replica's unflushed log batch
   (a click can reach replica B a few milliseconds after replica A answered the
   search), so the judge looks again for up to ``wait`` seconds -- about two flush
   intervals -- before it answers "unknown request_id".

"Once" is exact on one replica; two replicas receiving the same click within one flush
interval may both log it, which the gates absorb because they count clicked requests
(``count(distinct request_id)``), never clicks.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from lockstep.store.schema import feedback_log, request_log


class Verdict(Enum):
    COUNTED = "counted"  # logged and counted in statistics
    PINNED = "pinned"  # logged; its request is pinned, so statistics leave it out
    UNKNOWN_REQUEST = "unknown_request"
    NOT_A_RESULT = "not_a_result"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class Answer:
    """What one search returned, as far as clicks are concerned (small: many are kept)."""

    top_ids: tuple[str, ...]
    pinned: bool
    clicked: set[str] | None = None  # made on the first click


class RecentAnswers:
    """A bounded, thread-safe table of the latest answers (least recently used out first)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Answer] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, request_id: str, top_ids: list[str], pinned: bool) -> None:
        with self._lock:
            self._items[request_id] = Answer(tuple(top_ids), pinned)
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> Answer | None:
        with self._lock:
            answer = self._items.get(request_id)
            if answer is not None:
                self._items.move_to_end(request_id)
            return answer

    def adopt(self, request_id: str, answer: Answer) -> Answer:
        """Keep an answer read from the database, unless a concurrent call kept one first."""
        with self._lock:
            kept = self._items.setdefault(request_id, answer)
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return kept

    def claim(self, request_id: str, answer: Answer, record_id: str) -> Verdict:
        """Decide a click against a known answer and mark it clicked (atomically)."""
        with self._lock:
            if record_id not in answer.top_ids:
                return Verdict.NOT_A_RESULT
            if answer.clicked is None:
                answer.clicked = set()
            elif record_id in answer.clicked:
                return Verdict.DUPLICATE
            answer.clicked.add(record_id)
            return Verdict.PINNED if answer.pinned else Verdict.COUNTED


class ClickJudge:
    """Decides each click: the recent answers first, then the database, then a short wait."""

    def __init__(self, engine: Engine, answers: RecentAnswers, *, wait: float = 2.0, poll: float = 0.2) -> None:
        self.engine = engine
        self.answers = answers
        self.wait = wait
        self.poll = poll
        self.misses = 0  # database look-ups that found no request (tests wait on this)

    async def judge(self, request_id: str, record_id: str) -> Verdict:
        answer = self.answers.get(request_id)
        if answer is None:
            answer = await self._look_up(request_id)
        if answer is None:
            return Verdict.UNKNOWN_REQUEST
        return self.answers.claim(request_id, answer, record_id)

    async def _look_up(self, request_id: str) -> Answer | None:
        """Read the request from the database, looking again until ``wait`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            answer = await run_in_threadpool(self._read, request_id)
            if answer is not None:
                return self.answers.adopt(request_id, answer)
            self.misses += 1
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(min(self.poll, max(0.0, deadline - loop.time())))
            answer = self.answers.get(request_id)  # answered here meanwhile?
            if answer is not None:
                return answer

    def _read(self, request_id: str) -> Answer | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(request_log.c.top_ids, request_log.c.pinned).where(request_log.c.request_id == request_id)
            ).first()
            if row is None:
                return None
            clicked = conn.execute(
                select(feedback_log.c.record_id).where(feedback_log.c.request_id == request_id)
            ).scalars()
            return Answer(tuple(row.top_ids or ()), bool(row.pinned), set(clicked) or None)
