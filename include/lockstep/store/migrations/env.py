"""Alembic's environment for Lockstep's tables.

The runner (``lockstep.store.migrations.runner``) hands over a connection that already
holds the migration lock inside its transaction, so this script neither connects nor
commits: the upgrade commits with the caller's transaction. Run by hand (``alembic -c
.../alembic.ini ...``), it connects to the configured database itself.
"""

from __future__ import annotations

from alembic import context

from lockstep.store.migrations.runner import VERSION_TABLE, include_name
from lockstep.store.schema import metadata

OPTIONS = {
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "include_name": include_name,
    "compare_type": True,
}


def run_offline() -> None:
    """Print the SQL instead of running it (``alembic upgrade head --sql``)."""
    from lockstep.core.config import settings

    context.configure(url=settings().database_url, literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)  # the runner's transaction: begin_transaction below is a no-op
        return
    from lockstep.store.db import get_engine

    with get_engine(migrate=False).connect() as own:
        _run(own)


def _run(connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
