"""Each DAG's Params come from the config classes: same defaults, nothing restated in the DAG file.

``lockstep.ops.dag_support`` builds the trigger forms of retrain, reembed, drift and batch
from the knobs of ``TrainConfig``, ``RecommenderTrainConfig``, ``RetrainOptions``,
``ReembedOptions``, ``DriftCheckOptions`` and ``BatchOptions`` (as the rollout's come
from ``RolloutConfig``). These tests hold the two sides together.
"""

from __future__ import annotations

import importlib.util
from dataclasses import fields

import pytest

from lockstep.batch.config import BatchOptions
from lockstep.core.config import knobs
from lockstep.drift.config import DriftCheckOptions
from lockstep.index.reembed_options import ReembedOptions
from lockstep.ops import dag_support
from lockstep.recommender.config import RecommenderTrainConfig
from lockstep.training.config import RetrainOptions, TrainConfig
from tests.dags.conftest import DAGS

FORMS = {
    "lockstep_retrain": (dag_support.RETRAIN_FORM, (TrainConfig, RecommenderTrainConfig, RetrainOptions)),
    "lockstep_reembed": (dag_support.REEMBED_FORM, (ReembedOptions,)),
    "lockstep_drift": (dag_support.DRIFT_FORM, (DriftCheckOptions,)),
    "lockstep_batch": (dag_support.BATCH_FORM, (BatchOptions,)),
}


def _as_param_value(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("dag_id", FORMS)
def test_each_param_default_is_the_config_objects_default(dag_id):
    form, owners = FORMS[dag_id]
    params = dag_support.dag_params(form)
    owned = {}
    for owner in owners:
        config = owner()  # the defaults as the library builds them
        owned |= {k.name: _as_param_value(getattr(config, k.name)) for k in knobs(owner)}
    assert list(params) == list(form.names)
    assert {name: param.value for name, param in params.items()} == owned
    assert form.defaults() == owned


@pytest.mark.parametrize("dag_id", FORMS)
def test_every_knob_of_the_config_classes_is_on_the_form(dag_id):
    form, owners = FORMS[dag_id]
    assert sorted(form.names) == sorted(k.name for owner in owners for k in knobs(owner))


@pytest.mark.parametrize("dag_id", FORMS)
def test_the_parsed_dag_has_exactly_the_generated_params(dag_id):
    """The DAG file passes the form through unchanged (parsed afresh, as the dag-processor would)."""
    from airflow.sdk import DAG

    spec = importlib.util.spec_from_file_location(f"{dag_id}_params_check", DAGS / f"{dag_id}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parsed = next(v for v in vars(module).values() if isinstance(v, DAG)).params
    generated = dag_support.dag_params(FORMS[dag_id][0])
    assert list(parsed.keys()) == list(generated)
    for name, param in generated.items():
        got = parsed.get_param(name)
        assert (got.value, got.description, got.schema) == (param.value, param.description, param.schema), name


def test_a_param_keeps_its_bounds_title_section_and_description():
    param = dag_support.dag_params(dag_support.RETRAIN_FORM)["dim"]
    assert param.value == TrainConfig.dim == 256
    assert param.schema == {"type": "integer", "minimum": 8, "maximum": 2048, "title": "Embedding dimension",
                            "section": "Model"}
    assert param.description == "Embedding dimension (SVD components, or word-vector size)."


def test_the_retrain_tasks_pass_on_every_train_config_knob():
    assert set(dag_support.TRAIN_KEYS) == {k.name for k in knobs(TrainConfig)}
    assert set(dag_support.TRAIN_KEYS) <= {f.name for f in fields(TrainConfig)}


def test_the_cli_build_and_the_reembed_dag_share_their_defaults():
    """``lockstep index build`` (BuildOptions) takes the DAG's defaults where both have the knob."""
    from lockstep.index.plan import BuildOptions

    dag, cli = ReembedOptions(), BuildOptions()
    for name in ("promote_if_first", "sample_size", "min_recall", "early_verdict_action", "early_verdict_margin",
                 "allow_rejected"):
        assert getattr(cli, name) == getattr(dag, name), name
