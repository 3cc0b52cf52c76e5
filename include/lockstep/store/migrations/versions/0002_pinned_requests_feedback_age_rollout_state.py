"""Pinned requests, feedback retention by age, rollout executor state (the 2026-11-29 release).

- ``lockstep_request_log.pinned``: a request pinned with X-Lockstep-Pin is logged but left
  out of gate, drift and bandit statistics. Existing rows were not pinned (server default
  false), so the column is added NOT NULL in one step on both back ends.
- ``ix_lockstep_feedback_log_at``: retention deletes feedback by age.
- ``lockstep_rollout_state``: where a rollout's executor keeps its place between looks.

Adopting operations (``lockstep.store.migrations.adopt``): a database made by ``create_all``
may already have any of the three.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lockstep.store.migrations.adopt import add_column, create_index, create_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_column(
        "lockstep_request_log",
        sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    create_index("ix_lockstep_feedback_log_at", "lockstep_feedback_log", ["at"])
    create_table(
        "lockstep_rollout_state",
        sa.Column("rollout_id", sa.String(length=250), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id"),
    )


def downgrade() -> None:
    op.drop_table("lockstep_rollout_state")
    op.drop_index("ix_lockstep_feedback_log_at", table_name="lockstep_feedback_log")
    with op.batch_alter_table("lockstep_request_log") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("pinned")
