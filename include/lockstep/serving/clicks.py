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
   search), so the click joins a waiting room for up to ``wait`` seconds -- about two
   flush intervals -- before it answers "unknown request_id".

The cost of a click is bounded, because ``/feedback`` is open and a made-up
``request_id`` used to cost about ten database reads over two seconds (a cheap
amplification). Now a click makes exactly one read of its own; the waiting room
re-checks every waiting click together in one query per ``poll`` however many wait, and
holds at most ``max_waiting`` clicks: a click that finds it full is refused at once,
after its one read. A flood of made-up ids therefore costs one read each plus a few
shared queries a second.

"Once" is exact on one replica; two replicas receiving the same click within one flush
interval may both log it, which the gates absorb because they count clicked requests
(``count(distinct request_id)``), never clicks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from lockstep.serving.outage import summary
from lockstep.store.db import in_chunks
from lockstep.store.schema import feedback_log, request_log

log = logging.getLogger("lockstep.serving")


class ClickVerdict(Enum):
    """What became of one click: counted, logged but pinned, or refused (and why)."""

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

    def claim(self, request_id: str, answer: Answer, record_id: str) -> ClickVerdict:
        """Decide a click against a known answer and mark it clicked (atomically)."""
        with self._lock:
            if record_id not in answer.top_ids:
                return ClickVerdict.NOT_A_RESULT
            if answer.clicked is None:
                answer.clicked = set()
            elif record_id in answer.clicked:
                return ClickVerdict.DUPLICATE
            answer.clicked.add(record_id)
            return ClickVerdict.PINNED if answer.pinned else ClickVerdict.COUNTED


class ClickJudge:
    """Decides each click: the recent answers first, then one database read, then the waiting room."""

    def __init__(
        self, engine: Engine, answers: RecentAnswers, *, wait: float = 2.0, poll: float = 0.2, max_waiting: int = 100,
    ) -> None:
        self.engine = engine
        self.answers = answers
        self.wait = wait
        self.poll = poll
        self.max_waiting = max_waiting
        self.misses = 0  # a click's own database look-ups that found no request (tests wait on this)
        self.turned_away = 0  # clicks refused at once because the waiting room was full
        self._room: tuple[asyncio.AbstractEventLoop, _WaitingRoom] | None = None

    async def judge(self, request_id: str, record_id: str) -> ClickVerdict:
        answer = self.answers.get(request_id)
        if answer is None:
            answer = await self._look_up(request_id)
        if answer is None:
            return ClickVerdict.UNKNOWN_REQUEST
        return self.answers.claim(request_id, answer, record_id)

    @property
    def waiting(self) -> int:
        """Clicks waiting in the room right now."""
        return len(self._room[1]) if self._room is not None else 0

    async def _look_up(self, request_id: str) -> Answer | None:
        """One read of the database; if it misses, a place in the waiting room (or a refusal)."""
        found = await run_in_threadpool(self.read_many, [request_id])
        if request_id in found:
            return self.answers.adopt(request_id, found[request_id])
        self.misses += 1
        if self.wait <= 0:
            return None
        room = self._waiting_room()
        if len(room) >= self.max_waiting:
            self.turned_away += 1
            return None
        return await room.wait_for(request_id, self.wait)

    def _waiting_room(self) -> _WaitingRoom:
        """The room of the running event loop (one in a server; tests may run several in turn)."""
        loop = asyncio.get_running_loop()
        if self._room is None or self._room[0] is not loop:
            self._room = (loop, _WaitingRoom(self))
        return self._room[1]

    def read_many(self, request_ids: list[str]) -> dict[str, Answer]:
        """The logged requests among ``request_ids``, with their clicks: one query on a miss, two on a hit."""
        found: dict[str, Answer] = {}
        with self.engine.connect() as conn:
            for chunk in in_chunks(request_ids):
                rows = conn.execute(
                    select(request_log.c.request_id, request_log.c.top_ids, request_log.c.pinned)
                    .where(request_log.c.request_id.in_(chunk))
                ).all()
                for row in rows:
                    found[row.request_id] = Answer(tuple(row.top_ids or ()), bool(row.pinned))
            if found:
                clicks = conn.execute(
                    select(feedback_log.c.request_id, feedback_log.c.record_id)
                    .where(feedback_log.c.request_id.in_(list(found)))
                )
                for request_id, record_id in clicks:
                    answer = found[request_id]
                    answer.clicked = (answer.clicked or set()) | {record_id}
        return found


class _WaitingRoom:
    """Clicks waiting for their request to reach the request log, re-checked together.

    One poller task per event loop looks for every waiting request in one query per
    ``poll`` (and in this replica's memory first), so the database sees a few queries a
    second however many clicks wait; it ends when the room is empty.
    """

    def __init__(self, judge: ClickJudge) -> None:
        self.judge = judge
        self._waiting: dict[str, list[asyncio.Future[Answer]]] = {}
        self._poller: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    async def wait_for(self, request_id: str, timeout: float) -> Answer | None:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(request_id, []).append(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="lockstep-click-waiting-room")
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout)
            return future.result() if done else None
        finally:
            self._leave(request_id, future)

    def _leave(self, request_id: str, future: asyncio.Future[Answer]) -> None:
        futures = self._waiting.get(request_id)
        if futures and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiting[request_id]

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.judge.poll)
            if not self._waiting:
                return
            try:
                found = await self._find(list(self._waiting))
            except Exception as exc:  # the database is away: the waiting clicks time out as unknown
                log.warning("re-checking %d waiting clicks failed: %s", len(self._waiting), summary(exc))
                continue
            for request_id, answer in found.items():
                for future in self._waiting.pop(request_id, []):
                    if not future.done():
                        future.set_result(answer)

    async def _find(self, request_ids: list[str]) -> dict[str, Answer]:
        """Answered here meanwhile (memory), else logged by any replica (one shared query)."""
        found = {rid: answer for rid in request_ids if (answer := self.judge.answers.get(rid)) is not None}
        rest = [rid for rid in request_ids if rid not in found]
        if rest:
            read = await run_in_threadpool(self.judge.read_many, rest)
            found.update({rid: self.judge.answers.adopt(rid, answer) for rid, answer in read.items()})
        return found
