"""Configuration: every setting from the environment with a working default, read when
asked for, and a bad value refused with an error that names the variable and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockstep.core.config import (
    DEFAULT_AIRFLOW_UI_URL,
    DEFAULT_ALERT_SLACK_CONN_ID,
    DEFAULT_ALERT_SMTP_CONN_ID,
    DEFAULT_ALERT_TIMEOUT,
    DEFAULT_ALERT_WEBHOOK_CONN_ID,
    DEFAULT_DB_CONNECT_TIMEOUT,
    DEFAULT_DB_STATEMENT_TIMEOUT,
    DEFAULT_MLFLOW_UI_URL,
    DEFAULT_MODEL_NAME,
    AlertSettings,
    Settings,
    alert_settings,
    run_folder,
    seconds_setting,
    settings,
)
from lockstep.core.errors import ConfigurationError, LockstepError

# --- Settings ------------------------------------------------------------------------------------


def test_an_empty_environment_gives_a_working_local_setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    home = (tmp_path / ".lockstep").resolve()
    assert s.home == home and s.home.is_absolute()
    assert s.database_url == f"sqlite:///{home / 'lockstep.db'}"
    assert s.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert s.index_store == str(home / "indexes")
    assert (s.model_name, s.api_token, s.mlflow_ui_url) == (DEFAULT_MODEL_NAME, None, DEFAULT_MLFLOW_UI_URL)
    assert (s.db_connect_timeout, s.db_statement_timeout) == (DEFAULT_DB_CONNECT_TIMEOUT, DEFAULT_DB_STATEMENT_TIMEOUT)
    assert (s.cache_dir, s.artifact_root) == (home / "cache", home / "mlartifacts")
    assert not home.exists()  # reading the settings creates nothing


def test_every_variable_overrides_its_default(tmp_path):
    env = {
        "LOCKSTEP_HOME": str(tmp_path / "h"),
        "LOCKSTEP_DATABASE_URL": "postgresql://u@db/lockstep",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "LOCKSTEP_INDEX_STORE": "s3://bucket/indexes",
        "LOCKSTEP_MODEL_NAME": "other-model",
        "LOCKSTEP_API_TOKEN": "secret",
        "LOCKSTEP_MLFLOW_UI_URL": "https://mlflow.example.org",
        "LOCKSTEP_DB_CONNECT_TIMEOUT": "2.5",
        "LOCKSTEP_DB_STATEMENT_TIMEOUT": "0",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        home=(tmp_path / "h").resolve(), database_url="postgresql://u@db/lockstep",
        mlflow_tracking_uri="http://mlflow:5000", index_store="s3://bucket/indexes", model_name="other-model",
        api_token="secret", mlflow_ui_url="https://mlflow.example.org", db_connect_timeout=2.5, db_statement_timeout=0.0,
    )


def test_empty_variables_count_as_unset(tmp_path, monkeypatch):
    """Compose files pass ``VAR=`` for unset variables: an empty token must not be a token."""
    monkeypatch.chdir(tmp_path)
    names = ["LOCKSTEP_HOME", "LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE",
             "LOCKSTEP_MODEL_NAME", "LOCKSTEP_API_TOKEN", "LOCKSTEP_MLFLOW_UI_URL",
             "LOCKSTEP_DB_CONNECT_TIMEOUT", "LOCKSTEP_DB_STATEMENT_TIMEOUT"]
    assert Settings.from_env(dict.fromkeys(names, "")) == Settings.from_env({})


def test_a_home_with_a_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings.from_env({"LOCKSTEP_HOME": "~/data"}).home == (tmp_path / "data").resolve()


def test_settings_are_read_when_asked_not_at_import(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_HOME", str(tmp_path / "one"))
    assert settings().home == (tmp_path / "one").resolve()
    monkeypatch.setenv("LOCKSTEP_HOME", str(tmp_path / "two"))
    assert settings().home == (tmp_path / "two").resolve()
    assert Settings.from_env() == settings()  # no argument: the process environment


def test_ensure_home_creates_the_home_and_a_local_index_store(tmp_path):
    s = Settings.from_env({"LOCKSTEP_HOME": str(tmp_path / "h")})
    assert s.ensure_home() == s.home
    assert s.home.is_dir() and Path(s.index_store).is_dir()
    assert s.ensure_home() == s.home  # a second call is harmless


def test_ensure_home_leaves_a_remote_index_store_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"LOCKSTEP_HOME": str(tmp_path / "h"), "LOCKSTEP_INDEX_STORE": "s3://bucket/indexes"})
    s.ensure_home()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]  # no local folder named "s3:"


def test_a_bad_timeout_in_the_environment_names_the_variable():
    with pytest.raises(ConfigurationError, match=r"LOCKSTEP_DB_STATEMENT_TIMEOUT='soon' is not a number of seconds"):
        Settings.from_env({"LOCKSTEP_DB_STATEMENT_TIMEOUT": "soon"})


# --- seconds_setting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 7.0), ("", 7.0), ("   ", 7.0), ("0", 0.0), ("2.5", 2.5), (" 30 ", 30.0), ("1e3", 1000.0)],
)
def test_seconds_setting_reads_durations_and_defaults_when_blank(raw, expected):
    env = {} if raw is None else {"T": raw}
    assert seconds_setting(env, "T", 7.0) == expected


@pytest.mark.parametrize("raw", ["-1", "-0.5", "abc", "10s", "nan", "inf", "-inf", "1,5"])
def test_seconds_setting_refuses_what_is_not_a_duration(raw):
    with pytest.raises(ConfigurationError) as caught:
        seconds_setting({"LOCKSTEP_X_TIMEOUT": raw}, "LOCKSTEP_X_TIMEOUT", 7.0)
    message = str(caught.value)
    assert f"LOCKSTEP_X_TIMEOUT={raw!r}" in message and "0 turns the limit off" in message
    assert isinstance(caught.value, LockstepError)  # the CLI reports it as a Lockstep error


# --- AlertSettings -------------------------------------------------------------------------------


def test_alert_settings_default_to_the_log_channel_and_known_connection_ids():
    a = AlertSettings.from_env({})
    assert a.channels == ("log",) and a.smtp_to == () and a.smtp_from is None
    assert (a.smtp_conn_id, a.slack_conn_id, a.webhook_conn_id) == (
        DEFAULT_ALERT_SMTP_CONN_ID, DEFAULT_ALERT_SLACK_CONN_ID, DEFAULT_ALERT_WEBHOOK_CONN_ID,
    )
    assert (a.slack_webhook_url, a.webhook_url) == (None, None)
    assert a.timeout_seconds == DEFAULT_ALERT_TIMEOUT
    assert (a.airflow_ui_url, a.mlflow_ui_url, a.model_name) == (DEFAULT_AIRFLOW_UI_URL, DEFAULT_MLFLOW_UI_URL, DEFAULT_MODEL_NAME)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("log", ("log",)),
        (" Slack , WEBHOOK ", ("slack", "webhook")),  # trimmed and lower-cased
        ("smtp,log,smtp,,log", ("smtp", "log")),  # each once, first order kept, blanks dropped
        (" , ", ()),  # only blanks: no channel (the alert module then names the problem)
    ],
)
def test_alert_channels_are_a_clean_ordered_list(raw, expected):
    assert AlertSettings.from_env({"LOCKSTEP_ALERT_CHANNEL": raw}).channels == expected


def test_alert_recipients_keep_their_case_and_links_lose_trailing_slashes(monkeypatch):
    env = {
        "LOCKSTEP_ALERT_SMTP_TO": "Ops@Example.org, oncall@example.org,Ops@Example.org",
        "LOCKSTEP_ALERT_SMTP_FROM": "lockstep@example.org",
        "LOCKSTEP_AIRFLOW_UI_URL": "https://airflow.example.org/",
        "LOCKSTEP_MLFLOW_UI_URL": "https://mlflow.example.org//",
        "LOCKSTEP_ALERT_TIMEOUT": "3",
        "LOCKSTEP_MODEL_NAME": "m",
    }
    a = AlertSettings.from_env(env)
    assert a.smtp_to == ("Ops@Example.org", "oncall@example.org")
    assert a.smtp_from == "lockstep@example.org"
    assert (a.airflow_ui_url, a.mlflow_ui_url) == ("https://airflow.example.org", "https://mlflow.example.org")
    assert (a.timeout_seconds, a.model_name) == (3.0, "m")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert alert_settings() == a  # read from the process environment at call time


def test_a_bad_alert_timeout_names_its_variable():
    with pytest.raises(ConfigurationError, match="LOCKSTEP_ALERT_TIMEOUT='-3'"):
        AlertSettings.from_env({"LOCKSTEP_ALERT_TIMEOUT": "-3"})


# --- run_folder ----------------------------------------------------------------------------------


def test_a_run_folder_lives_under_the_home_with_a_safe_name(lockstep_home):
    folder = run_folder("manual__2026-11-30T00:15:01.123+00:00")
    assert folder == lockstep_home.resolve() / "runs" / "manual__2026-11-30T00_15_01.123_00_00"
    assert folder.is_dir()
    assert run_folder("manual__2026-11-30T00:15:01.123+00:00") == folder  # the same run, the same folder


@pytest.mark.parametrize("run_id", ["a/b", "../../outside", "sp ace\ttab", "é"])
def test_a_run_id_with_path_characters_stays_one_folder_under_runs(lockstep_home, run_id):
    folder = run_folder(run_id)
    assert folder.resolve().parent == (lockstep_home / "runs").resolve()


@pytest.mark.parametrize("run_id", ["..", ".", ""])
def test_a_dot_run_id_still_gets_its_own_folder_under_runs(lockstep_home, run_id):
    folder = run_folder(run_id)
    assert folder.resolve().parent == (lockstep_home / "runs").resolve()
