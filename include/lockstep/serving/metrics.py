"""Prometheus metrics of one serving app, in its own registry.

Counters and histograms are labelled by model version, which is what a canary analysis
compares. Slot states, weights, in-flight counts and the routing generation are read
from the ``SlotManager`` at scrape time by a collector, so they are never stale and a
slot that left the table leaves no series behind. Each app gets its own
``CollectorRegistry``: two apps in one process (tests, two replicas) never mix figures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from lockstep.serving.logs import LogWriter
    from lockstep.serving.shadow import ShadowRunner
    from lockstep.serving.slot_manager import SlotManager

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0)
NO_VERSION = "none"
# Seconds from a change's commit to its slot applying it: a fast version in milliseconds,
# a transformer version's micro-batches within the write target (p99 <= 2 s, issue 24).
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lockstep_search_requests", "Searches answered, by the model version that served them.",
            ["model_version"], registry=r,
        )
        self.errors = Counter(
            "lockstep_search_errors", "Searches refused or failed, by model version ('none' before routing) and status.",
            ["model_version", "status"], registry=r,
        )
        self.latency = Histogram(
            "lockstep_search_latency_seconds", "Time to route, embed and search, by model version.",
            ["model_version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.shadow_requests = Counter(
            "lockstep_shadow_requests", "Shadow copies run, by shadow version and outcome.",
            ["model_version", "outcome"], registry=r,
        )
        self.shadow_latency = Histogram(
            "lockstep_shadow_latency_seconds", "Time of a shadow search, by shadow version.",
            ["model_version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.shadow_dropped = Counter(
            "lockstep_shadow_dropped", "Shadow copies dropped because the shadow queue was full.",
            ["model_version"], registry=r,
        )
        self.writes = Counter(
            "lockstep_record_writes", "Record writes accepted through the API.", ["op"], registry=r,
        )
        self.feedback = Counter(
            "lockstep_feedback_events", "Feedback events accepted.", ["event"], registry=r,
        )
        self.log_dropped = Counter(
            "lockstep_log_rows_dropped", "Log rows dropped (queue full or write failed), by table.",
            ["table"], registry=r,
        )
        self.log_rejected = Counter(
            "lockstep_log_rows_rejected", "Log rows the database refused (the rest of their batch was written), by table.",
            ["table"], registry=r,
        )
        self.apply_lag = Histogram(
            "lockstep_apply_lag_seconds",
            "Seconds from a change's commit in the change log to its slot applying it, by model version.",
            ["model_version"], buckets=LAG_BUCKETS, registry=r,
        )
        self.apply_batches = Counter(
            "lockstep_apply_batches", "Micro-batches applied from the change log (one transform call each), by model version.",
            ["model_version"], registry=r,
        )
        self.write_pending = Counter(
            "lockstep_write_pending", "Writes answered before this version had applied them, by model version.",
            ["model_version"], registry=r,
        )
        self.feedback_rejected = Counter(
            "lockstep_feedback_rejected", "Feedback events refused with 422, by reason.", ["reason"], registry=r,
        )

    def attach(self, manager: SlotManager, shadow: ShadowRunner, logs: LogWriter, replica: str) -> None:
        self.registry.register(_StateCollector(manager, shadow, logs, replica))
        self.registry.register(StreamLagCollector(manager.engine))  # the streaming loader (issue 13)

    # callbacks for the shadow runner and log writer
    def shadow_result(self, version: str, seconds: float, ok: bool) -> None:
        self.shadow_requests.labels(version, "ok" if ok else "error").inc()
        self.shadow_latency.labels(version).observe(seconds)

    def applied(self, version: str, lags: Sequence[float]) -> None:
        """One micro-batch applied by ``version``'s applier: the lag of each change in it."""
        self.apply_batches.labels(version).inc()
        histogram = self.apply_lag.labels(version)
        for lag in lags:
            histogram.observe(lag)

    def shadow_drop(self, version: str) -> None:
        self.shadow_dropped.labels(version).inc()

    def log_drop(self, table: str, count: int) -> None:
        self.log_dropped.labels(table).inc(count)

    def log_reject(self, table: str, count: int) -> None:
        self.log_rejected.labels(table).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read from the replica's state at scrape time."""

    def __init__(self, manager: SlotManager, shadow: ShadowRunner, logs: LogWriter, replica: str) -> None:
        self.manager = manager
        self.shadow = shadow
        self.logs = logs
        self.replica = replica

    def collect(self) -> Iterator[Metric]:
        generation = GaugeMetricFamily(
            "lockstep_routing_generation", "Routing-table generation this replica serves.", labels=["replica"]
        )
        generation.add_metric([self.replica], self.manager.view.generation)
        yield generation
        state = GaugeMetricFamily(
            "lockstep_slot_state", "1 for each slot's state in the routing table.", labels=["model_version", "state"]
        )
        weight = GaugeMetricFamily("lockstep_slot_weight", "Traffic weight (percent).", labels=["model_version"])
        loaded = GaugeMetricFamily(
            "lockstep_slot_loaded", "1 if this replica holds the slot's model and index.", labels=["model_version"]
        )
        failed = GaugeMetricFamily(
            "lockstep_slot_load_failed", "1 if the slot failed to load on this replica.", labels=["model_version"]
        )
        inflight = GaugeMetricFamily("lockstep_slot_inflight", "Requests running on the slot.", labels=["model_version"])
        applied = GaugeMetricFamily(
            "lockstep_slot_applied_seq", "Last change-log sequence applied to the slot's index.", labels=["model_version"]
        )
        lag_seq = GaugeMetricFamily(
            "lockstep_slot_apply_lag_seq", "Changes committed (as far as this replica knows) that the slot has not applied.",
            labels=["model_version"],
        )
        lag_seconds = GaugeMetricFamily(
            "lockstep_slot_apply_lag_last_seconds", "Commit-to-applied seconds of the last change the slot applied.",
            labels=["model_version"],
        )
        for s in self.manager.status():
            state.add_metric([s.model_version, s.state], 1)
            weight.add_metric([s.model_version], s.weight)
            loaded.add_metric([s.model_version], 1 if s.loaded else 0)
            failed.add_metric([s.model_version], 1 if s.error else 0)
            inflight.add_metric([s.model_version], s.inflight)
            if s.applied_seq is not None:
                applied.add_metric([s.model_version], s.applied_seq)
            if s.lag_seq is not None:
                lag_seq.add_metric([s.model_version], s.lag_seq)
            if s.lag_seconds is not None:
                lag_seconds.add_metric([s.model_version], s.lag_seconds)
        yield from (state, weight, loaded, failed, inflight, applied, lag_seq, lag_seconds)
        apply_errors = CounterMetricFamily(
            "lockstep_apply_errors", "Catch-ups from the change log that failed (the next one repairs them)."
        )
        apply_errors.add_metric([], self.manager.apply_errors)
        yield apply_errors
        depth = GaugeMetricFamily("lockstep_shadow_queue_depth", "Shadow copies waiting.")
        depth.add_metric([], self.shadow.depth)
        yield depth
        pending = GaugeMetricFamily("lockstep_log_rows_pending", "Log rows waiting to be written.")
        pending.add_metric([], self.logs.pending)
        yield pending


class StreamLagCollector(Collector):
    """The streaming loader's backlog per (source, group), read from its table at scrape time.

    The loader runs in its own process and writes what the broker reported after each batch
    to ``lockstep_stream_consumers``; every replica exports it, labelled by source and group.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        from lockstep.store.schema import stream_consumers as t

        lag = GaugeMetricFamily(
            "lockstep_stream_lag", "Stream messages not yet delivered to the loader's group (the broker's figure).",
            labels=["source", "group"],
        )
        pending = GaugeMetricFamily(
            "lockstep_stream_pending", "Stream messages delivered to the loader and not yet acknowledged.",
            labels=["source", "group"],
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(t.c.source, t.c.group_name, t.c.lag, t.c.pending)).all()
        except SQLAlchemyError:
            rows = []  # a scrape must not fail because the database is away; the gauges are absent then
        for row in rows:
            if row.lag is not None:
                lag.add_metric([row.source, row.group_name], row.lag)
            if row.pending is not None:
                pending.add_metric([row.source, row.group_name], row.pending)
        yield from (lag, pending)
