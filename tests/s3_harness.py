"""An S3-protocol server for tests (moto's server mode) and a bucket per test.

moto answers the S3 API over HTTP on a loopback port, so every client Lockstep uses
(s3fs in this process, in DAG task processes, in Celery workers and serving replicas
started by a test) talks to it as it would to MinIO or AWS. Data lives in the server's
memory and goes with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_BUCKETS = itertools.count()


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def env(self, bucket: str, prefix: str = "indexes") -> dict[str, str]:
        """The environment of a Lockstep process whose index store is ``s3://bucket/prefix`` here."""
        return {
            "LOCKSTEP_INDEX_STORE": f"s3://{bucket}/{prefix}",
            "LOCKSTEP_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "lockstep-test",
            "AWS_SECRET_ACCESS_KEY": "lockstep-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@contextmanager
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


def new_bucket_name() -> str:
    return f"lockstep-test-{next(_BUCKETS):04d}"


def host_cache(home: Path, host: str) -> Path:
    """The index cache of one simulated host: nothing on disk is shared between two of them."""
    return home.parent / f"host-{host}" / "index-cache"
