"""An index on ``lockstep_stream_messages.applied_at``: the retention deletes by age.

The streaming loader keeps one row per applied message so that a redelivery changes
nothing. A broker redelivers only a message that is still pending (not acknowledged),
which it is for seconds to minutes after the commit; the rows are kept as long as the
request logs (``LOCKSTEP_LOG_RETENTION_DAYS``) and ``lockstep_maintenance`` deletes older
ones (``ops.retention.purge_logs``). Adopting operation: a database made by the current
``create_all`` already has the index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

from lockstep.store.migrations.adopt import create_index

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index("ix_lockstep_stream_messages_applied_at", "lockstep_stream_messages", ["applied_at"])


def downgrade() -> None:
    op.drop_index("ix_lockstep_stream_messages_applied_at", table_name="lockstep_stream_messages")
