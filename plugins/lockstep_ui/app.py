"""The FastAPI app behind the Lockstep page: ``/`` (HTML) and ``/api/state`` (JSON).

No ``from __future__ import annotations`` here: FastAPI reads the route signatures at
runtime, and the user dependency is a parameter of ``create_app``, not a global.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from lockstep.core.errors import LockstepError
from lockstep.ops.dashboard import Dashboard
from lockstep.systems import load_dashboard

from .auth import LoginRequired, airflow_user
from .page import render_page

URL_PREFIX = "/lockstep"
STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    load: Callable[[], Dashboard] = load_dashboard,
    user_dependency: Callable[..., Any] = airflow_user,
) -> FastAPI:
    """The page's app; ``load`` and ``user_dependency`` are the real ones unless a test swaps them."""
    User = Annotated[Any, Depends(user_dependency)]
    app = FastAPI(title="Lockstep", docs_url=None, redoc_url=None, openapi_url=None)
    # The icon and stylesheet say nothing about the installation: served without login
    # so the Airflow nav can show the icon on its login page too.
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(exc.login_url, status_code=303)
        return JSONResponse(
            {"detail": exc.reason, "login_url": exc.login_url},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request, user: User) -> Response:
        if not request.url.path.endswith("/"):
            # The page's links are relative to the folder; /lockstep must become /lockstep/.
            return RedirectResponse(request.url.path + "/", status_code=307)
        dashboard, error = await _read(load)
        html = render_page(dashboard, error=error, user=_name_of(user))
        return HTMLResponse(html, status_code=200 if dashboard is not None else 503)

    @app.get("/api/state")
    async def state(user: User) -> JSONResponse:
        dashboard, error = await _read(load)
        if dashboard is None:
            return JSONResponse({"detail": error}, status_code=503)
        return JSONResponse(dashboard.to_dict())

    return app


async def _read(load: Callable[[], Dashboard]) -> tuple[Dashboard | None, str | None]:
    """Read in a worker thread (the database calls block); a broken store becomes a message."""
    try:
        return await run_in_threadpool(load), None
    except LockstepError as exc:
        return None, str(exc)


def _name_of(user: Any) -> str | None:
    getter = getattr(user, "get_name", None)
    return str(getter()) if callable(getter) else None
