"""Database engines for the Lockstep store: SQLite by default, PostgreSQL by URL.

Engines are cached per URL so that every part of one process shares one pool. SQLite
gets WAL mode and a busy timeout, which lets a serving process and an Airflow task
write the same file without "database is locked" errors.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from .errors import ConfigurationError
from .schema import metadata

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str | None = None) -> Engine:
    """Return the shared engine for ``url`` (default: the configured database), with its tables."""
    if url is None:
        from .config import settings

        cfg = settings()
        cfg.ensure_home()
        url = cfg.database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every cached pool (tests, and processes that fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


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
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigurationError(
            f"LOCKSTEP_DATABASE_URL {_redact(url)!r} is not a usable SQLAlchemy URL ({exc}). "
            "Use sqlite:///path/to/lockstep.db or postgresql+psycopg://user:pass@host/db."
        ) from exc
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
        metadata.create_all(engine)
    except OperationalError as exc:
        engine.dispose()
        raise ConfigurationError(
            f"cannot reach the Lockstep database at {_redact(url)!r}: {exc.orig}. "
            "Check LOCKSTEP_DATABASE_URL and that the server is running."
        ) from exc
    return engine


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
    conn.exec_driver_sql("BEGIN")


def _redact(url: str) -> str:
    """Hide a password in a URL before it goes into an error message."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
