"""Secrets in reprs and messages: passwords in URLs, tokens and webhook paths shown as ``***``."""

from __future__ import annotations

import re
from dataclasses import fields

MASK = "***"
# A password given as a query option (``?password=...``, libpq's form) is masked too.
_SECRET_QUERY = re.compile(r"\b(password|passwd|pwd|token|secret)=[^&#]*", re.IGNORECASE)
# Fields whose whole value is a secret, and fields that are URLs which may carry a password,
# of the settings classes (here and ``ops.stack.StackConfig``): their reprs mask them (``masked_repr``).
SECRET_FIELDS = frozenset({"api_token"})
URL_FIELDS = frozenset({"database_url", "mlflow_tracking_uri", "index_store", "mlflow_ui_url", "airflow_ui_url", "metadata_url"})
SECRET_URL_FIELDS = frozenset({"slack_webhook_url", "webhook_url"})  # the path is the secret


def mask_url(url: str | None) -> str | None:
    """``url`` with the password of its user part as ``***``: ``postgresql://user:***@host/db``.

    For logs, errors and reprs. A URL without a password (``sqlite:///...``, a plain path,
    ``redis://host/stream``) comes back unchanged. The user part ends at the last ``@``
    before the host's first ``/`` (a password's own ``/`` and ``@`` must be %-encoded, as
    SQLAlchemy and redis-py want them anyway).
    """
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    creds, at, host = netloc.rpartition("@")
    tail = _SECRET_QUERY.sub(rf"\1={MASK}", tail)
    if not at or ":" not in creds:
        return f"{scheme}://{netloc}{tail}"
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}{tail}"


# scheme://user:password@ anywhere in a text (an error message, a log line)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*):[^\s/@]*@")


def mask_urls_in(text: str) -> str:
    """``text`` with the password of every URL in it masked (``scheme://user:***@``)."""
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def mask_secret_url(url: str | None) -> str | None:
    """A webhook URL whose path is the secret (Slack's, a plain webhook's): ``https://host/***``."""
    if not url or "://" not in url:
        return MASK if url else url
    scheme, rest = url.split("://", 1)
    host = rest.split("/", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/{MASK}"


def _masked_value(name: str, value: object) -> object:
    if value is None:
        return None
    if name in SECRET_FIELDS:
        return MASK
    if name in URL_FIELDS and isinstance(value, str):
        return mask_url(value)
    if name in SECRET_URL_FIELDS and isinstance(value, str):
        return mask_secret_url(value)
    return value


def masked_repr(obj: object) -> str:
    """The dataclass repr of ``obj`` with its secret fields masked (why: reprs end up in logs)."""
    shown = ", ".join(f"{f.name}={_masked_value(f.name, getattr(obj, f.name))!r}" for f in fields(obj) if f.repr)
    return f"{type(obj).__name__}({shown})"
