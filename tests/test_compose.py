"""The docker-compose stack, checked as far as it can be without a Docker engine.

What runs here, for real:
- docker-compose.yaml, after compose-style ${VAR} interpolation, against the Compose
  Specification JSON schema that Docker Compose v2.40.3 applies (tests/data/compose-spec.json);
- every file, folder and in-image path the stack refers to exists (and is in the build context);
- every service and healthcheck command names a real executable and subcommand of our image,
  and every --option it passes is one that command documents (`... --help`, run natively);
- the PostgreSQL init script, the Lockstep schema step and airflow-init run against a real
  PostgreSQL server with the environment the compose file gives them;
- nginx.conf passes `nginx -t` (when nginx is installed), prometheus.yml `promtool` (when
  present), and cross-file names and ports agree (proxy -> replicas, Prometheus -> replicas,
  Airflow -> execution API, everything -> postgres/redis/mlflow);
- no secret has a literal value or a default anywhere in the compose file.

The Celery provider lives only in the image (deploy/requirements-docker.txt). Its commands are
checked when it is importable; to check them without touching the venv:
    pip install --target /tmp/docker-extras --no-deps -r deploy/requirements-docker.txt
    LOCKSTEP_DOCKER_EXTRAS=/tmp/docker-extras pytest tests/test_compose.py
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests import postgres_harness

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "e4e1a42ce687c47e199551d1f025b1e713a4d1f9302706d3f89de9cef1d376a4"
BIN = Path(sys.executable).parent

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
)
SERVING = "lockstep-serving"
PROXY = "lockstep-proxy"
HEALTHCHECKED = ("postgres", "redis", "mlflow", "airflow-apiserver", SERVING)
# Host folders that `docker compose up` creates when missing (short bind syntax) and that a
# fresh clone may lack: Airflow writes logs/; config/ and plugins/ are the operator's to fill.
CREATED_AT_FIRST_START = {"logs", "config", "plugins"}
# Executables of the third-party images, not of ours: (executable, image name prefix).
THIRD_PARTY_TOOLS = {
    ("pg_isready", "postgres:"),
    ("redis-cli", "redis:"),
    ("sh", "redis:"),
    ("wget", "nginx:"),
    ("wget", "prom/prometheus:"),
}
OUR_CLIS = ("airflow", "lockstep", "mlflow", "celery")


# --- compose-style interpolation -------------------------------------------------------------


class InterpolationError(ValueError):
    """A ${VAR:?message} whose variable is unset or empty: compose refuses to start."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Interpolation:
    """Compose's variable syntax: ${VAR}, $VAR, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt} and $$ for a literal $.

    Records which variables were referenced, which are required, and their defaults, so the
    tests can hold .env.example to the compose file."""

    env: Mapping[str, str]
    seen: set[str] = field(default_factory=set)
    required: set[str] = field(default_factory=set)
    defaults: dict[str, set[str]] = field(default_factory=dict)

    def __call__(self, text: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] != "$":
                out.append(text[i])
                i += 1
            elif text.startswith("$$", i):
                out.append("$")
                i += 2
            elif text.startswith("${", i):
                end = _closing_brace(text, i + 1)
                out.append(self._expand(text[i + 2 : end]))
                i = end + 1
            elif match := _NAME.match(text, i + 1):
                self.seen.add(match.group())
                out.append(self.env.get(match.group(), ""))
                i = match.end()
            else:
                raise ValueError(f"invalid interpolation format in {text!r} at {i}")
        return "".join(out)

    def _expand(self, body: str) -> str:
        match = _NAME.match(body)
        if not match:
            raise ValueError(f"invalid variable name in ${{{body}}}")
        name, op = match.group(), body[match.end() :]
        self.seen.add(name)
        is_set = name in self.env
        value = self.env.get(name, "")
        for prefix, needs_value in ((":-", True), ("-", False)):
            if op.startswith(prefix):
                self.defaults.setdefault(name, set()).add(op[len(prefix) :])
                ok = bool(value) if needs_value else is_set
                return value if ok else self(op[len(prefix) :])
        for prefix, needs_value in ((":?", True), ("?", False)):
            if op.startswith(prefix):
                self.required.add(name)
                ok = bool(value) if needs_value else is_set
                if not ok:
                    raise InterpolationError(f"{name}: {self(op[len(prefix) :])}")
                return value
        for prefix, needs_value in ((":+", True), ("+", False)):
            if op.startswith(prefix):
                ok = bool(value) if needs_value else is_set
                return self(op[len(prefix) :]) if ok else ""
        if op:
            raise ValueError(f"unsupported operator in ${{{body}}}")
        return value

    def tree(self, node):
        """Interpolate every string value of a loaded YAML document (keys stay as written)."""
        if isinstance(node, dict):
            return {key: self.tree(value) for key, value in node.items()}
        if isinstance(node, list):
            return [self.tree(value) for value in node]
        if isinstance(node, str):
            return self(node)
        return node


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unclosed ${{ in {text!r}")


class _AnyValue(dict):
    """An environment in which every variable is set: walks every ${...} without failing."""

    def __contains__(self, key) -> bool:
        return True

    def get(self, key, default=None):
        return "x"


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not NAME=VALUE: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name.strip()] = value
    return env


# --- fixtures ------------------------------------------------------------------------------


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
    walk = Interpolation(_AnyValue())
    walk.tree(raw_compose)
    return walk


# --- 1. schema ------------------------------------------------------------------------------


def test_vendored_schema_is_the_documented_one():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    source_note = (SCHEMA_FILE.parent / "compose-spec.SOURCE.md").read_text(encoding="utf-8")
    assert SCHEMA_SHA256 in source_note


def _schema_errors(document: dict) -> list[str]:
    from jsonschema import Draft7Validator

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    errors = Draft7Validator(schema).iter_errors(document)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_compose_file_validates_against_the_compose_specification(compose):
    assert _schema_errors(compose) == []


def test_schema_check_rejects_what_compose_rejects(compose):
    typo = copy.deepcopy(compose)
    typo["services"]["mlflow"]["helthcheck"] = typo["services"]["mlflow"].pop("healthcheck")
    wrong_type = copy.deepcopy(compose)
    wrong_type["services"]["postgres"]["volumes"] = "postgres-data:/var/lib/postgresql/data"
    bad_condition = copy.deepcopy(compose)
    bad_condition["services"][SERVING]["depends_on"]["mlflow"]["condition"] = "service_ready"
    assert any("helthcheck" in e for e in _schema_errors(typo))
    assert any("is not of type 'array'" in e for e in _schema_errors(wrong_type))
    assert any(
        e.startswith(f"services/{SERVING}/depends_on") for e in _schema_errors(bad_condition)
    )


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


# --- 3. secrets -----------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$|_AUTH$", re.IGNORECASE)
# user:password@ in a URL; the password may be a ${VAR:?message} with spaces in the message.
_URL_CREDENTIALS = re.compile(r"://[^:/@\s]*:(\$\{[^}]*\}|[^@\s]+)@")
_REQUIRED_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):?\?[^}]*\}$")


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not name.endswith("_FILE")  # _FILE: a path


def secret_literals(node, path: str = "") -> list[str]:
    """Where a secret is written as a literal or given a default: both ship a shared secret."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}/{key}"
            if (
                _is_secret_name(str(key))
                and isinstance(value, str)
                and not _REQUIRED_REF.match(value)
            ):
                found.append(f"{where}: {value!r}")
            found += secret_literals(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += secret_literals(value, f"{path}[{i}]")
            follows_flag = i > 0 and node[i - 1] in ("--password", "--requirepass")
            if follows_flag and not str(value).startswith("$"):
                found.append(f"{path}[{i}]: {value!r}")
    elif isinstance(node, str):
        for password in _URL_CREDENTIALS.findall(node):
            if not _REQUIRED_REF.match(password):
                found.append(f"{path}: URL password {password!r}")
    return found


def url_passwords(node) -> set[str]:
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return set().union(*(url_passwords(value) for value in node)) if node else set()
    return set(_URL_CREDENTIALS.findall(node)) if isinstance(node, str) else set()


def test_no_secret_has_a_literal_value_or_default(raw_compose):
    assert secret_literals(raw_compose) == []
    # Every connection URL was seen by the scan, each with a required variable as password.
    in_urls = {_REQUIRED_REF.match(password).group(1) for password in url_passwords(raw_compose)}
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
    makes compose refuse to start instead of running with a published password."""
    example = read_env_file(ENV_EXAMPLE)
    empty = {name for name, value in example.items() if value == ""}
    assert empty == variables.required
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
    secrets = {name: generated_env[name] for name in variables.required}
    assert all(len(value) >= 32 for value in secrets.values())
    assert len(set(secrets.values())) == len(secrets)
    assert all(re.fullmatch(r"[A-Za-z0-9_=-]+", value) for value in secrets.values())
    assert len(base64.urlsafe_b64decode(secrets["AIRFLOW_FERNET_KEY"])) == 32
    again = subprocess.run(
        [sys.executable, str(DEPLOY / "make-env.py")], capture_output=True, text=True, check=True
    )
    assert secrets["POSTGRES_PASSWORD"] not in again.stdout


# --- 2. files and paths ----------------------------------------------------------------------


def _bind_sources(compose: dict) -> list[tuple[str, str, str]]:
    """(service, host path, container path) of every bind mount."""
    binds = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = (
                (volume.split(":")[:2])
                if isinstance(volume, str)
                else (volume["source"], volume["target"])
            )
            if source.startswith((".", "/")):
                binds.append((name, source, target))
    return binds


def test_every_referenced_file_exists(compose):
    missing = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                missing.append(f"{name}: build {build}")
        for env_file in service.get("env_file", []):
            if not (ROOT / env_file).exists():
                missing.append(f"{name}: env_file {env_file}")
    for section in ("configs", "secrets"):
        for name, item in compose.get(section, {}).items():
            if "file" in item and not (ROOT / item["file"]).exists():
                missing.append(f"{section}/{name}: {item['file']}")
    for name, source, _ in _bind_sources(compose):
        path = (ROOT / source).resolve()
        if not path.exists() and path.relative_to(ROOT).as_posix() not in CREATED_AT_FIRST_START:
            missing.append(f"{name}: bind mount {source}")
    assert missing == []
    # The files the services are configured by are among the mounts.
    mounted = {Path(source).as_posix().lstrip("./") for _, source, _ in _bind_sources(compose)}
    assert {
        "deploy/init-databases.sh",
        "deploy/nginx.conf",
        "deploy/prometheus.yml",
        "dags",
    } <= mounted


def test_named_volumes_and_dependencies_are_declared(compose):
    services = compose["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency}'s health"
                )
            if spec["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{dependency} is a one-shot"


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions() -> list[Instruction]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        Instruction(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a folder takes its contents.
    (fnmatch's * also matches "/", which Go's does not: good enough for these patterns.)"""
    lines = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in (line for line in lines if line and not line.startswith("#")):
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        names = set(prefixes)
        if pattern.startswith("**/"):  # at any depth: match every tail of the path
            pattern = pattern[3:]
            names = {"/".join(p.split("/")[k:]) for p in prefixes for k in range(p.count("/") + 1)}
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            ignored = not negate
    return ignored


def test_dockerfile_is_lint_free():
    instructions = dockerfile_instructions()
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "python" and tag.startswith("3.11-slim") and "latest" not in tag
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert all(i.keyword != "ADD" for i in instructions), "COPY, not ADD"
    for i in instructions:
        if i.keyword in ("CMD", "ENTRYPOINT"):
            assert isinstance(json.loads(i.args), list), f"{i.keyword} in exec form"
        if i.keyword == "ENV":
            assert not _SECRET_NAME.search(i.args), "no secret baked into the image"
        if i.keyword == "WORKDIR":
            assert i.args.startswith("/")
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "-r /tmp/requirements/requirements.txt" in runs and "pip install --no-deps /src" in runs


def dockerfile_copies() -> dict[str, str]:
    """In-image destination -> repository source, for every COPY."""
    copies = {}
    for i in dockerfile_instructions():
        if i.keyword == "COPY":
            *sources, dest = i.args.split()
            for source in sources:
                copies[dest.rstrip("/") if len(sources) == 1 else f"{dest}/{Path(source).name}"] = (
                    source
                )
    return copies


def test_dockerfile_copies_exist_and_are_in_the_build_context():
    copies = dockerfile_copies()
    assert {
        "requirements.txt",
        "deploy/requirements-docker.txt",
        "pyproject.toml",
        "include/",
        "deploy/airflow-init.sh",
    } <= set(copies.values())
    for source in copies.values():
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), f"{source} is excluded by .dockerignore"
    # ... while local state and secrets never reach the build context.
    for private in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "include/lockstep/__pycache__/x.pyc",
        ".lockstep/lockstep.db",
    ):
        assert dockerignored(private), private
    assert not dockerignored(".env.example") and not dockerignored("include/lockstep/cli.py")


def test_docker_only_requirements_are_pinned_and_agree_with_the_tested_set():
    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            if line:
                name, sep, version = line.partition("==")
                assert sep, f"{path.name}: not pinned: {line}"
                found[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
        return found

    tested, docker_only = pins(ROOT / "requirements.txt"), pins(DEPLOY / "requirements-docker.txt")
    assert "apache-airflow-providers-celery" in docker_only
    assert set(tested) & set(docker_only) == set(), "a tested pin is overridden in the image"
    assert tested["apache-airflow"] == "3.3.2"
    # provider 3.26.0 imports celery.backends.database.retry, which celery 5.7.0 removed.
    assert docker_only["celery"].startswith("5.6.")


# --- layout of the stack -------------------------------------------------------------------


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
    serving = services[SERVING]
    assert serving["deploy"]["replicas"] == 2
    assert "ports" not in serving and "container_name" not in serving
    assert serving["command"][:2] == ["lockstep", "serve"]
    host_ports = {
        name: {str(p).split(":")[-2] for p in s.get("ports", [])} for name, s in services.items()
    }
    assert [
        name for name, ports in host_ports.items() if generated_env["LOCKSTEP_PORT"] in ports
    ] == [PROXY]
    env = serving["environment"]
    assert env["LOCKSTEP_API_TOKEN"] and env["LOCKSTEP_INDEX_STORE"] == "/data/indexes"
    # The workers build indexes that the replicas read and update: same volume, same user.
    worker = services["airflow-worker"]
    assert (
        "lockstep-data:/data" in serving["volumes"] and "lockstep-data:/data" in worker["volumes"]
    )
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


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.match(r"v?\d", tag), f"{name}: {image}"


def _init_script_databases() -> dict[str, str]:
    """{database/role name: password variable} as deploy/init-databases.sh creates them."""
    text = (DEPLOY / "init-databases.sh").read_text(encoding="utf-8")
    return dict(re.findall(r"^create_app_database (\w+) (\w+)$", text, re.MULTILINE))


def test_connection_urls_point_at_the_services_that_serve_them(compose, generated_env):
    services = compose["services"]
    databases = _init_script_databases()
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


# --- 4. proxy and monitoring configs -----------------------------------------------------------


def _serving_port(compose) -> str:
    command = compose["services"][SERVING]["command"]
    return command[command.index("--port") + 1]


def test_nginx_config_routes_to_every_serving_replica(compose):
    text = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    proxy = compose["services"][PROXY]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    host_var = re.search(r"set \$(\w+) ([\w-]+);", text)
    assert host_var and host_var.group(2) == SERVING
    assert f"proxy_pass http://${host_var.group(1)}:{_serving_port(compose)};" in text
    # Resolved at run time through Docker's DNS: every replica, also after --scale.
    assert re.search(r"resolver 127\.0\.0\.11\b", text)
    listen = re.search(r"listen (\d+);", text).group(1)
    assert any(str(p).endswith(f":{listen}") for p in proxy["ports"])
    assert re.search(
        rf"http://127\.0\.0\.1:{listen}/nginx-health", " ".join(proxy["healthcheck"]["test"])
    )


def _nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


@pytest.mark.skipif(_nginx() is None, reason="nginx not installed (apt-get install nginx-light)")
def test_nginx_config_passes_nginx_t(tmp_path):
    result = subprocess.run(
        [
            _nginx(),
            "-t",
            "-c",
            str(DEPLOY / "nginx.conf"),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_prometheus_scrapes_each_serving_replica(compose):
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mount = next(v for v in prometheus["volumes"] if v.startswith("./deploy/prometheus.yml:"))
    assert f"--config.file={mount.split(':')[1]}" in prometheus["command"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == SERVING)
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert (
        sd["names"] == [SERVING] and sd["type"] == "A" and str(sd["port"]) == _serving_port(compose)
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_prometheus_config_passes_promtool():
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- 2. commands, run natively ----------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    service: str
    where: str  # "command" or "healthcheck"
    argv: tuple[str, ...]

    @property
    def subcommand(self) -> tuple[str, ...]:
        """The executable and its subcommand words, up to the first option."""
        words = [self.argv[0]]
        for word in self.argv[1:]:
            if word.startswith("-"):
                break
            words.append(word)
        return tuple(words)

    @property
    def options(self) -> list[str]:
        return [w.split("=")[0] for w in self.argv[1:] if w.startswith("--")]


def invocations(compose: dict) -> list[Invocation]:
    found = []
    for name, service in compose["services"].items():
        command = service.get("command")
        if command:
            found.append(
                Invocation(
                    name,
                    "command",
                    tuple(command if isinstance(command, list) else shlex.split(command)),
                )
            )
        test = service.get("healthcheck", {}).get("test")
        if test:
            argv = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
            found.append(Invocation(name, "healthcheck", tuple(argv)))
    return found


def test_every_command_names_a_known_executable(compose):
    """Ours are run below; the third-party images' tools must belong to that image."""
    for inv in invocations(compose):
        exe, image = inv.argv[0], compose["services"][inv.service]["image"]
        if exe in OUR_CLIS or exe in ("python", "bash"):
            assert image == compose["services"]["mlflow"]["image"], f"{inv}: not our image"
        elif exe.startswith("--"):
            assert image.startswith("prom/prometheus:"), inv  # flags to the image's entrypoint
        else:
            assert any(
                exe == tool and image.startswith(prefix) for tool, prefix in THIRD_PARTY_TOOLS
            ), inv


def test_inline_python_and_shell_scripts_parse(compose):
    copies = dockerfile_copies()
    scripts = [DEPLOY / "init-databases.sh"]
    for inv in invocations(compose):
        if inv.argv[:2] == ("python", "-c"):
            compile(inv.argv[2], f"{inv.service} {inv.where}", "exec")
        if inv.argv[0] == "bash":
            assert inv.argv[1] in copies, f"{inv.argv[1]} is not put into the image"
            scripts.append(ROOT / copies[inv.argv[1]])
    assert len(scripts) == 2
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def _native_env(tmp: Path) -> dict[str, str]:
    """This machine's environment without Lockstep/Airflow/MLflow settings, writing only to tmp."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "AIRFLOW", "MLFLOW_"))
    }
    env.update(
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CORE__LOAD_EXAMPLES="false",
        LOCKSTEP_HOME=str(tmp / "lockstep"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
        NO_COLOR="1",
        COLUMNS="200",
        TERM="dumb",
        HOME=str(tmp),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if extras := os.environ.get("LOCKSTEP_DOCKER_EXTRAS"):
        env["PYTHONPATH"] = extras
    return env


# One Python process per CLI (each import costs seconds), calling the executables' own entry
# points with `--help` for every subcommand the compose file uses.
_AIRFLOW_DRIVER = """
import contextlib, importlib.util, io, json, sys
from airflow.__main__ import main
subcommands, celery_healthcheck = map(json.loads, sys.argv[1:3])
results = {}
for key, words in subcommands.items():
    out, code = io.StringIO(), 0
    sys.argv = ["airflow", *words, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    results[key] = [code, out.getvalue()]
celery = importlib.util.find_spec("airflow.providers.celery") is not None
executor = healthcheck = None
if celery:
    from airflow.executors.executor_loader import ExecutorLoader
    executor = type(ExecutorLoader.get_default_executor()).__name__
    from celery.__main__ import main as celery_main
    out, code = io.StringIO(), 0
    sys.argv = [*celery_healthcheck, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            celery_main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    healthcheck = [code, out.getvalue()]
print("@@RESULT@@" + json.dumps({"results": results, "celery_provider": celery, "executor": executor, "celery_healthcheck": healthcheck}))
"""

_MLFLOW_DRIVER = """
import contextlib, io, json, sys
from mlflow.cli import cli
from mlflow.server.security_utils import is_allowed_host_header
words, allowed, hosts = json.loads(sys.argv[1])
out, code = io.StringIO(), 0
with contextlib.redirect_stdout(out):
    try:
        cli.main(args=[*words, "--help"], prog_name="mlflow")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
accepted = {host: is_allowed_host_header(allowed.split(","), host) for host in hosts}
print("@@RESULT@@" + json.dumps({"help": [code, out.getvalue()], "accepted": accepted}))
"""


@dataclass
class NativeHelp:
    """`--help` of every CLI invocation of the compose file, started at once, read when needed."""

    processes: dict[str, subprocess.Popen]
    _done: dict[str, dict] = field(default_factory=dict)

    def result(self, name: str) -> dict:
        if name not in self._done:
            out, err = self.processes[name].communicate(timeout=240)
            assert "@@RESULT@@" in out, f"{name} driver failed:\n{err[-3000:]}"
            self._done[name] = json.loads(out.split("@@RESULT@@", 1)[1])
        return self._done[name]


MLFLOW_HOST_HEADERS = {
    "mlflow:5000": True,
    "localhost:5000": True,
    "127.0.0.1:5000": True,
    "attacker.example:5000": False,
}


@pytest.fixture(scope="module")
def native_help(compose, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("native-help")
    env = _native_env(tmp)
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
                _AIRFLOW_DRIVER,
                json.dumps(airflow),
                json.dumps(celery_healthcheck),
            ]
        ),
        "mlflow": start(
            [
                sys.executable,
                "-c",
                _MLFLOW_DRIVER,
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


def _assert_help_covers(inv_argv: tuple[str, ...], code: int, text: str) -> None:
    assert code == 0, f"`{' '.join(inv_argv)} --help` exited {code}:\n{text[-2000:]}"
    inv = Invocation("", "", inv_argv)
    for option in inv.options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
            f"{option} is not an option of `{' '.join(inv.subcommand)}`"
        )


@pytest.mark.slow
def test_airflow_commands_exist_natively(compose, native_help):
    """api-server, scheduler, dag-processor, triggerer, celery worker/flower, jobs check, db migrate."""
    result = native_help.result("airflow")
    calls = [inv for inv in invocations(compose) if inv.argv[0] == "airflow"]
    assert {" ".join(inv.subcommand) for inv in calls} >= {
        "airflow api-server",
        "airflow scheduler",
        "airflow dag-processor",
        "airflow triggerer",
        "airflow celery worker",
        "airflow jobs check",
    }
    assert "airflow db migrate" in result["results"]
    skipped = []
    for inv in calls:
        code, text = result["results"][" ".join(inv.subcommand)]
        if inv.subcommand[1] == "celery" and not result["celery_provider"]:
            skipped.append(inv.service)
            continue
        _assert_help_covers(inv.argv, code, text)
        if "--job-type" in inv.argv:
            assert inv.argv[inv.argv.index("--job-type") + 1] in text
    assert result["results"]["airflow db migrate"][0] == 0
    if skipped:
        pytest.skip(
            f"apache-airflow-providers-celery not importable here (the image installs it); unchecked: {skipped}"
        )
    assert result["executor"] == "CeleryExecutor", (
        "the scheduler could not load the Celery executor"
    )
    # The worker's healthcheck: celery loads the provider's app and knows `inspect ping -d`.
    code, text = result["celery_healthcheck"]
    assert code == 0 and "--destination" in text, text[-2000:]


@pytest.mark.slow
def test_mlflow_server_command_exists_and_accepts_the_compose_host_names(compose, native_help):
    result = native_help.result("mlflow")
    inv = next(
        inv for inv in invocations(compose) if inv.service == "mlflow" and inv.where == "command"
    )
    _assert_help_covers(inv.argv, *result["help"])
    assert result["accepted"] == MLFLOW_HOST_HEADERS
    tracking = urlsplit(compose["services"][SERVING]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    assert tracking in MLFLOW_HOST_HEADERS and MLFLOW_HOST_HEADERS[tracking]


@pytest.mark.slow
def test_lockstep_commands_exist_natively(compose, native_help):
    calls = [inv for inv in invocations(compose) if inv.argv[0] == "lockstep"]
    assert {" ".join(inv.subcommand) for inv in calls} == {
        "lockstep serve",
        "lockstep routing show",
    }
    for inv in calls:
        process = native_help.processes[" ".join(inv.subcommand)]
        out, err = process.communicate(timeout=120)
        _assert_help_covers(inv.argv, process.returncode, out + err)


def test_celery_healthcheck_uses_the_provider_app(compose):
    (inv,) = [inv for inv in invocations(compose) if inv.argv[0] == "celery"]
    app = inv.argv[inv.argv.index("--app") + 1]
    assert app == "airflow.providers.celery.executors.celery_executor.app"
    assert inv.service == "airflow-worker" and inv.argv[inv.argv.index("--app") + 2 : -2] == (
        "inspect",
        "ping",
    )


# --- native runs of the init steps on a real PostgreSQL -----------------------------------------


def _as_native(env: dict[str, str], port: int, tmp: Path) -> dict[str, str]:
    """A service's environment with the compose host names and in-container paths moved here."""
    moved = {}
    for key, value in env.items():
        value = str(value).replace("@postgres:5432/", f"@127.0.0.1:{port}/")
        value = value.replace("/opt/airflow", str(tmp / "airflow")).replace(
            "/data/", f"{tmp}/data/"
        )
        moved[key] = value
    moved["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return moved


@pytest.mark.slow
@pytest.mark.postgres
def test_init_steps_run_natively_on_postgres(compose, generated_env, native_help, tmp_path):
    """init-databases.sh, then the lockstep-init and airflow-init commands with their compose
    environments. (native_help is requested only to start the --help runs alongside.)"""
    import psycopg

    services = compose["services"]
    server = postgres_harness.start()
    try:
        base = _native_env(tmp_path)
        pg_env = {
            **base,
            **services["postgres"]["environment"],
            "POSTGRES_USER": server.user,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(server.port),
        }
        for _ in range(2):  # the second run shows it is idempotent
            done = subprocess.run(
                ["bash", str(DEPLOY / "init-databases.sh")],
                env=pg_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        admin = f"host=127.0.0.1 port={server.port} user={server.user}"
        with psycopg.connect(f"{admin} dbname=postgres") as conn:
            owners = dict(
                conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall()
            )
            with_password = {
                r[0]
                for r in conn.execute(
                    "SELECT rolname FROM pg_authid WHERE rolpassword IS NOT NULL AND rolcanlogin"
                )
            }
        assert {db: owners[db] for db in ("airflow", "mlflow", "lockstep")} == {
            "airflow": "airflow",
            "mlflow": "mlflow",
            "lockstep": "lockstep",
        }
        assert {"airflow", "mlflow", "lockstep"} <= with_password
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(f"host=127.0.0.1 port={server.port} user=lockstep dbname=airflow")

        lockstep_init = services["lockstep-init"]
        env = {**base, **_as_native(lockstep_init["environment"], server.port, tmp_path)}
        done = subprocess.run(
            [str(BIN / lockstep_init["command"][0]), *lockstep_init["command"][1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        with psycopg.connect(f"{admin} dbname=lockstep") as conn:
            table_owners = {
                r[0]
                for r in conn.execute(
                    "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
                )
            }
        assert table_owners == {"lockstep"}

        airflow_init = services["airflow-init"]
        env = {**base, **_as_native(airflow_init["environment"], server.port, tmp_path)}
        env.update(AIRFLOW_UID=str(os.getuid()), AIRFLOW_GID=str(os.getgid()))
        script = ROOT / dockerfile_copies()[airflow_init["command"][1]]
        done = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        passwords = json.loads(
            Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text()
        )
        assert passwords == {
            generated_env["AIRFLOW_ADMIN_USERNAME"]: generated_env["AIRFLOW_ADMIN_PASSWORD"]
        }
        assert (
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
            == f"{generated_env['AIRFLOW_ADMIN_USERNAME']}:admin"
        )
        with psycopg.connect(f"{admin} dbname=airflow") as conn:
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
        assert (tmp_path / "airflow" / "logs").is_dir() and (tmp_path / "data" / "indexes").is_dir()
    finally:
        postgres_harness.stop(server)


# --- optional: the real Compose implementation -----------------------------------------------


def _compose_command() -> list[str] | None:
    if binary := os.environ.get("LOCKSTEP_COMPOSE_BIN") or shutil.which("docker-compose"):
        return [binary]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.skipif(
    _compose_command() is None, reason="no docker compose binary (the schema test covers the file)"
)
def test_docker_compose_config_accepts_the_file(generated_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in generated_env.items()), encoding="utf-8")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COMPOSE_") and k not in generated_env
    }
    base = [*_compose_command(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    for profile in ([], ["--profile", "monitoring", "--profile", "flower"]):
        done = subprocess.run(
            [*base, "--env-file", str(env_file), *profile, "config", "--quiet"],
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    refused = subprocess.run(
        [*base, "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "required variable" in refused.stderr
