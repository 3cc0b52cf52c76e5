"""docker-compose.yaml against the Compose Specification schema, compose's interpolation
rules, no secret with a literal value or default, and .env.example / deploy/make-env.py
holding to the file."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import subprocess
import sys

import pytest

from tests.compose.helpers import (
    DEPLOY,
    ENV_EXAMPLE,
    REQUIRED_REF,
    SCHEMA_FILE,
    SCHEMA_SHA256,
    SERVING,
    Interpolation,
    InterpolationError,
    read_env_file,
    schema_errors,
    secret_literals,
    url_passwords,
)


def test_vendored_schema_is_the_documented_one():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    source_note = (SCHEMA_FILE.parent / "compose-spec.SOURCE.md").read_text(encoding="utf-8")
    assert SCHEMA_SHA256 in source_note


def test_compose_file_validates_against_the_compose_specification(compose):
    assert schema_errors(compose) == []


def test_schema_check_rejects_what_compose_rejects(compose):
    typo = copy.deepcopy(compose)
    typo["services"]["mlflow"]["helthcheck"] = typo["services"]["mlflow"].pop("healthcheck")
    wrong_type = copy.deepcopy(compose)
    wrong_type["services"]["postgres"]["volumes"] = "postgres-data:/var/lib/postgresql/data"
    bad_condition = copy.deepcopy(compose)
    bad_condition["services"][SERVING]["depends_on"]["mlflow"]["condition"] = "service_ready"
    assert any("helthcheck" in e for e in schema_errors(typo))
    assert any("is not of type 'array'" in e for e in schema_errors(wrong_type))
    assert any(e.startswith(f"services/{SERVING}/depends_on") for e in schema_errors(bad_condition))


def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    interp = Interpolation(env)
    assert interp("a${SET}b$SET") == "avbv"
    assert interp("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET:-${SET}}") == "d  d v"
    assert interp("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}") == "alt||alt"
    assert interp("$${HOSTNAME} $$X") == "${HOSTNAME} $X"
    assert interp("${SET:?no} ${EMPTY?no}") == "v "
    with pytest.raises(InterpolationError, match="EMPTY: set it"):
        interp("${EMPTY:?set it}")
    with pytest.raises(InterpolationError, match="UNSET"):
        interp("${UNSET?missing}")
    assert interp.required == {"SET", "EMPTY", "UNSET"}


def test_no_secret_has_a_literal_value_or_default(raw_compose):
    assert secret_literals(raw_compose) == []
    # Every connection URL was seen by the scan, each with a required variable as password.
    in_urls = {REQUIRED_REF.match(password).group(1) for password in url_passwords(raw_compose)}
    assert in_urls == {
        "AIRFLOW_DB_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "LOCKSTEP_DB_PASSWORD",
        "REDIS_PASSWORD",
    }


def test_secret_scan_finds_literals():
    leaky = {
        "environment": {
            "POSTGRES_PASSWORD": "hunter2",
            "API_TOKEN": "${TOKEN:-dev}",
            "JWT_SECRET": "${JWT_SECRET}",
            "FERNET_KEY": "${KEY:?set it in .env}",
        },
        "command": ["redis-server", "--requirepass", "hunter2"],
        "urls": ["postgresql://user:hunter2@db/app", "redis://:${PASSWORD:-x}@redis:6379/0"],
    }
    assert len(secret_literals(leaky)) == 6


def test_env_example_alone_does_not_start_the_stack(raw_compose, variables):
    """Every secret is required, and .env.example leaves each one empty: a copied example
    makes compose refuse to start instead of running with a published password. The other
    empty values are optional settings whose compose default is empty too."""
    example = read_env_file(ENV_EXAMPLE)
    empty = {name for name, value in example.items() if value == ""}
    assert variables.required <= empty
    assert all(variables.defaults.get(name) == {""} for name in empty - variables.required)
    with pytest.raises(InterpolationError):
        Interpolation(example).tree(raw_compose)


def test_env_example_documents_every_variable(variables):
    example = read_env_file(ENV_EXAMPLE)
    assert set(example) == variables.seen
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("#"), f"no comment above {line!r}"
    # The example shows the compose file's own defaults, so it documents what runs.
    for name, defaults in variables.defaults.items():
        assert defaults == {example[name]}, name


def test_make_env_fills_every_secret_with_a_fresh_value(generated_env, variables):
    optional = {name for name, values in variables.defaults.items() if values == {""}}
    assert optional and all(generated_env[name] == "" for name in optional), "optional left empty"
    secrets = {name: generated_env[name] for name in variables.required}
    assert all(len(value) >= 32 for value in secrets.values())
    assert len(set(secrets.values())) == len(secrets)
    assert all(re.fullmatch(r"[A-Za-z0-9_=-]+", value) for value in secrets.values())
    assert len(base64.urlsafe_b64decode(secrets["AIRFLOW_FERNET_KEY"])) == 32
    again = subprocess.run(
        [sys.executable, str(DEPLOY / "make-env.py")], capture_output=True, text=True, check=True
    )
    assert secrets["POSTGRES_PASSWORD"] not in again.stdout
