"""The compose file as loaded, as interpolated with a generated .env, and the variables
it references; the native help runs of its commands."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.compose.helpers import (
    AIRFLOW_DRIVER,
    BIN,
    COMPOSE_FILE,
    DEPLOY,
    MLFLOW_DRIVER,
    MLFLOW_HOST_HEADERS,
    AnyValue,
    Interpolation,
    Invocation,
    NativeHelp,
    invocations,
    native_env,
    read_env_file,
)


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    """The compose file as YAML (anchors and << merges resolved), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def generated_env() -> dict[str, str]:
    """What `python deploy/make-env.py > .env` gives a new operator, run for real."""
    out = subprocess.run(
        [sys.executable, str(DEPLOY / "make-env.py")], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / ".env"
        env_file.write_text(out, encoding="utf-8")
        return read_env_file(env_file)


@pytest.fixture(scope="module")
def compose(raw_compose, generated_env) -> dict:
    """The compose file as docker compose sees it with the generated .env."""
    return Interpolation(generated_env).tree(raw_compose)


@pytest.fixture(scope="module")
def variables(raw_compose) -> Interpolation:
    walk = Interpolation(AnyValue())
    walk.tree(raw_compose)
    return walk


@pytest.fixture(scope="module")
def native_help(compose, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("native-help")
    env = native_env(tmp)
    calls = invocations(compose)
    airflow = {
        " ".join(inv.subcommand): list(inv.subcommand[1:])
        for inv in calls
        if inv.argv[0] == "airflow"
    }
    for line in (DEPLOY / "airflow-init.sh").read_text(encoding="utf-8").splitlines():
        if re.match(r"^airflow \w", line):
            words = Invocation("airflow-init", "script", tuple(shlex.split(line))).subcommand
            airflow[" ".join(words)] = list(words[1:])
    mlflow_command = next(
        inv for inv in calls if inv.service == "mlflow" and inv.where == "command"
    )
    allowed = mlflow_command.argv[mlflow_command.argv.index("--allowed-hosts") + 1]
    lockstep = {" ".join(inv.subcommand): inv for inv in calls if inv.argv[0] == "lockstep"}
    (celery_healthcheck,) = [inv.argv for inv in calls if inv.argv[0] == "celery"]

    def start(argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    processes = {
        "airflow": start(
            [
                sys.executable,
                "-c",
                AIRFLOW_DRIVER,
                json.dumps(airflow),
                json.dumps(celery_healthcheck),
            ]
        ),
        "mlflow": start(
            [
                sys.executable,
                "-c",
                MLFLOW_DRIVER,
                json.dumps(
                    [list(mlflow_command.subcommand[1:]), allowed, list(MLFLOW_HOST_HEADERS)]
                ),
            ]
        ),
    }
    for key, inv in lockstep.items():
        processes[key] = start([str(BIN / "lockstep"), *inv.subcommand[1:], "--help"])
    yield NativeHelp(processes)
    for process in processes.values():
        if process.poll() is None:
            process.kill()
