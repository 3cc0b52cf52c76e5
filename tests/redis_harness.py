"""A throwaway redis-server for tests: Debian's package, installed with apt-get when missing.

Shared by the Celery integration test (Redis as the broker) and the streaming loader's
tests (Redis Streams). Each server listens on a free loopback port, keeps nothing on disk
and is stopped when the ``with`` ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """redis-server, installed with apt-get when missing (as ./dev test does)."""
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
                       env=env, capture_output=True)
        found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found is None:
        reason = "redis-server is not installed and could not be installed (needs root and apt-get: apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; in CI the Redis tests must run, not skip")
        pytest.skip(reason)
    return found


@contextmanager
def running_redis(folder: Path) -> Iterator[int]:
    """A redis-server on a free loopback port, no persistence; yields the port once it answers PING."""
    import redis

    port = free_port()
    log = folder / "redis.log"
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(log)],
        start_new_session=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer on port {port}: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(30)
