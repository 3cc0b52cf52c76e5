"""An imported version is evaluated against the champion when it is registered, as a retrain is.

One Lockstep home: 300 labelled records of three topics, two TF-IDF versions trained by
Lockstep (a strong one on every topic, a weak one on one topic only), and team models
imported against whichever of them is champion. The verdict lands on the version as a
retrain's does (``lockstep.offline_verdict`` tags, ``eval.*`` figures, metrics on its run,
the figures on its MLflow page); a rejected import is tagged rejected and is not the
challenger; no champion, no corpus or ``evaluate=False`` skip with the reason.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lockstep.model.importing import import_model
from lockstep.model.offline_verdict import TAG, offline_verdict_of
from lockstep.store.records import RecordStore
from lockstep.training.imports import offline_evaluator
from tests.model.byo_models import fit_pipeline, save_team_model
from tests.training.test_eval_champion_vectors import fresh_home
from tests.training.test_fit import SMALL, corpus

SPACE_ONLY = [r.text for r in corpus(300) if r.metadata["category"] == "space"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lockstep.model.embedding import TextEmbedder
    from lockstep.model.registry import Registry
    from lockstep.store.db import dispose_engines

    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("eval-imports")
        fresh_home(mp, root / "home")
        mp.chdir(root)
        store = RecordStore()
        records = corpus(300)
        store.upsert_many(records)
        registry = Registry()
        strong = TextEmbedder(dim=16, min_df=1, max_df=1.0, random_state=0).fit([r.text for r in records])
        weak = TextEmbedder(dim=2, min_df=1, max_df=1.0, random_state=0).fit(SPACE_ONLY)
        for model in (strong, weak):
            registry.log_and_register(model, params={"holdout_percent": 20, "n_boot": 200}, metrics={},
                                      snapshot_seq=store.head())
        yield {"root": root, "store": store, "registry": registry, "texts": [r.text for r in records], "n": iter(range(100))}
        dispose_engines()


def _team_model(world, texts, dim):
    return str(save_team_model(world["root"] / f"team-{next(world['n'])}", pipeline=fit_pipeline(texts, dim=dim)))


def _champion(world, version: str | None) -> None:
    registry = world["registry"]
    if version is None:
        registry.delete_alias("champion")
    else:
        registry.set_alias("champion", version)


def test_a_better_import_is_accepted_with_the_retrains_figures_and_becomes_challenger(world):
    registry = world["registry"]
    _champion(world, "2")  # the weak version serves
    info = import_model(registry, _team_model(world, world["texts"], 12), evaluator=offline_evaluator())
    verdict, reason = offline_verdict_of(info)
    assert verdict == "accepted" and reason.startswith("better: challenger nDCG@10")
    assert info.tags[f"{TAG}.champion"] == "2" and "challenger" in info.aliases
    figures = info.eval_figures
    assert figures["delta_ndcg_at_10_ci_low"] > 0 and figures["better"] == 1.0 and figures["margin"] == SMALL.margin
    # The evaluation settings are the champion's run params (20 % held out), not the defaults' 10 %.
    assert figures["n_queries"] == pytest.approx(sum(1 for t in world["texts"]) * 0.2, rel=0.35)
    assert figures["champion_vectors_embedded"] > 0 and figures["champion_vectors_reused"] == 0  # no index yet
    run = registry._client().get_run(info.run_id)
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(figures["ndcg_at_10"])
    page = registry.version_description(info.version)
    assert "### Offline evaluation: accepted" in page and "| nDCG@10 |" in page and "champion v2" in page


def test_a_worse_import_is_rejected_and_does_not_become_the_challenger(world):
    registry = world["registry"]
    _champion(world, "1")  # the strong version serves
    info = import_model(registry, _team_model(world, world["texts"], 1), evaluator=offline_evaluator())
    assert offline_verdict_of(info)[0] == "rejected" and info.status == "rejected"
    assert "challenger" not in info.aliases and info.tags["lockstep.rejected_reason"].startswith("not better:")
    assert info.eval_figures["delta_ndcg_at_10"] < 0


@pytest.mark.parametrize(
    ("champion", "store", "evaluate", "said"),
    [
        (None, None, True, "skipped: no champion yet"),
        ("1", "empty", True, "skipped: no evaluation corpus: the record store is empty"),
        ("1", "unlabelled", True, "skipped: no evaluation corpus: cannot evaluate: 0 labelled queries"),
        ("1", None, False, "skipped: asked not to evaluate (evaluate=False, --no-evaluate)"),
    ],
)
def test_an_import_that_cannot_be_evaluated_says_why_and_is_still_registered(world, tmp_path, champion, store, evaluate, said):
    from lockstep.store.records import Record

    registry = world["registry"]
    _champion(world, champion)
    other = None
    if store is not None:
        other = RecordStore(f"sqlite:///{tmp_path / 'other.db'}")
        if store == "unlabelled":
            other.upsert_many([Record(f"u{i}", text) for i, text in enumerate(world["texts"][:50])])
    evaluator = offline_evaluator(store=other)
    info = import_model(registry, _team_model(world, world["texts"], 12), evaluate=evaluate, evaluator=evaluator)
    verdict, reason = offline_verdict_of(info)
    assert verdict == "skipped" and reason.startswith(said), reason
    assert "challenger" in info.aliases and not info.eval_figures
    assert said in registry.version_description(info.version)


def test_lockstep_model_import_evaluates_and_prints_the_verdict(world):
    from lockstep.cli import app

    _champion(world, "1")
    runner = CliRunner()
    result = runner.invoke(app, ["model", "import", "--model-uri", _team_model(world, world["texts"], 1)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "offline verdict rejected: not better" in result.stderr and "--allow-rejected" in result.stderr
    assert "alias challenger" not in result.stdout
    skipped = runner.invoke(app, ["model", "import", "--model-uri", _team_model(world, world["texts"], 12), "--no-evaluate"])
    assert skipped.exit_code == 0 and "offline verdict skipped: skipped: asked not to evaluate" in skipped.stderr
    assert "alias challenger" in skipped.stdout
