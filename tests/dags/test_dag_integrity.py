"""Every DAG imports, is documented, retries what touches the outside, and parses fast."""

from __future__ import annotations

import importlib
import time

import pytest

from tests.dags.conftest import DAGS

DAG_FILES = sorted(p.stem for p in DAGS.glob("lockstep_*.py") if p.stem != "lockstep_common")
EXPECTED = {"lockstep_retrain", "lockstep_drift", "lockstep_reembed", "lockstep_rollout", "lockstep_rollback"}
HEAVY = ("sklearn", "mlflow", "faiss", "pandas", "great_expectations", "torch")


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) >= {d for d in EXPECTED if d in DAG_FILES}


def test_dags_have_tags_docs_retries_and_failure_callbacks(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags and "lockstep" in dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 100, dag_id
        for t in dag.tasks:
            assert t.on_failure_callback, f"{dag_id}.{t.task_id} has no failure callback"
        assert any(t.retries > 0 for t in dag.tasks), f"{dag_id}: no task retries"


def test_params_explain_themselves(dagbag):
    for dag_id, dag in dagbag.dags.items():
        for name, param in dag.params.items():
            assert param.description, f"{dag_id} Param {name!r} has no description"
            assert param.schema.get("type") or param.schema.get("enum"), f"{dag_id} Param {name!r} has no schema"


@pytest.mark.parametrize("module", DAG_FILES)
def test_dag_file_parses_fast_and_imports_nothing_heavy(module, airflow_db):
    import sys

    import airflow.sdk  # noqa: F401  (the parser has it loaded already)

    for name in [m for m in sys.modules if m.split(".")[0] in (*HEAVY, "lockstep_common", module)]:
        sys.modules.pop(name)
    started = time.perf_counter()
    importlib.import_module(module)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{module} took {elapsed:.2f} s to parse"
    loaded = {m.split(".")[0] for m in sys.modules} & set(HEAVY)
    assert not loaded, f"{module} imports {loaded} at parse time"
