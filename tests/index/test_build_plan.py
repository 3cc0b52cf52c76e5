"""``lockstep index build`` runs the re-embed plan with its early verdict, as the DAG does.

One Lockstep home, the cases in order (the DAG's own runs are in tests/dags/test_early_verdict_dag.py):

    v1  dim 8                 first version: "no baseline", built, the verdict recorded and printed
    v2  dim 2, wrong half     --early-verdict-action stop: stopped after the first slice, champion untouched
    v3  dim 2, wrong half     the default action (warn): built, with the warning in its manifest
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lockstep.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600, method="thread")]

RECORDS = 2000
SHARE = "0.2"


@pytest.fixture
def world(lockstep_home):
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry
    from lockstep.store.corpus import DEMO_CATEGORIES, demo_sample
    from lockstep.store.records import RecordStore

    store = RecordStore()
    records = demo_sample(RECORDS, seed=3)
    store.upsert_many(records)
    texts = [r.text for r in records]
    wrong_half = [r.text for r in records if r.metadata["category"] in DEMO_CATEGORIES[:10]]
    registry = Registry()
    for dim, fit_on in ((8, texts), (2, wrong_half), (2, wrong_half)):
        model = TextEmbedder(dim=dim, min_df=2, max_df=0.5, random_state=0).fit(fit_on)
        registry.log_and_register(model, params={"dim": dim}, metrics={}, snapshot_seq=store.head())
    return {"store": store, "registry": registry}


def _build(runner: CliRunner, version: str, *options: str):
    result = runner.invoke(app, ["index", "build", "--model-version", version, "--index-type", "flat",
                                 "--shard-size", "250", "--early-verdict-share", SHARE, *options])
    assert result.exit_code == 0, (result.output, result.exception)
    said = [line for line in result.stderr.splitlines() if line.startswith("early verdict for ")]  # not the progress bar
    return json.loads(result.stdout), "\n".join(said)


def test_index_build_records_and_prints_the_early_verdict(world):
    from lockstep.index.early_verdict import early_verdict_of
    from lockstep.index.manifest import read_manifest
    from lockstep.index.storage import index_location
    from lockstep.store.routing import RETIRED, read_table

    registry, runner = world["registry"], CliRunner()

    built, said = _build(runner, "1")
    assert built["early_verdict"]["verdict"] == "no baseline" and built["became_champion"]
    assert said.startswith("early verdict for v1: no baseline: no champion yet")
    assert early_verdict_of("1", registry)["verdict"] == "no baseline"  # on the MLflow version, as the DAG records it
    assert read_manifest(built["index_location"]).extra["early_verdict"]["verdict"] == "no baseline"
    assert built["records"] == RECORDS

    champion_files = sorted(p.name for p in Path(built["index_location"]).iterdir())
    stopped, said = _build(runner, "2", "--early-verdict-action", "stop")
    verdict = early_verdict_of("2", registry)
    assert stopped["stopped"] and stopped["early_verdict"]["verdict"] == verdict["verdict"] == "stop"
    assert verdict["figures"]["delta_ndcg_at_10_ci_high"] < -0.01 and verdict["champion_version"] == "1"
    assert said.startswith("early verdict for v2: stop: ")
    assert read_table().slot("2").state == RETIRED
    assert stopped["files_freed"] and not index_location(registry.model_name, "2").exists()
    assert registry.version_for_alias("champion").version == "1"
    assert sorted(p.name for p in Path(built["index_location"]).iterdir()) == champion_files

    warned, said = _build(runner, "3")  # the DAG's default action: warn and build on
    assert warned["early_verdict"]["verdict"] == "warn" and warned["records"] == RECORDS
    assert said.startswith("early verdict for v3: warn: ")
    assert read_manifest(warned["index_location"]).extra["early_verdict"]["verdict"] == "warn"
    assert read_table().slot("3").state == "ready" and registry.version_for_alias("champion").version == "1"


def test_early_verdict_options_outside_their_range_are_usage_errors(lockstep_home):
    result = CliRunner().invoke(app, ["index", "build", "--model-version", "1", "--early-verdict-share", "0.9"])
    assert result.exit_code == 2 and "early_verdict_share must lie in (0, 0.5], got 0.9" in result.output
    result = CliRunner().invoke(app, ["index", "build", "--model-version", "1", "--early-verdict-action", "halt"])
    assert result.exit_code == 2 and "early_verdict_action must be one of warn, stop, got 'halt'" in result.output


def test_the_library_build_has_no_first_slice_unless_asked(world):
    """``reembed_version``'s default keeps one snapshot part (its callers' shard counts), and no verdict."""
    from lockstep.index.build import reembed_version
    from lockstep.index.plan import step_names

    built = reembed_version(world["store"], world["registry"], "1", shard_size=500)
    assert built["early_verdict"] is None and built["shards"] == RECORDS // 500
    assert list(built["seconds"]) == [n for n in step_names() if n not in ("stop_or_continue", "stop_load")]
