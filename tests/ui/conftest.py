"""A real Airflow api-server with the Lockstep plugin, on loopback, for the page's tests.

The server runs from a throwaway AIRFLOW_HOME with the SimpleAuthManager and one known
user, loads the plugins folder of this repository, and reads a Lockstep database seeded
with one promoted and one rolled-back rollout. The migrated Airflow database is cached
per Airflow version (``airflow db migrate`` takes ~20 s on two cores), so only the first
run pays for it.

The browser is pytest-playwright's, pointed at the machine's Chromium (Debian's package)
through ``executable_path``: Playwright's own browser builds cannot be downloaded here, and
the Debian one is what ``./dev test`` installs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
AIRFLOW = Path(sys.executable).with_name("airflow")
USER, PASSWORD = "admin", "lockstep-admin-pw"
MLFLOW_UI = "http://mlflow.example.test:5000"
STARTUP_TIMEOUT = 90
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_INSTALL_HINT = "apt-get update && apt-get install -y --no-install-recommends chromium"
VIEWPORT = {"width": 1400, "height": 1000}
# Shared with the demo-corpus cache of tests/conftest.py.
CACHE = Path(os.environ.get("LOCKSTEP_TEST_CACHE", Path.home() / ".cache" / "lockstep-tests"))


@dataclass(frozen=True)
class AirflowServer:
    url: str
    username: str
    password: str
    home: Path
    lockstep_home: Path
    log: Path
    seeded: dict

    def token(self) -> str:
        """A JWT from the auth manager's token endpoint, as an API client gets one."""
        reply = httpx.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password}, timeout=30)
        assert reply.status_code == 201, reply.text
        return reply.json()["access_token"]


@pytest.fixture(scope="module")
def airflow_server(tmp_path_factory) -> Iterator[AirflowServer]:
    root = tmp_path_factory.mktemp("airflow-ui")
    lockstep_home = root / "lockstep-home"
    seeded = _seed_lockstep(lockstep_home)
    env = _airflow_env(root, lockstep_home)
    _migrate(env, root)

    port = _free_port()
    log = root / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(AIRFLOW), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--apps", "core"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its workers too
        )
    server = AirflowServer(f"http://127.0.0.1:{port}", USER, PASSWORD, root / "airflow-home", lockstep_home, log, seeded)
    try:
        _wait_healthy(server, proc)
        yield server
    finally:
        _stop(proc)


def find_chromium() -> str | None:
    """The Chromium executable (``LOCKSTEP_CHROMIUM`` wins), or None if none is installed."""
    explicit = os.environ.get("LOCKSTEP_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return next((p for name in CHROMIUM_CANDIDATES if (p := shutil.which(name))), None)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options, with the installed Chromium as the browser.

    Without one the browser tests skip, or fail when ``LOCKSTEP_REQUIRE_BROWSER`` is set
    (CI sets it, so a machine without Chromium cannot pass the UI test by skipping it).
    """
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("LOCKSTEP_REQUIRE_BROWSER"):
            pytest.fail(f"LOCKSTEP_REQUIRE_BROWSER is set but Chromium is not installed; run: {CHROMIUM_INSTALL_HINT}")
        pytest.skip(f"Chromium is not installed (install it with: {CHROMIUM_INSTALL_HINT})")
    # The flags keep a throwaway browser quiet and offline: the network here has no web.
    return {
        **browser_type_launch_args,
        "executable_path": chromium,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update"],
    }


# pytest-playwright starts Playwright once per session. While Playwright runs, the main
# thread counts as inside a running event loop, so a later test's ``asyncio.run`` fails
# (tests/serving/test_clicks.py has one). So here Playwright, and the fixtures built on
# it, live for this folder's modules only: the browser and the driver end with them.


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser_type(playwright, browser_name: str) -> Any:
    return getattr(playwright, browser_name)


@pytest.fixture(scope="module")
def launch_browser(browser_type_launch_args: dict[str, Any], browser_type) -> Any:
    return lambda **kwargs: browser_type.launch(**{**browser_type_launch_args, **kwargs})


@pytest.fixture(scope="module")
def browser(launch_browser) -> Iterator[Any]:
    launched = launch_browser()
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def browser_context_args() -> dict[str, Any]:
    """Each test's context: the screenshots' size (1400 x 1000 CSS pixels at scale 1)."""
    return {"viewport": VIEWPORT, "device_scale_factor": 1}


def _seed_lockstep(home: Path) -> dict:
    """Write the scenario into a fresh Lockstep database through the real routing code."""
    from lockstep.store.db import dispose_engines
    from tests.ui.scenario import seed

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKSTEP_HOME", str(home))
        mp.delenv("LOCKSTEP_DATABASE_URL", raising=False)
        dispose_engines()
        try:
            return seed()
        finally:
            dispose_engines()


def _airflow_env(root: Path, lockstep_home: Path) -> dict[str, str]:
    home = root / "airflow-home"
    (root / "dags").mkdir()
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LOCKSTEP_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(root / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(PLUGINS),
        AIRFLOW__CORE__LAZY_LOAD_PLUGINS="False",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(64),
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(root / "logs"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        LOCKSTEP_HOME=str(lockstep_home),
        LOCKSTEP_MLFLOW_UI_URL=MLFLOW_UI,
    )
    return env


def _migrate(env: dict[str, str], root: Path) -> None:
    """``airflow db migrate``, or a copy of the database it made for this Airflow version."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"airflow-{version('apache-airflow')}-migrated.db"
    if cached.exists():
        shutil.copyfile(cached, db)
        return
    result = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    shutil.copyfile(db, tmp)
    tmp.replace(cached)  # atomic: a parallel run sees a whole file or none


def _wait_healthy(server: AirflowServer, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{_tail(server.log)}")
        try:
            if httpx.get(f"{server.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"airflow api-server did not answer within {STARTUP_TIMEOUT} s:\n{_tail(server.log)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"
