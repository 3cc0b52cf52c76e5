"""The tables of the Lockstep database, all in one MetaData.

One place for the whole schema: the Alembic revisions in ``lockstep.store.migrations``
build exactly these tables on SQLite and PostgreSQL (a test compares them), so a change
here comes with a new revision. The change log is the source of truth for every index
version: records hold only the latest state (with tombstones), changes hold every write
in sequence order.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

ID_LENGTH = 256

# A single counter row per named sequence. Writers increment it inside their
# transaction; the row lock serialises them, so commit order equals sequence order
# and a reader tailing "changes after N" can never skip a sequence that commits late.
sequences = Table(
    "lockstep_sequences",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

records = Table(
    "lockstep_records",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("text", Text, nullable=True),  # None once deleted (tombstone)
    # JSON as text, serialised once per write by the store: a JSON column would encode
    # it again per table and per row, which halves bulk-load throughput.
    Column("metadata", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
)
Index("ix_lockstep_records_live", records.c.deleted, records.c.id)

changes = Table(
    "lockstep_changes",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("record_id", String(ID_LENGTH), nullable=False),
    Column("op", String(8), nullable=False),  # "upsert" | "delete"
    Column("text", Text, nullable=True),
    Column("metadata", Text, nullable=True),  # JSON as text, as in records
    Column("at", DateTime(timezone=True), nullable=False),
)
Index("ix_lockstep_changes_record", changes.c.record_id, changes.c.seq)

# --- serving: routing table -------------------------------------------------------

slots = Table(
    "lockstep_slots",
    metadata,
    Column("model_version", String(64), primary_key=True),
    Column("model_uri", String(512), nullable=False),
    Column("index_location", String(1024), nullable=False),
    Column("fingerprint", String(128), nullable=False),
    Column("state", String(16), nullable=False),  # loading|ready|live|draining|retired
    Column("weight", Integer, nullable=False, default=0),
    Column("shadow", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=True),
)

routing_state = Table(
    "lockstep_routing_state",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("generation", BigInteger, nullable=False),
    Column("salt", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

routing_history = Table(
    "lockstep_routing_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("generation", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("weights", JSON, nullable=False),  # {model_version: weight}
    Column("shadow", JSON, nullable=True),  # [model_version, ...]
    Column("reason", Text, nullable=True),
    Column("actor", String(128), nullable=True),
)

# --- serving: request, shadow and feedback logs -------------------------------------

request_log = Table(
    "lockstep_request_log",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("user_id", String(256), nullable=True),
    Column("query", Text, nullable=True),
    Column("k", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Column("top_ids", JSON, nullable=False),
    Column("replica", String(128), nullable=True),
    # A request pinned with X-Lockstep-Pin is answered and logged, but any client can
    # send that header: gate, drift and bandit statistics leave pinned rows out.
    Column("pinned", Boolean, nullable=False, default=False, server_default=false()),
)
Index("ix_lockstep_request_log_at", request_log.c.at, request_log.c.model_version)

shadow_log = Table(
    "lockstep_shadow_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("live_version", String(64), nullable=False),
    Column("shadow_version", String(64), nullable=False),
    Column("live_top_ids", JSON, nullable=False),
    Column("shadow_top_ids", JSON, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("error", Text, nullable=True),
)
Index("ix_lockstep_shadow_log_at", shadow_log.c.at, shadow_log.c.shadow_version)

feedback_log = Table(
    "lockstep_feedback_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("record_id", String(ID_LENGTH), nullable=False),
    Column("event", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
Index("ix_lockstep_feedback_log_request", feedback_log.c.request_id)
Index("ix_lockstep_feedback_log_at", feedback_log.c.at)  # retention deletes by age (lockstep.ops.retention)

# --- rollouts: one row per rollout, one per gate analysis or decision ---------------
# (added by the rollout issue; read by the Airflow UI page of the Lockstep plugin)

rollouts = Table(
    "lockstep_rollouts",
    metadata,
    Column("rollout_id", String(250), primary_key=True),  # the Airflow run id, or any caller's id
    Column("model_version", String(64), nullable=False),  # the candidate
    Column("baseline_version", String(64), nullable=True),  # the champion it is compared with
    Column("strategy", String(32), nullable=False),
    Column("status", String(32), nullable=False),  # running|promoted|rolled_back|shadow_only|skipped
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=True),
    Column("config", JSON, nullable=True),
    Column("figures", JSON, nullable=True),
)

rollout_steps = Table(
    "lockstep_rollout_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(250), nullable=False),
    Column("step", String(64), nullable=False),  # e.g. "shadow", "canary 5%", "finalize"
    Column("phase", String(32), nullable=False),  # review|shadow|canary|ab|bandit|blue_green|finalize|verify|rollback|retention
    Column("look", Integer, nullable=False, default=1),  # 2, 3, ... when an inconclusive bake was extended
    Column("weight", Integer, nullable=True),  # candidate's traffic percent during the step
    Column("verdict", String(16), nullable=False),  # pass|fail|inconclusive|info
    Column("action", String(16), nullable=True),  # promote|extend|rollback
    Column("reason", Text, nullable=True),
    Column("gates", JSON, nullable=True),  # [GateResult.to_dict(), ...]
    Column("figures", JSON, nullable=True),
    Column("window_start", DateTime(timezone=True), nullable=True),
    Column("window_end", DateTime(timezone=True), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
)
Index("ix_lockstep_rollout_steps_rollout", rollout_steps.c.rollout_id, rollout_steps.c.id)

# Where a rollout's executor keeps its place between two looks (the task holds no worker
# while it waits, so the state cannot live in memory). One row per rollout.
rollout_state = Table(
    "lockstep_rollout_state",
    metadata,
    Column("rollout_id", String(250), primary_key=True),
    Column("state", JSON, nullable=False),  # {"generation": last routing generation written, "<phase>": {...}}
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# --- recommender: interactions, the item catalogue and users (issue 12, migration 0003) ---
# The interactions table is the recommender's change log: ``seq`` is taken from the
# counter row "interactions" of lockstep_sequences (not an autoincrement), so sequences
# commit in order and a fold-in catching up on "interactions after N" never skips one.

interactions = Table(
    "lockstep_interactions",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", String(ID_LENGTH), nullable=False),
    Column("item_id", String(ID_LENGTH), nullable=False),
    Column("value", Float, nullable=False),
    Column("timestamp", BigInteger, nullable=False),  # event time, seconds since the epoch (UTC)
    Column("recorded_at", DateTime(timezone=True), nullable=False),  # when the store wrote it
    # Who sent it and under which id (a file row's content hash, a message id): a second
    # write with the same id is the same event and is not stored twice.
    Column("source_message_id", String(128), nullable=True),
)
Index("ix_lockstep_interactions_user", interactions.c.user_id, interactions.c.seq)
Index("ix_lockstep_interactions_item", interactions.c.item_id, interactions.c.seq)
Index("ux_lockstep_interactions_source", interactions.c.source_message_id, unique=True)

items = Table(
    "lockstep_items",
    metadata,
    Column("item_id", String(ID_LENGTH), primary_key=True),
    Column("title", Text, nullable=True),
    Column("metadata", Text, nullable=True),  # JSON as text, as in records
    Column("first_seen_seq", BigInteger, nullable=True),  # its first interaction; None: none yet
    Column("added_at", DateTime(timezone=True), nullable=False),
)

users = Table(
    "lockstep_users",
    metadata,
    Column("user_id", String(ID_LENGTH), primary_key=True),
    Column("metadata", Text, nullable=True),  # JSON as text
    Column("first_seen_seq", BigInteger, nullable=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
)

# --- holdback (issue 13, migration 0005) ---
# The long-term holdback group: one row (id 1) while a holdback is set. A user whose hash
# with the holdback's own salt falls under ``percent`` is always served by ``model_version``;
# the salt is not the routing salt, so a rollout that re-salts the routing never moves them.

holdback = Table(
    "lockstep_holdback",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("model_version", String(64), nullable=False),
    Column("percent", Float, nullable=False),  # share of users with a user id, 0 < percent <= 50
    Column("salt", String(64), nullable=False),
    Column("set_at", DateTime(timezone=True), nullable=False),
    Column("set_by", String(128), nullable=True),
)

# A request the holdback rule answered (a holdback user on the holdback version): logged,
# left out of gate, drift and bandit statistics, counted only by the holdback's lift report.
request_log.append_column(
    Column("holdback", Boolean, nullable=False, default=False, server_default=false())
)

# --- streaming loader (issue 13, migration 0006) ---
# One row per message the loader applied, written in the same transaction as its change:
# a redelivered message finds its row and changes nothing (at least once, applied once).
# The key is the source (broker and stream, not the consumer group) and the broker's id
# of the message, so two groups reading one stream into one database apply it once.

stream_messages = Table(
    "lockstep_stream_messages",
    metadata,
    Column("source", String(256), primary_key=True),  # e.g. redis://host:6379/records
    Column("message_id", String(128), primary_key=True),  # Redis entry id, Kafka partition-offset
    Column("seq", BigInteger, nullable=False),  # the change-log sequence the message made
    Column("record_id", String(ID_LENGTH), nullable=False),
    Column("op", String(8), nullable=False),  # "upsert" | "delete"
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
Index("ix_lockstep_stream_messages_applied_at", stream_messages.c.applied_at)  # retention (migration 0007)

# Per (source, consumer group): what the loader applied last and how far behind it is.
# Counters and the last message are written with each batch's transaction; pending and
# lag are read from the broker after the batch is acknowledged. Read by the serving
# app's /metrics (lockstep_stream_lag) and the Lockstep UI page.
stream_consumers = Table(
    "lockstep_stream_consumers",
    metadata,
    Column("source", String(256), primary_key=True),
    Column("group_name", String(128), primary_key=True),
    Column("consumer", String(128), nullable=False),  # the consumer that wrote last
    Column("applied", BigInteger, nullable=False),
    Column("duplicates", BigInteger, nullable=False),  # redeliveries found already applied
    Column("dead_lettered", BigInteger, nullable=False),
    Column("last_message_id", String(128), nullable=True),
    Column("last_seq", BigInteger, nullable=True),
    Column("last_applied_at", DateTime(timezone=True), nullable=True),
    Column("pending", BigInteger, nullable=True),  # delivered, not yet acknowledged
    Column("lag", BigInteger, nullable=True),  # not yet delivered to the group (None: unknown)
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# --- batch serving (issue 13, migration 0004) ---
# Top-k per key precomputed by lockstep_batch for each serving version (the operational
# table other systems read through GET /related and GET /recommendations). ``kind`` is
# "related" (search: key = record id) or "recommendations" (recommender: key = user id).
# One state row per (kind, version) says whether its rows are complete and through which
# input sequence (change-log seq for search, interaction seq for the recommender): a
# version takes batch traffic only while its state is complete.

batch_results = Table(
    "lockstep_batch_results",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("model_version", String(64), primary_key=True),
    Column("key", String(ID_LENGTH), primary_key=True),
    Column("results", Text, nullable=False),  # JSON text: [{"id": str, "score": float}, ...], best first
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Column("input_seq", BigInteger, nullable=False),  # the inputs were read through this sequence
)

batch_state = Table(
    "lockstep_batch_state",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("model_version", String(64), primary_key=True),
    Column("fingerprint", String(128), nullable=False),  # a re-registered version with another space starts over
    Column("k", Integer, nullable=False),
    Column("complete", Boolean, nullable=False, default=False),
    Column("through_seq", BigInteger, nullable=False),  # every row reflects the inputs through this sequence
    Column("rows", BigInteger, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)
