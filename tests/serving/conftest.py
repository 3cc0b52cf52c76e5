"""Fixtures of the serving tests: a record store with two model versions ready to serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lockstep.core.config import Settings
from lockstep.model.embedding import TextEmbedder
from lockstep.serving import ServingConfig, create_app
from lockstep.store.db import get_engine
from lockstep.store.records import RecordStore
from tests.serving.harness import TOKEN, fill_store, fit_models, make_slot

FAST = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, replica="test")


@dataclass
class Deployment:
    url: str  # database URL
    engine: object
    store: RecordStore
    models: dict[str, TextEmbedder]
    root: Path
    records: dict[str, str]

    def app(self, *, api_token: str | None = TOKEN, config: ServingConfig = FAST):
        return create_app(Settings.from_env(), engine=self.engine, api_token=api_token, config=config)


def deploy(url: str, root: Path) -> Deployment:
    engine = get_engine(url)
    store = RecordStore(engine)
    records = fill_store(store)
    v1, v2 = fit_models(store)
    make_slot(engine, store, v1, "1", root)
    make_slot(engine, store, v2, "2", root)
    return Deployment(url, engine, store, {"1": v1, "2": v2}, root, records)


@pytest.fixture
def deployment(lockstep_home, tmp_path) -> Deployment:
    """SQLite store, 300 records, slots v1 (dim 16) and v2 (dim 24), both ready, no weights yet."""
    return deploy(f"sqlite:///{tmp_path / 'lockstep.db'}", tmp_path)
