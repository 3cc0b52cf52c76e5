"""Lockstep's configuration: environment variables with working defaults.

Every setting in the public contract (``shared/interfaces.md``) is read here and
nowhere else, so the README's configuration table and the code cannot drift apart.
Settings are read when asked for (not at import) so tests and DAG runs can point a
process at a fresh ``LOCKSTEP_HOME`` by setting the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "lockstep-embedder"
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"


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

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("LOCKSTEP_HOME") or "./.lockstep").expanduser().resolve()
        return cls(
            home=home,
            database_url=env.get("LOCKSTEP_DATABASE_URL") or f"sqlite:///{home / 'lockstep.db'}",
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            index_store=env.get("LOCKSTEP_INDEX_STORE") or str(home / "indexes"),
            model_name=env.get("LOCKSTEP_MODEL_NAME") or DEFAULT_MODEL_NAME,
            api_token=env.get("LOCKSTEP_API_TOKEN") or None,
            mlflow_ui_url=env.get("LOCKSTEP_MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI_URL,
        )

    def ensure_home(self) -> Path:
        """Create the data folder (and the local index store) on first use."""
        self.home.mkdir(parents=True, exist_ok=True)
        if "://" not in self.index_store:
            Path(self.index_store).mkdir(parents=True, exist_ok=True)
        return self.home

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def artifact_root(self) -> Path:
        """Where the embedded MLflow store keeps artifacts (next to its SQLite file)."""
        return self.home / "mlartifacts"


def settings() -> Settings:
    return Settings.from_env()
