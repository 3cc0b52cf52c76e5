"""Alerts reach people: real SMTP (aiosmtpd), real webhook receivers, real Airflow notifiers.

Each event kind goes out by e-mail, Slack webhook and plain JSON webhook at once, and each
message must carry the version, the reason, the figures and the links. A channel that
cannot deliver must not raise: the alert is still recorded, with the failure named.
"""

from __future__ import annotations

import html
import json
import logging
import os
import socket

import pytest

# Airflow's home is the session's throwaway one (tests/conftest.py), set before any import.
from lockstep.core import alerts  # noqa: E402
from tests.ops.alert_receivers import SmtpReceiver, WebhookReceiver, smtp_connection  # noqa: E402

AIRFLOW_UI = "http://airflow.example.org:8080"
MLFLOW_UI = "http://mlflow.example.org:5000"
SLACK_PATH = "/services/T0001/B0002/secret-token-xyz"


@pytest.fixture
def smtp_server():
    server = SmtpReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def alert_env(lockstep_home, monkeypatch):
    """No alert setting from the machine leaks in; links point at known base URLs."""
    for name in list(os.environ):
        if name.startswith("LOCKSTEP_ALERT_") or name.startswith("AIRFLOW_CONN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LOCKSTEP_AIRFLOW_UI_URL", AIRFLOW_UI)
    monkeypatch.setenv("LOCKSTEP_MLFLOW_UI_URL", MLFLOW_UI)
    monkeypatch.setenv("LOCKSTEP_MODEL_NAME", "lockstep-embedder")
    return monkeypatch


@pytest.fixture
def all_channels(alert_env, smtp_server, receiver):
    """log, smtp (Airflow connection), slack and webhook (URLs) all pointing at local receivers."""
    alert_env.setenv("LOCKSTEP_ALERT_CHANNEL", "log, smtp, slack, webhook")
    alert_env.setenv("AIRFLOW_CONN_LOCKSTEP_SMTP", smtp_connection(smtp_server.port))
    alert_env.setenv("LOCKSTEP_ALERT_SMTP_CONN_ID", "lockstep_smtp")
    alert_env.setenv("LOCKSTEP_ALERT_SMTP_TO", "ops@example.org, ml-oncall@example.org")
    alert_env.setenv("LOCKSTEP_ALERT_SMTP_FROM", "lockstep@example.org")
    alert_env.setenv("LOCKSTEP_ALERT_SLACK_WEBHOOK_URL", receiver.url(SLACK_PATH))
    alert_env.setenv("LOCKSTEP_ALERT_WEBHOOK_URL", receiver.url("/lockstep-hook"))
    return smtp_server, receiver


def mlflow_link(version: str) -> str:
    return f"{MLFLOW_UI}/#/models/lockstep-embedder/versions/{version}"


# (event, message, details, expected version, expected reason, a figure as it is printed)
CASES = {
    "rollback": (
        "v5 rolled back to v4: CTR non-inferiority failed at step 2",
        {"rollout_id": "rollout-5", "candidate": "5", "champion": "4", "failed_tasks": ["canary_2"],
         "figures": {"ctr_candidate": 0.0812, "ctr_champion": 0.1123, "p_value": 0.0031}},
        "5", "v5 rolled back to v4: CTR non-inferiority failed at step 2", ("figures.p_value", "0.0031"),
    ),
    "task_failed": (
        "lockstep_reembed.merge failed in run manual__2026-11-29: disk full",
        {"dag_id": "lockstep_reembed", "task_id": "merge", "run_id": "manual__2026-11-29",
         "error": "disk full", "model_version": "7"},
        "7", "lockstep_reembed.merge failed in run manual__2026-11-29: disk full", ("error", "disk full"),
    ),
    "validation_failed": (
        "v8 failed offline evaluation: recall@10 0.41 under the champion's 0.52",
        {"version": "8", "reason": "recall@10 below the champion", "figures": {"recall_at_10": 0.41}},
        "8", "recall@10 below the champion", ("figures.recall_at_10", "0.41"),
    ),
    "drift_detected": (
        "drift against champion version 4: out-of-vocabulary rate 0.31 above 0.2",
        {"champion_version": "4", "reasons": ["out-of-vocabulary rate 0.31 above 0.2"],
         "figures": {"oov_rate": 0.31, "embedding_auc": 0.74}, "check_id": "scheduled__2026-11-29T20"},
        "4", "drift against champion version 4: out-of-vocabulary rate 0.31 above 0.2",
        ("figures.embedding_auc", "0.74"),
    ),
    "promoted": (
        "v5 is the champion at 100 % (rollout rollout-5)",
        {"rollout_id": "rollout-5", "previous": "4"},
        "5", "v5 is the champion at 100 % (rollout rollout-5)", ("previous", "4"),
    ),
    "overridden": (
        "rollout rollout-6 of v6 stopped: the routing table was changed by someone else",
        {"rollout_id": "rollout-6", "candidate": "6", "reason": "routing generation 13, the rollout wrote 12",
         "expected_generation": 12, "found_generation": 13},
        "6", "routing generation 13, the rollout wrote 12", ("found_generation", "13"),
    ),
}


def test_every_event_has_a_case():
    assert set(CASES) == set(alerts.EVENTS)


@pytest.mark.parametrize("event", sorted(CASES))
def test_each_event_reaches_email_slack_and_webhook_with_version_reason_figures_links(event, all_channels):
    smtp_server, receiver = all_channels
    message, details, version, reason, (figure, figure_value) = CASES[event]

    entry = alerts.alert(event, message, details)

    assert entry["delivery"] == {"log": "sent", "smtp": "sent", "slack": "sent", "webhook": "sent"}
    links = [mlflow_link(version), f"{AIRFLOW_UI}/lockstep/"]
    if "run_id" in details:
        links.append(f"{AIRFLOW_UI}/dags/{details['dag_id']}/runs/{details['run_id']}/tasks/{details['task_id']}")
    assert set(links) <= set(entry["links"].values()) and entry["version"] == version

    (mail,) = smtp_server.messages
    assert sorted(mail.recipients) == ["ml-oncall@example.org", "ops@example.org"]
    assert mail.sender == "lockstep@example.org"
    assert f"v{version}" in mail.subject and alerts.TITLES[event] in mail.subject
    for expected in (f"<b>{version}</b>", reason, html.escape(message), figure, figure_value, *links):
        assert expected in mail.body, f"{expected!r} missing from the e-mail"

    (hook,) = receiver.at("/lockstep-hook")
    payload = hook.json()
    assert hook.headers["Content-Type"] == "application/json"
    assert (payload["event"], payload["version"], payload["reason"]) == (event, version, reason)
    assert payload["message"] == message
    assert payload["figures"] == json.loads(json.dumps(details))
    assert set(links) <= set(payload["links"].values())

    (slack,) = receiver.at(SLACK_PATH)
    text = slack.json()["text"]
    for expected in (f"v{version}", reason, message, f"{figure}: {figure_value}", *links):
        assert expected in text, f"{expected!r} missing from the Slack message"

    recorded = alerts.recent_alerts()[-1]
    assert recorded["event"] == event and recorded["delivery"] == entry["delivery"]


def test_webhook_and_slack_through_airflow_connections(alert_env, receiver):
    """Without URL variables the channels use Airflow connections (here AIRFLOW_CONN_...)."""
    alert_env.setenv("LOCKSTEP_ALERT_CHANNEL", "webhook,slack")
    alert_env.setenv("AIRFLOW_CONN_LOCKSTEP_WEBHOOK", json.dumps({"conn_type": "http", "host": receiver.url("/via-conn")}))
    alert_env.setenv("AIRFLOW_CONN_LOCKSTEP_SLACK", json.dumps({"conn_type": "slackwebhook", "password": receiver.url("/slack-conn")}))

    entry = alerts.alert("rollback", *CASES["rollback"][:2])

    assert entry["delivery"] == {"webhook": "sent", "slack": "sent"}
    assert receiver.at("/via-conn")[0].json()["version"] == "5"
    assert "v5" in receiver.at("/slack-conn")[0].json()["text"]


def _closed_port() -> int:
    """A port nothing listens on (bound, then released): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failing_channels_never_raise_and_are_recorded_once(alert_env, receiver, caplog):
    alert_env.setenv("LOCKSTEP_ALERT_CHANNEL", "log,smtp,slack,webhook,pager")
    alert_env.setenv("LOCKSTEP_ALERT_ATTEMPTS", "1")  # one try each here; retries: tests/core/test_alert_retries.py
    alert_env.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_connection(_closed_port()))
    alert_env.setenv("LOCKSTEP_ALERT_SMTP_TO", "ops@example.org")
    alert_env.setenv("LOCKSTEP_ALERT_SMTP_FROM", "lockstep@example.org")
    alert_env.setenv("LOCKSTEP_ALERT_SLACK_WEBHOOK_URL", f"http://127.0.0.1:{_closed_port()}{SLACK_PATH}")
    alert_env.setenv("LOCKSTEP_ALERT_WEBHOOK_URL", receiver.url("/fail"))

    with caplog.at_level(logging.WARNING, logger="lockstep.alerts"):
        entry = alerts.alert("rollback", *CASES["rollback"][:2])

    delivery = entry["delivery"]
    assert delivery["log"] == "sent"
    assert all(delivery[c].startswith("failed: ") for c in ("smtp", "slack", "webhook", "pager"))
    assert "500" in delivery["webhook"] and "unknown alert channel 'pager'" in delivery["pager"]
    assert len(receiver.at("/fail")) == 1  # tried once, no retry storm
    failures = [r.getMessage() for r in caplog.records if "was not delivered" in r.getMessage()]
    assert len(failures) == 4  # one line per failed channel
    assert all("secret-token-xyz" not in line for line in failures + [json.dumps(entry)])
    assert alerts.recent_alerts()[-1]["delivery"] == delivery


def test_smtp_without_recipients_and_bad_settings_are_named(alert_env):
    alert_env.setenv("LOCKSTEP_ALERT_CHANNEL", "smtp")
    entry = alerts.alert("promoted", *CASES["promoted"][:2])
    assert "LOCKSTEP_ALERT_SMTP_TO is empty" in entry["delivery"]["smtp"]

    alert_env.setenv("LOCKSTEP_ALERT_TIMEOUT", "soon")
    entry = alerts.alert("promoted", *CASES["promoted"][:2])
    assert entry["delivery"]["log"] == "sent"
    assert "LOCKSTEP_ALERT_TIMEOUT='soon'" in entry["delivery"]["settings"]
    assert alerts.recent_alerts()[-1]["event"] == "promoted"


def test_unknown_event_is_a_programming_error(alert_env):
    with pytest.raises(ValueError, match="unknown alert event 'typo'"):
        alerts.alert("typo", "x")
