"""The loop: read a batch, apply it in one transaction, then acknowledge it.

Per batch, in one transaction of the record store: take the change log's lock, leave out
the messages already applied (their ids are in ``lockstep_stream_messages``), write the
rest with the store's own write path (``write_changes``: the rows ``PUT``/``DELETE``
write, one sequence per message, in stream order), store each message's id with its
sequence, and add the batch to the group's progress row. Only after the commit are the
bad messages sent to the dead-letter stream and the whole batch acknowledged. A crash
anywhere before the acknowledgement means the broker delivers the batch again, and the
message ids make that redelivery change nothing: at least once, applied once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, select
from sqlalchemy.exc import SQLAlchemyError

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.core.faults import maybe_fail
from lockstep.store.records import DELETE, PendingWrite, RecordStore, lock_change_log, write_changes
from lockstep.store.schema import records, stream_messages
from lockstep.streaming import status
from lockstep.streaming.messages import BadMessage, Message, parse_change
from lockstep.streaming.sources import Source

IN_CHUNK = 500  # ids per IN (...) query
BACKLOG_EVERY_S = 1.0  # how often a busy loader asks the broker for pending and lag (and writes them)
_REMEMBER_SQL = (
    "INSERT INTO lockstep_stream_messages (source, message_id, seq, record_id, op, applied_at) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
)


@dataclass(frozen=True)
class ConsumeOptions:
    batch: int = 500  # messages per read and per transaction
    max_messages: int | None = None  # stop after this many (applied, duplicate or dead)
    until_idle: bool = False  # stop when a read finds nothing new
    block_ms: int = 1000  # how long one read waits for new messages


@dataclass
class ConsumeReport:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    last_seq: int | None = None
    pending: int | None = None
    lag: int | None = None
    stopped: str = ""

    def describe(self) -> str:
        behind = f"; pending {_figure(self.pending)}, lag {_figure(self.lag)}"
        return (f"{self.read:,} messages read: {self.applied:,} applied, {self.duplicates:,} already applied, "
                f"{self.dead_lettered:,} dead-lettered in {self.batches:,} batches" + behind)


@dataclass
class BatchOutcome:
    applied: list[tuple[Message, int]] = field(default_factory=list)  # (message, its sequence)
    duplicates: list[Message] = field(default_factory=list)
    dead: list[tuple[Message, str]] = field(default_factory=list)  # (message, reason)


def _figure(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


class StreamLoader:
    """One consumer of one group, writing into one record store."""

    def __init__(self, source: Source, store: RecordStore, *, group: str, consumer: str, field: str = "data") -> None:
        self.source = source
        self.store = store
        self.group = group
        self.consumer = consumer
        self.field = field

    def run(self, options: ConsumeOptions, stop: threading.Event | None = None,
            progress: Callable[[ConsumeReport], None] | None = None) -> ConsumeReport:
        """Consume until ``stop`` is set, ``max_messages`` were handled, or (``until_idle``) nothing is new."""
        stop = stop or threading.Event()
        report = ConsumeReport()
        next_backlog = 0.0
        while not stop.is_set():
            limit = options.batch if options.max_messages is None else min(options.batch, options.max_messages - report.read)
            if limit <= 0:
                report.stopped = f"handled --max-messages {options.max_messages}"
                break
            messages = self.source.read(limit, options.block_ms)
            if messages:
                self._count(report, self.apply(messages))
            if time.monotonic() >= next_backlog:  # the broker's figures, at most once per BACKLOG_EVERY_S
                self._refresh_backlog(report)
                next_backlog = time.monotonic() + BACKLOG_EVERY_S
            if progress is not None:
                progress(report)
            if not messages and options.until_idle:
                report.stopped = "idle: nothing new to read"
                break
        self._refresh_backlog(report)  # the figures as the consumer leaves them
        report.stopped = report.stopped or "stopped on request"
        return report

    def apply(self, messages: list[Message]) -> BatchOutcome:
        """Apply one batch in one transaction; dead-letter the bad ones and acknowledge all after the commit."""
        messages = list({m.id: m for m in messages}.values())  # a broker may repeat an entry in one read
        checked, outcome = self._parse(messages)
        try:
            self._write(checked, outcome)
        except SQLAlchemyError as exc:
            raise LockstepError(
                f"the database refused a batch of {len(messages)} messages from {self.source.key}; nothing of it "
                f"was written or acknowledged, so a restart applies it again ({type(exc).__name__}: {exc})"
            ) from exc
        maybe_fail("stream.after_commit")  # tests: a crash after the commit, before the acknowledgement
        for message, reason in outcome.dead:
            self.source.dead_letter(message, reason)
        self.source.ack([m.id for m in messages])
        return outcome

    def _write(self, checked: list[tuple[Message, PendingWrite]], outcome: BatchOutcome) -> None:
        """The batch's one transaction: changes, their message ids and the group's progress row."""
        with self.store.engine.begin() as conn:
            lock_change_log(conn)
            fresh = self._leave_out_applied(conn, checked, outcome)
            writes = self._check_deletes(conn, fresh, outcome)
            seqs = write_changes(conn, [w for _, w in writes])
            outcome.applied = [(m, s) for (m, _), s in zip(writes, seqs, strict=True)]
            self._remember(conn, writes, seqs)
            last = outcome.applied[-1] if outcome.applied else None
            status.record_batch(
                conn, source=self.source.key, group=self.group, consumer=self.consumer,
                applied=len(outcome.applied), duplicates=len(outcome.duplicates), dead=len(outcome.dead),
                last_message_id=last[0].id if last else None, last_seq=last[1] if last else None,
            )

    def _parse(self, messages: list[Message]) -> tuple[list[tuple[Message, PendingWrite]], BatchOutcome]:
        checked, outcome = [], BatchOutcome()
        for message in messages:
            try:
                checked.append((message, parse_change(message.payload, self.field)))
            except BadMessage as exc:
                outcome.dead.append((message, str(exc)))
        return checked, outcome

    def _leave_out_applied(self, conn: Connection, checked: list[tuple[Message, PendingWrite]],
                           outcome: BatchOutcome) -> list[tuple[Message, PendingWrite]]:
        """Messages whose id is already stored were applied before a crash: they change nothing now."""
        seen = _applied_ids(conn, self.source.key, [m.id for m, _ in checked])
        outcome.duplicates = [m for m, _ in checked if m.id in seen]
        return [(m, w) for m, w in checked if m.id not in seen]

    def _check_deletes(self, conn: Connection, fresh: list[tuple[Message, PendingWrite]],
                       outcome: BatchOutcome) -> list[tuple[Message, PendingWrite]]:
        """A delete must name a live record, as ``DELETE /records`` does (earlier messages of the batch count)."""
        live = _live_ids(conn, [w.record_id for m, w in fresh if w.op == DELETE])
        writes = []
        for message, write in fresh:
            if write.op == DELETE:
                if write.record_id not in live:
                    outcome.dead.append((message, f"no live record with id {write.record_id!r}"))
                    continue
                live.discard(write.record_id)
            else:
                live.add(write.record_id)
            writes.append((message, write))
        return writes

    def _remember(self, conn: Connection, writes: list[tuple[Message, PendingWrite]], seqs: list[int]) -> None:
        if not writes:
            return
        now = clock.now()
        postgres = conn.dialect.name == "postgresql"
        at = now if postgres else now.strftime("%Y-%m-%d %H:%M:%S.%f")  # as the store's bulk writes stamp rows
        rows = [(self.source.key, m.id, s, w.record_id, w.op, at) for (m, w), s in zip(writes, seqs, strict=True)]
        cursor = conn.connection.driver_connection.cursor()  # the DB-API, as RecordStore's bulk writes
        try:
            cursor.executemany(_REMEMBER_SQL.format(p="%s" if postgres else "?"), rows)
        finally:
            cursor.close()

    def _count(self, report: ConsumeReport, outcome: BatchOutcome) -> None:
        report.batches += 1
        report.read += len(outcome.applied) + len(outcome.duplicates) + len(outcome.dead)
        report.applied += len(outcome.applied)
        report.duplicates += len(outcome.duplicates)
        report.dead_lettered += len(outcome.dead)
        if outcome.applied:
            report.last_seq = outcome.applied[-1][1]

    def _refresh_backlog(self, report: ConsumeReport) -> None:
        backlog = self.source.backlog()
        report.pending, report.lag = backlog.pending, backlog.lag
        status.record_backlog(self.store.engine, source=self.source.key, group=self.group, consumer=self.consumer,
                              pending=backlog.pending, lag=backlog.lag)


def _applied_ids(conn: Connection, source: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), IN_CHUNK):
        found.update(conn.execute(
            select(stream_messages.c.message_id).where(
                stream_messages.c.source == source, stream_messages.c.message_id.in_(ids[start : start + IN_CHUNK]))
        ).scalars())
    return found


def _live_ids(conn: Connection, ids: list[str]) -> set[str]:
    wanted = list(dict.fromkeys(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), IN_CHUNK):
        found.update(conn.execute(
            select(records.c.id).where(records.c.id.in_(wanted[start : start + IN_CHUNK]), ~records.c.deleted)
        ).scalars())
    return found
