"""Database engines for the Lockstep store: SQLite by default, PostgreSQL by URL.

Engines are cached per URL so that every part of one process shares one pool. SQLite
gets WAL mode and a busy timeout, which lets a serving process and an Airflow task
write the same file without "database is locked" errors. The first use of a database in
a process brings its tables to the newest migration (``lockstep.store.migrations``), so
the embedded default needs no set-up step.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from lockstep.core.config import mask_url
from lockstep.core.errors import ConfigurationError
from lockstep.store.migrations.runner import (
    SQLITE_BEGIN_OPTION,
    Upgrade,
    head_revision,
    upgrade_database,
)

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()  # URLs this process has brought to the head revision
_lock = threading.Lock()


def get_engine(url: str | None = None, *, migrate: bool = True) -> Engine:
    """Return the shared engine for ``url`` (default: the configured database).

    With ``migrate`` (the default) the database is at the newest schema revision when this
    returns, upgraded on the first call in the process if needed; ``lockstep db current``
    passes False to look without changing anything.
    """
    url = _resolve(url)
    with _lock:
        engine = _cached(url)
        if migrate and url not in _migrated:
            _upgrade(engine, url)
        return engine


def migrate_database(url: str | None = None) -> Upgrade:
    """Bring the database to the newest schema revision now and say what was done.

    What ``lockstep db upgrade`` and the stacks' init run; safe to run again, and from many
    processes at once (see ``lockstep.store.migrations.runner``).
    """
    url = _resolve(url)
    with _lock:
        return _upgrade(_cached(url), url)


def dispose_engines() -> None:
    """Close every cached pool (tests, and processes that fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _create(url: str) -> Engine:
    url = _normalise(url)
    try:
        if url.startswith("sqlite"):
            _ensure_sqlite_folder(url)
            engine = create_engine(
                url, connect_args={"timeout": 30, "check_same_thread": False}, pool_pre_ping=False
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            connect_args, statement_limit = _postgres_timeouts(url)
            engine = create_engine(
                url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args
            )
            if statement_limit:
                event.listen(engine, "handle_error", partial(_name_statement_timeout, statement_limit))
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigurationError(
            f"LOCKSTEP_DATABASE_URL {mask_url(url)!r} is not a usable SQLAlchemy URL ({exc}). "
            "Use sqlite:///path/to/lockstep.db or postgresql+psycopg://user:pass@host/db."
        ) from exc
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        raise _unreachable(url, exc) from exc
    return engine


def _resolve(url: str | None) -> str:
    if url is not None:
        return url
    from lockstep.core.config import settings

    cfg = settings()
    cfg.ensure_home()
    return cfg.database_url


def _cached(url: str) -> Engine:
    """The process's engine for ``url``, made on first use; call with ``_lock`` held."""
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = _create(url)
    return engine


def _upgrade(engine: Engine, url: str) -> Upgrade:
    """Bring the database to the head revision (``lockstep.store.migrations.runner``)."""
    try:
        done = upgrade_database(engine)
    except DBAPIError as exc:  # lost connection, no right to create tables, lock wait too long
        raise ConfigurationError(
            f"could not bring the Lockstep database at {mask_url(url)!r} to schema revision "
            f"{head_revision()}: {exc.orig}. Check LOCKSTEP_DATABASE_URL, that the server is "
            "running and that its user may create and alter tables."
        ) from exc
    _migrated.add(url)
    return done


def _unreachable(url: str, exc: OperationalError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot reach the Lockstep database at {mask_url(url)!r}: {exc.orig}. "
        "Check LOCKSTEP_DATABASE_URL and that the server is running."
    )


class StatementTimeoutError(OperationalError):
    """PostgreSQL cancelled a statement that ran past ``LOCKSTEP_DB_STATEMENT_TIMEOUT``.

    An ``OperationalError`` still, so code that retries database trouble keeps working;
    the message names the setting, so the person reading it knows what to change.
    """

    limit_seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"the database cancelled a statement that ran longer than LOCKSTEP_DB_STATEMENT_TIMEOUT="
            f"{self.limit_seconds:g} s (raise it, or 0 for no limit, if the statement is expected "
            f"to take that long): {super().__str__()}"
        )


def _postgres_timeouts(url: str) -> tuple[dict[str, Any], float]:
    """psycopg connect arguments for the configured connect and statement timeouts.

    Without them a dead server hangs a task or a follower at connect, and a runaway query
    holds its locks for ever. Both are per connection: ``connect_timeout`` for libpq (whole
    seconds), ``statement_timeout`` in the session's startup options. A value the URL
    already sets wins (its ``options`` come after ours). Returns (connect_args, limit).
    """
    from lockstep.core.config import settings

    cfg = settings()
    if make_url(url).get_backend_name() != "postgresql":
        return {}, 0.0
    query = make_url(url).query
    args: dict[str, Any] = {}
    if cfg.db_connect_timeout > 0 and "connect_timeout" not in query:
        args["connect_timeout"] = max(2, math.ceil(cfg.db_connect_timeout))  # libpq's least is 2
    if cfg.db_statement_timeout <= 0:
        return args, 0.0
    ours = f"-c statement_timeout={max(1, round(cfg.db_statement_timeout * 1000))}"
    theirs = query.get("options")
    args["options"] = f"{ours} {theirs}" if isinstance(theirs, str) and theirs else ours
    return args, cfg.db_statement_timeout


def _name_statement_timeout(limit: float, context) -> None:
    """handle_error hook: a statement-timeout cancel becomes a StatementTimeoutError."""
    orig = context.original_exception
    if getattr(orig, "sqlstate", None) == "57014" and "statement timeout" in str(orig):
        error = StatementTimeoutError(context.statement, context.parameters, orig)
        error.limit_seconds = limit
        raise error from orig


def _normalise(url: str) -> str:
    # psycopg 3 is the driver we install; a bare postgresql:// URL would ask for psycopg2.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split(":///", 1)[-1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # Let SQLAlchemy, not pysqlite, decide where transactions begin: pysqlite would
    # not begin one before a SELECT, and a snapshot needs its reads in one transaction.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn) -> None:
    # The migration runner asks for BEGIN IMMEDIATE: the write lock before the first read.
    conn.exec_driver_sql(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "BEGIN"))


IN_LIST_SIZE = 500  # ids per IN (...) list: well under every driver's parameter limit


def in_chunks(items: Sequence[Any], size: int = IN_LIST_SIZE) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``, one ``IN (...)`` list each (drivers cap bound parameters)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
