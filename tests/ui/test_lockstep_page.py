"""The Lockstep page in a real Airflow api-server, and in a real headless Chromium.

What is checked here cannot be checked without the server: the plugin loads and mounts,
the page refuses requests without an Airflow login, accepts the JWT the auth manager
issues (as a bearer header or as the UI's cookie), and a person can log in through the
Airflow login form, find "Lockstep" in the nav and see the page inside the Airflow UI.
The browser test drives the machine's Chromium through Playwright (see conftest.py) and
saves the screenshots in docs/screenshots/.
"""

from __future__ import annotations

import struct
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import MLFLOW_UI, REPO
from tests.ui.scenario import ROLLBACK_REASON

pytestmark = pytest.mark.slow

SCREENSHOTS = REPO / "docs" / "screenshots"
IFRAME_DOC = "document.querySelector('iframe').contentDocument"
# Generous: the api-server shares two cores with other work; waits end on conditions, not time.
BROWSER_TIMEOUT_MS = 60_000


def test_plugin_is_loaded_with_its_nav_entry(airflow_server):
    reply = httpx.get(f"{airflow_server.url}/api/v2/plugins", headers=_bearer(airflow_server), timeout=30)
    assert reply.status_code == 200
    plugins = {p["name"]: p for p in reply.json()["plugins"]}
    assert "lockstep" in plugins, f"plugin not loaded; plugins: {list(plugins)}"
    assert [a["url_prefix"] for a in plugins["lockstep"]["fastapi_apps"]] == ["/lockstep"]
    (view,) = plugins["lockstep"]["external_views"]
    assert (view["name"], view["url_route"], view["href"], view["destination"]) == ("Lockstep", "lockstep", "lockstep/", "nav")
    errors = httpx.get(f"{airflow_server.url}/api/v2/plugins/importErrors", headers=_bearer(airflow_server), timeout=30)
    assert errors.json()["import_errors"] == []


def test_page_without_a_login_is_refused(airflow_server):
    base = airflow_server.url
    api = httpx.get(f"{base}/lockstep/api/state", timeout=30)
    assert api.status_code == 401
    assert api.json()["login_url"].startswith("/auth/login?next=")

    browser = httpx.get(f"{base}/lockstep/", headers={"Accept": "text/html"}, timeout=30, follow_redirects=False)
    assert browser.status_code == 303
    assert browser.headers["location"] == "/auth/login?next=%2Flockstep%2F"

    forged = httpx.get(f"{base}/lockstep/api/state", headers={"Authorization": "Bearer not.a.jwt"}, timeout=30)
    assert forged.status_code == 401
    stale_cookie = httpx.get(f"{base}/lockstep/api/state", cookies={"_token": "garbage"}, timeout=30)
    assert stale_cookie.status_code == 401


def test_page_with_the_airflow_token_shows_the_slots(airflow_server):
    token = airflow_server.token()
    base = airflow_server.url

    state = httpx.get(f"{base}/lockstep/api/state", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert state.status_code == 200
    body = state.json()
    weights = {s["model_version"]: (s["state"], s["weight"]) for s in body["slots"]}
    assert weights == {"1": ("retired", 0), "2": ("live", 100), "3": ("ready", 0)}
    assert body["slots"][1]["mlflow_url"] == f"{MLFLOW_UI}/#/models/lockstep-embedder/versions/2"
    assert [r["status"] for r in body["rollouts"]] == ["rolled_back", "promoted"]
    assert body["rollbacks"][0]["reason"] == ROLLBACK_REASON

    # The browser's way: the same JWT in the UI's cookie.
    page = httpx.get(f"{base}/lockstep/", cookies={"_token": token}, timeout=30)
    assert page.status_code == 200
    assert 'data-version="2" data-weight="100"' in page.text
    assert "rolled back" in page.text
    assert f"{MLFLOW_UI}/#/models/lockstep-embedder/versions/3" in page.text


def test_real_browser_logs_in_and_opens_the_page_from_the_nav(airflow_server, page: Page):
    base = airflow_server.url
    page.set_default_timeout(BROWSER_TIMEOUT_MS)

    # Not logged in: the page sends the browser to Airflow's own login form.
    page.goto(f"{base}/lockstep/")
    page.wait_for_url(lambda url: urlsplit(url).path == "/auth/login")
    page.locator("input[name=username]").fill(airflow_server.username)
    page.locator("input[name=password]").fill(airflow_server.password)
    page.locator("button[type=submit]:not([disabled])").click()
    # ... and after the login, back to the page it asked for.
    page.wait_for_url(lambda url: urlsplit(url).path == "/lockstep/")
    expect(page.locator("#slots tr.slot")).to_have_count(3, timeout=BROWSER_TIMEOUT_MS)
    full = SCREENSHOTS / "lockstep-page-full.png"
    page.screenshot(path=full, full_page=True)

    # The way a person finds it: the Airflow UI, the "Lockstep" entry in the nav.
    page.goto(f"{base}/")
    page.locator('nav a[href$="plugin/lockstep"], a[href$="plugin/lockstep"]').first.click()
    embedded = page.frame_locator("iframe")
    embedded.locator("#rollouts svg .series").first.wait_for()
    live = embedded.locator("#slots tr.state-live").get_attribute("data-version")
    badges = embedded.locator(".rollout h3 .badge").all_text_contents()
    page.wait_for_function(f"{IFRAME_DOC}.fonts.status === 'loaded' && document.fonts.status === 'loaded'")
    in_ui = SCREENSHOTS / "lockstep-page.png"
    page.screenshot(path=in_ui)

    for shot in (full, in_ui):
        _shrink(shot)
    assert live == "2"
    assert badges == ["rolled back", "promoted"]
    for shot, min_height in ((in_ui, 1000), (full, 1200)):
        width, height = _png_size(shot)
        assert width == 1400 and height >= min_height, (shot, width, height)
        assert 20_000 < shot.stat().st_size < 400_000, f"{shot} is {shot.stat().st_size} bytes"


def _bearer(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token()}"}


def _shrink(path: Path) -> None:
    """A 256-colour palette: a UI screenshot stays sharp at a third of the size (for git)."""
    from PIL import Image  # Pillow comes with matplotlib, which the project pins

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])
