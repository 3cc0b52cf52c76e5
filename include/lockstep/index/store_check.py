"""``lockstep index store``: is the index store usable from this host? (a probe, then the answer).

The first thing to run on a new worker or replica of a deployment on object storage: a
wrong endpoint, missing credentials or a bucket nobody created fail here with the store's
own error, not in the middle of a four-hour load.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from lockstep.core.atomic import atomic_write
from lockstep.core.config import settings
from lockstep.index import mirror
from lockstep.index.storage import store_root


def check_store(*, create_bucket: bool = False) -> dict[str, Any]:
    """Where the store and this host's folder are; a probe file written, read back from the store, deleted."""
    cfg = mirror.remote()
    root = store_root()
    if cfg is None:
        return {"store": str(root), "kind": "folder", "writable": os.access(root, os.W_OK), "host": socket.gethostname()}
    if create_bucket:
        mirror.ensure_bucket()
    probe = root / ".lockstep-probe" / f"{socket.gethostname()}-{secrets.token_hex(4)}"
    body = secrets.token_hex(16)
    atomic_write(probe, body)
    try:
        mirror.push(probe)
        probe.unlink()
        mirror.pull(probe)
        read_back = probe.read_text() == body
    finally:
        mirror.delete(probe)
        probe.unlink(missing_ok=True)
    return {
        "store": cfg.url, "kind": "s3", "endpoint": cfg.endpoint_url or "AWS default", "cache": str(cfg.cache_dir),
        "write_read_delete": read_back, "host": socket.gethostname(), "model_name": settings().model_name,
    }
