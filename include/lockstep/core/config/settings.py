"""The deployment's settings (``Settings``): home, database, MLflow, index store, model, system.

Read when asked for (not at import) so tests and DAG runs can point a process at a fresh
``LOCKSTEP_HOME`` by setting the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lockstep.core.config.environment import api_token, environment
from lockstep.core.config.masking import masked_repr
from lockstep.core.config.values import seconds_setting

DEFAULT_MODEL_NAME = "lockstep-embedder"
DEFAULT_RECOMMENDER_MODEL_NAME = "lockstep-recommender"  # the recommender system's registered model
SYSTEMS = ("search", "recommender")  # LOCKSTEP_SYSTEM: what one deployment runs
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"
DEFAULT_AIRFLOW_UI_URL = "http://127.0.0.1:8080"
# PostgreSQL only (SQLite has its own busy timeout): seconds; 0 turns a limit off.
DEFAULT_DB_CONNECT_TIMEOUT = 10.0
DEFAULT_DB_STATEMENT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Settings:
    """A snapshot of the configuration at one moment."""

    home: Path
    database_url: str
    mlflow_tracking_uri: str
    index_store: str
    model_name: str
    api_token: str | None
    mlflow_ui_url: str = DEFAULT_MLFLOW_UI_URL  # where a browser opens MLflow (links on the UI page)
    db_connect_timeout: float = DEFAULT_DB_CONNECT_TIMEOUT  # seconds to reach PostgreSQL
    db_statement_timeout: float = DEFAULT_DB_STATEMENT_TIMEOUT  # seconds one statement may run
    recommender_model_name: str = DEFAULT_RECOMMENDER_MODEL_NAME  # LOCKSTEP_RECOMMENDER_MODEL_NAME
    system: str = "search"  # LOCKSTEP_SYSTEM: "recommender" switches the database and the model name

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of the environment's system (``LOCKSTEP_SYSTEM``, default ``search``).

        The recommender system is a deployment of its own beside the search system: its
        own database (``LOCKSTEP_RECOMMENDER_DATABASE_URL``, default ``recommender.db`` in
        the same home: routing table, logs, interactions, rollouts) and its own registered
        model, sharing the MLflow store and the index store. So every part of Lockstep
        (routing, the rollout's gates, serving logs) works for it unchanged.
        """
        env = dict(environment() if env is None else env)
        home = Path(env.get("LOCKSTEP_HOME") or "./.lockstep").expanduser().resolve()
        system = system_setting(env)
        recommender_model = env.get("LOCKSTEP_RECOMMENDER_MODEL_NAME") or DEFAULT_RECOMMENDER_MODEL_NAME
        if system == "recommender":
            database_url = env.get("LOCKSTEP_RECOMMENDER_DATABASE_URL") or f"sqlite:///{home / 'recommender.db'}"
            model_name = recommender_model
        else:
            database_url = env.get("LOCKSTEP_DATABASE_URL") or f"sqlite:///{home / 'lockstep.db'}"
            model_name = env.get("LOCKSTEP_MODEL_NAME") or DEFAULT_MODEL_NAME
        return cls(
            home=home,
            database_url=database_url,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            index_store=env.get("LOCKSTEP_INDEX_STORE") or str(home / "indexes"),
            model_name=model_name,
            api_token=api_token(env),
            mlflow_ui_url=env.get("LOCKSTEP_MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI_URL,
            db_connect_timeout=seconds_setting(env, "LOCKSTEP_DB_CONNECT_TIMEOUT", DEFAULT_DB_CONNECT_TIMEOUT),
            db_statement_timeout=seconds_setting(env, "LOCKSTEP_DB_STATEMENT_TIMEOUT", DEFAULT_DB_STATEMENT_TIMEOUT),
            recommender_model_name=recommender_model,
            system=system,
        )

    def __repr__(self) -> str:
        """Every field, but secrets masked: a logged or printed ``Settings`` never carries them.

        The API token shows as ``***`` and a URL's password as ``user:***@host``
        (``mask_url``); fields added later are shown as they are, so a new secret field
        must be added to ``SECRET_FIELDS`` or ``URL_FIELDS``.
        """
        return masked_repr(self)

    def ensure_home(self) -> Path:
        """Create the data folder (and the local index store) on first use."""
        self.home.mkdir(parents=True, exist_ok=True)
        if "://" not in self.index_store:
            Path(self.index_store).mkdir(parents=True, exist_ok=True)
        return self.home

    def remote_store(self):
        """The object store of ``LOCKSTEP_INDEX_STORE=s3://...`` (``ObjectStoreSettings``), None for a folder."""
        from lockstep.core.config.object_store import is_remote_store, object_store_settings

        return object_store_settings(self.index_store, self.home) if is_remote_store(self.index_store) else None

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def artifact_root(self) -> Path:
        """Where the embedded MLflow store keeps artifacts (next to its SQLite file)."""
        return self.home / "mlartifacts"


def settings() -> Settings:
    return Settings.from_env()


def settings_for(system: str) -> Settings:
    """The settings this environment gives ``system`` (whatever its own ``LOCKSTEP_SYSTEM``).

    The batch DAG computes for either system's deployment database from one environment.
    """
    return Settings.from_env({**environment(), "LOCKSTEP_SYSTEM": system})


def system_setting(env: Mapping[str, str]) -> str:
    """``LOCKSTEP_SYSTEM``: ``search`` (default) or ``recommender``; anything else is an error."""
    raw = (env.get("LOCKSTEP_SYSTEM") or "search").strip().lower()
    if raw not in SYSTEMS:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"LOCKSTEP_SYSTEM={raw!r} is not a system; use one of: {', '.join(SYSTEMS)}")
    return raw


# The MLflow experiment the drift check logs to; the rollout review reads its latest run.
DRIFT_EXPERIMENT = "lockstep-drift"


def drift_experiment() -> str:
    """The drift experiment of this deployment's system (the recommender keeps its own)."""
    return DRIFT_EXPERIMENT if settings().system == "search" else f"{DRIFT_EXPERIMENT}-{settings().system}"


def run_folder(run_id: str) -> Path:
    """Where a DAG run keeps its files (models, reports): $LOCKSTEP_HOME/runs/<run id>."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    if safe.strip(".") == "":  # "", "." and ".." would name runs/ or the home itself
        safe = "_" * max(1, len(safe))
    folder = settings().home / "runs" / safe
    folder.mkdir(parents=True, exist_ok=True)
    return folder


REEMBED_WORKERS_ENV = "LOCKSTEP_REEMBED_WORKERS"


def embedding_processes(env: Mapping[str, str] | None = None) -> int:
    """How many embedding processes a re-embed runs at once: ``LOCKSTEP_REEMBED_WORKERS``, else the core count.

    One setting for both paths: ``lockstep index build`` starts that many worker
    processes, and the ``lockstep_reembed`` DAG lets that many shard tasks of a run embed
    at the same time (more only queue up for the same cores: 16 shard tasks at once on 2
    cores took 57 s where 2 at a time took 34 s, docs/benchmarks.md). On a cluster, set it
    to the cores of the workers that run shards.
    """
    env = environment() if env is None else env
    raw = env.get(REEMBED_WORKERS_ENV, "").strip()
    if not raw:
        return max(1, os.cpu_count() or 1)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{REEMBED_WORKERS_ENV}={raw!r} must be a whole number of processes, at least 1")
    return value


# --- stream credentials (lockstep stream consume) ---------------------------------------------

STREAM_PASSWORD_ENV = "LOCKSTEP_STREAM_PASSWORD"


def stream_password(env: Mapping[str, str] | None = None) -> str | None:
    """The broker password of ``lockstep stream consume`` from ``LOCKSTEP_STREAM_PASSWORD`` (None: unset).

    From the environment (or ``--password-file``), never the ``--source`` URL: a process's
    arguments are visible to every user of the machine (``ps``), its environment is not.
    """
    env = environment() if env is None else env
    return env.get(STREAM_PASSWORD_ENV) or None
