"""Running the serving app as a process: one uvicorn worker, or several sharing a port.

Stopping is graceful and bounded: on SIGTERM (``docker stop``, compose's
``stop_grace_period``) uvicorn stops taking connections, gives the requests in flight up
to ``LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S`` seconds (default 20, under compose's 30) to
be answered, then runs the app's shutdown, which writes every buffered request, shadow
and feedback log row before the process exits with status 0.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
from typing import Any

from lockstep.core.config import SERVING_WORKERS_ENV, ServingLimits

log = logging.getLogger("lockstep.serving")


SEARCH_APP = "lockstep.serving.app:create_app"  # the search system's app (the default system)


def run(host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", workers: int | None = None,
        app: str = SEARCH_APP) -> None:
    """Serve until interrupted (configuration from the environment).

    ``app`` is the import path of the app factory: the caller passes the deployment
    system's (``lockstep.systems:create_app``), so serving never asks which system it serves.

    One process serves on one core (the GIL); ``workers`` (or ``LOCKSTEP_SERVING_WORKERS``)
    processes share the port, each a replica of its own with its own copy of the loaded
    indexes and its own ``/metrics`` (scrape each, or run one worker per container).
    """
    import uvicorn
    from uvicorn.importer import import_from_string

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workers = workers if workers is not None else _workers_from_env()
    options = {**server_options(ServingLimits.from_env()), **server_stack()}
    _exit_cleanly_on_sigterm()
    os.environ[SERVING_WORKERS_ENV] = str(workers)  # each process's share of the cores (search_batches)
    if workers > 1:
        uvicorn.run(app, factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=False, **options)
        return
    uvicorn.run(import_from_string(app)(), host=host, port=port, log_level=log_level, access_log=False, **options)


def server_options(limits: ServingLimits) -> dict[str, Any]:
    """uvicorn's part of the limits: the graceful timeout, and a backstop on connections.

    The app answers over-the-cap requests itself (503 with a message, ``limits``);
    uvicorn's ``limit_concurrency`` counts connections too (idle keep-alive ones
    included), so it is set looser, only to stop a flood of connections before the app.
    """
    return {
        "timeout_graceful_shutdown": limits.graceful_timeout or None,  # 0: wait for every request
        "limit_concurrency": 2 * limits.max_concurrency + 32,
    }


def server_stack() -> dict[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools, named, not left to ``auto``.

    Both are pinned in requirements.txt. Measured at 1M records (docs/benchmarks.md, issue
    26) against asyncio and h11. ``auto`` picks them too when they are installed, and falls
    back without a word when they are not; here a missing one is logged, so a slow image
    is seen as one.
    """
    stack = {}
    for option, module, fallback in (("loop", "uvloop", "asyncio"), ("http", "httptools", "h11")):
        if importlib.util.find_spec(module) is not None:
            stack[option] = module
        else:
            log.warning("%s is not installed: serving with %s (slower; pip install -r requirements.txt)", module, fallback)
            stack[option] = fallback
    return stack


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM end the process with status 0 once uvicorn has shut down gracefully.

    uvicorn catches SIGTERM, shuts down, then raises the signal again under the handler
    that was there before it; under the default one the process would die of it
    (status 143) after a clean shutdown, which reads as a crash to supervisors. A SIGTERM
    before uvicorn serves (while the app loads) ends the process at once, as before.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stopped)


def _stopped(signum: int, frame: object) -> None:
    log.info("stopped on SIGTERM")
    raise SystemExit(0)


def _workers_from_env() -> int:
    from lockstep.core.config import serving_workers

    return serving_workers()
