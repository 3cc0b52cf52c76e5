"""A real `mlflow server` for the tests, started as its own process group and stopped with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def mlflow_server(
    folder: Path, port: int, args: Sequence[str], env: Mapping[str, str], *, start_timeout_s: float = 60
) -> Iterator[str]:
    """``mlflow server ARGS --host 127.0.0.1 --port PORT --workers 1``; yields its URL once /health answers.

    The log goes to ``folder/server.log``. The server and its workers run in a process
    group of their own (start_new_session), so stopping the group stops them all; the
    start timeout is a guard for a server that never comes up, not a measurement.
    """
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", *args,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(env),
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
