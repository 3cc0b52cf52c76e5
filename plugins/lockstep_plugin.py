"""The Lockstep page in the Airflow UI: a FastAPI app on the api-server and a nav entry.

The app is mounted at ``/lockstep`` on the Airflow api-server and checks the same JWT as
the rest of the UI (the ``_token`` cookie or a bearer header), so there is no second
login. The nav entry embeds the page in the Airflow UI at ``/plugin/lockstep``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

# Airflow puts the plugins folder on sys.path; this keeps the import working when the
# plugin is loaded by path from elsewhere (tests, a mounted folder in a container).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

from lockstep_ui import URL_PREFIX, create_app  # noqa: E402

ROUTE = URL_PREFIX.strip("/")


class LockstepPlugin(AirflowPlugin):
    name = "lockstep"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Lockstep"}]
    external_views = [
        {
            "name": "Lockstep",
            # Relative, so it resolves against the UI's <base href> (works under a base_url).
            "href": f"{ROUTE}/",
            "url_route": ROUTE,
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{ROUTE}/static/lockstep-icon.svg",
        }
    ]
