"""The Airflow login, checked for the Lockstep page.

Airflow 3's api-server authenticates with JWTs signed by its auth manager: the UI keeps
one in the ``_token`` cookie after login, API clients send it as ``Authorization:
Bearer``. Plugin apps are not protected by Airflow on their own, so every route of the
page depends on ``airflow_user``, which validates the token with the running auth
manager (signature, expiry, revocation) and asks it whether the user may view the UI.
Whatever auth manager is configured (simple, FAB, Keycloak, ...) applies unchanged.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, status

COOKIE_NAME = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN


class LoginRequired(Exception):
    """No valid Airflow token came with the request; the app answers 401 or a redirect."""

    def __init__(self, reason: str, login_url: str):
        super().__init__(reason)
        self.reason = reason
        self.login_url = login_url


async def airflow_user(request: Request) -> Any:
    """The logged-in Airflow user, or ``LoginRequired`` / 403."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from jwt import ExpiredSignatureError, InvalidTokenError

    auth_manager = get_auth_manager()
    login_url = auth_manager.get_url_login(next_url=_this_page(request))
    token = _token_of(request)
    if not token:
        raise LoginRequired("not logged in to Airflow", login_url)
    try:
        user = await auth_manager.get_user_from_token(token)
    except ExpiredSignatureError:
        raise LoginRequired("the Airflow login has expired; log in again", login_url) from None
    except InvalidTokenError:
        raise LoginRequired("the Airflow token is not valid; log in again", login_url) from None
    # Anyone who may see the Airflow UI may see this read-only page.
    if not auth_manager.is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this Airflow user may not view the Airflow UI")
    return user


def _token_of(request: Request) -> str | None:
    """An explicit bearer token wins over the browser's cookie, as in Airflow's own API."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME) or None


def _this_page(request: Request) -> str:
    """Where the login should send the user back: this path on this server."""
    query = f"?{request.url.query}" if request.url.query else ""
    return request.url.path + query
