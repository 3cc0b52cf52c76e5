"""Alerts that reach people: rollbacks, failed tasks, drift, overridden rollouts.

``alert(event, message, details)`` sends one alert to every channel named in
``LOCKSTEP_ALERT_CHANNEL`` (comma-separated) and appends it to
``$LOCKSTEP_HOME/alerts.jsonl``, which the Lockstep UI page reads:

- ``log`` (the default): one warning line in the task log;
- ``smtp``: an e-mail through Airflow's ``SmtpNotifier`` (SMTP server in the Airflow
  connection ``LOCKSTEP_ALERT_SMTP_CONN_ID``, recipients in ``LOCKSTEP_ALERT_SMTP_TO``);
- ``slack``: a Slack incoming webhook through ``SlackWebhookNotifier``
  (``LOCKSTEP_ALERT_SLACK_WEBHOOK_URL``, or the connection ``LOCKSTEP_ALERT_SLACK_CONN_ID``);
- ``webhook``: a JSON POST through the HTTP provider's ``HttpNotifier``
  (``LOCKSTEP_ALERT_WEBHOOK_URL``, or the connection ``LOCKSTEP_ALERT_WEBHOOK_CONN_ID``).

Every alert carries the version, the reason, the figures (``details``) and links to the
Airflow run, the MLflow model version and the Lockstep page, built from
``LOCKSTEP_AIRFLOW_UI_URL`` and ``LOCKSTEP_MLFLOW_UI_URL``. An alert is a side effect of
something that already happened: a channel that cannot deliver never fails the task
that alerted. A channel that fails is tried again with exponential backoff
(``LOCKSTEP_ALERT_ATTEMPTS`` tries in all, default 3, waiting
``LOCKSTEP_ALERT_RETRY_DELAY`` seconds, default 1, then twice as long each time); a
problem of the settings (no recipients, an unknown channel) is not retried. Each failed
attempt is logged and kept in the entry's ``attempts``; the final outcome is logged
once and kept in the entry's ``delivery``.
"""

from __future__ import annotations

import html
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from lockstep.core import clock, jsonio

log = logging.getLogger("lockstep.alerts")

EVENTS = ("task_failed", "rollback", "validation_failed", "drift_detected", "promoted", "overridden")
TITLES = {
    "task_failed": "task failed",
    "rollback": "rollback",
    "validation_failed": "validation failed",
    "drift_detected": "drift found",
    "promoted": "promoted",
    "overridden": "rollout overridden",
}
# Where a caller's details name the model version the alert is about, most specific first.
VERSION_KEYS = ("version", "candidate", "model_version", "to_version", "champion_version")
SENT = "sent"
MAX_FIGURE_LINES = 60
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Notice:
    """One alert as people read it: the same content for every channel."""

    event: str
    message: str
    version: str | None
    reason: str
    at: str
    details: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        version = f" v{self.version}" if self.version else ""
        return f"[Lockstep] {TITLES[self.event]}{version}: {_one_line(self.message, 150)}"

    def lines(self) -> list[str]:
        """The plain-text body: what, which version, why, the figures, where to look."""
        out = [
            f"Lockstep alert: {TITLES[self.event]}",
            f"version: {self.version or 'n/a'}",
            f"reason: {self.reason}",
            *([f"message: {self.message}"] if self.message != self.reason else []),
            f"at: {self.at}",
            "figures:",
        ]
        out += [f"  {key}: {value}" for key, value in figures(self.details)] or ["  (none)"]
        out.append("links:")
        out += [f"  {label}: {url}" for label, url in self.links.items()] or ["  (none configured)"]
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def html(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in figures(self.details)
        )
        links = "".join(
            f'<li><a href="{html.escape(url, quote=True)}">{html.escape(label)}</a>: {html.escape(url)}</li>'
            for label, url in self.links.items()
        )
        return (
            f"<h3>Lockstep alert: {html.escape(TITLES[self.event])}</h3>"
            f"<p>version: <b>{html.escape(self.version or 'n/a')}</b></p>"
            f"<p>reason: {html.escape(self.reason)}</p>"
            + (f"<p>message: {html.escape(self.message)}</p>" if self.message != self.reason else "")
            + f"<p>at: {html.escape(self.at)}</p>"
            f"<h4>figures</h4><table>{rows or '<tr><td>(none)</td></tr>'}</table>"
            f"<h4>links</h4><ul>{links or '<li>(none configured)</li>'}</ul>"
        )

    def slack_text(self) -> str:
        links = " · ".join(f"<{url}|{label}>" for label, url in self.links.items())
        figures_block = "\n".join(f"{k}: {v}" for k, v in figures(self.details)) or "(none)"
        message = f"\n{self.message}" if self.message != self.reason else ""
        return f"*{self.subject}*{message}\nreason: {self.reason}\n```{figures_block}```\n{links}"

    def payload(self) -> dict[str, Any]:
        """The plain webhook's JSON body."""
        return {
            "source": "lockstep",
            "event": self.event,
            "title": TITLES[self.event],
            "subject": self.subject,
            "message": self.message,
            "version": self.version,
            "reason": self.reason,
            "at": self.at,
            "figures": self.details,
            "links": self.links,
        }


def alert(
    event: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    context: Mapping[str, Any] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Send one alert to the configured channels and record it; returns the recorded entry.

    ``context`` is an Airflow task context (failure callbacks pass theirs); without one the
    running task's context is used when there is one, for the Airflow run link. ``sleep``
    waits between the tries of a failing channel (``time.sleep``; tests pass a recorder).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}; one of {', '.join(EVENTS)}")
    message, details = _scrubbed(message), _scrubbed(dict(details or {}))
    context = context if context is not None else _current_context()
    cfg, config_error = _alert_settings()
    notice = build_notice(event, message, details, context, cfg)
    channels = cfg.channels if cfg else ("log",)
    attempts: dict[str, list[dict[str, str]]] = {}
    delivery = {
        channel: _deliver(channel, notice, cfg, context, config_error, attempts, time.sleep if sleep is None else sleep)
        for channel in channels
    }
    if config_error:  # only the log channel could run: say why the others did not
        delivery["settings"] = f"failed: {config_error}"
    entry = {
        "at": notice.at,
        "event": event,
        "message": message,
        "details": details,
        "channel": ",".join(channels),
        "version": notice.version,
        "links": notice.links,
        "delivery": delivery,
        "attempts": attempts,  # per channel that was tried more than once or failed: each try's outcome
    }
    _append(entry)
    return entry


def alert_from_context(event: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Build an alert from an Airflow callback context (task failure callbacks)."""
    ids = _context_ids(context)
    error = context.get("exception")
    details: dict[str, Any] = {
        "dag_id": ids.get("dag_id", "?"),
        "task_id": ids.get("task_id", "?"),
        "run_id": ids.get("run_id", "?"),
        "error": str(error)[:2000],
    }
    params = context.get("params") or {}
    version = params.get("model_version") if isinstance(params, Mapping) else None
    if version not in (None, ""):
        details["model_version"] = str(version)
    if "try_number" in ids:
        details["try_number"] = ids["try_number"]
    return alert(
        event,
        f"{details['dag_id']}.{details['task_id']} failed in run {details['run_id']}: {error}",
        details,
        context=context,
    )


def recent_alerts(limit: int = 50) -> list[dict[str, Any]]:
    path = _alerts_file()
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[-limit:]
    return [json.loads(line) for line in lines if line.strip()]


# --- the notice: version, reason, figures, links ------------------------------------------


def build_notice(event: str, message: str, details: dict[str, Any], context: Mapping[str, Any] | None, cfg) -> Notice:
    version = alert_version(details, message)
    reason = str(details.get("reason") or message)
    at = clock.now_iso()
    return Notice(event, message, version, reason, at, details, links(cfg, version, _context_ids(context or {}), details))


def alert_version(details: Mapping[str, Any], message: str) -> str | None:
    """The model version an alert is about: from the details, else the first ``vN`` of the message."""
    for key in VERSION_KEYS:
        value = details.get(key)
        if value not in (None, "", "?"):
            return str(value)
    found = re.search(r"\bv(\d+)\b", message)
    return found.group(1) if found else None


def links(cfg, version: str | None, ids: Mapping[str, Any], details: Mapping[str, Any]) -> dict[str, str]:
    """Links to the Airflow run (and task), the MLflow model version and the Lockstep page."""
    if cfg is None:
        return {}
    out: dict[str, str] = {}
    dag_id = ids.get("dag_id") or details.get("dag_id")
    run_id = ids.get("run_id") or details.get("run_id")
    if dag_id and run_id and "?" not in (dag_id, run_id):
        run = f"{cfg.airflow_ui_url}/dags/{quote(str(dag_id), safe='')}/runs/{quote(str(run_id), safe='')}"
        out["Airflow run"] = run
        task_id = ids.get("task_id") or details.get("task_id")
        if task_id and task_id != "?":
            out["Airflow task"] = f"{run}/tasks/{quote(str(task_id), safe='')}"
    if version:
        out["MLflow version"] = (
            f"{cfg.mlflow_ui_url}/#/models/{quote(cfg.model_name, safe='')}/versions/{quote(version, safe='')}"
        )
    out["Lockstep page"] = f"{cfg.airflow_ui_url}/lockstep/"
    return out


def figures(details: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``details`` flattened to ("a.b", "value") lines, at most ``MAX_FIGURE_LINES``."""
    out: list[tuple[str, str]] = []
    for key, value in details.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += figures(value, f"{name}.")
        elif isinstance(value, float):
            out.append((name, f"{value:.6g}"))
        elif isinstance(value, list | tuple):
            out.append((name, ", ".join(str(v) for v in value) or "(none)"))
        else:
            out.append((name, _one_line(str(value), 300)))
    return out[:MAX_FIGURE_LINES]


# --- delivery -------------------------------------------------------------------------------


class SettingsProblem(ValueError):
    """A channel that cannot work as configured (no recipients, unknown name): trying again cannot help."""


def _deliver(
    channel: str,
    notice: Notice,
    cfg,
    context: Mapping[str, Any] | None,
    config_error: str | None,
    attempts: dict[str, list[dict[str, str]]],
    sleep: Callable[[float], None],
) -> str:
    """``"sent"``, or ``"failed: ..."`` after the last try: a channel's failure is never raised.

    A failing try is retried after ``cfg.retry_delay(n)`` seconds, up to ``cfg.attempts``
    tries; each failed try is logged and added to ``attempts[channel]`` (with the try that
    finally succeeded), the final failure is logged once more as "was not delivered".
    """
    if channel == "log":
        log.warning("lockstep alert [%s]: %s", notice.event, notice.message)
        return SENT
    tries = max(1, getattr(cfg, "attempts", 1))
    outcomes: list[dict[str, str]] = []
    outcome = ""
    for number in range(1, tries + 1):
        outcome, retry = _try_channel(channel, notice, cfg, context, config_error)
        outcomes.append({"at": clock.now_iso(), "outcome": outcome})
        if outcome == SENT or not retry or number == tries:
            break
        delay = cfg.retry_delay(number)
        log.warning("lockstep alert [%s]: channel %r try %d of %d %s; trying again in %.3g s",
                    notice.event, channel, number, tries, outcome, delay)
        sleep(delay)
    if len(outcomes) > 1 or outcome != SENT:
        attempts[channel] = outcomes
    if outcome != SENT:
        log.warning("lockstep alert [%s] was not delivered by channel %r (%d %s): %s", notice.event, channel,
                    len(outcomes), "try" if len(outcomes) == 1 else "tries", outcome.removeprefix("failed: "))
    elif len(outcomes) > 1:
        log.warning("lockstep alert [%s] was delivered by channel %r at try %d", notice.event, channel, len(outcomes))
    return outcome


def _try_channel(channel: str, notice: Notice, cfg, context: Mapping[str, Any] | None,
                 config_error: str | None) -> tuple[str, bool]:
    """One try: (``"sent"`` or ``"failed: ..."``, whether another try could help)."""
    try:
        if config_error:
            raise SettingsProblem(config_error)
        _send(channel, notice, cfg, dict(context or {}))
        return SENT, False
    except Exception as exc:  # any failure of any provider: the alerting task goes on
        problem = _redact(f"{type(exc).__name__}: {exc}", cfg)[:MAX_ERROR_CHARS]
        return f"failed: {problem}", not isinstance(exc, SettingsProblem)


def _send(channel: str, notice: Notice, cfg, context: dict[str, Any]) -> None:
    if channel == "smtp":
        _smtp_notifier(notice, cfg).notify(context)
    elif channel == "slack":
        _slack_notifier(notice, cfg).notify(context)
    elif channel == "webhook":
        _webhook_notifier(notice, cfg).notify(context)
    else:
        from lockstep.core.config import ALERT_CHANNELS

        raise SettingsProblem(
            f"unknown alert channel {channel!r} in LOCKSTEP_ALERT_CHANNEL; use {', '.join(ALERT_CHANNELS)}")


def _smtp_notifier(notice: Notice, cfg):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    if not cfg.smtp_to:
        raise SettingsProblem("LOCKSTEP_ALERT_SMTP_TO is empty: name the recipients of alert e-mails")
    return SmtpNotifier(
        to=list(cfg.smtp_to),
        from_email=cfg.smtp_from,  # None: the connection's from_email
        subject=notice.subject,
        html_content=notice.html(),
        smtp_conn_id=cfg.smtp_conn_id,
    )


def _slack_notifier(notice: Notice, cfg):
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    notifier = SlackWebhookNotifier(
        slack_webhook_conn_id=cfg.slack_conn_id, text=notice.slack_text(), timeout=max(1, int(cfg.timeout_seconds))
    )
    if cfg.slack_webhook_url:
        _use_connection(notifier, conn_type="slackwebhook", password=cfg.slack_webhook_url)
    return notifier


def _webhook_notifier(notice: Notice, cfg):
    from airflow.providers.http.notifications.http import HttpNotifier

    notifier = HttpNotifier(
        http_conn_id=cfg.webhook_conn_id,
        method="POST",
        json=notice.payload(),
        extra_options={"timeout": cfg.timeout_seconds, "check_response": True},
    )
    if cfg.webhook_url:
        _use_connection(notifier, conn_type="http", host=cfg.webhook_url)
    return notifier


def _use_connection(notifier, **fields: Any) -> None:
    """Give ``notifier`` a hook whose connection is built here, not looked up in Airflow.

    A webhook URL in the environment then needs no Airflow connection (and works in the CLI
    too, where no task context can fetch one). The notifiers build their hook lazily in a
    cached property; filling it first, with a hook that answers every ``get_connection``
    with this connection, keeps the providers' own sending and error handling.
    """
    from airflow.sdk import Connection

    hook = notifier.hook
    connection = Connection(conn_id=f"lockstep_alert_{fields['conn_type']}", **fields)
    hook.get_connection = lambda _conn_id: connection
    notifier.__dict__["hook"] = hook


def _scrubbed(value: Any, token: str | None = None) -> Any:
    """``value`` with secrets masked in every string in it: URL passwords, the API token.

    An alert's message and figures often quote an error, and an error may quote a
    connection URL; the alert goes to the log, ``alerts.jsonl``, the UI page and people.
    """
    from lockstep.core.config import MASK, mask_urls_in

    if token is None:
        token = _api_token() or ""
    if isinstance(value, str):
        masked = mask_urls_in(value)
        return masked.replace(token, MASK) if token else masked
    if isinstance(value, Mapping):
        return {key: _scrubbed(item, token) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_scrubbed(item, token) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _api_token() -> str | None:
    from lockstep.core.config import settings

    try:
        return settings().api_token
    except Exception:  # unusable settings: nothing to mask, and alerting goes on
        return None


def _redact(text: str, cfg) -> str:
    """Hide webhook URLs (their path is the secret) and URL passwords in an error before it is logged."""
    from lockstep.core.config import mask_secret_url

    text = _scrubbed(text)
    for url in (getattr(cfg, "slack_webhook_url", None), getattr(cfg, "webhook_url", None)):
        if not url:
            continue
        parts = urlsplit(url)
        text = text.replace(url, mask_secret_url(url))
        if parts.path not in ("", "/"):
            text = text.replace(parts.path, "/***")
    return text


# --- settings, context and the alert log ----------------------------------------------------


def _alert_settings():
    """The alert settings, or (None, the problem) when they cannot be read: alerting goes on."""
    from lockstep.core.config import alert_settings

    try:
        return alert_settings(), None
    except Exception as exc:
        log.warning("lockstep alert settings are unusable: %s", exc)
        return None, f"alert settings are unusable: {exc}"


def _current_context() -> Mapping[str, Any] | None:
    """The running Airflow task's context, if this process runs one (no Airflow import otherwise)."""
    if "airflow.sdk" not in sys.modules:
        return None
    try:
        from airflow.sdk import get_current_context

        return get_current_context()
    except Exception:
        return None


def _context_ids(context: Mapping[str, Any]) -> dict[str, Any]:
    """dag_id, task_id, run_id (and try_number) from a task context, where present."""
    ti = context.get("task_instance") or context.get("ti")
    dag = context.get("dag")
    out: dict[str, Any] = {}
    dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None)
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    for key, value in (("dag_id", dag_id), ("task_id", getattr(ti, "task_id", None)), ("run_id", run_id)):
        if value:
            out[key] = str(value)
    if isinstance(getattr(ti, "try_number", None), int):
        out["try_number"] = ti.try_number
    return out


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _alerts_file() -> Path:
    from lockstep.core.config import settings

    return settings().home / "alerts.jsonl"


def _append(entry: dict[str, Any]) -> None:
    path = _alerts_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:  # one short line per alert: appends are atomic enough
        fh.write(jsonio.dumps(entry) + "\n")
