"""The Lockstep page: a FastAPI app the Airflow plugin mounts on the api-server.

Kept as a package beside ``lockstep_plugin.py`` (and hidden from Airflow's plugin scan
by ``.airflowignore``) so the page can be built and tested without starting Airflow.
"""

from __future__ import annotations

from .app import URL_PREFIX, create_app
from .page import render_page

__all__ = ["URL_PREFIX", "create_app", "render_page"]
