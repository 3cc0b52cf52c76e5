"""The ``lockstep`` command line: the library's paths without Airflow.

``base`` holds the app and what every command shares; each module beside it registers one
family of commands on it (data, models, index, serving, lifecycle). Importing the package
registers them all.
"""

from __future__ import annotations

from lockstep.cli import data, index, lifecycle, loads, models, serving  # noqa: F401 (each registers its commands)
from lockstep.cli.base import app, main

__all__ = ["app", "main"]
