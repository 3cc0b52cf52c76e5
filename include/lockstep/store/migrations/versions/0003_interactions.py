"""The recommender's data: interactions (its change log), the item catalogue, users.

- ``lockstep_interactions``: one row per interaction, ``seq`` from the counter row
  "interactions" of ``lockstep_sequences``; indexes by user and by item (a fold-in reads
  one user's or one item's rows) and a unique index on ``source_message_id`` (a retried
  message or a reloaded file is not stored twice).
- ``lockstep_items`` and ``lockstep_users``: the catalogue and the users, each with the
  sequence of its first interaction.

Only new tables, so nothing existing is touched. The operations are the adopting ones of
``lockstep.store.migrations.adopt``: a database made by ``create_all`` of this schema (no
version row) already has these tables, and adopting it runs every revision.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lockstep.store.migrations.adopt import adopting, create_index, create_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID_LENGTH = 256


def upgrade() -> None:
    create_table(
        "lockstep_interactions",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("item_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_message_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    create_index("ix_lockstep_interactions_user", "lockstep_interactions", ["user_id", "seq"])
    create_index("ix_lockstep_interactions_item", "lockstep_interactions", ["item_id", "seq"])
    _create_unique_index("ux_lockstep_interactions_source", "lockstep_interactions", ["source_message_id"])
    create_table(
        "lockstep_items",
        sa.Column("item_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("first_seen_seq", sa.BigInteger(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("item_id"),
    )
    create_table(
        "lockstep_users",
        sa.Column("user_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("first_seen_seq", sa.BigInteger(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table("lockstep_users")
    op.drop_table("lockstep_items")
    op.drop_table("lockstep_interactions")  # its indexes go with it


def _create_unique_index(name: str, table: str, columns: list[str]) -> None:
    """``adopt.create_index`` makes plain indexes; this one is unique (adopted the same way)."""
    if adopting() and name in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}:
        return
    op.create_index(name, table, columns, unique=True)
