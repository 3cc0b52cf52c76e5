"""An S3-protocol bucket prefix as a small key/file store (fsspec's ``s3fs``).

Only what the mirror needs: put a file, get a file (to a temporary name, then renamed, so a
reader of the cache never sees a torn download), list a prefix with sizes, delete a prefix.
Keys are relative to the store's prefix and are always made by Lockstep from checked parts
(``lockstep.index.mirror``), never taken from outside.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from lockstep.core.config import ObjectStoreSettings
from lockstep.core.errors import ConfigurationError


class ObjectStore:
    """The bucket prefix of one ``ObjectStoreSettings``."""

    def __init__(self, config: ObjectStoreSettings) -> None:
        import s3fs

        self.config = config
        client = {"endpoint_url": config.endpoint_url} if config.endpoint_url else {}
        # No listings cache: another host may have written a shard a moment ago.
        self.fs = s3fs.S3FileSystem(client_kwargs=client, use_listings_cache=False, skip_instance_cache=True)
        self.root = f"{config.bucket}/{config.prefix}".rstrip("/")

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def put(self, local: Path, rel: str) -> None:
        try:
            self._call(self.fs.put_file, str(local), self.key(rel))
        except FileNotFoundError as exc:
            if not local.exists():
                raise
            raise ConfigurationError(
                f"the object store {self.config.url} has no bucket {self.config.bucket!r} ({exc}); create it, "
                "e.g. with `lockstep index store --create-bucket`") from exc

    def get(self, rel: str, local: Path) -> None:
        """Download ``rel`` to ``local`` atomically; FileNotFoundError when the store has no such key."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
        os.close(fd)
        try:
            self._call(self.fs.get_file, self.key(rel), tmp)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def listing(self, rel: str) -> dict[str, int]:
        """Every key under ``rel`` (a folder) with its size, relative to the store's prefix."""
        try:
            found = self._call(self.fs.find, self.key(rel), detail=True)
        except FileNotFoundError:
            return {}
        under = self.key(rel).rstrip("/") + "/"
        return {key.removeprefix(self.root + "/"): int(info.get("size") or 0)
                for key, info in found.items() if info.get("type") == "file" and key.startswith(under)}

    def exists(self, rel: str) -> bool:
        return bool(self._call(self.fs.exists, self.key(rel)))

    def delete(self, rel: str) -> None:
        """Delete a key, or every key under a folder; nothing there is not an error."""
        keys = list(self.listing(rel)) or ([rel] if self.exists(rel) else [])
        if keys:
            self._call(self.fs.rm, [self.key(k) for k in keys])

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (a fresh MinIO/moto server)."""
        if not self._call(self.fs.exists, self.config.bucket):
            self._call(self.fs.mkdir, self.config.bucket)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (FileNotFoundError, KeyboardInterrupt):
            raise
        except PermissionError as exc:
            raise ConfigurationError(
                f"the object store {self.config.url} refused access ({exc}); check AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY and the bucket's policy") from exc
        except OSError as exc:
            raise ConfigurationError(
                f"the object store {self.config.url} cannot be reached or failed ({exc}); "
                f"endpoint {self.config.endpoint_url or 'AWS default'}") from exc


@lru_cache(maxsize=8)
def _store(config: ObjectStoreSettings, pid: int) -> ObjectStore:
    return ObjectStore(config)


def object_store(config: ObjectStoreSettings) -> ObjectStore:
    """One client per process and configuration (a forked worker makes its own)."""
    return _store(config, os.getpid())
