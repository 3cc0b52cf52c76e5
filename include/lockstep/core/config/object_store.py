"""Where index versions live when hosts share no disk: an object store and each host's cache.

``LOCKSTEP_INDEX_STORE`` is a local folder (the default, ``$LOCKSTEP_HOME/indexes``) or an
object-store URL ``s3://bucket/prefix``. With an object store every host works on a local
copy under ``LOCKSTEP_INDEX_CACHE`` (default ``$LOCKSTEP_HOME/index-cache``) that is read
through from the store and verified by checksum; ``LOCKSTEP_S3_ENDPOINT_URL`` points the
S3 client at a server other than AWS (MinIO, moto, Ceph). Credentials are the standard
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION``, read by the S3
client itself (botocore), so Lockstep never holds them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lockstep.core.config.environment import environment

INDEX_CACHE_ENV = "LOCKSTEP_INDEX_CACHE"
S3_ENDPOINT_ENV = "LOCKSTEP_S3_ENDPOINT_URL"
REMOTE_SCHEMES = ("s3",)
# A bucket as S3 names them (3-63 lowercase letters, digits, dots, hyphens), then an optional
# prefix of plain path segments: nothing that could climb out of the prefix or inject a query.
_BUCKET = r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]"
_SEGMENT = r"[A-Za-z0-9_.\-]+"
_REMOTE_URL = re.compile(rf"^s3://(?P<bucket>{_BUCKET})(?P<prefix>(/{_SEGMENT})*)/?$")


@dataclass(frozen=True)
class ObjectStoreSettings:
    """A remote index store: its URL (no trailing slash), the S3 endpoint, this host's cache."""

    url: str
    bucket: str
    prefix: str
    endpoint_url: str | None
    cache_dir: Path


def is_remote_store(store: str) -> bool:
    """True for an object-store URL (``s3://...``); a path or ``file://`` URL is a local folder."""
    return store.split("://", 1)[0].lower() in REMOTE_SCHEMES if "://" in store else False


def object_store_settings(store: str, home: Path, env: Mapping[str, str] | None = None) -> ObjectStoreSettings:
    """The checked settings of the remote store ``store`` (a clear error naming what is wrong)."""
    from lockstep.core.errors import ConfigurationError

    env = environment() if env is None else env
    match = _REMOTE_URL.match(store)
    if match is None or any(part in (".", "..") for part in match["prefix"].split("/")):
        raise ConfigurationError(
            f"LOCKSTEP_INDEX_STORE={store!r} is not a usable object-store URL: write s3://<bucket>[/<prefix>] "
            "with a lowercase S3 bucket name and plain path segments (letters, digits, '_', '-', '.'; no '..')"
        )
    endpoint = (env.get(S3_ENDPOINT_ENV) or "").strip() or None
    if endpoint is not None and not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", endpoint):
        raise ConfigurationError(f"{S3_ENDPOINT_ENV}={endpoint!r} must be an http(s):// URL such as http://minio:9000")
    cache = Path(env.get(INDEX_CACHE_ENV) or home / "index-cache").expanduser().resolve()
    return ObjectStoreSettings(
        url=store.rstrip("/"), bucket=match["bucket"], prefix=match["prefix"].strip("/"),
        endpoint_url=endpoint, cache_dir=cache,
    )
