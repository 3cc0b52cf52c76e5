"""The traffic simulator against a live serving app: clicks follow relevance, answers are checked."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from sqlalchemy import func, select

from lockstep.ops.simulator import (
    ClickModel,
    SimQuery,
    Simulator,
    SimulatorError,
    held_out_queries,
    record_categories,
)
from lockstep.store import routing
from lockstep.store.schema import feedback_log


@pytest.fixture
def deployment(lockstep_home, tmp_path):
    """Demo records with categories; v1 a good model, v2 a nearly blind one (dim 2), split 50/50."""
    from lockstep.model.embedding import TextEmbedder
    from lockstep.store.corpus import demo_sample
    from lockstep.store.db import get_engine
    from lockstep.store.records import RecordStore
    from tests.serving.harness import make_slot

    engine = get_engine()
    store = RecordStore(engine)
    records = demo_sample(400, seed=1)
    store.upsert_many(records)
    texts = [r.text for r in records]
    make_slot(engine, store, TextEmbedder(dim=48, min_df=2, max_df=0.5, random_state=0).fit(texts), "1", tmp_path)
    make_slot(engine, store, TextEmbedder(dim=2, min_df=2, max_df=0.5, random_state=0).fit(texts), "2", tmp_path)
    routing.set_weights({"1": 50, "2": 50}, engine=engine)
    return engine, store


@pytest.mark.slow
def test_clicks_follow_relevance_and_every_answer_is_checked(deployment):
    from lockstep.core.config import Settings
    from lockstep.serving import ServingConfig
    from lockstep.systems import create_app
    from tests.serving.harness import serve, wait_for

    engine, store = deployment
    categories = record_categories(store)
    queries = held_out_queries(limit=300)
    assert all(len(q.text.split()) <= 30 and q.category for q in queries)
    app = create_app(Settings.from_env(), engine=engine, config=ServingConfig(poll_interval=0.05, log_flush_interval=0.1, replica="sim"))
    with serve(app) as server:
        sim = Simulator(server.url, queries, categories, users=200, concurrency=3,
                        click_model=ClickModel(p_relevant=0.5, p_irrelevant=0.02, decay=0.7))
        report = sim.run(requests=800)
        wait_for(lambda: _clicks(engine) == sum(v["clicks"] for v in report.by_version.values()), 5, "clicks to be logged")
    print(report.summary())
    assert report.requests == 800 and report.errors == 0 and report.mixed == 0 and report.feedback_errors == 0
    good, blind = report.by_version["1"], report.by_version["2"]
    assert min(good["requests"], blind["requests"]) > 250  # sticky users split about evenly
    assert good["relevant_at_1"] / good["requests"] > blind["relevant_at_1"] / blind["requests"] + 0.15
    assert good["ctr"] > blind["ctr"] + 0.1  # the better ranking earns more clicks


def test_uniform_and_no_click_models_ignore_relevance():
    rng = random.Random(0)
    uniform = ClickModel("uniform", p_relevant=0.5, decay=1.0)
    assert uniform.choose(rng, [False] * 10) is not None
    assert ClickModel("none").choose(rng, [True] * 10) is None
    relevance = ClickModel(p_relevant=1.0, p_irrelevant=0.0)
    assert relevance.choose(rng, [False, False, True]) == 2  # the cascade stops at the first relevant result
    with pytest.raises(SimulatorError, match="click model 'zipf'"):
        ClickModel("zipf")


def test_a_dead_server_counts_as_failed_searches():
    sim = Simulator("http://127.0.0.1:9", [SimQuery("rocket launch", "sci.space")], {}, users=2, concurrency=1, timeout=0.5)
    report = sim.run(requests=3)
    assert report.requests == 3 and report.errors == 3 and report.statuses == {"exception": 3}
    assert "no answer" in report.error_samples[0]


def _clicks(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(feedback_log)).scalar())


@pytest.mark.slow
def test_the_simulator_can_be_driven_step_by_step_and_replays_with_the_same_seed(deployment):
    from lockstep.core.config import Settings
    from lockstep.serving import ServingConfig
    from lockstep.systems import create_app
    from tests.serving.harness import serve

    engine, store = deployment
    routing.set_weights({"1": 100}, engine=engine)  # one version: answers do not depend on routing timing
    categories = record_categories(store)
    queries = held_out_queries(limit=100)
    app = create_app(Settings.from_env(), engine=engine, config=ServingConfig(poll_interval=0.05, log_flush_interval=0.1, replica="sim"))
    with serve(app) as server:
        reports = []
        for _ in range(2):
            sim = Simulator(server.url, queries, categories, users=20, click_model=ClickModel(p_relevant=0.5), seed=7)
            first = sim.step(30)
            assert first.requests == 30  # exactly as many as asked, synchronously
            reports.append(sim.step(20))
            sim.close()
    assert reports[0].requests == reports[1].requests == 50
    assert reports[0].by_version == reports[1].by_version  # same seed, same searches and clicks


@pytest.mark.slow
def test_heterogeneous_users_reach_the_request_log_as_sent(deployment):
    """Anonymous searches are logged without a user id; the heavy users' searches with theirs."""
    from lockstep.core.config import Settings
    from lockstep.ops.population import Population
    from lockstep.serving import ServingConfig
    from lockstep.store.schema import request_log
    from lockstep.systems import create_app
    from tests.serving.harness import serve, wait_for

    engine, store = deployment
    population = Population.draw(300, seed=2, anonymous=0.2)
    queries = held_out_queries(limit=100)
    app = create_app(Settings.from_env(), engine=engine, config=ServingConfig(poll_interval=0.05, log_flush_interval=0.1, replica="sim"))
    with serve(app) as server:
        sim = Simulator(server.url, queries, record_categories(store), population=population, seed=3)
        report = sim.step(400)
        sim.close()
        wait_for(lambda: _logged(engine) == 400, 5, "searches to be logged")
    assert report.requests == 400 and report.errors == 0 and sim.users == 300
    with engine.connect() as conn:
        users = [row[0] for row in conn.execute(select(request_log.c.user_id))]
    counts = sorted(Counter(u for u in users if u is not None).values(), reverse=True)
    assert 50 <= users.count(None) <= 110  # about 20 % anonymous
    assert sum(counts[:3]) > 0.15 * sum(counts)  # the top 1 % of 300 users make far more than 1 % of the searches
    assert all(u is None or u.startswith("user-") for u in users)


def test_a_recommender_population_needs_one_user_per_future_and_no_anonymous_share():
    from lockstep.ops.population import Population
    from lockstep.ops.recommender_simulator import RecommenderSimulator, recommender_population

    future = {"7": ["a"], "3": ["b"], "5": ["c", "d"]}
    population = recommender_population(future, seed=1)
    assert population.users == 3 and population.anonymous == 0
    sim = RecommenderSimulator("http://127.0.0.1:9", future, population=population)
    rng = random.Random(0)
    asked = Counter(sim._draw(rng)[0].text for _ in range(3000))
    assert set(asked) == {"3", "5", "7"}  # the population's users are the ones with a future, in sorted order
    heaviest = max(range(3), key=lambda i: population.weights[i])
    assert asked.most_common(1)[0][0] == sorted(future)[heaviest]  # who asks goes by activity
    with pytest.raises(SimulatorError, match="no anonymous share"):
        RecommenderSimulator("http://127.0.0.1:9", future, population=Population.draw(3, seed=1, anonymous=0.1))
    with pytest.raises(SimulatorError, match="one user per user with a future"):
        RecommenderSimulator("http://127.0.0.1:9", future, population=Population.draw(4, seed=1, anonymous=0.0))


def _logged(engine) -> int:
    from lockstep.store.schema import request_log

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(request_log)).scalar())
