"""Building a version its offline evaluation rejected needs an explicit override.

``check_buildable`` on the version's tags (the verdict of a retrain or an import, or the
``eval.better`` of a version registered before the verdict tags), then the re-embed plan as
the DAG's ``prepare`` and ``lockstep index build`` run it: refused without a word written,
built with ``allow_rejected`` / ``--allow-rejected``, and an unevaluated version built with
a warning line.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lockstep.model.offline_verdict import (
    TAG,
    OfflineOutcome,
    RejectedVersionError,
    check_buildable,
    offline_verdict_of,
)
from lockstep.model.registry import ModelVersionInfo
from tests.training.test_fit import SMALL, corpus


def _info(**tags: str) -> ModelVersionInfo:
    return ModelVersionInfo(name="m", version="7", run_id=None, fingerprint="sha256:x", source="", model_uri="",
                            tags=dict(tags))


def test_the_verdict_is_read_from_its_tags_or_from_an_older_versions_eval_better():
    assert offline_verdict_of(_info(**{TAG: "accepted", f"{TAG}.reason": "better: ..."})) == ("accepted", "better: ...")
    assert offline_verdict_of(_info(**{"eval.better": "0.0", "lockstep.evaluation": "not better: x"})) == ("rejected", "not better: x")
    assert offline_verdict_of(_info(**{"eval.better": "1.0"}))[0] == "accepted"
    assert offline_verdict_of(_info()) == (None, "")
    tags = OfflineOutcome("rejected", "not better: y", {"ndcg_at_10": 0.5, "bad": float("nan")}, "3").tags()
    assert tags[TAG] == "rejected" and tags[f"{TAG}.champion"] == "3" and tags["eval.ndcg_at_10"] == "0.5"
    assert "eval.bad" not in tags
    with pytest.raises(ValueError, match="offline verdict 'maybe'"):
        OfflineOutcome("maybe", "")


def test_a_rejected_version_is_refused_unless_allowed_and_the_others_pass_with_a_warning():
    rejected = _info(**{TAG: "rejected", f"{TAG}.reason": "not better: challenger nDCG@10 0.50 vs champion 0.80"})
    with pytest.raises(RejectedVersionError) as refused:
        check_buildable(rejected)
    message = str(refused.value)
    assert "version 7 has the offline verdict 'rejected' (not better: challenger nDCG@10 0.50" in message
    assert "allow_rejected" in message and "--allow-rejected" in message and "nothing was built" in message
    assert "allow_rejected is set" in check_buildable(rejected, allow_rejected=True)
    assert check_buildable(_info(**{TAG: "accepted"})) is None
    assert "has no offline verdict" in check_buildable(_info())
    assert "was not evaluated offline (skipped: no champion yet)" in check_buildable(
        _info(**{TAG: "skipped", f"{TAG}.reason": "skipped: no champion yet"})
    )


@pytest.fixture
def world(lockstep_home):
    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore
    from lockstep.training.fit import fit_embedder

    store = RecordStore()
    records = corpus(300)
    store.upsert_many(records)
    registry = Registry()
    model = fit_embedder([r.text for r in records], SMALL)
    verdict = {TAG: "rejected", f"{TAG}.reason": "not better: the gain is below the margin 0.0050"}
    registry.log_and_register(model, params={}, metrics={}, snapshot_seq=store.head(), tags=verdict)
    registry.log_and_register(model, params={}, metrics={}, snapshot_seq=store.head())  # never evaluated
    return {"store": store, "registry": registry}


def _build(*options: str):
    from lockstep.cli import app

    return CliRunner().invoke(app, ["index", "build", "--index-type", "flat", "--shard-size", "100", *options])


def test_the_plan_refuses_a_rejected_version_and_builds_it_with_the_override(world):
    from lockstep.index import steps
    from lockstep.store.routing import read_table

    with pytest.raises(RejectedVersionError, match="offline verdict 'rejected'"):
        steps.prepare_requested("1", None)  # the DAG's prepare task, Param allow_rejected False
    assert read_table().slot("1") is None  # nothing registered, nothing written

    refused = _build("--model-version", "1")
    assert isinstance(refused.exception, RejectedVersionError)  # `lockstep` prints it as "error: ..." and exits 1
    assert "offline verdict 'rejected'" in str(refused.exception) and "--allow-rejected" in str(refused.exception)
    assert read_table().slot("1") is None

    built = _build("--model-version", "1", "--allow-rejected")
    assert built.exit_code == 0, (built.output, built.exception)
    assert "warning: building version 1 although its offline verdict is 'rejected'" in built.stderr
    assert read_table().slot("1").state in ("ready", "live")

    unevaluated = _build("--model-version", "2", "--no-promote")
    assert unevaluated.exit_code == 0, (unevaluated.output, unevaluated.exception)
    assert "warning: version 2 has no offline verdict" in unevaluated.stderr


def test_the_reembed_dag_has_the_param_through_reembed_options():
    from lockstep.index.plan import BuildOptions
    from lockstep.index.reembed_options import ReembedOptions
    from lockstep.ops import dag_support

    assert ReembedOptions().allow_rejected is False and BuildOptions().allow_rejected is False
    assert dag_support.dag_params(dag_support.REEMBED_FORM)["allow_rejected"].value is False
