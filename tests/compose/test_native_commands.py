"""Every command of the stack names a real executable and documented options, run natively;
the init steps run against a real PostgreSQL; `docker compose config` when a Compose binary
exists."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import postgres_harness
from tests.compose.helpers import (
    BIN,
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    MLFLOW_HOST_HEADERS,
    OUR_CLIS,
    ROOT,
    SERVING,
    THIRD_PARTY_TOOLS,
    as_native,
    assert_help_covers,
    compose_command,
    dockerfile_copies,
    invocations,
    native_env,
)


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
        assert_help_covers(inv.argv, code, text)
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
    assert_help_covers(inv.argv, *result["help"])
    assert result["accepted"] == MLFLOW_HOST_HEADERS
    tracking = urlsplit(compose["services"][SERVING]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    assert tracking in MLFLOW_HOST_HEADERS and MLFLOW_HOST_HEADERS[tracking]


@pytest.mark.slow
def test_lockstep_commands_exist_natively(compose, native_help):
    calls = [inv for inv in invocations(compose) if inv.argv[0] == "lockstep"]
    assert {" ".join(inv.subcommand) for inv in calls} == {
        "lockstep serve",
        "lockstep db upgrade",
    }
    for inv in calls:
        process = native_help.processes[" ".join(inv.subcommand)]
        out, err = process.communicate(timeout=120)
        assert_help_covers(inv.argv, process.returncode, out + err)


def test_celery_healthcheck_uses_the_provider_app(compose):
    (inv,) = [inv for inv in invocations(compose) if inv.argv[0] == "celery"]
    app = inv.argv[inv.argv.index("--app") + 1]
    assert app == "airflow.providers.celery.executors.celery_executor.app"
    assert inv.service == "airflow-worker" and inv.argv[inv.argv.index("--app") + 2 : -2] == (
        "inspect",
        "ping",
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_init_steps_run_natively_on_postgres(compose, generated_env, native_help, tmp_path):
    """init-databases.sh, then the lockstep-init and airflow-init commands with their compose
    environments. (native_help is requested only to start the --help runs alongside.)"""
    import psycopg

    services = compose["services"]
    server = postgres_harness.start()
    try:
        base = native_env(tmp_path)
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
        env = {**base, **as_native(lockstep_init["environment"], server.port, tmp_path)}
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
        env = {**base, **as_native(airflow_init["environment"], server.port, tmp_path)}
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
            # rollout tasks run in this pool (lockstep.rollout.steps.ROLLOUT_POOL)
            assert conn.execute(
                "SELECT slots FROM slot_pool WHERE pool = 'lockstep_rollout'"
            ).fetchone() == (8,)
        assert (tmp_path / "airflow" / "logs").is_dir() and (tmp_path / "data" / "home").is_dir()
        # The index store is the object store (s3://...): no shared index folder is made.
        assert env["LOCKSTEP_INDEX_STORE"].startswith("s3://") and not (tmp_path / "data" / "indexes").exists()
    finally:
        postgres_harness.stop(server)


@pytest.mark.skipif(
    compose_command() is None, reason="no docker compose binary (the schema test covers the file)"
)
def test_docker_compose_config_accepts_the_file(generated_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in generated_env.items()), encoding="utf-8")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COMPOSE_") and k not in generated_env
    }
    base = [*compose_command(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
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
    # Compose v2 says "required variable", docker-compose 1.x "Missing mandatory value": both refuse.
    assert refused.returncode != 0 and ("required variable" in refused.stderr or "Missing mandatory value" in refused.stderr)
