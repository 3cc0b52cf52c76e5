"""The serving metrics, scraped from a real registry: counters by model version, the
replica's state read at scrape time (so never stale), and one registry per app so two
apps in one process never mix figures. (tests/serving/test_api.py checks that the
running app feeds them; here each series is checked against the state it reports.)"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockstep.serving.logs import LogWriter
from lockstep.serving.metrics import LATENCY_BUCKETS, ServingMetrics
from lockstep.serving.shadow import ShadowRunner
from lockstep.serving.slot_manager import SlotManager
from lockstep.store import routing


def scrape(metrics: ServingMetrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the text exposition, parsed by prometheus_client's own parser."""
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


# --- counters and histograms -------------------------------------------------------------------------


def test_each_app_has_its_own_registry():
    a, b = ServingMetrics(), ServingMetrics()
    a.requests.labels("1").inc(3)
    a.errors.labels("none", "503").inc()
    assert value(scrape(a), "lockstep_search_requests_total", model_version="1") == 3
    assert value(scrape(a), "lockstep_search_errors_total", model_version="none", status="503") == 1
    assert value(scrape(b), "lockstep_search_requests_total", model_version="1") is None


def test_shadow_results_are_counted_by_outcome_and_timed():
    m = ServingMetrics()
    m.shadow_result("2", 0.003, True)
    m.shadow_result("2", 0.003, True)
    m.shadow_result("2", 1.5, False)
    m.shadow_drop("2")
    s = scrape(m)
    assert value(s, "lockstep_shadow_requests_total", model_version="2", outcome="ok") == 2
    assert value(s, "lockstep_shadow_requests_total", model_version="2", outcome="error") == 1
    assert value(s, "lockstep_shadow_dropped_total", model_version="2") == 1
    assert value(s, "lockstep_shadow_latency_seconds_count", model_version="2") == 3
    assert value(s, "lockstep_shadow_latency_seconds_sum", model_version="2") == pytest.approx(1.506)
    assert value(s, "lockstep_shadow_latency_seconds_bucket", model_version="2", le="0.004") == 2
    assert value(s, "lockstep_shadow_latency_seconds_bucket", model_version="2", le="2.0") == 3


def test_latency_buckets_cover_sub_millisecond_to_seconds_in_order():
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    assert LATENCY_BUCKETS[0] <= 0.001 and LATENCY_BUCKETS[-1] >= 1.0
    m = ServingMetrics()
    m.latency.labels("1").observe(0.0004)
    s = scrape(m)
    buckets = {dict(k)["le"] for k in series(s, "lockstep_search_latency_seconds_bucket")}
    assert buckets == {str(b) for b in LATENCY_BUCKETS} | {"+Inf"}


def test_log_drops_and_rejections_add_their_counts_by_table():
    m = ServingMetrics()
    m.log_drop("lockstep_request_log", 5)
    m.log_drop("lockstep_request_log", 2)
    m.log_reject("lockstep_feedback_log", 1)
    s = scrape(m)
    assert value(s, "lockstep_log_rows_dropped_total", table="lockstep_request_log") == 7
    assert value(s, "lockstep_log_rows_rejected_total", table="lockstep_feedback_log") == 1
    assert value(s, "lockstep_log_rows_rejected_total", table="lockstep_request_log") is None


# --- state read at scrape time -------------------------------------------------------------------------


@pytest.fixture
def replica(deployment):
    """A real slot manager following the deployment's table, with a shadow runner and log writer (not started)."""
    d = deployment
    routing.set_weights({"1": 100}, shadow=["2"], engine=d.engine)
    manager = SlotManager(d.engine, d.store, listen=False)
    manager.refresh(wait=True)
    logs = LogWriter(d.engine)
    shadow = ShadowRunner(logs, queue_size=10)
    metrics = ServingMetrics()
    metrics.attach(manager, shadow, logs, replica="r1")
    yield d, manager, shadow, logs, metrics
    manager.stop()


def test_slot_gauges_describe_the_table_this_replica_serves(replica):
    d, manager, _shadow, _logs, metrics = replica
    s = scrape(metrics)
    assert value(s, "lockstep_routing_generation", replica="r1") == routing.read_generation(d.engine)
    assert value(s, "lockstep_slot_state", model_version="1", state="live") == 1
    assert value(s, "lockstep_slot_state", model_version="2", state="ready") == 1
    assert (value(s, "lockstep_slot_weight", model_version="1"), value(s, "lockstep_slot_weight", model_version="2")) == (100, 0)
    assert value(s, "lockstep_slot_loaded", model_version="2") == 1  # a shadow is loaded too
    assert value(s, "lockstep_slot_load_failed", model_version="1") == 0
    loaded = manager.loaded()
    for version in ("1", "2"):
        assert value(s, "lockstep_slot_applied_seq", model_version=version) == loaded[version].applied_seq
    assert value(s, "lockstep_apply_errors_total") == 0


def test_gauges_follow_the_replica_between_scrapes(replica):
    d, manager, shadow, logs, metrics = replica
    slot = manager.loaded()["1"]
    with slot.lease():
        assert value(scrape(metrics), "lockstep_slot_inflight", model_version="1") == 1
    assert value(scrape(metrics), "lockstep_slot_inflight", model_version="1") == 0
    shadow.submit("q1", "rocket", 3, "1", ["a"], manager.view.shadows)
    logs.feedback(request_id="q1", record_id="a", event="click")
    s = scrape(metrics)
    assert value(s, "lockstep_shadow_queue_depth") == 1 == shadow.depth
    assert value(s, "lockstep_log_rows_pending") == 1 == logs.pending
    manager.apply_errors = 2
    assert value(scrape(metrics), "lockstep_apply_errors_total") == 2


def test_a_slot_leaving_service_leaves_no_stale_series(replica):
    d, manager, _shadow, _logs, metrics = replica
    routing.set_weights({"1": 100}, shadow=[], engine=d.engine)
    routing.set_state("2", "retired", engine=d.engine)
    manager.refresh(wait=True)
    s = scrape(metrics)
    assert series(s, "lockstep_slot_state") == {
        frozenset({"model_version": "1", "state": "live"}.items()): 1,
        frozenset({"model_version": "2", "state": "retired"}.items()): 1,
    }
    assert value(s, "lockstep_slot_loaded", model_version="2") == 0
    assert value(s, "lockstep_slot_applied_seq", model_version="2") is None  # nothing loaded, nothing applied
    assert value(s, "lockstep_routing_generation", replica="r1") == routing.read_generation(d.engine)


def test_a_slot_that_cannot_load_is_flagged(replica, tmp_path):
    d, manager, _shadow, _logs, metrics = replica
    v1 = manager.loaded()["1"]
    routing.register_slot("3", str(tmp_path / "missing-model.joblib"), str(tmp_path / "indexes" / "v1"),
                          v1.fingerprint, state="ready", engine=d.engine)
    manager.refresh(wait=True)
    s = scrape(metrics)
    assert value(s, "lockstep_slot_load_failed", model_version="3") == 1
    assert value(s, "lockstep_slot_loaded", model_version="3") == 0
    assert value(s, "lockstep_slot_load_failed", model_version="1") == 0
