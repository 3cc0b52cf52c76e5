"""Baseline: Lockstep's tables as the 2026-11-24 release created them with create_all.

Record store and change log, routing table and history, serving logs, rollout records.
Written with the adopting operations of ``lockstep.store.migrations.adopt`` so that a
database made by ``create_all`` (which has some or all of these tables) can be adopted.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lockstep.store.migrations.adopt import create_index, create_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID_LENGTH = 256


def upgrade() -> None:
    _record_store()
    _routing()
    _serving_logs()
    _rollouts()


def downgrade() -> None:
    for table in ("lockstep_rollout_steps", "lockstep_rollouts", "lockstep_feedback_log",
                  "lockstep_shadow_log", "lockstep_request_log", "lockstep_routing_history",
                  "lockstep_routing_state", "lockstep_slots", "lockstep_changes",
                  "lockstep_records", "lockstep_sequences"):
        op.drop_table(table)


def _record_store() -> None:
    create_table(
        "lockstep_sequences",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    create_table(
        "lockstep_records",
        sa.Column("id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    create_index("ix_lockstep_records_live", "lockstep_records", ["deleted", "id"])
    create_table(
        "lockstep_changes",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("record_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    create_index("ix_lockstep_changes_record", "lockstep_changes", ["record_id", "seq"])


def _routing() -> None:
    create_table(
        "lockstep_slots",
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("model_uri", sa.String(length=512), nullable=False),
        sa.Column("index_location", sa.String(length=1024), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("model_version"),
    )
    create_table(
        "lockstep_routing_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    create_table(
        "lockstep_routing_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("shadow", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def _serving_logs() -> None:
    create_table(
        "lockstep_request_log",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=256), nullable=True),
        sa.Column("query", sa.Text(), nullable=True),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("top_ids", sa.JSON(), nullable=False),
        sa.Column("replica", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("request_id"),
    )
    create_index("ix_lockstep_request_log_at", "lockstep_request_log", ["at", "model_version"])
    create_table(
        "lockstep_shadow_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("live_version", sa.String(length=64), nullable=False),
        sa.Column("shadow_version", sa.String(length=64), nullable=False),
        sa.Column("live_top_ids", sa.JSON(), nullable=False),
        sa.Column("shadow_top_ids", sa.JSON(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    create_index("ix_lockstep_shadow_log_at", "lockstep_shadow_log", ["at", "shadow_version"])
    create_table(
        "lockstep_feedback_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    create_index("ix_lockstep_feedback_log_request", "lockstep_feedback_log", ["request_id"])


def _rollouts() -> None:
    create_table(
        "lockstep_rollouts",
        sa.Column("rollout_id", sa.String(length=250), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("baseline_version", sa.String(length=64), nullable=True),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("rollout_id"),
    )
    create_table(
        "lockstep_rollout_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=250), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("look", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    create_index("ix_lockstep_rollout_steps_rollout", "lockstep_rollout_steps", ["rollout_id", "id"])
