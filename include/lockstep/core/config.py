"""Lockstep's configuration: environment variables with working defaults.

Every setting in the public contract (``shared/interfaces.md``) is read here and
nowhere else, so the README's configuration table and the code cannot drift apart.
Settings are read when asked for (not at import) so tests and DAG runs can point a
process at a fresh ``LOCKSTEP_HOME`` by setting the environment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "lockstep-embedder"
DEFAULT_RECOMMENDER_MODEL_NAME = "lockstep-recommender"  # the recommender system's registered model
SYSTEMS = ("search", "recommender")  # LOCKSTEP_SYSTEM: what one deployment runs
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"
DEFAULT_AIRFLOW_UI_URL = "http://127.0.0.1:8080"
# PostgreSQL only (SQLite has its own busy timeout): seconds; 0 turns a limit off.
DEFAULT_DB_CONNECT_TIMEOUT = 10.0
DEFAULT_DB_STATEMENT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Settings:
    """A snapshot of the configuration at one moment."""

    home: Path
    database_url: str
    mlflow_tracking_uri: str
    index_store: str
    model_name: str
    api_token: str | None
    mlflow_ui_url: str = DEFAULT_MLFLOW_UI_URL  # where a browser opens MLflow (links on the UI page)
    db_connect_timeout: float = DEFAULT_DB_CONNECT_TIMEOUT  # seconds to reach PostgreSQL
    db_statement_timeout: float = DEFAULT_DB_STATEMENT_TIMEOUT  # seconds one statement may run
    recommender_model_name: str = DEFAULT_RECOMMENDER_MODEL_NAME  # LOCKSTEP_RECOMMENDER_MODEL_NAME
    system: str = "search"  # LOCKSTEP_SYSTEM: "recommender" switches the database and the model name

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """The settings of the environment's system (``LOCKSTEP_SYSTEM``, default ``search``).

        The recommender system is a deployment of its own beside the search system: its
        own database (``LOCKSTEP_RECOMMENDER_DATABASE_URL``, default ``recommender.db`` in
        the same home: routing table, logs, interactions, rollouts) and its own registered
        model, sharing the MLflow store and the index store. So every part of Lockstep
        (routing, the rollout's gates, serving logs) works for it unchanged.
        """
        env = dict(os.environ if env is None else env)
        home = Path(env.get("LOCKSTEP_HOME") or "./.lockstep").expanduser().resolve()
        system = system_setting(env)
        recommender_model = env.get("LOCKSTEP_RECOMMENDER_MODEL_NAME") or DEFAULT_RECOMMENDER_MODEL_NAME
        if system == "recommender":
            database_url = env.get("LOCKSTEP_RECOMMENDER_DATABASE_URL") or f"sqlite:///{home / 'recommender.db'}"
            model_name = recommender_model
        else:
            database_url = env.get("LOCKSTEP_DATABASE_URL") or f"sqlite:///{home / 'lockstep.db'}"
            model_name = env.get("LOCKSTEP_MODEL_NAME") or DEFAULT_MODEL_NAME
        return cls(
            home=home,
            database_url=database_url,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            index_store=env.get("LOCKSTEP_INDEX_STORE") or str(home / "indexes"),
            model_name=model_name,
            api_token=env.get("LOCKSTEP_API_TOKEN") or None,
            mlflow_ui_url=env.get("LOCKSTEP_MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI_URL,
            db_connect_timeout=seconds_setting(env, "LOCKSTEP_DB_CONNECT_TIMEOUT", DEFAULT_DB_CONNECT_TIMEOUT),
            db_statement_timeout=seconds_setting(env, "LOCKSTEP_DB_STATEMENT_TIMEOUT", DEFAULT_DB_STATEMENT_TIMEOUT),
            recommender_model_name=recommender_model,
            system=system,
        )

    def __repr__(self) -> str:
        """Every field, but secrets masked: a logged or printed ``Settings`` never carries them.

        The API token shows as ``***`` and a URL's password as ``user:***@host``
        (``mask_url``); fields added later are shown as they are, so a new secret field
        must be added to ``SECRET_FIELDS`` or ``URL_FIELDS``.
        """
        return masked_repr(self)

    def ensure_home(self) -> Path:
        """Create the data folder (and the local index store) on first use."""
        self.home.mkdir(parents=True, exist_ok=True)
        if "://" not in self.index_store:
            Path(self.index_store).mkdir(parents=True, exist_ok=True)
        return self.home

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def artifact_root(self) -> Path:
        """Where the embedded MLflow store keeps artifacts (next to its SQLite file)."""
        return self.home / "mlartifacts"

# --- secrets in reprs and messages ------------------------------------------------------------

MASK = "***"
# A password given as a query option (``?password=...``, libpq's form) is masked too.
_SECRET_QUERY = re.compile(r"\b(password|passwd|pwd|token|secret)=[^&#]*", re.IGNORECASE)
# Fields whose whole value is a secret, and fields that are URLs which may carry a password,
# of the settings classes (here and ``ops.stack.StackConfig``): their reprs mask them (``masked_repr``).
SECRET_FIELDS = frozenset({"api_token"})
URL_FIELDS = frozenset({"database_url", "mlflow_tracking_uri", "index_store", "mlflow_ui_url", "airflow_ui_url", "metadata_url"})
SECRET_URL_FIELDS = frozenset({"slack_webhook_url", "webhook_url"})  # the path is the secret


def mask_url(url: str | None) -> str | None:
    """``url`` with the password of its user part as ``***``: ``postgresql://user:***@host/db``.

    For logs, errors and reprs. A URL without a password (``sqlite:///...``, a plain path,
    ``redis://host/stream``) comes back unchanged. The user part ends at the last ``@``
    before the host's first ``/`` (a password's own ``/`` and ``@`` must be %-encoded, as
    SQLAlchemy and redis-py want them anyway).
    """
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    creds, at, host = netloc.rpartition("@")
    tail = _SECRET_QUERY.sub(rf"\1={MASK}", tail)
    if not at or ":" not in creds:
        return f"{scheme}://{netloc}{tail}"
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}{tail}"


# scheme://user:password@ anywhere in a text (an error message, a log line)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*):[^\s/@]*@")


def mask_urls_in(text: str) -> str:
    """``text`` with the password of every URL in it masked (``scheme://user:***@``)."""
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def mask_secret_url(url: str | None) -> str | None:
    """A webhook URL whose path is the secret (Slack's, a plain webhook's): ``https://host/***``."""
    if not url or "://" not in url:
        return MASK if url else url
    scheme, rest = url.split("://", 1)
    host = rest.split("/", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/{MASK}"


def _masked_value(name: str, value: object) -> object:
    if value is None:
        return None
    if name in SECRET_FIELDS:
        return MASK
    if name in URL_FIELDS and isinstance(value, str):
        return mask_url(value)
    if name in SECRET_URL_FIELDS and isinstance(value, str):
        return mask_secret_url(value)
    return value


def masked_repr(obj: object) -> str:
    """The dataclass repr of ``obj`` with its secret fields masked (why: reprs end up in logs)."""
    from dataclasses import fields

    shown = ", ".join(f"{f.name}={_masked_value(f.name, getattr(obj, f.name))!r}" for f in fields(obj) if f.repr)
    return f"{type(obj).__name__}({shown})"


# The MLflow experiment the drift check logs to; the rollout review reads its latest run.
DRIFT_EXPERIMENT = "lockstep-drift"


def drift_experiment() -> str:
    """The drift experiment of this deployment's system (the recommender keeps its own)."""
    return DRIFT_EXPERIMENT if settings().system == "search" else f"{DRIFT_EXPERIMENT}-{settings().system}"


def settings() -> Settings:
    return Settings.from_env()


def system_setting(env: dict[str, str]) -> str:
    """``LOCKSTEP_SYSTEM``: ``search`` (default) or ``recommender``; anything else is an error."""
    raw = (env.get("LOCKSTEP_SYSTEM") or "search").strip().lower()
    if raw not in SYSTEMS:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"LOCKSTEP_SYSTEM={raw!r} is not a system; use one of: {', '.join(SYSTEMS)}")
    return raw


def seconds_setting(env: dict[str, str], name: str, default: float) -> float:
    """A duration in seconds from ``env[name]`` (empty: ``default``); 0 means no limit."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds (0 or more; 0 turns the limit off)")
    return value


# --- alert channels (lockstep.core.alerts) --------------------------------------------------------

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
    def from_env(cls, env: dict[str, str] | None = None) -> AlertSettings:
        env = dict(os.environ if env is None else env)
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


def run_folder(run_id: str) -> Path:
    """Where a DAG run keeps its files (models, reports): $LOCKSTEP_HOME/runs/<run id>."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    if safe.strip(".") == "":  # "", "." and ".." would name runs/ or the home itself
        safe = "_" * max(1, len(safe))
    folder = settings().home / "runs" / safe
    folder.mkdir(parents=True, exist_ok=True)
    return folder


REEMBED_WORKERS_ENV = "LOCKSTEP_REEMBED_WORKERS"


def embedding_processes(env: dict[str, str] | None = None) -> int:
    """How many embedding processes a re-embed runs at once: ``LOCKSTEP_REEMBED_WORKERS``, else the core count.

    One setting for both paths: ``lockstep index build`` starts that many worker
    processes, and the ``lockstep_reembed`` DAG lets that many shard tasks of a run embed
    at the same time (more only queue up for the same cores: 16 shard tasks at once on 2
    cores took 57 s where 2 at a time took 34 s, docs/benchmarks.md). On a cluster, set it
    to the cores of the workers that run shards.
    """
    env = os.environ if env is None else env
    raw = env.get(REEMBED_WORKERS_ENV, "").strip()
    if not raw:
        return max(1, os.cpu_count() or 1)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{REEMBED_WORKERS_ENV}={raw!r} must be a whole number of processes, at least 1")
    return value



# --- the serving replica's limits (lockstep.serving.limits, lockstep.serving.runner) ------------

DEFAULT_SERVING_MAX_CONCURRENCY = 64  # requests one replica works on at once; more get 503
DEFAULT_SERVING_REQUEST_TIMEOUT = 10.0  # seconds before a request not yet answered gets 504
DEFAULT_SERVING_GRACEFUL_TIMEOUT = 20.0  # seconds in-flight requests get after SIGTERM (compose waits 30)
DEFAULT_SERVING_FEEDBACK_WAITING = 16  # clicks that may wait at once for another replica's log


@dataclass(frozen=True)
class ServingLimits:
    """How much one serving replica takes on, and how long it gives a request or a shutdown.

    Without them a flood queued without bound (each waiting request holding memory and a
    socket), a stuck request was never answered, and a replica told to stop waited for its
    connections until Docker killed it, losing the request log rows still in its buffer.
    """

    max_concurrency: int = DEFAULT_SERVING_MAX_CONCURRENCY  # LOCKSTEP_SERVING_MAX_CONCURRENCY
    request_timeout: float = DEFAULT_SERVING_REQUEST_TIMEOUT  # LOCKSTEP_SERVING_REQUEST_TIMEOUT_S; 0: none
    graceful_timeout: float = DEFAULT_SERVING_GRACEFUL_TIMEOUT  # LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S
    feedback_waiting: int = DEFAULT_SERVING_FEEDBACK_WAITING  # LOCKSTEP_SERVING_FEEDBACK_WAITING; 0: none

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingLimits:
        env = dict(os.environ if env is None else env)
        return cls(
            max_concurrency=count_setting(env, "LOCKSTEP_SERVING_MAX_CONCURRENCY", DEFAULT_SERVING_MAX_CONCURRENCY, least=1),
            request_timeout=seconds_setting(env, "LOCKSTEP_SERVING_REQUEST_TIMEOUT_S", DEFAULT_SERVING_REQUEST_TIMEOUT),
            graceful_timeout=seconds_setting(env, "LOCKSTEP_SERVING_GRACEFUL_TIMEOUT_S", DEFAULT_SERVING_GRACEFUL_TIMEOUT),
            feedback_waiting=count_setting(env, "LOCKSTEP_SERVING_FEEDBACK_WAITING", DEFAULT_SERVING_FEEDBACK_WAITING, least=0),
        )


def count_setting(env: dict[str, str], name: str, default: int, *, least: int, most: int | None = None) -> int:
    """A whole number from ``env[name]`` (empty: ``default``), at least ``least`` and at most ``most``.

    Bounded where a value could do harm (tries of a failing alert channel hold the task
    that alerts).
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < least or (most is not None and int(raw) > most):
        from lockstep.core.errors import ConfigurationError

        bounds = f", at least {least}" if most is None else f" from {least} to {most}"
        raise ConfigurationError(f"{name}={raw!r} must be a whole number{bounds}")
    return int(raw)


# --- DAG time limits (lockstep.ops.dag_support) ----------------------------------------------

DAG_TIMEOUTS_ENV = "LOCKSTEP_DAG_TIMEOUTS"
_MINUTE, _HOUR = 60.0, 3600.0
# Per DAG: (the longest one task may run, the longest a whole run may take), in seconds, so
# that a hung MLflow, database or broker call fails its task (and alerts) instead of holding a
# worker slot for ever. Generous on 2 cores; the hourly DAGs' runs end before the next hour's.
DEFAULT_DAG_TIMEOUTS: dict[str, tuple[float, float]] = {
    "lockstep_retrain": (2 * _HOUR, 6 * _HOUR),  # weekly: a training of its own per family
    "lockstep_reembed": (2 * _HOUR, 12 * _HOUR),  # one shard or the index build at a time; many shards
    "lockstep_drift": (30 * _MINUTE, 1 * _HOUR),  # hourly
    "lockstep_batch": (1 * _HOUR, 2 * _HOUR),  # hourly at :30, or a promotion
    "lockstep_holdback": (30 * _MINUTE, 2 * _HOUR),  # daily
    "lockstep_maintenance": (1 * _HOUR, 3 * _HOUR),  # daily
    "lockstep_rollback": (15 * _MINUTE, 1 * _HOUR),  # a rollback with its drain and verification
    "lockstep_rollout": (30 * _MINUTE, 7 * 24 * _HOUR),  # one look at a time; review <= 24 h + strategy + window
}
_TIMEOUT_KEYS = ("task", "run")


@dataclass(frozen=True)
class DagTimeouts:
    """One DAG's limits in seconds: ``task`` for each task's ``execution_timeout``, ``run`` for ``dagrun_timeout``."""

    task: float
    run: float


def dag_timeouts(dag_id: str, env: dict[str, str] | None = None) -> DagTimeouts:
    """``dag_id``'s limits: ``DEFAULT_DAG_TIMEOUTS``, overridden by ``LOCKSTEP_DAG_TIMEOUTS``.

    The variable is a JSON object of DAG ids to ``{"task": SECONDS, "run": SECONDS}`` (either
    key may be left out), e.g. ``{"lockstep_retrain": {"task": 14400}}``. Read where a DAG
    file is parsed, so set it in the dag-processor's environment. A DAG id, key or value
    that is wrong fails the parse with a message naming it.
    """
    overrides = _timeout_overrides(os.environ if env is None else env)
    task, run = DEFAULT_DAG_TIMEOUTS[dag_id]
    own = overrides.get(dag_id, {})
    limits = DagTimeouts(task=own.get("task", task), run=own.get("run", run))
    if limits.task > limits.run:
        from lockstep.core.errors import ConfigurationError

        raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id}'s task limit ({limits.task:g} s) is longer than "
                                 f"its run limit ({limits.run:g} s); raise 'run' too")
    return limits


def _timeout_overrides(env) -> dict[str, dict[str, float]]:
    """``LOCKSTEP_DAG_TIMEOUTS`` checked: known DAG ids, keys ``task``/``run``, seconds above 0."""
    import json
    import math

    from lockstep.core.errors import ConfigurationError

    raw = (env.get(DAG_TIMEOUTS_ENV) or "").strip()
    if not raw:
        return {}
    example = '{"lockstep_retrain": {"task": 7200, "run": 21600}}'
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{DAG_TIMEOUTS_ENV} is not JSON ({exc}); e.g. {example}") from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"{DAG_TIMEOUTS_ENV} must be a JSON object of DAG ids, e.g. {example}")
    out: dict[str, dict[str, float]] = {}
    for dag_id, limits in parsed.items():
        if dag_id not in DEFAULT_DAG_TIMEOUTS:
            raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id!r} is not a Lockstep DAG; "
                                     f"use one of {', '.join(DEFAULT_DAG_TIMEOUTS)}")
        if not isinstance(limits, dict) or not set(limits) <= set(_TIMEOUT_KEYS):
            raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id!r} needs an object with 'task' and/or 'run' "
                                     f"(seconds), got {limits!r}")
        for key, value in limits.items():
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
            if not ok:
                raise ConfigurationError(f"{DAG_TIMEOUTS_ENV}: {dag_id}.{key}={value!r} must be a number of "
                                         "seconds above 0 (a task without a limit can wait for ever)")
        out[dag_id] = {key: float(value) for key, value in limits.items()}
    return out


# --- stream credentials (lockstep stream consume) ---------------------------------------------

STREAM_PASSWORD_ENV = "LOCKSTEP_STREAM_PASSWORD"


def stream_password(env: dict[str, str] | None = None) -> str | None:
    """The broker password of ``lockstep stream consume`` from ``LOCKSTEP_STREAM_PASSWORD`` (None: unset).

    From the environment (or ``--password-file``), never the ``--source`` URL: a process's
    arguments are visible to every user of the machine (``ps``), its environment is not.
    """
    env = os.environ if env is None else env
    return env.get(STREAM_PASSWORD_ENV) or None
