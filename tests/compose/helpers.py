"""What the compose tests share: paths, the service names, compose-style ${VAR}
interpolation, the secret scan, a Dockerfile reader, and the native stand-ins for the
containers (help runs, the environment moved to this machine)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
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
SERVING_REPLICAS = ("lockstep-serving-1", "lockstep-serving-2")
SERVING = SERVING_REPLICAS[0]  # one replica, for what every replica shares
SERVING_NAME = "lockstep-serving"  # the network alias of every replica (proxy, Prometheus)
PROXY = "lockstep-proxy"
HEALTHCHECKED = ("postgres", "redis", "mlflow", "airflow-apiserver", *SERVING_REPLICAS)


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
    ("wget", "grafana/grafana-oss:"),  # busybox wget of the Alpine-based image
    ("moto_server", "lockstep-s3:"),  # the object store's image (deploy/images/s3.Dockerfile)
    ("python3", "lockstep-s3:"),
}
OUR_CLIS = ("airflow", "lockstep", "mlflow", "celery")


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


class AnyValue(dict):
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


def schema_errors(document: dict) -> list[str]:
    from jsonschema import Draft7Validator

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    errors = Draft7Validator(schema).iter_errors(document)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$|_AUTH$", re.IGNORECASE)


# user:password@ in a URL; the password may be a ${VAR:?message} with spaces in the message.
_URL_CREDENTIALS = re.compile(r"://[^:/@\s]*:(\$\{[^}]*\}|[^@\s]+)@")
REQUIRED_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):?\?[^}]*\}$")


def _is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not name.endswith("_FILE")  # _FILE: a path


def secret_literals(node, path: str = "") -> list[str]:
    """Where a secret is written as a literal or given a default: both ship a shared secret."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}/{key}"
            if (
                _is_secret_name(str(key))
                and isinstance(value, str)
                and not REQUIRED_REF.match(value)
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
            if not REQUIRED_REF.match(password):
                found.append(f"{path}: URL password {password!r}")
    return found


def url_passwords(node) -> set[str]:
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return set().union(*(url_passwords(value) for value in node)) if node else set()
    return set(_URL_CREDENTIALS.findall(node)) if isinstance(node, str) else set()


def bind_sources(compose: dict) -> list[tuple[str, str, str]]:
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


def serving_services(compose: dict) -> dict[str, dict]:
    """Every service that runs `lockstep serve`: the replicas."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [])[:2] == ["lockstep", "serve"]
    }


def init_script_databases() -> dict[str, str]:
    """{database/role name: password variable} as deploy/init-databases.sh creates them."""
    text = (DEPLOY / "init-databases.sh").read_text(encoding="utf-8")
    return dict(re.findall(r"^create_app_database (\w+) (\w+)$", text, re.MULTILINE))


def serving_port(compose, name: str = SERVING) -> str:
    command = compose["services"][name]["command"]
    return command[command.index("--port") + 1]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


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


def native_env(tmp: Path) -> dict[str, str]:
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
AIRFLOW_DRIVER = """
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
MLFLOW_DRIVER = """
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


def assert_help_covers(inv_argv: tuple[str, ...], code: int, text: str) -> None:
    assert code == 0, f"`{' '.join(inv_argv)} --help` exited {code}:\n{text[-2000:]}"
    inv = Invocation("", "", inv_argv)
    for option in inv.options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
            f"{option} is not an option of `{' '.join(inv.subcommand)}`"
        )


def as_native(env: dict[str, str], port: int, tmp: Path) -> dict[str, str]:
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


def compose_command() -> list[str] | None:
    if binary := os.environ.get("LOCKSTEP_COMPOSE_BIN") or shutil.which("docker-compose"):
        return [binary]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def start_loopback_nginx(
    home: Path, upstream: int, listen: int, *, rates: dict[str, str] | None = None
) -> subprocess.Popen:
    """nginx on ``deploy/nginx.conf`` with only its addresses changed for loopback.

    The upstream is ``127.0.0.1:upstream`` instead of the replicas' Docker DNS name, and
    ``rates`` replaces ``limit_req_zone`` rates by zone name (a test sets ``1r/m`` so that
    only the burst decides, whatever the machine's speed). Returns once ``/nginx-health``
    answers; the caller stops the process.
    """
    import httpx

    text = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    text = text.replace("worker_processes auto;", "worker_processes 1;")
    text = text.replace("access_log /dev/stdout;", "access_log off;")
    text = text.replace("error_log stderr warn;", f"error_log {home / 'nginx-error.log'} warn;")
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith(("resolver ", "resolver_timeout")))
    text = text.replace("set $lockstep_serving lockstep-serving;", "set $lockstep_serving 127.0.0.1;")
    text = text.replace("$lockstep_serving:8000;", f"$lockstep_serving:{upstream};")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    for zone, rate in (rates or {}).items():
        text, n = re.subn(rf"(zone={zone}:\S+) rate=\S+;", rf"\1 rate={rate};", text)
        assert n == 1, f"no limit_req_zone {zone} in deploy/nginx.conf"
    conf = home / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    proc = subprocess.Popen([nginx_binary() or "nginx", "-c", str(conf), "-p", str(home), "-e", str(home / "nginx-error.log"),
                             "-g", f"daemon off; pid {home / 'nginx.pid'};"])
    deadline = time.monotonic() + 30  # a guard for a broken start, not a measurement
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{listen}/nginx-health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nginx did not start: {(home / 'nginx-error.log').read_text()[-2000:]}")
