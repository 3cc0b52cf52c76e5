"""Every file the stack refers to exists; the Dockerfile is lint-free and copies only
what is in the build context; the image's extra requirements agree with the tested set."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.compose.helpers import (
    CREATED_AT_FIRST_START,
    DEPLOY,
    ROOT,
    SECRET_NAME,
    bind_sources,
    dockerfile_copies,
    dockerfile_instructions,
    dockerignored,
)


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
    for name, source, _ in bind_sources(compose):
        path = (ROOT / source).resolve()
        if not path.exists() and path.relative_to(ROOT).as_posix() not in CREATED_AT_FIRST_START:
            missing.append(f"{name}: bind mount {source}")
    assert missing == []
    # The files the services are configured by are among the mounts.
    mounted = {Path(source).as_posix().lstrip("./") for _, source, _ in bind_sources(compose)}
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


def test_dockerfile_is_lint_free():
    instructions = dockerfile_instructions()
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}"], "the base image is a build argument"
    args = dict(i.args.partition("=")[::2] for i in instructions if i.keyword == "ARG")
    image, _, tag = args["BASE_IMAGE"].partition(":")
    assert image == "python" and tag.startswith("3.11-slim") and "latest" not in tag
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert all(i.keyword != "ADD" for i in instructions), "COPY, not ADD"
    for i in instructions:
        if i.keyword in ("CMD", "ENTRYPOINT"):
            assert isinstance(json.loads(i.args), list), f"{i.keyword} in exec form"
        if i.keyword == "ENV":
            assert not SECRET_NAME.search(i.args), "no secret baked into the image"
        if i.keyword == "WORKDIR":
            assert i.args.startswith("/")
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "-r /tmp/requirements/requirements.txt" in runs and "pip install --no-deps /src" in runs


def test_dockerfile_installs_the_runtime_set_under_the_lock():
    """Every pip install of a requirements file runs with -c requirements.lock, so no transitive
    package floats at build time; tests and tooling never enter the image."""
    instructions = dockerfile_instructions()
    runs = [i.args for i in instructions if i.keyword == "RUN" and "-r /tmp/requirements/requirements.txt" in i.args]
    assert runs and all("-c /tmp/requirements/requirements.lock" in run for run in runs)
    assert "requirements.lock" in dockerfile_copies().values()
    assert "requirements-dev.txt" not in " ".join(i.args for i in instructions)


def _pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            found[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return found


def test_lock_pins_every_requirement_at_its_version():
    lock = _pins(ROOT / "requirements.lock")
    for path in (ROOT / "requirements.txt", ROOT / "requirements-dev.txt"):
        for name, version in _pins(path).items():
            assert lock.get(name) == version, f"{path.name}: {name}=={version} is not in requirements.lock"
    assert all(version for version in lock.values()), "every lock line is name==version"


def test_runtime_requirements_hold_no_test_tools():
    runtime = _pins(ROOT / "requirements.txt")
    dev_only = {"pytest", "playwright", "schemathesis", "ruff", "import-linter", "py-spy", "moto", "onnx"}
    assert not dev_only & set(runtime)
    assert dev_only <= set(_pins(ROOT / "requirements-dev.txt"))
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")


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
    assert not dockerignored(".env.example") and not dockerignored("include/lockstep/cli/base.py")


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
    assert "apache-airflow-providers-celery" in tested and "flower" in docker_only
    assert set(tested) & set(docker_only) == set(), "a tested pin is overridden in the image"
    assert tested["apache-airflow"] == "3.3.2"
    # provider 3.26.0 imports celery.backends.database.retry, which celery 5.7.0 removed.
    assert tested["celery"].startswith("5.6.")
