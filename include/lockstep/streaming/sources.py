"""Where messages come from: Redis Streams or Kafka, behind one small interface.

A source hands out batches of messages for one consumer of one consumer group, takes
them back as acknowledged once the loader's transaction has committed, sends the ones
that can never be applied to a dead-letter stream, and says how far behind the group
is. Anything delivered and not acknowledged comes back after a crash:

- Redis: a consumer first re-reads its own pending entries (``XREADGROUP ... 0``), then
  claims entries that another consumer left pending longer than ``claim_idle_ms``
  (``XAUTOCLAIM``), then reads new ones (``>``). ``XACK`` acknowledges.
- Kafka: offsets are committed (synchronously) only by ``ack``; a restarted group member
  resumes from the committed offset.

The source's ``key`` (scheme, host, port, stream; never the group or the password) is
half of a message's identity in the store, so a redelivery is recognised whichever
group or consumer gets it.

A broker password reaches ``open_source`` as its ``password`` argument: the command line
reads it from ``LOCKSTEP_STREAM_PASSWORD`` or ``--password-file`` and refuses one inside
``--source``, where every user of the machine could read it (``ps``). Errors show a URL
with its password masked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import unquote, urlsplit

from lockstep.core.config import STREAM_PASSWORD_ENV, mask_url
from lockstep.core.errors import ConfigurationError, LockstepError
from lockstep.streaming.messages import Message

SCHEMES = ("redis", "kafka")
DEFAULT_PORTS = {"redis": 6379, "kafka": 9092}
MAX_KEY_CHARS = 256  # lockstep_stream_messages.source
# Kafka: how long a first read waits for the group to assign partitions. A member that died
# without leaving (SIGKILL) keeps its partitions until its session expires (session.timeout.ms,
# 45 s by default), so a restart right after a crash waits that long; 60 s was too short for it.
JOIN_TIMEOUT_S = 120


class SourceURLError(LockstepError, ValueError):
    """A ``--source`` URL that names no usable stream (a usage error)."""


@dataclass(frozen=True)
class SourceURL:
    scheme: str
    host: str
    port: int
    stream: str
    password: str | None = None
    db: int = 0
    username: str | None = None  # Redis ACL user (redis://USER:PASSWORD@HOST/STREAM)

    @property
    def key(self) -> str:
        """The stream's identity in the store: no password, no group."""
        return f"{self.scheme}://{self.host}:{self.port}/{self.stream}"


@dataclass(frozen=True)
class Backlog:
    """How far behind the group is: delivered but not acknowledged, and not yet delivered (None: unknown)."""

    pending: int | None
    lag: int | None


class Source(Protocol):
    key: str
    dead_letter_name: str

    def read(self, count: int, block_ms: int) -> list[Message]: ...

    def ack(self, ids: list[str]) -> None: ...

    def dead_letter(self, message: Message, reason: str) -> None: ...

    def backlog(self) -> Backlog: ...

    def close(self) -> None: ...


def parse_source_url(url: str) -> SourceURL:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT]/STREAM[?db=N]`` or ``kafka://HOST[:PORT]/TOPIC``, checked.

    A password in the URL is accepted here (a library caller's URL stays in its process);
    ``command_line_source_url`` refuses it. Errors name the URL with its password masked.
    """
    shown = mask_url(url)
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise SourceURLError(f"{shown!r}: the scheme must be redis:// or kafka://, got {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise SourceURLError(f"{shown!r}: no host; use {parts.scheme}://HOST[:PORT]/STREAM")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise SourceURLError(f"{shown!r}: the port is not a number from 0 to 65535") from exc
    stream = unquote(parts.path.lstrip("/"))
    if not stream:
        raise SourceURLError(f"{shown!r}: no stream name; use {parts.scheme}://HOST[:PORT]/STREAM")
    source = SourceURL(parts.scheme, parts.hostname, port, stream, unquote(parts.password or "") or None,
                       _db(url, parts.query), unquote(parts.username or "") or None)
    if len(source.key) > MAX_KEY_CHARS:
        raise SourceURLError(f"{shown!r}: host and stream name are {len(source.key)} characters; the limit is {MAX_KEY_CHARS}")
    if source.scheme == "kafka" and not _kafka_topic_ok(stream):
        raise SourceURLError(f"{shown!r}: {stream!r} is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)")
    return source


def command_line_source_url(url: str) -> SourceURL:
    """A ``--source`` URL, checked, which must not carry a password (it would show in ``ps``)."""
    where = parse_source_url(url)
    if where.password is not None:
        raise SourceURLError(
            f"{mask_url(url)!r}: the password is in the URL, where every user of the machine can read it in the "
            f"process list; leave it out of --source and give it in {STREAM_PASSWORD_ENV} or --password-file FILE")
    return where


def read_password_file(path: str) -> str:
    """The password in ``path``: its first line, without the line end; an unreadable or empty file is an error."""
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"--password-file {path!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    lines = text.splitlines()
    password = lines[0].rstrip("\r") if lines else ""
    if not password:
        raise ConfigurationError(f"--password-file {path!r}: the first line is empty; put the password there")
    return password


def open_source(
    url: str, *, group: str, consumer: str, dead_letter: str | None = None, field: str = "data",
    claim_idle_ms: int = 60_000, password: str | None = None,
) -> Source:
    """Connect to the stream of ``url`` as ``consumer`` of ``group`` (creating the group when missing).

    ``password`` (when given) is the broker's: it replaces one in the URL. Kafka sources
    connect without SASL, so a password for one is refused rather than ignored.
    """
    where = parse_source_url(url)
    if password is not None:
        where = replace(where, password=password)
    if where.scheme == "kafka" and where.password is not None:
        raise ConfigurationError(f"{where.key}: Kafka sources take no password (the loader connects without SASL); "
                                 f"unset {STREAM_PASSWORD_ENV} or --password-file for it")
    if where.scheme == "redis":
        return RedisSource(where, group=group, consumer=consumer, dead_letter=dead_letter, field=field,
                           claim_idle_ms=claim_idle_ms)
    return KafkaSource(where, group=group, consumer=consumer, dead_letter=dead_letter)


def _db(url: str, query: str) -> int:
    if not query:
        return 0
    key, _, value = query.partition("=")
    if key != "db" or not value.isdigit():
        raise SourceURLError(f"{mask_url(url)!r}: the only query option is db=N (a Redis database number)")
    return int(value)


def _kafka_topic_ok(name: str) -> bool:
    return len(name) <= 249 and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- Redis Streams --------------------------------------------------------------------------


class RedisSource:
    """One consumer of one consumer group on a Redis stream."""

    def __init__(self, where: SourceURL, *, group: str, consumer: str, dead_letter: str | None,
                 field: str = "data", claim_idle_ms: int = 60_000) -> None:
        import redis

        self.key = where.key
        self.stream = where.stream
        self.group = group
        self.consumer = consumer
        self.field = field.encode()
        self.dead_letter_name = dead_letter or f"{where.stream}:dead"
        self.claim_idle_ms = claim_idle_ms
        self._own_pending = True  # re-read what this consumer was given before a crash, first
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._client = redis.Redis(host=where.host, port=where.port, db=where.db, username=where.username,
                                   password=where.password, socket_connect_timeout=10, socket_timeout=None)
        self._connect()

    def _connect(self) -> None:
        import redis

        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise LockstepError(f"{self.key}: cannot create consumer group {self.group!r} ({exc})") from exc
        except redis.AuthenticationError as exc:
            raise ConfigurationError(f"Redis for {self.key} refused the login ({exc}); give the password in "
                                     f"{STREAM_PASSWORD_ENV} or --password-file FILE") from exc
        except redis.ConnectionError as exc:
            raise ConfigurationError(f"cannot reach Redis for {self.key} ({exc})") from exc

    def read(self, count: int, block_ms: int) -> list[Message]:
        """This consumer's own pending entries first, then entries claimed from idle consumers, then new ones."""
        with self._talking("read from"):
            return self._read(count, block_ms)

    @contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        """A Redis failure as one clear error: what was not done, and that a restart resumes."""
        import redis

        try:
            yield
        except redis.RedisError as exc:
            raise LockstepError(f"could not {doing} {self.key} ({type(exc).__name__}: {exc}); "
                                "unacknowledged messages are delivered again after a restart") from exc

    def _read(self, count: int, block_ms: int) -> list[Message]:
        if self._own_pending:
            entries = self._xreadgroup("0", count, None)
            if entries:
                return entries
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            claimed = self._claim(count)
            if claimed:
                return claimed
        new = self._xreadgroup(">", count, block_ms)
        if not new:
            self._next_claim = 0.0  # idle: look for abandoned entries at the next read
        return new

    def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list[Message]:
        reply = self._client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count, block=block_ms)
        entries = reply[0][1] if reply else []
        return [self._message(entry_id, fields) for entry_id, fields in entries]

    def _claim(self, count: int) -> list[Message]:
        """Entries pending longer than ``claim_idle_ms`` at another consumer (one that crashed), now ours."""
        cursor, entries, *_ = self._client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor, count=count)
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if self._claim_cursor == "0-0":  # a full pass over the pending list: wait a while before the next
            self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
        return [self._message(entry_id, fields) for entry_id, fields in entries]

    def _message(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> Message:
        return Message(entry_id.decode(), (fields or {}).get(self.field))

    def ack(self, ids: list[str]) -> None:
        with self._talking("acknowledge a batch on"):
            for start in range(0, len(ids), 1000):
                self._client.xack(self.stream, self.group, *ids[start : start + 1000])

    def dead_letter(self, message: Message, reason: str) -> None:
        fields: dict[str, str | bytes] = {
            "reason": reason, "source": self.key, "message_id": message.id, "group": self.group,
            "consumer": self.consumer, "at": _now_iso(),
        }
        if message.payload is not None:
            fields[self.field.decode()] = message.payload
        with self._talking(f"dead-letter {message.id} of"):
            self._client.xadd(self.dead_letter_name, fields)

    def backlog(self) -> Backlog:
        """The group's ``pending`` and ``lag`` from ``XINFO GROUPS`` (lag is None when Redis cannot tell)."""
        with self._talking("read the group's figures of"):
            groups = self._client.xinfo_groups(self.stream)
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == self.group:
                lag = info.get("lag")
                return Backlog(int(info["pending"]), None if lag is None else int(lag))
        return Backlog(None, None)

    def close(self) -> None:
        self._client.close()


# --- Kafka ---------------------------------------------------------------------------------


class KafkaSource:
    """One member of a Kafka consumer group (confluent-kafka); offsets committed only by ``ack``."""

    def __init__(self, where: SourceURL, *, group: str, consumer: str, dead_letter: str | None,
                 settings: Mapping[str, object] | None = None) -> None:
        """``settings``: more librdkafka consumer settings (e.g. ``session.timeout.ms``), over the loader's."""
        from confluent_kafka import Consumer, Producer

        self.key = where.key
        self.topic = where.stream
        self.group = group
        self.consumer = consumer
        self.dead_letter_name = dead_letter or f"{where.stream}.dead"  # ':' is not allowed in a topic name
        servers = f"{where.host}:{where.port}"
        self._consumer = Consumer({**kafka_consumer_config(servers, group, consumer), **(settings or {})})
        self._producer = Producer({"bootstrap.servers": servers, "client.id": f"{consumer}-dead-letter"})
        self._read: dict[str, tuple[int, int]] = {}  # message id -> (partition, offset), until acknowledged
        self._undelivered: list[str] = []  # dead letters the broker refused since the last ack
        self._consumer.subscribe([self.topic])

    def read(self, count: int, block_ms: int) -> list[Message]:
        from confluent_kafka import KafkaError

        messages = []
        for record in self._consume(count, block_ms):
            error = record.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise LockstepError(f"{self.key}: Kafka error ({error.str()})")
            message_id = f"{record.partition()}-{record.offset()}"
            self._read[message_id] = (record.partition(), record.offset())
            messages.append(Message(message_id, record.value()))
        return messages

    def _consume(self, count: int, block_ms: int) -> list:
        """One ``consume`` call, after the group has given this member its partitions (a first read
        during the join would look like an idle stream)."""
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:
            with self._talking("read from"):
                records = self._consumer.consume(num_messages=count, timeout=block_ms / 1000)
                assignment = self._consumer.assignment()
            if records or (assignment and not self._behind(assignment)):
                return records
            if time.monotonic() > deadline:
                if assignment:  # messages wait on the broker but none arrived: the caller reads again
                    return records
                raise LockstepError(
                    f"{self.key}: the group {self.group!r} assigned no partition of {self.topic!r} within "
                    f"{JOIN_TIMEOUT_S} s; is the broker reachable and does the topic exist?")

    def _behind(self, assignment: list) -> bool:
        """Whether an assigned partition holds messages not yet given to this member.

        Right after a join (or a restart) the first fetch can take longer than one short read;
        an empty read then is not an idle topic, and ``--until-idle`` must not stop on it.
        """
        with self._talking("read the offsets of"):
            for where in self._consumer.position(assignment):
                low, high = self._consumer.get_watermark_offsets(where, timeout=10, cached=False)
                offset = where.offset
                if offset < 0:  # nothing fetched yet: the group's committed offset, else the earliest
                    [committed] = self._consumer.committed([where], timeout=10)
                    offset = committed.offset
                if max(offset, low) < high:
                    return True
        return False

    @contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        """A Kafka failure as one clear error: what was not done, and that a restart resumes."""
        from confluent_kafka import KafkaException

        try:
            yield
        except KafkaException as exc:
            raise LockstepError(f"could not {doing} {self.key} ({exc}); "
                                "uncommitted messages are delivered again after a restart") from exc

    def ack(self, ids: list[str]) -> None:
        """Flush dead letters, then commit each partition's offset past its highest acknowledged message."""
        from confluent_kafka import TopicPartition

        self._check_dead_letters_delivered()
        highest: dict[int, int] = {}
        for message_id in ids:
            partition, offset = self._read.pop(message_id)
            highest[partition] = max(offset, highest.get(partition, -1))
        if highest:
            with self._talking("commit offsets on"):
                self._consumer.commit(offsets=[TopicPartition(self.topic, p, o + 1) for p, o in sorted(highest.items())],
                                      asynchronous=False)

    def dead_letter(self, message: Message, reason: str) -> None:
        headers = {"reason": reason, "source": self.key, "message_id": message.id, "group": self.group,
                   "consumer": self.consumer, "at": _now_iso()}
        self._producer.produce(self.dead_letter_name, value=message.payload, headers=list(headers.items()),
                               on_delivery=self._delivered)

    def _delivered(self, error, _message) -> None:
        if error is not None:
            self._undelivered.append(str(error))

    def _check_dead_letters_delivered(self) -> None:
        """Offsets move past a bad message only once its dead letter is on the broker."""
        waiting = self._producer.flush(30)
        failed, self._undelivered = self._undelivered, []
        if waiting or failed:
            raise LockstepError(
                f"{self.key}: {waiting + len(failed)} dead letter(s) to {self.dead_letter_name!r} were not delivered "
                f"({'; '.join(failed[:3]) or 'timed out'}); offsets not committed, a restart delivers the batch again")

    def backlog(self) -> Backlog:
        """Per assigned partition: high watermark minus the committed offset, summed."""
        assignment = self._consumer.assignment()
        if not assignment:
            return Backlog(len(self._read), None)
        lag = 0
        with self._talking("read the group's offsets of"):
            for committed in self._consumer.committed(assignment, timeout=10):
                low, high = self._consumer.get_watermark_offsets(committed, timeout=10, cached=False)
                lag += high - max(committed.offset, low)
        return Backlog(len(self._read), lag)

    def close(self) -> None:
        self._producer.flush(30)
        self._consumer.close()


def kafka_consumer_config(servers: str, group: str, consumer: str) -> dict[str, object]:
    """No auto-commit (``ack`` commits after the store's transaction); a new group starts at the earliest offset."""
    return {
        "bootstrap.servers": servers,
        "group.id": group,
        "client.id": consumer,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }
