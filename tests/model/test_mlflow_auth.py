"""MLflow behind its basic-auth app, as docker-compose.yaml runs it (issue 21).

One real ``mlflow server --app-name basic-auth`` on a free loopback port, configured by the
shipped deploy/mlflow-auth.ini (only its user-store path moved to a temp folder), set up by
the shipped deploy/mlflow-auth-init.py, exactly as the compose services do. Then: anonymous
and wrong logins get 401; the reader reads a registered version and loads its model files but
gets 403 on a tag or an alias; the writer, through Lockstep's own ``Registry`` with nothing but
MLFLOW_TRACKING_USERNAME / _PASSWORD, registers, tags and moves aliases; an account with no
grant reads nothing (default NO_PERMISSIONS).
"""

from __future__ import annotations

import configparser
import os
import runpy
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lockstep.core.errors import RegistryError
from lockstep.model.embedding import TextEmbedder
from lockstep.model.registry import CHAMPION, Registry
from tests.model.mlflow_server import mlflow_server
from tests.model.test_registry import closed_port, synthetic_texts

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300, method="thread")]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MODEL = "lockstep-embedder"
ADMIN = ("admin", "admin-password-for-tests")
WRITER = ("lockstep-writer", "writer-password-for-tests")
READER = ("lockstep-reader", "reader-password-for-tests")
START_TIMEOUT_S = 120  # a failure guard only: the server starts in about 15 s on 2 cores


def _auth_ini(tmp: Path) -> Path:
    """deploy/mlflow-auth.ini with its user store in ``tmp`` (everything else as shipped)."""
    config = configparser.ConfigParser()
    config.read(DEPLOY / "mlflow-auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{tmp / 'basic_auth.db'}"
    path = tmp / "mlflow-auth.ini"
    with path.open("w") as fh:
        config.write(fh)
    return path


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LOCKSTEP_"))}
    return {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: faster start


def _init_env(uri: str) -> dict[str, str]:
    """What docker-compose.yaml gives mlflow-auth-init."""
    return {
        **_clean_env(), "MLFLOW_TRACKING_URI": uri, "LOCKSTEP_MODEL_NAME": MODEL,
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_WRITER_USERNAME": WRITER[0], "MLFLOW_WRITER_PASSWORD": WRITER[1],
        "MLFLOW_READER_USERNAME": READER[0], "MLFLOW_READER_PASSWORD": READER[1],
    }


def _run_init(uri: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEPLOY / "mlflow-auth-init.py")], env=_init_env(uri),
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """The basic-auth server, set up by deploy/mlflow-auth-init.py; stopped by its pid."""
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    port = closed_port()
    env = {
        **_clean_env(), "MLFLOW_AUTH_CONFIG_PATH": str(_auth_ini(tmp)),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-key",
    }
    args = ["--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", str(tmp / "artifacts")]
    with mlflow_server(tmp, port, args, env, start_timeout_s=START_TIMEOUT_S) as uri:
        setup = _run_init(uri)
        assert setup.returncode == 0, setup.stderr[-3000:]
        assert f"writer '{WRITER[0]}': created" in setup.stdout and f"reader '{READER[0]}': created" in setup.stdout
        yield uri


@pytest.fixture(scope="module")
def registered(auth_server, tmp_path_factory):
    """Version 1 of the model, registered by the writer through Lockstep's Registry (env login only)."""
    home = tmp_path_factory.mktemp("writer-home")
    with pytest.MonkeyPatch.context() as mp:
        _login(mp, WRITER, home)
        embedder = TextEmbedder(dim=8, min_df=1).fit(synthetic_texts())
        info = Registry(auth_server, MODEL).log_and_register(embedder, params={}, metrics={"ndcg_at_10": 0.5},
                                                            snapshot_seq=3)
    return info, embedder


def _login(mp: pytest.MonkeyPatch, account: tuple[str, str] | None, home: Path) -> None:
    mp.setenv("LOCKSTEP_HOME", str(home))
    for var, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), account or (None, None), strict=True):
        if value is None:
            mp.delenv(var, raising=False)
        else:
            mp.setenv(var, value)
    mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a 401/403 is final: no minutes of retries


def _api(uri: str, method: str, path: str, auth: tuple[str, str] | None, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{uri}/api/2.0/mlflow/{path}", auth=auth, timeout=30, **kwargs)


def test_anonymous_and_wrong_logins_are_refused(auth_server, registered):
    get = {"params": {"name": MODEL, "version": "1"}}
    assert httpx.get(f"{auth_server}/health", timeout=10).status_code == 200  # the healthcheck stays open
    assert _api(auth_server, "GET", "model-versions/get", None, **get).status_code == 401
    assert _api(auth_server, "GET", "model-versions/get", (READER[0], "not-the-password"), **get).status_code == 401
    tag = {"json": {"name": MODEL, "version": "1", "key": "lockstep.review", "value": "approved"}}
    assert _api(auth_server, "POST", "model-versions/set-tag", None, **tag).status_code == 401
    assert _api(auth_server, "GET", "model-versions/get", READER, **get).status_code == 200


def test_the_reader_reads_a_version_and_its_model_but_cannot_tag_or_alias_it(auth_server, registered, tmp_path):
    info, embedder = registered
    with pytest.MonkeyPatch.context() as mp:
        _login(mp, READER, tmp_path / "home")
        reader = Registry(auth_server, MODEL)
        seen = reader.get_version(info.version)
        assert seen.fingerprint == embedder.fingerprint and seen.tags["snapshot_seq"] == "3"
        assert reader.load_embedder(info.version).fingerprint == embedder.fingerprint  # files via the proxy
        with pytest.raises(RegistryError, match="403|Permission denied"):
            reader.set_review(info.version, "approved", by="mallory")
        with pytest.raises(RegistryError, match="403|Permission denied"):
            reader.set_alias(CHAMPION, info.version)
        assert reader.review(info.version) is None and reader.version_for_alias(CHAMPION) is None
    tag = {"json": {"name": MODEL, "version": info.version, "key": "lockstep.ab_decision", "value": "promote"}}
    assert _api(auth_server, "POST", "model-versions/set-tag", READER, **tag).status_code == 403
    alias = {"json": {"name": MODEL, "alias": CHAMPION, "version": info.version}}
    assert _api(auth_server, "POST", "registered-models/alias", READER, **alias).status_code == 403


def test_the_writer_tags_reviews_and_moves_aliases_through_the_registry(auth_server, registered, tmp_path):
    info, _ = registered
    with pytest.MonkeyPatch.context() as mp:
        _login(mp, WRITER, tmp_path / "home")
        writer = Registry(auth_server, MODEL)
        writer.set_review(info.version, "approved")  # the reviewer is the MLflow login
        review = writer.review(info.version)
        assert (review.decision, review.by, review.via) == ("approved", WRITER[0], "mlflow")
        assert writer.promote_champion(info.version, "first over basic auth") is None
        assert writer.version_for_alias(CHAMPION).version == info.version
        assert writer.delete_alias(CHAMPION) is True


def test_an_account_without_a_grant_reads_nothing(auth_server, registered):
    """default_permission = NO_PERMISSIONS: the reader reads because it was granted READ."""
    admin = httpx.Client(base_url=auth_server, auth=ADMIN, timeout=30)
    made = admin.post("/api/2.0/mlflow/users/create", json={"username": "nobody", "password": "nobody-password-1"})
    assert made.status_code == 200, made.text
    get = {"params": {"name": MODEL, "version": "1"}}
    assert _api(auth_server, "GET", "model-versions/get", ("nobody", "nobody-password-1"), **get).status_code == 403


def test_the_set_up_runs_again_and_refuses_bad_settings(auth_server, registered):
    again = _run_init(auth_server)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"writer '{WRITER[0]}': existed" in again.stdout and f"registered model '{MODEL}': exists" in again.stdout
    assert _api(auth_server, "GET", "model-versions/get", WRITER, params={"name": MODEL, "version": "1"}).status_code == 200

    setup = runpy.run_path(str(DEPLOY / "mlflow-auth-init.py"))
    plan_from, error = setup["plan_from"], setup["SetupError"]
    good = _init_env(auth_server)
    assert plan_from(good).writer.username == WRITER[0]
    for change, message in (
        ({"MLFLOW_READER_PASSWORD": "short"}, "MLFLOW_READER_PASSWORD is empty or shorter than 12"),
        ({"MLFLOW_WRITER_PASSWORD": ""}, "MLFLOW_WRITER_PASSWORD is empty"),
        ({"MLFLOW_READER_USERNAME": WRITER[0]}, "three different user names"),
        ({"MLFLOW_READER_PASSWORD": WRITER[1]}, "passwords must differ"),
        ({"MLFLOW_WRITER_USERNAME": "bad name;"}, "MLFLOW_WRITER_USERNAME='bad name;'"),
        ({"MLFLOW_TRACKING_URI": "sqlite:///x.db"}, "needs the server's http"),
        ({"LOCKSTEP_MODEL_NAME": "../x"}, "LOCKSTEP_MODEL_NAME='../x'"),
    ):
        with pytest.raises(error, match=message.replace("(", r"\(")):
            plan_from({**good, **change})
