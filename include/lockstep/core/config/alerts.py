"""Where alerts go (``AlertSettings``, read per alert, like ``Settings``): channels, retries, links."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lockstep.core.config.environment import environment
from lockstep.core.config.masking import masked_repr
from lockstep.core.config.settings import (
    DEFAULT_AIRFLOW_UI_URL,
    DEFAULT_MLFLOW_UI_URL,
    DEFAULT_MODEL_NAME,
)
from lockstep.core.config.values import count_setting, seconds_setting

ALERT_CHANNELS = ("log", "smtp", "slack", "webhook")
DEFAULT_ALERT_SMTP_CONN_ID = "smtp_default"
DEFAULT_ALERT_SLACK_CONN_ID = "lockstep_slack"
DEFAULT_ALERT_WEBHOOK_CONN_ID = "lockstep_webhook"
DEFAULT_ALERT_TIMEOUT = 10.0
# A channel that fails is tried again, after 1 s, 2 s, 4 s ... (at most MAX_ALERT_RETRY_DELAY).
DEFAULT_ALERT_ATTEMPTS = 3
DEFAULT_ALERT_RETRY_DELAY = 1.0
MAX_ALERT_ATTEMPTS = 10
MAX_ALERT_RETRY_DELAY = 60.0


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go and how their links are built (read per alert, like ``Settings``).

    Secrets (SMTP login, Slack token) live in Airflow connections; the URL variables are
    for webhooks whose URL is the only secret and for setups without an Airflow connection.
    """

    channels: tuple[str, ...]
    smtp_to: tuple[str, ...]
    smtp_from: str | None
    smtp_conn_id: str
    slack_webhook_url: str | None
    slack_conn_id: str
    webhook_url: str | None
    webhook_conn_id: str
    timeout_seconds: float
    airflow_ui_url: str
    mlflow_ui_url: str
    model_name: str
    attempts: int = DEFAULT_ALERT_ATTEMPTS  # LOCKSTEP_ALERT_ATTEMPTS: tries per channel, the first included
    retry_delay_seconds: float = DEFAULT_ALERT_RETRY_DELAY  # LOCKSTEP_ALERT_RETRY_DELAY: doubled per retry

    def __repr__(self) -> str:
        """Every field, the webhook URLs (whose path is their secret) masked."""
        return masked_repr(self)

    def retry_delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure: exponential, capped."""
        return min(MAX_ALERT_RETRY_DELAY, self.retry_delay_seconds * 2 ** max(0, failed_attempts - 1))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AlertSettings:
        env = dict(environment() if env is None else env)
        return cls(
            channels=_names(env.get("LOCKSTEP_ALERT_CHANNEL") or "log"),
            smtp_to=_names(env.get("LOCKSTEP_ALERT_SMTP_TO") or "", lower=False),
            smtp_from=env.get("LOCKSTEP_ALERT_SMTP_FROM") or None,
            smtp_conn_id=env.get("LOCKSTEP_ALERT_SMTP_CONN_ID") or DEFAULT_ALERT_SMTP_CONN_ID,
            slack_webhook_url=env.get("LOCKSTEP_ALERT_SLACK_WEBHOOK_URL") or None,
            slack_conn_id=env.get("LOCKSTEP_ALERT_SLACK_CONN_ID") or DEFAULT_ALERT_SLACK_CONN_ID,
            webhook_url=env.get("LOCKSTEP_ALERT_WEBHOOK_URL") or None,
            webhook_conn_id=env.get("LOCKSTEP_ALERT_WEBHOOK_CONN_ID") or DEFAULT_ALERT_WEBHOOK_CONN_ID,
            timeout_seconds=seconds_setting(env, "LOCKSTEP_ALERT_TIMEOUT", DEFAULT_ALERT_TIMEOUT),
            airflow_ui_url=(env.get("LOCKSTEP_AIRFLOW_UI_URL") or DEFAULT_AIRFLOW_UI_URL).rstrip("/"),
            mlflow_ui_url=(env.get("LOCKSTEP_MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI_URL).rstrip("/"),
            model_name=env.get("LOCKSTEP_MODEL_NAME") or DEFAULT_MODEL_NAME,
            attempts=count_setting(env, "LOCKSTEP_ALERT_ATTEMPTS", DEFAULT_ALERT_ATTEMPTS, least=1, most=MAX_ALERT_ATTEMPTS),
            retry_delay_seconds=min(MAX_ALERT_RETRY_DELAY, seconds_setting(
                env, "LOCKSTEP_ALERT_RETRY_DELAY", DEFAULT_ALERT_RETRY_DELAY)),
        )


def alert_settings() -> AlertSettings:
    return AlertSettings.from_env()


def _names(raw: str, *, lower: bool = True) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped, in order, each once."""
    items = [part.strip().lower() if lower else part.strip() for part in raw.split(",")]
    return tuple(dict.fromkeys(item for item in items if item))
