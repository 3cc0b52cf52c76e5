"""Lockstep's configuration: environment variables with working defaults.

Every setting in the public contract (``shared/interfaces.md``) is read here and
nowhere else, so the README's configuration table and the code cannot drift apart.
Settings are read when asked for (not at import) so tests and DAG runs can point a
process at a fresh ``LOCKSTEP_HOME`` by setting the environment.

One module per concept: ``environment`` (the process environment and the one-variable
settings), ``settings`` (the deployment's ``Settings``), ``values`` (parsing seconds and
counts), ``masking`` (secrets in reprs and messages), ``alerts``, ``serving_limits``,
``dag_timeouts``, and ``knobs`` (config fields that are DAG Params). Import any name
from ``lockstep.core.config``.
"""

from lockstep.core.config.alerts import (
    ALERT_CHANNELS,
    DEFAULT_ALERT_ATTEMPTS,
    DEFAULT_ALERT_RETRY_DELAY,
    DEFAULT_ALERT_SLACK_CONN_ID,
    DEFAULT_ALERT_SMTP_CONN_ID,
    DEFAULT_ALERT_TIMEOUT,
    DEFAULT_ALERT_WEBHOOK_CONN_ID,
    MAX_ALERT_ATTEMPTS,
    MAX_ALERT_RETRY_DELAY,
    AlertSettings,
    alert_settings,
)
from lockstep.core.config.dag_timeouts import (
    DAG_TIMEOUTS_ENV,
    DEFAULT_DAG_TIMEOUTS,
    DagTimeouts,
    dag_timeouts,
)
from lockstep.core.config.environment import (
    ANN_THRESHOLD_ENV,
    API_TOKEN_ENV,
    BUILD_BUDGET_ENV,
    CACHE_DIR_ENV,
    DEFAULT_SERVING_URLS,
    FAULTS_ENV,
    ROLLOUT_DEFAULTS_ENV,
    SCHEDULES_ENV,
    SERVING_URLS_ENV,
    SERVING_WORKERS_ENV,
    TRACKING_USERNAME_ENV,
    ann_threshold_setting,
    api_token,
    build_budget_setting,
    cache_dir_override,
    environment,
    faults_spec,
    rollout_defaults_json,
    schedules_on,
    serving_urls,
    serving_workers,
    tracking_username,
)
from lockstep.core.config.knobs import DagForm, Knob, knob, knobs
from lockstep.core.config.masking import (
    MASK,
    SECRET_FIELDS,
    SECRET_URL_FIELDS,
    URL_FIELDS,
    mask_secret_url,
    mask_url,
    mask_urls_in,
    masked_repr,
)
from lockstep.core.config.model_threads import MAX_ONNX_THREADS, ONNX_THREADS_ENV, onnx_threads
from lockstep.core.config.object_store import (
    INDEX_CACHE_ENV,
    S3_ENDPOINT_ENV,
    ObjectStoreSettings,
    is_remote_store,
    object_store_settings,
)
from lockstep.core.config.serving_limits import (
    DEFAULT_SERVING_FEEDBACK_WAITING,
    DEFAULT_SERVING_GRACEFUL_TIMEOUT,
    DEFAULT_SERVING_MAX_CONCURRENCY,
    DEFAULT_SERVING_REQUEST_TIMEOUT,
    ServingLimits,
)
from lockstep.core.config.settings import (
    DEFAULT_AIRFLOW_UI_URL,
    DEFAULT_DB_CONNECT_TIMEOUT,
    DEFAULT_DB_STATEMENT_TIMEOUT,
    DEFAULT_MLFLOW_UI_URL,
    DEFAULT_MODEL_NAME,
    DEFAULT_RECOMMENDER_MODEL_NAME,
    DRIFT_EXPERIMENT,
    REEMBED_WORKERS_ENV,
    STREAM_PASSWORD_ENV,
    SYSTEMS,
    Settings,
    drift_experiment,
    embedding_processes,
    run_folder,
    settings,
    settings_for,
    stream_password,
    system_setting,
)
from lockstep.core.config.values import count_setting, seconds_setting

__all__ = [
    "INDEX_CACHE_ENV",
    "S3_ENDPOINT_ENV",
    "ObjectStoreSettings",
    "is_remote_store",
    "object_store_settings",
    "ALERT_CHANNELS", "ANN_THRESHOLD_ENV", "BUILD_BUDGET_ENV", "API_TOKEN_ENV", "CACHE_DIR_ENV", "DAG_TIMEOUTS_ENV",
    "DEFAULT_AIRFLOW_UI_URL", "DEFAULT_ALERT_ATTEMPTS", "DEFAULT_ALERT_RETRY_DELAY", "DEFAULT_ALERT_SLACK_CONN_ID",
    "DEFAULT_ALERT_SMTP_CONN_ID", "DEFAULT_ALERT_TIMEOUT", "DEFAULT_ALERT_WEBHOOK_CONN_ID", "DEFAULT_DAG_TIMEOUTS",
    "DEFAULT_DB_CONNECT_TIMEOUT", "DEFAULT_DB_STATEMENT_TIMEOUT", "DEFAULT_MLFLOW_UI_URL", "DEFAULT_MODEL_NAME",
    "DEFAULT_RECOMMENDER_MODEL_NAME", "DEFAULT_SERVING_FEEDBACK_WAITING", "DEFAULT_SERVING_GRACEFUL_TIMEOUT",
    "DEFAULT_SERVING_MAX_CONCURRENCY", "DEFAULT_SERVING_REQUEST_TIMEOUT", "DEFAULT_SERVING_URLS", "DRIFT_EXPERIMENT",
    "FAULTS_ENV", "MASK", "MAX_ONNX_THREADS", "ONNX_THREADS_ENV", "onnx_threads", "MAX_ALERT_ATTEMPTS", "MAX_ALERT_RETRY_DELAY", "REEMBED_WORKERS_ENV", "ROLLOUT_DEFAULTS_ENV",
    "SCHEDULES_ENV", "SECRET_FIELDS", "SECRET_URL_FIELDS", "SERVING_URLS_ENV", "SERVING_WORKERS_ENV",
    "STREAM_PASSWORD_ENV", "SYSTEMS", "TRACKING_USERNAME_ENV", "URL_FIELDS", "AlertSettings", "DagForm",
    "DagTimeouts", "Knob", "ServingLimits", "Settings", "alert_settings", "ann_threshold_setting", "build_budget_setting", "api_token",
    "cache_dir_override", "count_setting", "dag_timeouts", "drift_experiment", "embedding_processes", "environment",
    "faults_spec", "knob", "knobs", "mask_secret_url", "mask_url", "mask_urls_in", "masked_repr", "rollout_defaults_json",
    "run_folder", "schedules_on", "seconds_setting", "serving_urls", "serving_workers", "settings", "settings_for",
    "stream_password", "system_setting", "tracking_username",
]
