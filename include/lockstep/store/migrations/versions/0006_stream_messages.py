"""The streaming loader's applied messages and per-group progress (issue 13).

- ``lockstep_stream_messages``: one row per applied message (source, broker message id),
  written in the transaction of its change, so a redelivered message changes nothing.
- ``lockstep_stream_consumers``: per (source, consumer group) the counts, the last applied
  message and sequence, and the broker's pending and lag figures (``lockstep_stream_lag``).

Only new tables, made with the adopting operations of ``lockstep.store.migrations.adopt``
(a database made by ``create_all`` of this schema already has them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lockstep.store.migrations.adopt import create_table

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID_LENGTH = 256


def upgrade() -> None:
    create_table(
        "lockstep_stream_messages",
        sa.Column("source", sa.String(length=256), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("record_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "message_id"),
    )
    create_table(
        "lockstep_stream_consumers",
        sa.Column("source", sa.String(length=256), nullable=False),
        sa.Column("group_name", sa.String(length=128), nullable=False),
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("dead_lettered", sa.BigInteger(), nullable=False),
        sa.Column("last_message_id", sa.String(length=128), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("last_applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pending", sa.BigInteger(), nullable=True),
        sa.Column("lag", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "group_name"),
    )


def downgrade() -> None:
    op.drop_table("lockstep_stream_consumers")
    op.drop_table("lockstep_stream_messages")
