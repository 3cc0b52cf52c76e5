"""PostgreSQL connect and statement timeouts (LOCKSTEP_DB_CONNECT_TIMEOUT, ..._STATEMENT_TIMEOUT),
against the real server of tests/postgres_harness.py and a real socket that never answers."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from lockstep.core.errors import ConfigurationError
from lockstep.store.db import StatementTimeoutError, dispose_engines, get_engine


@pytest.fixture
def fresh_engines(lockstep_home, monkeypatch):
    """Engines are cached per URL: each test builds its own under its own settings."""
    for name in ("LOCKSTEP_DB_CONNECT_TIMEOUT", "LOCKSTEP_DB_STATEMENT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    dispose_engines()
    yield monkeypatch
    dispose_engines()


def test_a_statement_past_the_limit_fails_with_a_clear_error(postgres_url, fresh_engines):
    fresh_engines.setenv("LOCKSTEP_DB_STATEMENT_TIMEOUT", "0.5")
    engine = get_engine(postgres_url)

    with pytest.raises(StatementTimeoutError) as caught, engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(60)"))

    message = str(caught.value)
    assert "LOCKSTEP_DB_STATEMENT_TIMEOUT=0.5 s" in message
    assert "canceling statement due to statement timeout" in message
    assert isinstance(caught.value, OperationalError)  # callers that retry database trouble still do
    with engine.connect() as conn:  # the pool is fine afterwards
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_defaults_apply_to_every_connection_and_the_url_wins(postgres_url, fresh_engines):
    with get_engine(postgres_url).connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "30s"
    separator = "&" if "?" in postgres_url else "?"
    own = f"{postgres_url}{separator}options=-c%20statement_timeout%3D7000"
    with get_engine(own).connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "7s"

    fresh_engines.setenv("LOCKSTEP_DB_STATEMENT_TIMEOUT", "0")
    dispose_engines()
    with get_engine(postgres_url).connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"


def test_a_server_that_never_answers_fails_at_the_connect_timeout(fresh_engines):
    """A socket that accepts connections (the kernel completes the handshake) and never
    speaks: without connect_timeout, connecting would wait for ever."""
    fresh_engines.setenv("LOCKSTEP_DB_CONNECT_TIMEOUT", "2")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with pytest.raises(ConfigurationError, match="cannot reach the Lockstep database.*timeout"):
            get_engine(f"postgresql+psycopg://lockstep:pw@127.0.0.1:{port}/lockstep")


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_timeout_setting_is_named(value, fresh_engines):
    fresh_engines.setenv("LOCKSTEP_DB_STATEMENT_TIMEOUT", value)
    with pytest.raises(ConfigurationError, match=f"LOCKSTEP_DB_STATEMENT_TIMEOUT='{value}'"):
        get_engine()


def test_sqlite_gets_no_postgres_options(fresh_engines, tmp_path):
    fresh_engines.setenv("LOCKSTEP_DB_STATEMENT_TIMEOUT", "0.5")
    engine = get_engine(f"sqlite:///{tmp_path / 'lockstep.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
