"""Alembic migrations of Lockstep's tables, on the SQLite default and a real PostgreSQL.

The revisions build exactly ``schema.py``; a database of the previous release upgrades
with its rows (under migrations, and made by ``create_all`` before them); a database that
cannot be adopted or that a newer Lockstep migrated is refused with nothing changed; and
processes that start together on a fresh database migrate it once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Column, Index, MetaData, Table, create_engine, insert, inspect, select, text

from lockstep.core.errors import ConfigurationError
from lockstep.store.db import _normalise, get_engine
from lockstep.store.migrations import (
    current_revision,
    head_revision,
    schema_differences,
    upgrade_database,
)
from lockstep.store.migrations.runner import (
    ADVISORY_LOCK_KEY,
    MIGRATIONS_DIR,
    SQLITE_BEGIN_OPTION,
    VERSION_TABLE,
    alembic_config,
    script,
)
from lockstep.store.schema import feedback_log, metadata, records, request_log

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
# Tables a later revision adds (tests/store/test_interactions.py upgrades 0002 -> 0003).
REVISION_0003_TABLES = ("lockstep_interactions", "lockstep_items", "lockstep_users")
REVISION_0003_OBJECTS = {("add_table", t) for t in REVISION_0003_TABLES} | {
    ("add_index", i) for i in ("ix_lockstep_interactions_user", "ix_lockstep_interactions_item",
                               "ux_lockstep_interactions_source")}
# Revision 0004 (batch serving): two tables.
REVISION_0004_TABLES = ("lockstep_batch_results", "lockstep_batch_state")
REVISION_0004_OBJECTS = {("add_table", t) for t in REVISION_0004_TABLES}
# Revision 0005 (the holdback group): a table and the request log's ``holdback`` column.
REVISION_0005_TABLES = ("lockstep_holdback",)
REVISION_0005_OBJECTS = {("add_table", "lockstep_holdback"), ("add_column", "holdback")}
# Revision 0006 (the streaming loader): two tables.
REVISION_0006_TABLES = ("lockstep_stream_messages", "lockstep_stream_consumers")
REVISION_0006_OBJECTS = {("add_table", t) for t in REVISION_0006_TABLES}
REVISION_0007_OBJECTS = {("add_index", "ix_lockstep_stream_messages_applied_at")}


@pytest.fixture
def url(database_url, lockstep_home):
    """A fresh database on each back end; engines disposed around the test by lockstep_home."""
    return database_url


def _previous_release() -> MetaData:
    """The tables as the 2026-11-24 release made them with create_all (no ``pinned``,
    no feedback age index, no rollout state)."""
    old = MetaData()
    for table in metadata.sorted_tables:
        if table.name == "lockstep_rollout_state" or table.name in REVISION_0003_TABLES + REVISION_0004_TABLES + REVISION_0005_TABLES + REVISION_0006_TABLES:
            continue
        columns = [Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, autoincrement=c.autoincrement)
                   for c in table.columns if c.name not in ("pinned", "holdback")]
        copy = Table(table.name, old, *columns)
        for index in table.indexes:
            if index.name != "ix_lockstep_feedback_log_at":
                Index(index.name, *[copy.c[c.name] for c in index.columns])
    return old


def _write_rows(engine, tables: MetaData | None = None) -> None:
    """One record, one logged request and one click, as the old release wrote them."""
    t = (tables or metadata).tables
    with engine.begin() as conn:
        conn.execute(insert(t["lockstep_records"]), [{"id": "r1", "text": "hello", "metadata": "{}",
                                                      "updated_at": NOW, "seq": 1, "deleted": False}])
        conn.execute(insert(t["lockstep_request_log"]), [{"request_id": "q1", "at": NOW, "model_version": "1", "k": 5,
                                                          "latency_ms": 1.5, "status": 200, "top_ids": ["r1"]}])
        conn.execute(insert(t["lockstep_feedback_log"]), [{"request_id": "q1", "record_id": "r1", "event": "click", "at": NOW}])


def _assert_rows_kept(engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(select(records.c.id, records.c.text)).all() == [("r1", "hello")]
        assert conn.execute(select(request_log.c.request_id, request_log.c.pinned)).all() == [("q1", False)]
        assert conn.execute(select(feedback_log.c.event)).scalars().all() == ["click"]


def _assert_at_head_and_exact(engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert schema_differences(conn) == []


def test_the_revisions_build_exactly_the_schema(url):
    engine = get_engine(url, migrate=False)
    assert current_revision(engine) is None and not inspect(engine).get_table_names()

    done = upgrade_database(engine)

    assert (done.before, done.after, done.adopted) == (None, head_revision(), False)
    assert done.describe() == f"upgraded from an empty database to revision {head_revision()} (head)"
    _assert_at_head_and_exact(engine)
    again = upgrade_database(engine)
    assert not again.changed and again.describe() == f"already at revision {head_revision()} (head)"


def test_the_first_use_of_a_database_migrates_it(url):
    engine = get_engine(url)  # what every command, task and serving process does
    _assert_at_head_and_exact(engine)
    assert VERSION_TABLE in inspect(engine).get_table_names()


def test_a_database_at_the_previous_revision_upgrades_with_its_rows(url):
    engine = get_engine(url, migrate=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    _write_rows(engine, _previous_release())
    assert current_revision(engine) == "0001"
    with engine.connect() as conn:  # the comparison sees exactly what 0002 adds
        missing = {(d[0], getattr(d[-1], "name", None) or d[-1]) for d in schema_differences(conn)}
    assert missing == {("add_table", "lockstep_rollout_state"), ("add_index", "ix_lockstep_feedback_log_at"),
                       ("add_column", "pinned")} | REVISION_0003_OBJECTS | REVISION_0004_OBJECTS | REVISION_0005_OBJECTS | REVISION_0006_OBJECTS \
        | REVISION_0007_OBJECTS, missing

    done = upgrade_database(engine)

    assert (done.before, done.after, done.adopted) == ("0001", head_revision(), False)
    _assert_rows_kept(engine)
    _assert_at_head_and_exact(engine)


def test_the_revisions_go_down_and_up_again(url):
    engine = get_engine(url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert [t for t in inspect(engine).get_table_names() if t != VERSION_TABLE] == []
    assert current_revision(engine) is None
    upgrade_database(engine)
    _assert_at_head_and_exact(engine)


def test_a_database_made_by_create_all_before_migrations_is_adopted(url):
    """The previous release's create_all: adopted, the new objects added, rows kept."""
    raw = create_engine(_normalise(url))
    old = _previous_release()
    old.create_all(raw)
    _write_rows(raw, old)
    raw.dispose()

    done = upgrade_database(get_engine(url, migrate=False))

    assert (done.before, done.adopted) == (None, True)
    assert done.describe().startswith("adopted a database made before migrations")
    engine = get_engine(url)
    _assert_rows_kept(engine)
    _assert_at_head_and_exact(engine)


def test_a_database_made_by_the_current_create_all_is_adopted_as_it_is(url):
    raw = create_engine(_normalise(url))
    metadata.create_all(raw)
    _write_rows(raw)
    raw.dispose()

    engine = get_engine(url)

    _assert_rows_kept(engine)
    _assert_at_head_and_exact(engine)


def test_a_database_that_cannot_be_adopted_is_refused_and_left_as_it_was(url):
    """A table of ours with a column missing that no revision adds: refuse, write nothing."""
    raw = create_engine(_normalise(url))
    odd = MetaData()
    Table("lockstep_feedback_log", odd, *[Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                                          for c in feedback_log.columns if c.name != "event"])
    odd.create_all(raw)
    before = set(inspect(raw).get_table_names())
    raw.dispose()

    with pytest.raises(ConfigurationError) as caught:
        get_engine(url)

    message = str(caught.value)
    assert "predates migrations and could not be adopted" in message and "'event'" in message
    assert "Nothing was changed" in message
    raw = create_engine(_normalise(url))
    assert set(inspect(raw).get_table_names()) == before == {"lockstep_feedback_log"}
    raw.dispose()


def test_a_database_from_a_newer_lockstep_is_refused_with_a_clear_error(url):
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))

    with pytest.raises(ConfigurationError) as caught:
        upgrade_database(engine)

    message = str(caught.value)
    assert "schema revision '9999'" in message and "a newer Lockstep has migrated it" in message
    assert current_revision(engine) == "9999"  # left alone


@pytest.mark.postgres
def test_a_user_who_may_not_create_tables_gets_a_clear_error(postgres_server, postgres_url, lockstep_home):
    """PostgreSQL 15 lets only the owner create tables in schema public; a plain role may not."""
    import psycopg

    admin = f"host=127.0.0.1 port={postgres_server.port} user={postgres_server.user}"
    with psycopg.connect(f"{admin} dbname=postgres", autocommit=True) as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    reader_url = postgres_url.replace(f"//{postgres_server.user}@", "//reader@")

    with pytest.raises(ConfigurationError) as caught:
        get_engine(reader_url)

    message = str(caught.value)
    assert f"to schema revision {head_revision()}" in message and "permission denied" in message
    assert "its user may create and alter tables" in message
    assert current_revision(get_engine(postgres_url, migrate=False)) is None  # nothing written


def test_the_head_constant_is_alembics_head():
    """HEAD lets an up-to-date process skip loading Alembic; it must name the newest revision."""
    assert script().get_heads() == [head_revision()]


def test_a_process_whose_database_is_up_to_date_never_loads_alembic(url, lockstep_home):
    upgrade_database(get_engine(url, migrate=False))
    probe = "import sys; from lockstep.store.db import get_engine; get_engine(sys.argv[1]); print('alembic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, url], env={**os.environ, "LOCKSTEP_HOME": str(lockstep_home)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"


def test_the_migrations_ship_inside_the_package():
    """setuptools finds versions/ as a package (its .py files); package-data names the rest."""
    import tomllib
    from fnmatch import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lockstep"]
    package = MIGRATIONS_DIR.parents[1]
    assert (MIGRATIONS_DIR / "__init__.py").exists() and (MIGRATIONS_DIR / "versions" / "__init__.py").exists()
    data = [p.relative_to(package).as_posix() for p in MIGRATIONS_DIR.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert sorted(data) == ["store/migrations/alembic.ini", "store/migrations/script.py.mako"]
    assert all(any(fnmatch(d, g) for g in globs) for d in data), (data, globs)


# --- processes racing on a fresh database -----------------------------------------------------

# A process that upgrades a fresh database and says when it reaches for the migration lock.
CHILD = """
import sys
from lockstep.store.db import get_engine
from lockstep.store.migrations import runner
take_lock = runner._migration_lock
def announced(engine):
    print("locking", flush=True)
    return take_lock(engine)
runner._migration_lock = announced
print(runner.upgrade_database(get_engine(sys.argv[1], migrate=False)).describe(), flush=True)
"""


def _start_children(url: str, home: Path, n: int) -> list[subprocess.Popen]:
    env = {**os.environ, "LOCKSTEP_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return [subprocess.Popen([sys.executable, "-c", CHILD, url], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(n)]


def _wait_until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _outcomes(children: list[subprocess.Popen]) -> list[str]:
    lines = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        lines.append(out.splitlines()[-1])
    return lines


def _kill_leftovers(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _assert_migrated_once(url: str, outcomes: list[str]) -> None:
    head = head_revision()
    assert sorted(outcomes) == sorted([f"upgraded from an empty database to revision {head} (head)"]
                                      + [f"already at revision {head} (head)"] * (len(outcomes) - 1))
    _assert_at_head_and_exact(get_engine(url, migrate=False))


@pytest.mark.postgres
def test_processes_that_start_together_on_postgresql_migrate_once(postgres_url, lockstep_home):
    """The test holds the advisory lock until every process waits on it, then lets go."""
    holder = create_engine(_normalise(postgres_url))
    children = []
    try:
        with holder.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            children = _start_children(postgres_url, lockstep_home, 3)
            waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            with holder.connect() as watcher:
                _wait_until(lambda: watcher.execute(waiting).scalar() == 3, "3 processes waiting on the lock")
        _assert_migrated_once(postgres_url, _outcomes(children))
    finally:
        _kill_leftovers(children)
        holder.dispose()


def test_processes_that_start_together_on_sqlite_migrate_once(tmp_path, lockstep_home):
    """The test holds SQLite's write lock until every process reaches for it (SQLite shows no
    waiters, so each process says so); then one migrates and the others find the work done."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    holder = get_engine(url, migrate=False)
    children = []
    try:
        with holder.connect() as conn:
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
            with conn.begin():
                children = _start_children(url, lockstep_home, 3)
                reaching = [child.stdout.readline().strip() for child in children]  # blocks until each says
                assert reaching == ["locking"] * 3
        _assert_migrated_once(url, _outcomes(children))
    finally:
        _kill_leftovers(children)
