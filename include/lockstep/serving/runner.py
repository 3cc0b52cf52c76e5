"""Running the serving app as a process: one uvicorn worker, or several sharing a port."""

from __future__ import annotations

import logging
import os

from lockstep.core.errors import ConfigurationError
from lockstep.serving.app import create_app

WORKERS_ENV = "LOCKSTEP_SERVING_WORKERS"


def run(host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", workers: int | None = None) -> None:
    """Serve until interrupted (configuration from the environment).

    One process serves on one core (the GIL); ``workers`` (or ``LOCKSTEP_SERVING_WORKERS``)
    processes share the port, each a replica of its own with its own copy of the loaded
    indexes and its own ``/metrics`` (scrape each, or run one worker per container).
    """
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workers = workers if workers is not None else _workers_from_env()
    if workers > 1:
        uvicorn.run("lockstep.serving.app:create_app", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=False)
        return
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=False)


def _workers_from_env() -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(f"{WORKERS_ENV}={raw!r} must be a whole number of processes, at least 1")
    return int(raw)
