"""The layout of the stack: the official Airflow layout, two serving replicas behind one
port, each verified directly by rollouts and checked on /readyz, pinned images, and
connection URLs that point at the services that serve them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tests.compose.helpers import (
    AIRFLOW_SERVICES,
    HEALTHCHECKED,
    PROXY,
    SERVING,
    SERVING_NAME,
    SERVING_REPLICAS,
    init_script_databases,
    serving_port,
    serving_services,
)


def test_airflow_services_follow_the_official_layout(compose):
    services = compose["services"]
    secrets = (
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    )
    first = services[AIRFLOW_SERVICES[0]]["environment"]
    for name in AIRFLOW_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert all(env[key] == first[key] for key in secrets), f"{name}: shared secrets differ"
        targets = {str(v).split(":")[1] for v in service["volumes"]}
        assert {f"/opt/airflow/{d}" for d in ("dags", "logs", "config", "plugins")} <= targets, name
        assert "lockstep-data:/data" in service["volumes"], name
    assert services["airflow-init"]["user"] == "0:0"
    worker = services["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale airflow-worker=N"


def test_serving_runs_two_replicas_behind_one_published_port(compose, generated_env):
    services = compose["services"]
    replicas = serving_services(compose)
    assert sorted(replicas) == list(SERVING_REPLICAS)
    for name, replica in replicas.items():
        assert "ports" not in replica and "container_name" not in replica, name
        assert "deploy" not in replica, f"{name}: one container per replica service"
        assert replica["hostname"] == name
        assert replica["networks"]["default"]["aliases"] == [SERVING_NAME], name
        same = {key: value for key, value in replica.items() if key != "hostname"}
        first = {key: value for key, value in replicas[SERVING].items() if key != "hostname"}
        assert same == first, f"{name} differs from {SERVING}"
    serving = services[SERVING]
    host_ports = {
        name: {str(p).split(":")[-2] for p in s.get("ports", [])} for name, s in services.items()
    }
    assert [
        name for name, ports in host_ports.items() if generated_env["LOCKSTEP_PORT"] in ports
    ] == [PROXY]
    env = serving["environment"]
    assert env["LOCKSTEP_API_TOKEN"] and env["LOCKSTEP_INDEX_STORE"] == "s3://lockstep-indexes/indexes"
    # The workers build indexes that the replicas read through the object store, not a shared
    # volume: a replica mounts nothing (tests/compose/test_trust.py), its cache is its own.
    worker = services["airflow-worker"]
    assert not serving.get("volumes") and worker["environment"]["LOCKSTEP_INDEX_STORE"] == env["LOCKSTEP_INDEX_STORE"]
    assert serving["user"] == worker["user"] == services["lockstep-init"]["user"]
    # The replicas, the DAGs and the schema step share one database, registry and index store.
    shared = (
        "LOCKSTEP_DATABASE_URL",
        "MLFLOW_TRACKING_URI",
        "LOCKSTEP_INDEX_STORE",
        "LOCKSTEP_MODEL_NAME",
    )
    for other in ("airflow-worker", "airflow-scheduler", "lockstep-init"):
        assert all(services[other]["environment"][key] == env[key] for key in shared), other


def test_healthchecks_where_the_stack_waits(compose):
    for name in HEALTHCHECKED:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) >= 2, name


def test_replica_healthchecks_ask_for_readiness(compose):
    """/readyz answers 200 only once a live model version is loaded; nothing waits for a
    replica to be healthy, since a fresh stack has no model before its first rollout."""
    for name in SERVING_REPLICAS:
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"http://localhost:{serving_port(compose, name)}/readyz" in test, name
    for name, service in compose["services"].items():
        for dependency, how in service.get("depends_on", {}).items():
            if dependency in SERVING_REPLICAS:
                assert how["condition"] == "service_started", f"{name} waits for {dependency}"


def test_rollouts_verify_every_replica_directly(compose):
    """LOCKSTEP_SERVING_URLS (the default of the DAGs' Param serving_url) names each replica by
    its own service name and port, never the proxy, in every Airflow container."""
    expected = [
        f"http://{name}:{serving_port(compose, name)}" for name in sorted(serving_services(compose))
    ]
    for name in (*AIRFLOW_SERVICES, "flower"):
        urls = compose["services"][name]["environment"]["LOCKSTEP_SERVING_URLS"].split(",")
        assert urls == expected, name


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.match(r"v?\d", tag), f"{name}: {image}"


def test_connection_urls_point_at_the_services_that_serve_them(compose, generated_env):
    services = compose["services"]
    databases = init_script_databases()
    assert set(databases) == {"airflow", "mlflow", "lockstep"}
    airflow_env = services["airflow-scheduler"]["environment"]
    urls = {
        "airflow": airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "mlflow": services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"],
        "lockstep": services[SERVING]["environment"]["LOCKSTEP_DATABASE_URL"],
    }
    for app, url in urls.items():
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == ("postgres", 5432, f"/{app}"), url
        assert (parts.username, parts.password) == (app, generated_env[databases[app]]), url
        assert services["postgres"]["environment"][databases[app]] == parts.password
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC", "AIRFLOW__CELERY__RESULT_BACKEND"):
        # (urlsplit does not parse a scheme with "_", as in postgresql+psycopg_async)
        assert airflow_env[key].split("://", 1)[1] == urls["airflow"].split("://", 1)[1], key
    broker = urlsplit(airflow_env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.hostname, broker.password) == (
        "redis",
        services["redis"]["environment"]["REDIS_PASSWORD"],
    )
    execution = urlsplit(airflow_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    api_command = services["airflow-apiserver"]["command"]
    assert execution.hostname == "airflow-apiserver" and execution.path == "/execution/"
    assert str(execution.port) == api_command[api_command.index("--port") + 1]
    tracking = urlsplit(services[SERVING]["environment"]["MLFLOW_TRACKING_URI"])
    mlflow_command = services["mlflow"]["command"]
    assert (
        tracking.hostname == "mlflow"
        and str(tracking.port) == mlflow_command[mlflow_command.index("--port") + 1]
    )
