"""The long-term holdback group (issue 13).

- ``lockstep_holdback``: the holdback, one row while it is set (version, percent, its own
  salt, when and by whom it was set).
- ``lockstep_request_log.holdback``: the request was answered by the holdback rule; such
  rows stay out of gate, drift and bandit statistics. Existing rows were not (server
  default false), so the column is added NOT NULL in one step on both back ends.

Adopting operations (``lockstep.store.migrations.adopt``): a database made by the current
``create_all`` already has both.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lockstep.store.migrations.adopt import add_column, create_table

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_table(
        "lockstep_holdback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("set_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    add_column(
        "lockstep_request_log",
        sa.Column("holdback", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("lockstep_request_log") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("holdback")
    op.drop_table("lockstep_holdback")
