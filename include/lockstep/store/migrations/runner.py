"""Bring a Lockstep database to the newest schema revision, from any number of processes.

Every first use of a database in a process (``lockstep.store.db.get_engine``), ``lockstep
db upgrade`` and the stacks' init call ``upgrade_database``. It reads the version row
without a lock (the usual case: already at the head, nothing to do); otherwise it takes the
migration lock, reads the version again and runs Alembic in that same transaction, so two
processes that start together migrate once and the second finds the work done:

- PostgreSQL: a transaction-level advisory lock (released by the commit or rollback),
  with DDL inside the transaction, so a failed upgrade leaves nothing half-written.
- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock before the first read
  (a deferred transaction that read first could not take it later in WAL mode).

A database made before migrations (tables from ``create_all``, no version row) is adopted:
revisions 0001 to the head run with each object created only when missing, and a check after
them refuses to commit if a table, column or index of ``schema.py`` is still missing.

The version table is ``lockstep_alembic_version``, not Alembic's default, so Lockstep's
tables may share a PostgreSQL database with MLflow's or Airflow's own Alembic history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text

from lockstep.core.errors import ConfigurationError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
# The newest revision in versions/ (a test checks it against Alembic's own view). Known
# without loading Alembic, so a process whose database is up to date never imports it.
HEAD = "0007"
VERSION_TABLE = "lockstep_alembic_version"
TABLE_PREFIX = "lockstep_"
ADOPT = "lockstep_adopt"  # Config attribute read by lockstep.store.migrations.adopt
# Read by the SQLite "begin" hook of lockstep.store.db: the statement that opens a transaction.
SQLITE_BEGIN_OPTION = "lockstep_sqlite_begin"
# pg_advisory_xact_lock key: the bytes of "Lockstep" as a (positive) bigint.
ADVISORY_LOCK_KEY = int.from_bytes(b"Lockstep", "big")
# How long a process waits for another's migration (PostgreSQL); the DDL itself has no limit.
LOCK_WAIT = "5min"


@dataclass(frozen=True)
class Upgrade:
    """What ``upgrade_database`` did: the revision before (None: none yet) and after."""

    before: str | None
    after: str
    adopted: bool = False

    @property
    def changed(self) -> bool:
        return self.adopted or self.before != self.after

    def describe(self) -> str:
        if self.adopted:
            return f"adopted a database made before migrations; now at revision {self.after} (head)"
        if not self.changed:
            return f"already at revision {self.after} (head)"
        return f"upgraded from {self.before or 'an empty database'} to revision {self.after} (head)"


def include_name(name: str | None, type_: str, _parents: dict[str, Any]) -> bool:
    """Only Lockstep's own tables: the database may also hold other applications' tables."""
    return type_ != "table" or ((name or "").startswith(TABLE_PREFIX) and name != VERSION_TABLE)


def head_revision() -> str:
    """The newest revision this Lockstep ships."""
    return HEAD


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database or one made before migrations."""
    with engine.connect() as conn:
        return _current(conn)


def upgrade_database(engine: Engine) -> Upgrade:
    """Upgrade ``engine``'s database to the head revision; idempotent and safe to race."""
    head = head_revision()
    if current_revision(engine) == head:
        return Upgrade(head, head)
    with _migration_lock(engine) as conn:
        before = _current(conn)  # again, under the lock: another process may have done it
        if before == head:
            return Upgrade(head, head)
        _check_known(before)
        adopt = before is None and bool(_lockstep_tables(conn))
        _run_alembic(conn, adopt)
        if adopt:
            _check_adopted(conn)
    return Upgrade(before, head, adopt)


def schema_differences(conn: Connection) -> list[Any]:
    """Alembic's diff between the database and ``schema.py`` (empty when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from lockstep.store.schema import metadata

    context = MigrationContext.configure(
        conn, opts={"include_name": include_name, "compare_type": True, "version_table": VERSION_TABLE}
    )
    return compare_metadata(context, metadata)


def alembic_config(conn: Connection, *, adopt: bool = False):
    """An Alembic ``Config`` that runs on ``conn`` in its transaction (no ini file needed).

    For ``alembic.command`` calls the runner does not make (tests go to a given revision
    or back down; the caller holds whatever lock it needs).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    config.attributes[ADOPT] = adopt
    return config


# --- the steps -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def script():
    """Alembic's view of versions/ (loaded only when something needs it)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


def _current(conn: Connection) -> str | None:
    """The version row, read with plain SQL (what Alembic reads, without importing it)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the database-wide migration lock."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL statement_timeout = 0"))
                conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            yield conn


def is_known(revision: str) -> bool:
    """Whether this Lockstep ships ``revision`` (one it does not was made by a newer Lockstep)."""
    return revision in {s.revision for s in script().walk_revisions()}


def _check_known(revision: str | None) -> None:
    if revision is None or is_known(revision):
        return
    from lockstep import __version__

    raise ConfigurationError(
        f"the Lockstep database is at schema revision {revision!r}, which Lockstep {__version__} "
        f"does not know (its newest is {head_revision()!r}): a newer Lockstep has migrated it. "
        "Run that version (or newer) against this database."
    )


def _lockstep_tables(conn: Connection) -> list[str]:
    return [t for t in inspect(conn).get_table_names() if include_name(t, "table", {})]


def _run_alembic(conn: Connection, adopt: bool) -> None:
    from alembic import command

    command.upgrade(alembic_config(conn, adopt=adopt), "head")


def _check_adopted(conn: Connection) -> None:
    """After adopting, nothing of ``schema.py`` may be missing; other differences are logged."""
    missing, other = [], []
    for diff in schema_differences(conn):
        kind = diff[0] if isinstance(diff, tuple) else diff[0][0]
        (missing if kind in ("add_table", "add_column", "add_index") else other).append(diff)
    if missing:
        raise ConfigurationError(
            f"the Lockstep database predates migrations and could not be adopted; still missing "
            f"after the upgrade: {missing}. Nothing was changed."
        )
    for diff in other:
        log.warning("adopted Lockstep database differs from the schema: %s", diff)
