"""Shared fixtures: a fresh LOCKSTEP_HOME per test, a real PostgreSQL server per session,
and the demo corpus cached once per machine."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests import postgres_harness, s3_harness

# Airflow reads its home once, when it is first imported, and any test module may import it
# while pytest collects: one throwaway home for the whole session, chosen here because this
# conftest is loaded before any test module (tests/dags migrates its database).
# Its configuration too: the DAG bundle is read from DAGS_FOLDER when Airflow is imported.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lockstep-airflow-"))
DAGS = Path(__file__).resolve().parents[1] / "dags"
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

# The demo corpus download is cached across test runs (and CI runs on the same machine).
DEMO_CACHE = Path(os.environ.get("LOCKSTEP_TEST_CACHE", Path.home() / ".cache" / "lockstep-tests"))


@pytest.fixture
def lockstep_home(tmp_path, monkeypatch):
    """Point every setting at a fresh folder, as a new user's machine would have."""
    from lockstep.store.db import dispose_engines

    home = tmp_path / "lockstep-home"
    monkeypatch.setenv("LOCKSTEP_HOME", str(home))
    for var in ("LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE", "LOCKSTEP_API_TOKEN",
                "LOCKSTEP_INDEX_CACHE", "LOCKSTEP_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
    # setenv, not delenv: monkeypatch undoes only what it recorded, and `--system` (a CLI call
    # in this process) sets LOCKSTEP_SYSTEM itself; restored to unset after the test.
    monkeypatch.setenv("LOCKSTEP_SYSTEM", "search")
    dispose_engines()
    yield home
    dispose_engines()


@pytest.fixture(scope="session")
def s3_server():
    """One S3-protocol server (moto) for the session; each test takes a bucket of its own."""
    with s3_harness.s3_server() as server:
        yield server


@pytest.fixture
def s3_store(lockstep_home, s3_server, monkeypatch):
    """LOCKSTEP_INDEX_STORE on a fresh bucket of the S3 server, seen from host "a" (its own cache).

    ``s3_store.as_host("b")`` switches this process to another host's cache: the same store,
    no shared folder.
    """
    from lockstep.index import mirror

    bucket = s3_harness.new_bucket_name()
    for key, value in s3_server.env(bucket).items():
        monkeypatch.setenv(key, value)
    store = _S3Store(s3_server, bucket, lockstep_home, monkeypatch)
    store.as_host("a")
    mirror.ensure_bucket()
    return store


class _S3Store:
    def __init__(self, server, bucket, home, monkeypatch):
        self.server, self.bucket, self.home, self._monkeypatch = server, bucket, home, monkeypatch
        self.url = f"s3://{bucket}/indexes"

    def cache(self, host: str) -> Path:
        return s3_harness.host_cache(self.home, host)

    def as_host(self, host: str) -> Path:
        self._monkeypatch.setenv("LOCKSTEP_INDEX_CACHE", str(self.cache(host)))
        return self.cache(host)

    def env(self, host: str) -> dict[str, str]:
        return {**self.server.env(self.bucket), "LOCKSTEP_INDEX_CACHE": str(self.cache(host))}


@pytest.fixture(scope="session")
def postgres_server():
    server = postgres_harness.start()
    yield server
    postgres_harness.stop(server)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """Run a test against both back ends: the SQLite default and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lockstep.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database()
