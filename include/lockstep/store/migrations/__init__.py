"""Alembic migrations for Lockstep's own tables, shipped inside the package.

An installed Lockstep migrates its database itself: on the first use in a process
(``lockstep.store.db.get_engine``), with ``lockstep db upgrade``, and at the stacks' init.
``runner`` does the locking and the adoption of databases made before migrations;
``versions/`` holds the revisions; ``schema.py`` stays the one description of the tables
(a test checks that the revisions build exactly it).
"""

from lockstep.store.migrations.runner import (
    Upgrade,
    current_revision,
    head_revision,
    schema_differences,
    upgrade_database,
)

__all__ = ["Upgrade", "current_revision", "head_revision", "schema_differences", "upgrade_database"]
