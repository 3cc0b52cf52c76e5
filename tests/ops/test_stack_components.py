"""The embedded stack's child processes: what each runs with (nothing is started here).

The MLflow UI runs one web worker and no job runner (CI time, issue 26): MLflow's defaults
(4 spawned workers, 7 Huey job consumers) made it the last component to answer on 2 cores.
Every Airflow component gets the same environment, and none of them an option Airflow 3
no longer reads.
"""

from __future__ import annotations

from pathlib import Path

from lockstep.ops.stack import StackConfig, airflow_env, component_commands


def _commands(tmp_path: Path, **config) -> dict[str, tuple[list[str], dict[str, str]]]:
    cfg = StackConfig(home=tmp_path / "home", airflow_port=18080, mlflow_port=15000, serving_port=18000, **config)
    env = airflow_env(cfg, "pw")
    return {name: (cmd, child_env) for name, cmd, child_env in component_commands(cfg, env, Path("/venv/bin"))}


def test_the_mlflow_ui_runs_one_worker_and_no_job_runner(tmp_path):
    cmd, env = _commands(tmp_path)["mlflow-ui"]
    assert cmd[:2] == ["/venv/bin/mlflow", "ui"]
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--port") + 1] == "15000"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_the_airflow_components_share_one_environment_without_dead_options(tmp_path):
    commands = _commands(tmp_path)
    airflow = {name: commands[name] for name in ("api-server", "scheduler", "dag-processor", "triggerer")}
    envs = [env for _, env in airflow.values()]
    assert all(env == envs[0] for env in envs)
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in envs[0]  # only the MLflow UI's own setting
    # Airflow 3 reads [dag_processor] min_file_process_interval; the [scheduler] one is gone.
    assert "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL" not in envs[0]
    assert airflow["api-server"][0][airflow["api-server"][0].index("--port") + 1] == "18080"


def test_components_left_out_are_not_started(tmp_path):
    names = set(_commands(tmp_path, with_mlflow_ui=False, with_serving=False))
    assert names == {"api-server", "scheduler", "dag-processor", "triggerer"}
