"""The drift check on real demo data: a champion trained on 10 of the 20 newsgroups.

The issue's demo scenario: posts of the *other* 10 newsgroups streamed in are flagged
as drift; later posts of the *same* 10 are not. The champion (fitted, registered in a
real MLflow store and promoted) is built once per module; each scenario streams into
its own record store, loaded with the very same training records first, so the
champion's ``snapshot_seq`` tag is right in every one of them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import insert

from lockstep.store.records import Record, RecordStore
from lockstep.store.schema import feedback_log, request_log
from tests.conftest import DEMO_CACHE

N_TRAIN = 1500
N_STREAM = 300


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A Lockstep home whose champion (version 1) was fitted on 10 newsgroups."""
    from lockstep.model.registry import Registry
    from lockstep.store.corpus import DEMO_CATEGORIES, demo_sample
    from lockstep.store.db import dispose_engines
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import fit_embedder, split_holdout

    home = tmp_path_factory.mktemp("drift-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKSTEP_HOME", str(home))
        for var in ("LOCKSTEP_DATABASE_URL", "MLFLOW_TRACKING_URI", "LOCKSTEP_INDEX_STORE"):
            mp.delenv(var, raising=False)
        mp.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        dispose_engines()
        old = list(DEMO_CATEGORIES[::2])  # every other group, so old and new share vocabulary
        new = list(DEMO_CATEGORIES[1::2])
        train = demo_sample(N_TRAIN, seed=1, split="train", categories=old)
        store = RecordStore()
        seq = store.upsert_many(train)
        config = TrainConfig(dim=64)
        holdout = split_holdout(store.snapshot().records, config)
        embedder = fit_embedder([r.text for r in holdout.train], config)
        registry = Registry()
        info = registry.log_and_register(
            embedder, params=config.to_dict(), metrics={}, snapshot_seq=seq
        )
        registry.promote_champion(info.version, "first model")
        yield SimpleNamespace(
            home=home, registry=registry, store=store, train=train, seq=seq, old=old, new=new,
            n_held_out=len(holdout.queries), embedder=embedder, config=config,
        )
        dispose_engines()


def stream(demo, name: str, posts: list[Record], queries: list[str] = ()) -> RecordStore:
    """A store with the champion's training records, then ``posts`` and searches arriving."""
    store = RecordStore(f"sqlite:///{demo.home / name}.db")
    assert store.upsert_many(demo.train) == demo.seq
    store.upsert_many([Record(f"live-{r.id}", r.text, r.metadata) for r in posts])
    write_requests(store, queries, version="1", at=datetime.now(UTC))
    return store


def write_requests(store, queries, *, version, at, clicked=()) -> None:
    rows = [
        {
            "request_id": f"{at.timestamp():.0f}-{i}",
            "at": at - timedelta(seconds=i),
            "model_version": version,
            "query": q,
            "k": 10,
            "latency_ms": 3.0,
            "status": 200,
            "top_ids": [],
        }
        for i, q in enumerate(queries)
    ]
    clicks = [
        {"request_id": rows[i]["request_id"], "record_id": "x", "event": "click", "at": at}
        for i in clicked
    ]
    with store.engine.begin() as conn:
        if rows:
            conn.execute(insert(request_log), rows)
        if clicks:
            conn.execute(insert(feedback_log), clicks)


def posts(categories, n: int, seed: int) -> list[Record]:
    """Later posts (the test split) of these newsgroups, as they would stream in."""
    from lockstep.store.corpus import load_demo_corpus

    return random.Random(seed).sample(load_demo_corpus("test", categories), n)


def searches(records: list[Record]) -> list[str]:
    """What people type: the first words of a post (its subject line)."""
    return [" ".join(r.text.removeprefix("re ").split()[:6]) for r in records]


@pytest.fixture(scope="module")
def drifted(demo):
    from lockstep.drift.steps import run_drift_check

    new_posts = posts(demo.new, N_STREAM, seed=11)
    store = stream(demo, "drifted", new_posts, searches(new_posts[:120]))
    return run_drift_check(
        registry=demo.registry, store=store, work_dir=demo.home / "work-drifted"
    )


def same_period_posts(demo, n: int, seed: int) -> list[Record]:
    """Posts of the champion's newsgroups from its own period (the train split) that it
    was not trained on: the same distribution as its reference."""
    from lockstep.store.corpus import load_demo_corpus

    trained = {r.id for r in demo.train}
    unseen = [r for r in load_demo_corpus("train", demo.old) if r.id not in trained]
    return random.Random(seed).sample(unseen, n)


@pytest.fixture(scope="module")
def control(demo):
    from lockstep.drift.steps import run_drift_check

    same_posts = same_period_posts(demo, N_STREAM, seed=11)
    store = stream(demo, "control", same_posts, searches(same_posts[:120]))
    return run_drift_check(registry=demo.registry, store=store)


# --- the demo scenario --------------------------------------------------------------------


@pytest.mark.slow
def test_posts_from_the_other_newsgroups_are_drift(drifted, demo):
    assert drifted["status"] == "compared"
    assert drifted["drifted"] is True
    assert drifted["champion_version"] == "1"
    assert drifted["reference_snapshot_seq"] == demo.seq
    assert any("classifier tells current from reference" in r for r in drifted["reasons"])
    assert drifted["figures"]["embedding_auc"] > 0.7
    assert drifted["figures"]["embedding_classifier_p_value"] < drifted["figures"]["false_alarm_level"]
    counts = drifted["counts"]
    assert counts["window_records"] == N_STREAM  # the training load is not "new"
    assert counts["window_queries"] == 120
    assert counts["reference_held_out"] == demo.n_held_out > 50
    assert counts["reference_fitted_fill"] == 0
    assert "queries_unseen_token_share_excess" in drifted["figures"]


@pytest.mark.slow
def test_later_posts_from_the_same_newsgroups_are_not(control):
    assert control["status"] == "compared"
    assert control["drifted"] is False, control["reasons"]
    assert control["reasons"] == []
    assert control["figures"]["embedding_classifier_p_value"] > 0.01
    assert control["figures"]["vocabulary_js_distance_excess"] < 0.05
    assert control["figures"]["queries_unseen_token_share_excess"] < 0.05
    assert control["counts"]["window_records"] == N_STREAM


@pytest.mark.slow
def test_the_report_and_plot_are_written_when_asked(drifted):
    import json
    from pathlib import Path

    report = json.loads(Path(drifted["files"]["report"]).read_text())
    assert report["drifted"] is True and report["figures"] == drifted["figures"]
    assert Path(drifted["files"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- too little to judge, nothing to compare -----------------------------------------------


@pytest.mark.slow
def test_a_window_with_too_few_records_and_queries_is_a_note_not_a_verdict(demo):
    from lockstep.drift.steps import run_drift_check

    few = posts(demo.new, 20, seed=5)  # other newsgroups, but only 20 posts
    store = stream(demo, "few", few, searches(few))
    report = run_drift_check(registry=demo.registry, store=store, min_records=50)
    assert report["status"] == "insufficient_data"
    assert report["drifted"] is False
    assert any("20 new or changed records in the window, fewer than 50" in n for n in report["notes"])
    assert any("20 searches in the window, fewer than 50" in n for n in report["notes"])
    assert "embedding_auc" not in report["figures"]


@pytest.mark.slow
def test_no_champion_means_nothing_to_compare(demo):
    from lockstep.drift.steps import STATUS_NO_CHAMPION, run_drift_check
    from lockstep.model.registry import Registry

    store = RecordStore(f"sqlite:///{demo.home / 'fresh'}.db")
    store.upsert("a", "some text about rockets")
    fresh = Registry(demo.registry.tracking_uri, "lockstep-never-trained")
    report = run_drift_check(registry=fresh, store=store)
    assert report["status"] == STATUS_NO_CHAMPION
    assert report["drifted"] is False
    assert report["champion_version"] is None
    assert "no champion model yet" in report["notes"][0]


# --- the two sides --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_window_holds_new_live_records_once_in_their_last_version(demo):
    from lockstep.drift.window import current_window

    arrived = posts(demo.old, 30, seed=3)
    store = stream(demo, "window", arrived)
    store.delete(f"live-{arrived[0].id}")  # deleted again: gone
    store.upsert("live-extra", "first text")
    store.upsert("live-extra", "second text about engines")  # counted once, latest text
    now = datetime.now(UTC) + timedelta(seconds=1)

    window = current_window(store, now, 1.0, after_seq=demo.seq)
    assert window.n_records == 30
    assert "second text about engines" in window.records
    assert "first text" not in window.records
    assert arrived[0].text not in window.records
    # the champion's own training load is not new data, and old changes are outside
    assert current_window(store, now, 1.0, after_seq=0).n_records == N_TRAIN + 30
    assert current_window(store, now - timedelta(hours=2), 1.0).n_records == 0
    # sampling keeps the count exact
    sampled = current_window(store, now, 1.0, after_seq=demo.seq, max_samples=10)
    assert len(sampled.records) == 10 and sampled.n_records == 30


@pytest.mark.slow
def test_the_reference_holds_only_texts_the_champion_was_not_fitted_on(demo):
    from lockstep.drift.window import reference
    from lockstep.training.fit import is_holdout

    store = demo.store  # the training load only
    ref = reference(store, "1", demo.seq, holdout_percent=10, min_records=50)
    held = {r.text for r in demo.train if is_holdout(r.id, 10)}
    assert ref.embedding_judged and not ref.fitted_fill
    assert set(ref.held_out) == held and len(ref.held_out) == demo.n_held_out
    assert len(ref.vocabulary) == N_TRAIN  # the whole snapshot: no model, no fitting bias

    # too few held out: training texts fill in, and embeddings are no longer judged
    thin = reference(store, "1", demo.seq, holdout_percent=1, min_records=50, max_samples=200)
    assert len(thin.held_out) < 50
    assert not thin.embedding_judged
    assert len(thin.held_out) + len(thin.fitted_fill) == 200
    assert not set(thin.fitted_fill) & {r.text for r in demo.train if is_holdout(r.id, 1)}


@pytest.mark.slow
def test_a_drop_in_click_through_is_drift(demo):
    from lockstep.drift.steps import run_drift_check
    from lockstep.drift.window import click_through_counts

    store = stream(demo, "ctr", [])
    now = datetime.now(UTC)
    queries = searches(demo.train[:200])
    write_requests(store, queries, version="1", at=now - timedelta(minutes=70), clicked=range(80))
    write_requests(store, queries, version="1", at=now - timedelta(minutes=1), clicked=range(20))
    write_requests(store, queries[:50], version="9", at=now - timedelta(minutes=2))  # not the champion's
    counts = click_through_counts(store.engine, "1", now, 1.0)
    assert counts == {
        "reference_impressions": 200,
        "reference_clicks": 80,
        "current_impressions": 200,
        "current_clicks": 20,
    }
    report = run_drift_check(registry=demo.registry, store=store, now=now)
    assert report["drifted"] is True
    assert any(r.startswith("click-through fell from 40.00% to 10.00%") for r in report["reasons"])
    assert report["figures"]["ctr_relative_drop"] == pytest.approx(0.75)


@pytest.mark.slow
def test_with_too_few_held_out_records_embeddings_are_reported_not_judged(demo):
    from lockstep.drift.steps import run_drift_check
    from lockstep.model.registry import Registry

    # the same model, but registered as trained with only 1 % held out (about 15 records)
    thin = Registry(demo.registry.tracking_uri, "lockstep-thin-holdout")
    info = thin.log_and_register(
        demo.embedder,
        params={**demo.config.to_dict(), "holdout_percent": 1},
        metrics={},
        snapshot_seq=demo.seq,
    )
    thin.promote_champion(info.version, "test")
    arriving = posts(demo.old, N_STREAM, seed=11)  # same newsgroups: no drift
    report = run_drift_check(registry=thin, store=stream(demo, "thin", arriving))
    assert report["counts"]["reference_held_out"] < 50
    assert report["counts"]["reference_fitted_fill"] > 0
    assert "embedding_auc" not in report["figures"]
    assert report["figures"]["embedding_auc_unjudged"] > 0.5
    assert any(n.startswith("embeddings reported, not judged") for n in report["notes"])
    assert not any("classifier" in r for r in report["reasons"])


@pytest.mark.slow
def test_a_store_that_is_not_the_champions_is_an_error(demo):
    from lockstep.drift.steps import DriftCheckError, run_drift_check

    other = RecordStore(f"sqlite:///{demo.home / 'other'}.db")
    other.upsert_many(demo.train[:5])
    with pytest.raises(DriftCheckError, match=f"trained on snapshot {demo.seq}, but this record store's change log ends at 5"):
        run_drift_check(registry=demo.registry, store=other)


# --- MLflow, alert, asset, parameters -------------------------------------------------------


@pytest.mark.slow
def test_the_report_is_logged_to_mlflow_once_per_check(drifted, demo):
    import mlflow

    from lockstep.drift.steps import DRIFT_EXPERIMENT as EXPERIMENT
    from lockstep.drift.steps import log_drift_report

    logged = log_drift_report(drifted, check_id="scheduled__2026-01-01T10:00:00+00:00")
    again = log_drift_report(drifted, check_id="scheduled__2026-01-01T10:00:00+00:00")
    assert again == {**logged, "reused": True}

    client = mlflow.MlflowClient(tracking_uri=demo.registry.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith((demo.home / "mlartifacts").as_uri())
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [logged["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["lockstep.champion_version"] == "1"
    assert run.data.tags["lockstep.drifted"] == "true"
    assert run.data.metrics["embedding_auc"] == pytest.approx(drifted["figures"]["embedding_auc"])
    assert run.data.metrics["drifted"] == 1.0
    assert run.data.metrics["count_window_records"] == N_STREAM
    assert run.data.params["threshold.false_alarm_rate"] == "0.01"
    files = {a.path for a in client.list_artifacts(logged["run_id"], "reports")}
    files |= {a.path for a in client.list_artifacts(logged["run_id"], "plots")}
    assert files == {"reports/drift.json", "plots/drift.png"}


@pytest.mark.slow
def test_drift_sends_one_alert_per_check_and_none_without_drift(drifted, control):
    from lockstep.core.alerts import recent_alerts
    from lockstep.drift.steps import alert_drift

    before = len(recent_alerts(1000))
    sent = alert_drift(drifted, check_id="check-1")
    assert sent["event"] == "drift_detected"
    assert sent["details"]["champion_version"] == "1"
    assert "classifier tells current from reference" in sent["message"]
    assert alert_drift(drifted, check_id="check-1") is None  # a retried task
    assert alert_drift(control, check_id="check-2") is None
    assert len(recent_alerts(1000)) == before + 1


@pytest.mark.slow
def test_the_asset_extra_is_strict_json(drifted):
    import json

    from lockstep.drift.steps import asset_extra

    extra = asset_extra({**drifted, "mlflow_run_id": "abc"})
    assert json.loads(json.dumps(extra, allow_nan=False)) == extra
    assert extra["model_version"] == "1" and extra["drifted"] is True
    assert extra["fingerprint"].startswith("sha256:")
    assert extra["figures"]["embedding_auc"] == drifted["figures"]["embedding_auc"]


def test_thresholds_default_to_the_checks_own_and_refuse_unknown_names():
    from lockstep.drift.steps import DriftCheckError, thresholds_from

    limits = thresholds_from({"checks_per_day": 24, "ctr_relative_drop": None})
    assert limits.false_alarm_rate == 0.01
    assert limits.per_check_rate == pytest.approx(0.01 / 24)
    assert limits.ctr_relative_drop == 0.20
    with pytest.raises(DriftCheckError, match="unknown drift thresholds \\['auc'\\]"):
        thresholds_from({"auc": 0.6})


def test_bad_parameters_are_refused_before_any_work(lockstep_home):
    from lockstep.drift.steps import DriftCheckError, run_drift_check

    with pytest.raises(DriftCheckError, match="window_hours must be > 0"):
        run_drift_check(window_hours=0)
    with pytest.raises(DriftCheckError, match="min_records <= max_samples"):
        run_drift_check(min_records=100, max_samples=50)
    with pytest.raises(DriftCheckError, match="not an ISO date"):
        run_drift_check(now="yesterday")


def test_pinned_requests_are_neither_queries_nor_click_through(lockstep_home):
    """Any client can pin a version (X-Lockstep-Pin): its searches and clicks are not users' data."""
    from lockstep.drift.window import click_through_counts, current_window

    store = RecordStore()
    at = datetime.now(UTC) - timedelta(minutes=5)
    requests = [
        {"request_id": f"r{i}", "at": at, "model_version": "1", "query": f"{'pinned' if i % 2 else 'user'} query {i}",
         "k": 10, "latency_ms": 3.0, "status": 200, "top_ids": ["x"], "pinned": bool(i % 2)}
        for i in range(10)
    ]
    clicks = [{"request_id": f"r{i}", "record_id": "x", "event": "click", "at": at} for i in range(10)]
    with store.engine.begin() as conn:
        conn.execute(insert(request_log), requests)
        conn.execute(insert(feedback_log), clicks)
    end = datetime.now(UTC)
    window = current_window(store, end, window_hours=1)
    assert window.n_queries == 5 and all(q.startswith("user") for q in window.queries)
    counts = click_through_counts(store.engine, "1", end, window_hours=1)
    assert (counts["current_impressions"], counts["current_clicks"]) == (5, 5)


# --- issue 15: a new segment, controls, repeated checks, the command line -----------------


@pytest.fixture(scope="module")
def pools():
    """As benchmarks/bench_drift.py: a champion fitted on 3,000 posts of 10 newsgroups,
    1,000 held-out posts as reference, and windows of 600 drawn from the rest."""
    from lockstep.store.corpus import DEMO_CATEGORIES, load_demo_corpus
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import fit_embedder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
        old = [r.text for r in load_demo_corpus("train", list(DEMO_CATEGORIES[::2]))]
        new = {g: [r.text for r in load_demo_corpus("train", [g])] for g in DEMO_CATEGORIES[1::2]}
    rng = random.Random(0)
    rng.shuffle(old)
    model = fit_embedder(old[:3000], TrainConfig(dim=256))
    return SimpleNamespace(
        model=model, ref=old[3000:4000], ref_vectors=model.transform(old[3000:4000]),
        vocab=rng.sample(old[:4000], 2000), rest=old[4000:], new=new,
    )


def check_window(pools, texts: list[str], seed: int):
    from lockstep.drift.classifier import embedding_drift
    from lockstep.drift.segments import segment_drift
    from lockstep.drift.verdict import assess
    from lockstep.drift.vocabulary import vocabulary_drift

    vectors = pools.model.transform(texts)
    return assess(
        vocabulary_drift(pools.vocab, texts, seed=seed),
        embedding_drift(pools.ref_vectors, vectors, seed=seed),
        None,
        segment=segment_drift(pools.ref_vectors, vectors, texts, pools.vocab, seed=seed),
    )


@pytest.mark.slow
@pytest.mark.parametrize("group", ["sci.med", "rec.sport.baseball", "comp.graphics"])
def test_a_new_newsgroup_at_20_percent_of_the_window_is_drift(pools, group):
    rng = random.Random(group)
    texts = rng.sample(pools.rest, 480) + rng.sample(pools.new[group], 120)
    report = check_window(pools, texts, seed=1)
    assert report.drifted, report.figures
    assert report.figures["embedding_auc"] < 0.7  # the old fixed floor could not see it
    segment = report.segment
    assert segment["current_share"] > segment["reference_share"]
    assert len(segment["examples"]) == 3 and segment["top_words"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_windows_of_the_same_distribution_are_not_drift(pools, seed):
    texts = random.Random(seed).sample(pools.rest, 600)
    report = check_window(pools, texts, seed=seed)
    assert report.drifted is False, report.reasons
    assert report.figures["false_alarm_level"] == 0.01
    assert report.figures["tests"] == 4.0


@pytest.mark.slow
def test_a_slow_drift_adds_up_over_the_accumulated_window(demo):
    """Each hour brings 60 records, a fifth of them from new newsgroups: too few to judge in
    one hour (min_records 100), but the last 6 hours hold 360 and show the segment."""
    from sqlalchemy import update

    from lockstep.drift.steps import run_drift_check
    from lockstep.store.schema import changes

    arriving = same_period_posts(demo, 288, seed=21) + posts(demo.new, 72, seed=21)
    random.Random(21).shuffle(arriving)
    store = stream(demo, "slow", arriving)
    now = datetime.now(UTC)
    with store.engine.begin() as conn:  # spread the arrivals evenly over the last 6 hours
        for i, record in enumerate(arriving):
            at = now - timedelta(hours=6) + timedelta(seconds=(i + 0.5) * 6 * 3600 / len(arriving))
            conn.execute(update(changes).where(changes.c.record_id == f"live-{record.id}").values(at=at))
    hourly = run_drift_check(registry=demo.registry, store=store, now=now, min_records=100)
    assert hourly["status"] == "insufficient_data" and hourly["drifted"] is False
    accumulated = run_drift_check(
        registry=demo.registry, store=store, now=now, min_records=100, accumulate_hours=6
    )
    assert accumulated["counts"]["window_records"] == 60
    assert accumulated["figures"]["accumulated_window_records"] == 360
    assert accumulated["drifted"] is True, accumulated["figures"]
    assert all(r.startswith("over the accumulated window") for r in accumulated["reasons"])


@pytest.mark.slow
def test_lockstep_drift_check_prints_the_report(drifted, demo, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from lockstep.cli import app
    from lockstep.store.db import dispose_engines

    monkeypatch.setenv("LOCKSTEP_DATABASE_URL", f"sqlite:///{demo.home / 'drifted'}.db")
    dispose_engines()
    result = CliRunner().invoke(app, ["drift", "check", "--work-dir", str(tmp_path)])
    dispose_engines()
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Drift (compared), champion 1, window ")
    assert "a classifier tells current from reference embeddings" in result.output
    assert "Segment that moved most:" in result.output
    assert (tmp_path / "drift.png").exists() and (tmp_path / "drift.json").exists()


def test_lockstep_drift_check_without_a_champion_is_a_clear_error(lockstep_home):
    from typer.testing import CliRunner

    from lockstep.cli import app
    from lockstep.core.errors import LockstepError

    result = CliRunner().invoke(app, ["drift", "check"])
    assert isinstance(result.exception, LockstepError)
    assert "no champion model yet" in str(result.exception)
    assert "lockstep train" in str(result.exception)
