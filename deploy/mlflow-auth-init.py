#!/usr/bin/env python3
"""One-shot set-up of MLflow's basic-auth app (docker-compose.yaml, mlflow-auth-init).

MLflow is Lockstep's trust anchor: model files and their checksums, the review decision,
the A/B decision and the champion alias all live there. The server runs MLflow's
basic-auth app with ``default_permission = NO_PERMISSIONS`` (deploy/mlflow-auth.ini), so
an account sees only what it is granted. This script, run as the auth app's admin, makes
the two accounts the stack uses and grants exactly what each needs:

- the writer (``MLFLOW_WRITER_USERNAME``, the Airflow workers: retrain, import, rollout)
  gets EDIT on every experiment (runs, metrics, model files) and MANAGE on every registered
  model (register versions, set and delete tags and aliases: MLflow asks MANAGE to delete an
  alias);
- the reader (``MLFLOW_READER_USERNAME``, the serving replicas and the Airflow UI) gets
  READ on every experiment and registered model: load a version and its files, nothing else.

It also creates the registered model ``LOCKSTEP_MODEL_NAME`` (as the admin) when it is
missing, so no account but the admin ever holds MANAGE on it (in MLflow the creator of a
model manages it). Safe to run again: users that exist get the password from the
environment again, and each grant is set to the level above.

    MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_AUTH_ADMIN_PASSWORD=... \\
    MLFLOW_WRITER_PASSWORD=... MLFLOW_READER_PASSWORD=... python deploy/mlflow-auth-init.py

Only the standard library and mlflow: it runs in the Lockstep image before anything else.
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

# Per resource type: what the writer and the reader get on every resource of it ("*"). The
# writer needs MANAGE on registered models because MLflow asks MANAGE to delete an alias or a
# version tag (a rollout moves ``challenger`` off a promoted or rejected version); on
# experiments EDIT is enough (runs, metrics, logged models; nothing is deleted).
GRANTS = {
    "writer": {"experiment": "EDIT", "registered_model": "MANAGE"},
    "reader": {"experiment": "READ", "registered_model": "READ"},
}
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
MIN_PASSWORD = 12  # MLflow's own minimum for basic-auth passwords
HEALTH_WAIT_S = 120.0


class SetupError(RuntimeError):
    """A setting is missing or malformed, or the server refused a step: named in the message."""


@dataclass(frozen=True)
class Account:
    role: str  # "admin", "writer" or "reader": how the message names it
    username: str
    password: str


@dataclass(frozen=True)
class Plan:
    tracking_uri: str
    admin: Account
    writer: Account
    reader: Account
    model_name: str


def plan_from(env: Mapping[str, str]) -> Plan:
    """Every setting, checked before the server is touched (a half-made set-up helps no one)."""
    uri = env.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    if not uri.startswith(("http://", "https://")):
        raise SetupError(f"MLFLOW_TRACKING_URI={uri!r}: the auth set-up needs the server's http(s) URL")
    accounts = [
        _account(env, "admin", "MLFLOW_AUTH_ADMIN_USERNAME", "admin", "MLFLOW_AUTH_ADMIN_PASSWORD"),
        _account(env, "writer", "MLFLOW_WRITER_USERNAME", "lockstep-writer", "MLFLOW_WRITER_PASSWORD"),
        _account(env, "reader", "MLFLOW_READER_USERNAME", "lockstep-reader", "MLFLOW_READER_PASSWORD"),
    ]
    names = [a.username for a in accounts]
    if len(set(names)) != len(names):
        raise SetupError(f"the admin, writer and reader need three different user names, got {names}")
    if len({a.password for a in accounts}) != len(accounts):
        raise SetupError("the admin, writer and reader passwords must differ (one leaked password must not open the others)")
    model = env.get("LOCKSTEP_MODEL_NAME") or "lockstep-embedder"
    if not MODEL_NAME.match(model):
        raise SetupError(f"LOCKSTEP_MODEL_NAME={model!r}: use letters, digits, '.', '_' and '-'")
    return Plan(uri, *accounts, model_name=model)


def _account(env: Mapping[str, str], role: str, user_var: str, default: str, password_var: str) -> Account:
    username = env.get(user_var) or default
    if not USERNAME.match(username):
        raise SetupError(f"{user_var}={username!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    password = env.get(password_var, "")
    if len(password) < MIN_PASSWORD:
        raise SetupError(f"{password_var} is empty or shorter than {MIN_PASSWORD} characters; set it in .env "
                         "(see .env.example or run deploy/make-env.py)")
    return Account(role, username, password)


def wait_for_server(uri: str, timeout: float = HEALTH_WAIT_S) -> None:
    """The server's /health (open without login) answers 200, or SetupError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SetupError(f"the MLflow server at {uri} did not answer /health within {timeout:.0f} s")
        time.sleep(1)


def apply(plan: Plan) -> list[str]:
    """Create or refresh both accounts and their grants; returns what was done, one line each."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    _login(plan.admin)
    auth = AuthServiceClient(plan.tracking_uri)
    done = []
    try:
        for account in (plan.writer, plan.reader):
            done.append(_ensure_user(auth, account))
            for resource_type, level in GRANTS[account.role].items():
                _ensure_grant(auth, account.username, resource_type, level)
                done.append(f"{account.role} {account.username!r}: {level} on every {resource_type}")
        done.append(_ensure_model(plan))
    except MlflowException as exc:
        raise SetupError(f"MLflow at {plan.tracking_uri} refused a set-up step: {exc.message}") from exc
    return done


def _login(account: Account) -> None:
    """The MLflow clients read the login from these variables (this process only)."""
    os.environ["MLFLOW_TRACKING_USERNAME"] = account.username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = account.password


def _ensure_user(auth, account: Account) -> str:
    from mlflow.exceptions import MlflowException

    try:
        auth.get_user(account.username)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(account.username, account.password)
        return f"{account.role} {account.username!r}: created"
    auth.update_user_password(account.username, account.password)  # .env is the source of truth
    return f"{account.role} {account.username!r}: existed, password set from the environment"


def _ensure_grant(auth, username: str, resource_type: str, level: str) -> None:
    """``level`` on every resource of the type ("*"); an older grant at another level is replaced."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, "*", level)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, resource_type, "*")
        auth.grant_user_permission(username, resource_type, "*", level)


def _ensure_model(plan: Plan) -> str:
    """The admin creates the model, so neither account (nor any other) can create and own it first."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=plan.tracking_uri, registry_uri=plan.tracking_uri)
    try:
        client.get_registered_model(plan.model_name)
        return f"registered model {plan.model_name!r}: exists"
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    client.create_registered_model(plan.model_name)
    return f"registered model {plan.model_name!r}: created by the admin"


def main() -> int:
    try:
        plan = plan_from(os.environ)
        wait_for_server(plan.tracking_uri)
        for line in apply(plan):
            print(f"mlflow-auth-init: {line}")
    except SetupError as exc:
        print(f"mlflow-auth-init: {exc}", file=sys.stderr)
        return 1
    print("mlflow-auth-init: done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
