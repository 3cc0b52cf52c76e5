"""``AirflowClient`` (apache-airflow-client) against a real Airflow started by ``stack.start``.

The stack is the one ``lockstep up`` runs (api-server, scheduler, dag-processor, triggerer,
LocalExecutor, SimpleAuthManager with a JWT per login), minus the MLflow UI and the serving
app, over a DAG folder with one small probe DAG: every call ``lockstep demo`` makes goes
through the official client to a real api-server and the scheduler really runs the DAG.
"""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import Iterator

import pytest

from lockstep.ops import stack as stacklib
from lockstep.ops.stack import ROLLOUT_POOL, AirflowClient, Stack, StackError

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1200)]

PROBE = "lockstep_client_probe"
PROBE_DAG = textwrap.dedent(
    f'''
    """A probe for the REST client test: a mapped task, and a task that fails on request."""
    from airflow.sdk import dag, task


    @dag(dag_id="{PROBE}", schedule=None, catchup=False)
    def probe():
        @task
        def echo(value: int) -> int:
            return value

        @task
        def maybe_fail(dag_run=None) -> None:
            if (dag_run.conf or {{}}).get("fail"):
                raise ValueError("failing on request")

        echo.expand(value=[1, 2]) >> maybe_fail()


    probe()
    '''
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("airflow-client")
    (root / "dags").mkdir()
    (root / "dags" / f"{PROBE}.py").write_text(PROBE_DAG)
    (root / "plugins").mkdir()
    config = stacklib.StackConfig(
        home=root / "home", airflow_port=_free_port(), mlflow_port=_free_port(), serving_port=_free_port(),
        dags_folder=root / "dags", plugins_folder=root / "plugins",
        with_mlflow_ui=False, with_serving=False, time_schedules=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("AIRFLOW")]:  # the stack's own Airflow only
            mp.delenv(var)
        running = stacklib.start(config, say=lambda _msg: None)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(stack) -> Iterator[AirflowClient]:
    api = stack.client()
    api.wait_for_dags([PROBE], timeout=300)
    yield api


def test_the_stack_created_the_rollout_pool_and_ensure_pool_updates_it(client):
    name, slots, description = ROLLOUT_POOL
    pool = client.pool(name)
    assert (pool["name"], pool["slots"], pool["description"]) == (name, slots, description)
    client.ensure_pool(name, 3, "three")
    assert (client.pool(name)["slots"], client.pool(name)["description"]) == (3, "three")
    client.ensure_pool(*ROLLOUT_POOL)  # and back: idempotent
    assert client.pool(name)["slots"] == slots


def test_a_triggered_run_succeeds_and_reports_its_mapped_tasks(client, stack):
    assert PROBE in client.dag_ids()
    client.unpause(PROBE)
    before = {run["dag_run_id"] for run in client.runs(PROBE)}
    run_id = client.trigger(PROBE, {"fail": False})
    assert run_id not in before
    assert client.wait_for_new_run(PROBE, before, timeout=60) == run_id
    assert client.wait(PROBE, run_id, timeout=600, stack=stack) == "success"
    assert client.run_state(PROBE, run_id) == "success"
    assert client.task_states(PROBE, run_id) == {"echo[0]": "success", "echo[1]": "success", "maybe_fail": "success"}
    assert (PROBE, run_id) not in {(r["dag_id"], r["dag_run_id"]) for r in client.failed_runs()}


def test_a_failed_run_is_listed_among_the_failed_runs(client, stack):
    client.unpause(PROBE)
    run_id = client.trigger(PROBE, {"fail": True})
    assert client.wait(PROBE, run_id, timeout=600, stack=stack) == "failed"
    assert client.task_states(PROBE, run_id)["maybe_fail"] == "failed"
    assert (PROBE, run_id) in {(r["dag_id"], r["dag_run_id"]) for r in client.failed_runs()}


def test_an_expired_token_is_renewed_once(client, stack):
    """The api-server answers 401 "Token Expired" to a JWT past its ``exp``; the client logs in again."""
    import jwt

    client._login()
    token = client._api.configuration.access_token
    secret = (stack.config.airflow_home / "jwt_secret").read_text()
    claims = jwt.decode(token, options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": claims["iat"] - 60}, secret,
                         algorithm=jwt.get_unverified_header(token)["alg"])
    client._api.configuration.access_token = expired
    assert PROBE in client.dag_ids()
    assert client._api.configuration.access_token not in (expired, None)


def test_errors_name_the_call_and_the_answer(stack):
    wrong = AirflowClient(stack.config.airflow_url, stacklib.ADMIN_USER, "not-the-password")
    with pytest.raises(StackError, match="Airflow login failed"):
        wrong.dag_ids()
    right = stack.client()
    with pytest.raises(StackError, match="trigger no_such_dag: not found"):
        right.trigger("no_such_dag")
    with pytest.raises(StackError, match=f"get run {PROBE} no-such-run: not found"):
        right.run_state(PROBE, "no-such-run")
    with pytest.raises(StackError, match=r"(?s)create pool x+: invalid value: .*PoolBody\nname"):
        right.ensure_pool("x" * 300, 1, "a name longer than Airflow's 256 characters")
    with pytest.raises(StackError, match=r"(?s)update pool default_pool: invalid value: .*PoolPatchBody\nslots"):
        right.ensure_pool("default_pool", -5, "fewer than no slots")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

