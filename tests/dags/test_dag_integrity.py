"""Every DAG imports, is documented, retries what touches the outside, and parses fast."""

from __future__ import annotations

import pytest

from tests.dags.conftest import DAGS

DAG_FILES = sorted(p.stem for p in DAGS.glob("lockstep_*.py") if p.stem != "lockstep_common")
EXPECTED = {"lockstep_retrain", "lockstep_drift", "lockstep_reembed", "lockstep_rollout", "lockstep_rollback", "lockstep_holdback", "lockstep_batch"}
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


def test_trigger_forms_have_titles_and_sections(dagbag):
    for dag_id, dag in dagbag.dags.items():
        sections = []
        for name, param in dag.params.items():
            assert param.schema.get("title"), f"{dag_id} Param {name!r} has no title"
            assert param.schema.get("section"), f"{dag_id} Param {name!r} has no section"
            sections.append(param.schema["section"])
        blocks = [s for i, s in enumerate(sections) if i == 0 or s != sections[i - 1]]
        assert len(blocks) == len(set(blocks)), f"{dag_id}: the Params of a section are not together: {sections}"


def _scheduler_params(dag):
    """The Params as the API server and scheduler hold them (serialized), which validate a trigger's conf."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


def test_every_dag_can_be_triggered_with_its_defaults(dagbag):
    for dag_id, dag in dagbag.dags.items():
        conf = {"reason": "a test"} if dag_id == "lockstep_rollback" else {}
        _scheduler_params(dag).deep_merge(conf).validate()


@pytest.mark.parametrize("conf", [{}, {"reason": None}, {"reason": ""}, {"reason": "   "}, {"to_version": "3"}])
def test_a_rollback_without_a_reason_is_refused_by_the_form(dagbag, conf):
    """Reproduction: Param reason was nullable, so a rollback could be triggered without saying why."""
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="reason"):
        _scheduler_params(dagbag.dags["lockstep_rollback"]).deep_merge(conf).validate()
    assert _scheduler_params(dagbag.dags["lockstep_rollback"]).deep_merge({"reason": "worse answers"}).validate()["reason"] == "worse answers"


PARSE_PROBE = """
import json, sys, time
sys.path.insert(0, {dags!r})
import airflow.sdk  # the dag-processor has it loaded already
started = time.perf_counter()
import {module}
elapsed = time.perf_counter() - started
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps({{"seconds": elapsed, "heavy": heavy}}))
"""


@pytest.mark.parametrize("module", DAG_FILES)
def test_dag_file_parses_fast_and_imports_nothing_heavy(module, airflow_db):
    """Parsed in a fresh interpreter, as the dag-processor would, so nothing is preloaded."""
    import json
    import os
    import subprocess
    import sys

    code = PARSE_PROBE.format(dags=str(DAGS), module=module, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seconds"] < 1.0, f"{module} took {result['seconds']:.2f} s to parse"
    assert not result["heavy"], f"{module} imports {result['heavy']} at parse time"


def test_shard_tasks_of_a_reembed_run_embed_as_many_at_once_as_configured(monkeypatch):
    """LOCKSTEP_REEMBED_WORKERS bounds the run's concurrent shard tasks (read when the file is parsed)."""
    import importlib
    import sys

    from lockstep.index.snapshot import target_shards_for

    monkeypatch.syspath_prepend(str(DAGS))
    for workers in ("3", "1"):
        monkeypatch.setenv("LOCKSTEP_REEMBED_WORKERS", workers)
        sys.modules.pop("lockstep_reembed", None)
        dag = importlib.import_module("lockstep_reembed").dag
        for task_id in ("embed", "embed_first_slice"):
            assert dag.task_dict[task_id].max_active_tis_per_dagrun == int(workers)
        assert "which_system" not in dag.task_dict  # prepare and build_recommender decide for themselves (run_if)
    sys.modules.pop("lockstep_reembed", None)
    assert [target_shards_for(p) for p in (1, 2, 8)] == [4, 8, 32]
