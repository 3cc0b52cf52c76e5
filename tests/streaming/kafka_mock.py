"""A Kafka broker for the tests: librdkafka's mock cluster, from the library inside the
confluent-kafka wheel, reached through ctypes.

Why this and not a real broker: no Kafka broker installs from the package registries this
machine reaches, and the mock cluster speaks the Kafka protocol (produce, fetch, consumer
groups with committed offsets, topic metadata) on a loopback TCP port. The Python binding
only offers ``test.mock.num.brokers``, a private cluster per client; here the cluster is made
with ``rd_kafka_mock_cluster_new`` on a handle the test process keeps, so its bootstrap
address serves any number of clients, in this process or in subprocesses, like a real broker.

The C functions used, from librdkafka's ``rdkafka.h`` and ``rdkafka_mock.h`` (an experimental
API; the signatures below are those of librdkafka 2.x):

- ``rd_kafka_conf_t *rd_kafka_conf_new(void)``
- ``rd_kafka_t *rd_kafka_new(rd_kafka_type_t, rd_kafka_conf_t *, char *errstr, size_t)``
- ``void rd_kafka_destroy(rd_kafka_t *)``
- ``rd_kafka_mock_cluster_t *rd_kafka_mock_cluster_new(rd_kafka_t *, int broker_cnt)``
- ``const char *rd_kafka_mock_cluster_bootstraps(const rd_kafka_mock_cluster_t *)``
- ``rd_kafka_resp_err_t rd_kafka_mock_topic_create(rd_kafka_mock_cluster_t *, const char *, int, int)``
- ``void rd_kafka_mock_group_initial_rebalance_delay_ms(rd_kafka_mock_cluster_t *, int32_t)``
- ``void rd_kafka_mock_cluster_destroy(rd_kafka_mock_cluster_t *)``

``LOCKSTEP_TEST_KAFKA=HOST:PORT`` names a real broker instead (``kafka_broker`` in conftest).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RD_KAFKA_PRODUCER = 0  # rd_kafka_type_t


@dataclass(frozen=True)
class KafkaBroker:
    """Where the tests' broker listens, and how a test makes a topic there with its partitions."""

    bootstrap: str
    mock: _MockCluster | None = None  # None: a real broker (LOCKSTEP_TEST_KAFKA)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        if self.mock is not None:
            self.mock.create_topic(name, partitions)
        else:
            _create_topic_on_a_real_broker(self.bootstrap, name, partitions)

    def __str__(self) -> str:
        return self.bootstrap


def bundled_librdkafka() -> Path:
    """The librdkafka shared library the confluent-kafka wheel ships (the one its binding uses)."""
    import confluent_kafka

    package = Path(confluent_kafka.__file__).resolve().parent
    found = sorted(package.parent.glob("confluent_kafka.libs/librdkafka*.so*")) + sorted(
        package.glob("librdkafka*.so*"))
    if not found:
        raise RuntimeError(f"no librdkafka shared library beside {package} (a confluent-kafka wheel without "
                           "its bundled library?); set LOCKSTEP_TEST_KAFKA=HOST:PORT to name a broker")
    return found[0]


class _MockCluster:
    """One mock cluster and the ``rd_kafka_t`` handle it lives on (both destroyed by ``close``)."""

    def __init__(self, brokers: int = 1) -> None:
        self._lib = _bind(ctypes.CDLL(str(bundled_librdkafka())))
        errstr = ctypes.create_string_buffer(512)
        self._handle = self._lib.rd_kafka_new(RD_KAFKA_PRODUCER, self._lib.rd_kafka_conf_new(), errstr,
                                              len(errstr))  # takes the conf over, also on failure
        if not self._handle:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode(errors='replace')}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._handle, brokers)
        if not self._cluster:
            self._lib.rd_kafka_destroy(self._handle)
            raise RuntimeError("rd_kafka_mock_cluster_new failed (see librdkafka's log above)")
        # A group is formed as soon as its first member joins (a real broker waits 3 s by default).
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, 0)
        self.bootstrap = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, name: str, partitions: int) -> None:
        error = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1)
        if error:
            raise RuntimeError(f"rd_kafka_mock_topic_create({name!r}, {partitions}) returned error code {error}")

    def close(self) -> None:
        self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
        self._lib.rd_kafka_destroy(self._handle)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the signatures (ctypes would otherwise truncate the pointers to ``int``)."""
    p, c_int = ctypes.c_void_p, ctypes.c_int
    signatures = {
        "rd_kafka_conf_new": ([], p),
        "rd_kafka_new": ([c_int, p, ctypes.c_char_p, ctypes.c_size_t], p),
        "rd_kafka_destroy": ([p], None),
        "rd_kafka_mock_cluster_new": ([p, c_int], p),
        "rd_kafka_mock_cluster_bootstraps": ([p], ctypes.c_char_p),
        "rd_kafka_mock_topic_create": ([p, ctypes.c_char_p, c_int, c_int], c_int),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([p, ctypes.c_int32], None),
        "rd_kafka_mock_cluster_destroy": ([p], None),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


@contextmanager
def running_mock_cluster(brokers: int = 1) -> Iterator[KafkaBroker]:
    """A mock Kafka cluster for the ``with`` block: its bootstrap address, destroyed after."""
    cluster = _MockCluster(brokers)
    try:
        yield KafkaBroker(cluster.bootstrap, cluster)
    finally:
        cluster.close()


def _create_topic_on_a_real_broker(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    futures = AdminClient({"bootstrap.servers": bootstrap}).create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], operation_timeout=30)
    futures[name].result(timeout=60)
