"""Secrets stay out of reprs: the API token, a database/MLflow URL's password and the webhook
URLs are masked wherever a settings object is printed or logged, while the values the code
uses are untouched."""

from __future__ import annotations

import logging

import pytest

from lockstep.core.config import AlertSettings, Settings, mask_secret_url, mask_url

TOKEN = "tok-9f8e7d6c5b4a"
DB_PASSWORD = "db-s3cret-pw"
MLFLOW_PASSWORD = "ml-s3cret-pw"
WEBHOOK_SECRET = "T0001/B0002/hook-secret-xyz"


def _secret_settings(tmp_path) -> Settings:
    return Settings.from_env({
        "LOCKSTEP_HOME": str(tmp_path),
        "LOCKSTEP_API_TOKEN": TOKEN,
        "LOCKSTEP_DATABASE_URL": f"postgresql+psycopg://lockstep:{DB_PASSWORD}@db.internal:5432/lockstep",
        "MLFLOW_TRACKING_URI": f"postgresql://mlflow:{MLFLOW_PASSWORD}@db.internal/mlflow?sslmode=require",
    })


def test_the_settings_repr_masks_the_token_and_url_passwords_but_keeps_the_rest(tmp_path):
    s = _secret_settings(tmp_path)
    shown = repr(s)
    assert TOKEN not in shown and DB_PASSWORD not in shown and MLFLOW_PASSWORD not in shown
    assert "api_token='***'" in shown
    assert "postgresql+psycopg://lockstep:***@db.internal:5432/lockstep" in shown
    assert "postgresql://mlflow:***@db.internal/mlflow?sslmode=require" in shown
    assert str(s) == shown and f"{s}" == shown and f"{s!r}" == shown
    assert f"home={tmp_path!r}" in shown  # everything else as the dataclass repr shows it
    # the values the code connects with are the real ones
    assert s.api_token == TOKEN and DB_PASSWORD in s.database_url


def test_a_settings_object_in_a_log_line_or_an_error_carries_no_secret(tmp_path, caplog):
    s = _secret_settings(tmp_path)
    with caplog.at_level(logging.INFO, logger="lockstep.test"):
        logging.getLogger("lockstep.test").info("configured: %s / %r", s, [s])
    text = caplog.text + repr(ValueError(s)) + str({"settings": s})
    assert TOKEN not in text and DB_PASSWORD not in text and MLFLOW_PASSWORD not in text


def test_no_token_shows_as_none_not_as_a_mask(tmp_path):
    shown = repr(Settings.from_env({"LOCKSTEP_HOME": str(tmp_path)}))
    assert "api_token=None" in shown and "***" not in shown


def test_the_alert_settings_repr_masks_the_webhook_urls():
    cfg = AlertSettings.from_env({
        "LOCKSTEP_ALERT_SLACK_WEBHOOK_URL": f"https://hooks.slack.example/services/{WEBHOOK_SECRET}",
        "LOCKSTEP_ALERT_WEBHOOK_URL": f"https://ops.example.org/lockstep/{WEBHOOK_SECRET}?key=abc",
    })
    shown = repr(cfg)
    assert WEBHOOK_SECRET not in shown and "key=abc" not in shown
    assert "slack_webhook_url='https://hooks.slack.example/***'" in shown
    assert "webhook_url='https://ops.example.org/***'" in shown
    assert WEBHOOK_SECRET in cfg.webhook_url  # the notifier still gets the real URL


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
    ("redis://:pw@h:6380/stream?db=2", "redis://:***@h:6380/stream?db=2"),
    ("postgresql://u:p%40ss@h/db?x=a@b", "postgresql://u:***@h/db?x=a@b"),  # '@' in the query is not the user part
    ("postgresql://u@h/db?sslmode=x&password=zz&a=1", "postgresql://u@h/db?sslmode=x&password=***&a=1"),
    ("redis://user@h/stream", "redis://user@h/stream"),  # a user without a password is no secret
    ("sqlite:////srv/a@b/lockstep.db", "sqlite:////srv/a@b/lockstep.db"),  # '@' in a path
    ("/srv/indexes", "/srv/indexes"),
    ("", ""),
    (None, None),
])
def test_mask_url_hides_only_the_password(url, masked):
    assert mask_url(url) == masked


def test_mask_secret_url_keeps_only_scheme_and_host():
    assert mask_secret_url("https://user:pw@hooks.example/a/b") == "https://hooks.example/***"
    assert mask_secret_url("no-scheme-secret") == "***"
    assert mask_secret_url(None) is None


def test_an_alert_quoting_a_url_or_the_token_records_and_logs_them_masked(lockstep_home, monkeypatch, caplog):
    """An alert's message and figures often quote an error; the error may quote a connection URL."""
    from lockstep.core import alerts

    monkeypatch.setenv("LOCKSTEP_API_TOKEN", TOKEN)
    monkeypatch.setenv("LOCKSTEP_ALERT_CHANNEL", "log")
    error = f"could not reach postgresql://lockstep:{DB_PASSWORD}@db.internal/lockstep with Bearer {TOKEN}"

    with caplog.at_level(logging.WARNING, logger="lockstep.alerts"):
        entry = alerts.alert("task_failed", error, {"error": error, "tries": [error], "try_number": 2})

    recorded = (lockstep_home / "alerts.jsonl").read_text()
    for text in (recorded, caplog.text, repr(entry)):
        assert TOKEN not in text and DB_PASSWORD not in text
    assert "postgresql://lockstep:***@db.internal/lockstep with Bearer ***" in entry["message"]
    assert entry["details"]["try_number"] == 2 and entry["details"]["tries"] == [entry["message"]]


def test_the_embedded_stacks_config_prints_no_secret(tmp_path):
    from lockstep.ops.stack import StackConfig

    config = StackConfig(home=tmp_path, api_token="tok-s3cret",
                         metadata_url="postgresql+psycopg://airflow:pw-s3cret@127.0.0.1:5432/airflow")
    shown = repr(config)
    assert "s3cret" not in shown
    assert "api_token='***'" in shown and "airflow:***@127.0.0.1:5432/airflow" in shown
