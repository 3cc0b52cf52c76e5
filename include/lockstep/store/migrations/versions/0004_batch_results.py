"""Batch serving's operational table (issue 13): precomputed top-k per key and per-version state.

- ``lockstep_batch_results``: one row per (kind, model version, key) with the top-k ids and
  scores as JSON text, when they were computed and through which input sequence.
- ``lockstep_batch_state``: one row per (kind, model version): complete or not, through
  which sequence, how many rows, the fingerprint and k they were computed with.

Only new tables, so nothing existing is touched; created with the adopting operations of
``lockstep.store.migrations.adopt`` (a database made by ``create_all`` of this schema
already has them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lockstep.store.migrations.adopt import create_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID_LENGTH = 256


def upgrade() -> None:
    create_table(
        "lockstep_batch_results",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("results", sa.Text(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "model_version", "key"),
    )
    create_table(
        "lockstep_batch_state",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("through_seq", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "model_version"),
    )


def downgrade() -> None:
    op.drop_table("lockstep_batch_state")
    op.drop_table("lockstep_batch_results")
