"""The stack's trust anchor (issue 21): MLflow behind its basic-auth app, a writer login on the
workers alone and a reader login on the replicas, replicas that cannot change the shared data,
and a stop grace period longer than a replica's drain. Checked on the compose file as docker
compose sees it with a generated .env; tests/model/test_mlflow_auth.py runs the auth app."""

from __future__ import annotations

import configparser
import re
import runpy
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

from tests.compose.helpers import (
    DEPLOY,
    ROOT,
    SERVING_REPLICAS,
    dockerfile_instructions,
    serving_services,
)

WRITERS = {"airflow-worker"}  # where retrain, import and rollout tasks run
ACCOUNT_SETUP = "mlflow-auth-init"  # creates both accounts, so it holds both passwords
REPLICA_DRAIN_S = 20  # a replica shuts down within this long by default


def _strings(node) -> list[str]:
    """Every string value in a service definition (environment, command, volumes ...)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [str(node)] if isinstance(node, str | int) else []


def _holders(compose: dict, secret: str) -> set[str]:
    return {name for name, service in compose["services"].items() if any(secret in s for s in _strings(service))}


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (source, mode) of each short-syntax volume."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def _auth_ini() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(DEPLOY / "mlflow-auth.ini")
    return config["mlflow"]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_the_mlflow_server_runs_the_basic_auth_app_with_nothing_granted_by_default(compose, generated_env):
    mlflow = compose["services"]["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    env, mounts = mlflow["environment"], _mounts(mlflow)
    assert mounts[env["MLFLOW_AUTH_CONFIG_PATH"]] == ("./deploy/mlflow-auth.ini", "ro")
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == generated_env["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == generated_env["MLFLOW_FLASK_SECRET_KEY"]
    ini = _auth_ini()
    assert ini["default_permission"] == "NO_PERMISSIONS"
    assert ini["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert "admin_password" not in ini, "the admin password comes from .env, never from a file"
    # The user store lives on its own named volume, never inside the served artifacts.
    store = Path(ini["database_uri"].removeprefix("sqlite:///"))
    artifacts = command[command.index("--artifacts-destination") + 1]
    volume_root = next(target for target in mounts if store.is_relative_to(target))
    assert mounts[volume_root][0] in compose["volumes"] and not store.is_relative_to(artifacts)
    # ... a folder the image makes and hands to the server's user (a new volume copies it).
    runs = " ".join(i.args for i in dockerfile_instructions() if i.keyword == "RUN")
    assert re.search(rf"mkdir -p [^&]*{re.escape(volume_root)}\b", runs)
    assert re.search(rf"chown -R 50000:0 [^&]*{re.escape(volume_root)}\b", runs)


def test_the_auth_app_needs_only_pinned_packages_of_the_tested_set():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    extra = [Requirement(r) for r in requires("mlflow") or [] if 'extra == "auth"' in r]
    assert extra, "mlflow declares an auth extra"
    for requirement in extra:
        name = requirement.name.lower().replace("_", "-")
        assert name in pins and requirement.specifier.contains(pins[name]), f"{requirement} is not pinned"


def test_replicas_log_in_as_the_reader_and_mount_every_volume_read_only(compose, generated_env):
    replicas = serving_services(compose)
    assert sorted(replicas) == list(SERVING_REPLICAS)
    for name, replica in replicas.items():
        env = replica["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == generated_env["MLFLOW_READER_USERNAME"], name
        assert env["MLFLOW_TRACKING_PASSWORD"] == generated_env["MLFLOW_READER_PASSWORD"], name
        mounts = _mounts(replica)
        assert all(mode == "ro" for _, mode in mounts.values()), f"{name}: {replica.get('volumes')}"
        # What a replica writes (its cache of downloaded imported models) stays in its container.
        assert not Path(env["LOCKSTEP_HOME"]).is_relative_to("/data"), name
        assert env["LOCKSTEP_INDEX_STORE"].startswith("s3://"), name  # the object store, no shared disk
        depends = replica["depends_on"]
        assert depends[ACCOUNT_SETUP]["condition"] == "service_completed_successfully", name


def test_replicas_get_longer_to_stop_than_they_take_to_drain(compose):
    for name in SERVING_REPLICAS:
        grace = compose["services"][name]["stop_grace_period"]
        assert grace == "30s" and _seconds(grace) > REPLICA_DRAIN_S, name


def test_only_the_writers_hold_the_writer_login(compose, generated_env):
    writer, reader = generated_env["MLFLOW_WRITER_PASSWORD"], generated_env["MLFLOW_READER_PASSWORD"]
    admin = generated_env["MLFLOW_ADMIN_PASSWORD"]
    assert len({writer, reader, admin}) == 3 and min(map(len, (writer, reader, admin))) >= 12
    assert _holders(compose, writer) == WRITERS | {ACCOUNT_SETUP}
    assert _holders(compose, admin) == {"mlflow", ACCOUNT_SETUP}
    for name in WRITERS:
        env = compose["services"][name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == generated_env["MLFLOW_WRITER_USERNAME"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == writer


def test_every_mlflow_client_logs_in_and_waits_for_the_accounts(compose, generated_env):
    """No service reaches MLflow anonymously (it would get 401), and none starts before the
    set-up made its account; the set-up itself waits for the server to be healthy."""
    logins = {generated_env["MLFLOW_READER_PASSWORD"], generated_env["MLFLOW_WRITER_PASSWORD"]}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if env.get("MLFLOW_TRACKING_URI", "").startswith("http://mlflow:") and name != ACCOUNT_SETUP:
            assert env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD") in logins, name
            if service.get("restart") != "no":  # one-shot init steps that never call MLflow may not wait
                assert service["depends_on"][ACCOUNT_SETUP]["condition"] == "service_completed_successfully", name
    setup = compose["services"][ACCOUNT_SETUP]
    assert setup["restart"] == "no" and setup["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert setup["command"] == ["python", "/opt/lockstep/mlflow-auth-init.py"]
    assert _mounts(setup)["/opt/lockstep/mlflow-auth-init.py"] == ("./deploy/mlflow-auth-init.py", "ro")


def test_the_account_set_up_grants_the_reader_nothing_but_read():
    script = runpy.run_path(str(DEPLOY / "mlflow-auth-init.py"))
    grants = script["GRANTS"]
    assert set(grants["reader"].values()) == {"READ"}
    assert set(grants["reader"]) == set(grants["writer"]) == {"experiment", "registered_model"}
    assert "READ" not in grants["writer"].values()
