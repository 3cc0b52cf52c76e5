"""The Grafana dashboards and Prometheus alert rules ask for what Lockstep really exports.

A dashboard whose query names a metric nobody exports draws an empty panel, and an alert
on a misspelt metric never fires: neither fails anywhere, so this module checks them
against a real scrape of the serving app's ``/metrics`` (built in process as the serving
tests build it, with traffic, a write and a stream backlog so the series exist). Every
PromQL expression must parse (``promtool check rules``, the dashboard queries wrapped as
recording rules), the alert rules pass their unit tests (``promtool test rules``), and the
SQL panels of the rollouts dashboard run against a real PostgreSQL with Lockstep's schema.

Rollouts export no metrics of their own: their gates and looks are rows in
``lockstep_rollout_steps`` (the SQL panels); the rollout alerts and weight panels read the
routing table as every replica exports it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from lockstep.rollout import record
from lockstep.rollout.gates import GateResult, GateVerdict
from lockstep.store import routing
from lockstep.store.db import get_engine
from lockstep.streaming.status import record_backlog
from tests.compose.helpers import DEPLOY
from tests.serving.conftest import deploy
from tests.serving.harness import auth, serve, wait_for

GRAFANA = DEPLOY / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
RULES = DEPLOY / "prometheus" / "lockstep.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "lockstep.rules.test.yml"
PROMETHEUS_UID = "lockstep-prometheus"
POSTGRES_UID = "lockstep-postgres"
# What Grafana puts in for its variables, so a query is plain PromQL for promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$version": ".*"}
# Labels Prometheus adds at scrape time (deploy/prometheus.yml) and the histogram's own.
SCRAPE_LABELS = {"job", "instance"}
# Sample names per exposition type (prometheus_client names counters' samples *_total).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "unknown": ("",),
}
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_METRIC = re.compile(r"\blockstep_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(lockstep_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_VERDICTS = ("pass", "fail", "inconclusive")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)


# --- what the dashboards and rules ask for ---------------------------------------------


def dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def queries(uid: str) -> list[tuple[str, str]]:
    """(where, query) of every target on the data source ``uid``: PromQL or SQL."""
    found = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if (target.get("datasource") or panel["datasource"])["uid"] == uid:
                    query = target["expr"] if uid == PROMETHEUS_UID else target["rawSql"]
                    found.append((f"{name}.json: {panel['title']} ({target['refId']})", query))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [(f"rule {rule['alert']}", rule["expr"]) for group in groups for rule in group["rules"]]


def promql(expr: str) -> str:
    """A dashboard query with Grafana's variables put in; no variable may be left."""
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def all_promql() -> list[tuple[str, str]]:
    return [(where, promql(expr)) for where, expr in queries(PROMETHEUS_UID) + rule_expressions()]


def metrics_of(expr: str) -> set[str]:
    return set(_METRIC.findall(_QUOTED.sub('""', expr)))


# --- what Lockstep exports -------------------------------------------------------------


@pytest.fixture
def exposition(lockstep_home, tmp_path) -> dict[str, set[str] | None]:
    """Sample name -> label names, from one scrape of a serving app that has served.

    None for a labelled metric the scrape had no sample of (its family is exported, so the
    name is known, but its labels show only once something is counted).
    """
    d = deploy(f"sqlite:///{tmp_path / 'lockstep.db'}", tmp_path)
    routing.set_weights({"1": 80, "2": 20}, engine=d.engine)
    record_backlog(d.engine, source="redis:changes", group="loader", consumer="c1", pending=3, lag=12)
    with serve(d.app()) as s, httpx.Client(base_url=s.url) as client:
        for query in ("rocket planet orbit", "hockey goal season", "graphics card driver"):
            assert client.post("/search", json={"query": query, "k": 3}).status_code == 200
        assert client.post("/search", json={"k": 3}).status_code == 422  # an error series
        put = client.put("/records/r0001", json={"text": "comet orbit rocket"}, headers=auth())
        assert put.status_code in (200, 202), put.text
        wait_for(lambda: "lockstep_apply_lag_seconds_bucket{" in client.get("/metrics").text,
                 timeout=15, what="the write to be applied")
        body = client.get("/metrics").text
    exported: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(body):
        for suffix in SUFFIXES[family.type]:
            exported.setdefault(family.name + suffix, None)
        for sample in family.samples:
            exported[sample.name] = (exported[sample.name] or set()) | set(sample.labels)
    return exported


def test_every_expression_names_only_exported_metrics_and_their_labels(exposition):
    expressions = all_promql()
    assert len(expressions) >= 30
    label_checked = 0
    for where, expr in expressions:
        names = metrics_of(expr)
        assert names, f"{where} names no Lockstep metric: {expr}"
        unknown = names - set(exposition)
        assert not unknown, f"{where} names metrics Lockstep does not export: {sorted(unknown)}"
        stripped = _QUOTED.sub('""', expr)
        used = {m for _, inside in _SELECTOR.findall(stripped) for m in _MATCHER_LABEL.findall(inside)}
        used |= {lbl.strip() for group in _GROUPING.findall(stripped) for lbl in group.split(",") if lbl.strip()}
        # labels are checked where the scrape had samples of every metric of the expression
        if all(exposition[n] is not None for n in names):
            labels = set().union(*(exposition[n] for n in names)) | SCRAPE_LABELS
            assert used <= labels, f"{where} uses labels its metrics do not have: {sorted(used - labels)}"
            label_checked += 1
    assert label_checked >= len(expressions) - 6, "the scrape lacks samples of too many metrics"


def test_the_version_variable_reads_an_exported_label(exposition):
    for dashboard in dashboards().values():
        for variable in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
            assert match, variable
            assert match.group(2) in exposition[match.group(1)], variable


def test_the_scrape_has_no_rollout_metrics_so_rollouts_read_the_database(exposition):
    """If a rollout exporter is ever added, its metrics belong on the rollouts dashboard."""
    assert not any(name.startswith("lockstep_rollout") for name in exposition)
    assert queries(POSTGRES_UID), "the rollouts dashboard shows gates and looks from SQL"


# --- they parse, and the alerts fire when they should -----------------------------------


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@needs_promtool
def test_alert_rules_pass_promtool_check_rules():
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_pass_their_unit_tests():
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@needs_promtool
def test_prometheus_config_loads_the_alert_rules():
    result = _promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Checking {RULES}" in result.stdout or "1 rule files found" in result.stdout, result.stdout


def test_every_alert_has_for_severity_summary_description_and_a_unit_test():
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
              for case in test.get("alert_rule_test", [])}
    for group in groups:
        for rule in group["rules"]:
            assert "for" in rule and rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            assert rule["alert"] in tested, f"{rule['alert']} has no case in {RULE_TESTS.name}"


@needs_promtool
def test_every_dashboard_query_parses(tmp_path):
    """Wrapped as recording rules, promtool parses each query as Prometheus would."""
    wrapped = [promql(expr) for _, expr in queries(PROMETHEUS_UID)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": [
        {"record": f"lockstep:dashboard_query_{i}", "expr": e} for i, e in enumerate(wrapped)
    ]}]}), encoding="utf-8")
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(wrapped)} rules found" in result.stdout + result.stderr


# --- the SQL panels run against Lockstep's schema ---------------------------------------


def as_postgres(sql: str) -> str:
    """Grafana's PostgreSQL macros expanded the way Grafana expands them (time range: all)."""
    sql = re.sub(r"\$__timeFilter\(([\w.]+)\)",
                 r"\1 BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z'", sql)
    sql = re.sub(r"\$__timeGroupAlias\(([\w.]+), '1h'\)",
                 r'floor(extract(epoch from \1)/3600)*3600 AS "time"', sql)
    assert "$" not in sql, f"a Grafana macro this test does not know: {sql}"
    return sql


def test_rollout_panels_show_the_gates_and_looks_a_rollout_recorded(postgres_url):
    engine = get_engine(postgres_url)
    record.begin("canary-1", "2", "1", "canary", {}, engine=engine)
    gates = [GateResult("errors", GateVerdict.PASS, "0 of 200 failed"),
             GateResult("latency", GateVerdict.INCONCLUSIVE, "too few samples")]
    record.record_step("canary-1", "canary 5%", "canary", "inconclusive", gates=gates, look=1, weight=5,
                       action="extend", engine=engine)
    record.record_step("canary-1", "canary 5%", "canary", "pass", gates=gates[:1], look=2, weight=5,
                       action="promote", engine=engine)
    record.finish("canary-1", "promoted", "every gate passed", engine=engine)
    sql = queries(POSTGRES_UID)
    assert len(sql) >= 4
    seen = {}
    with engine.connect() as conn:
        for where, query in sql:
            seen[where] = conn.execute(text(as_postgres(query))).mappings().all()
            assert seen[where], f"{where} shows nothing for a recorded rollout"
    gate_rows = next(rows for where, rows in seen.items() if "Gate results" in where)
    assert sorted((r["look"], r["gate"], r["verdict"]) for r in gate_rows) == [
        (1, "errors", "pass"), (1, "latency", "inconclusive"), (2, "errors", "pass")]
    assert all(r["verdict"] in _VERDICTS for r in gate_rows)
    looks = next(rows for where, rows in seen.items() if where.startswith("rollouts.json: Looks"))
    assert [(r["look"], r["weight"], r["action"]) for r in looks] == [(2, 5, "promote"), (1, 5, "extend")]


# --- Grafana's provisioning matches the compose service ---------------------------------


def test_grafana_provisioning_matches_the_compose_service(compose):
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["monitoring"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "lockstep.yaml").read_text(encoding="utf-8")
    )["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(provider["options"]["path"]) and (DASHBOARDS / home.name).is_file()
    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "lockstep.yaml").read_text(encoding="utf-8")
    )["datasources"]
    by_uid = {s["uid"]: s for s in sources}
    assert set(by_uid) == {PROMETHEUS_UID, POSTGRES_UID}
    assert by_uid[PROMETHEUS_UID]["url"] == "http://prometheus:9090"
    assert by_uid[POSTGRES_UID]["secureJsonData"]["password"] == "$LOCKSTEP_DB_PASSWORD"
    assert "LOCKSTEP_DB_PASSWORD" in grafana["environment"]
    assert set(dashboards()) == {"serving", "rollouts"}
    for name, dashboard in dashboards().items():
        uids = {p["datasource"]["uid"] for p in panels(dashboard) if "datasource" in p}
        assert uids <= set(by_uid), name
        assert dashboard["uid"] == f"lockstep-{name}" and dashboard["editable"] is False, name
