"""Simulated users who differ: seeded, heavy-tailed activity, an anonymous share, their own propensity."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lockstep.ops.population import Population, PopulationError
from lockstep.ops.simulator import ClickModel


def _visits(population: Population, n: int, seed: int = 0) -> Counter:
    rng = random.Random(seed)
    return Counter(population.visit(rng).user_id for _ in range(n))


def test_a_seed_gives_the_same_users_twice_and_another_seed_others():
    first, second = Population.draw(500, seed=3), Population.draw(500, seed=3)
    assert first == second and first.propensity == second.propensity and first.weights == second.weights
    assert _visits(first, 2000) == _visits(second, 2000)  # the same requests from the same stream
    other = Population.draw(500, seed=4)
    assert other.propensity != first.propensity and other.weights != first.weights


def test_activity_is_heavy_tailed_a_few_users_make_most_requests():
    population = Population.draw(2000, seed=1)
    counts = _visits(population, 60_000, seed=2)
    identified = sorted((n for user, n in counts.items() if user is not None), reverse=True)
    total = sum(identified)
    top = sum(identified[:20])  # the top 1 % of 2,000 users
    assert top / total > 0.15  # uniform users would make 1 %
    assert sum(identified[:400]) / total > 0.6  # the top fifth makes most of the requests (Pareto 1.16: ~80/20)
    shares = population.request_shares()
    median = sorted(population.weights)[len(population.weights) // 2]
    assert max(population.weights) <= 100 * median + 1e-9  # capped at 100x the median user
    assert max(population.weights) > 50 * median  # and the heaviest really make ~100x what most do
    assert sum(shares) == pytest.approx(1.0)


def test_the_anonymous_share_is_respected():
    for share in (0.0, 0.1, 0.3):
        counts = _visits(Population.draw(300, seed=5, anonymous=share), 20_000, seed=6)
        assert counts[None] / 20_000 == pytest.approx(share, abs=0.015)
    anonymous = Population.draw(300, seed=5, anonymous=0.5)
    rng = random.Random(7)
    passers_by = [v for v in (anonymous.visit(rng) for _ in range(2000)) if v.user_id is None]
    assert len({round(v.propensity, 9) for v in passers_by}) > 0.9 * len(passers_by)  # each a fresh clicker


def test_each_user_has_its_own_click_propensity_with_mean_one():
    population = Population.draw(2000, seed=8)
    values = population.propensity
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    assert mean == pytest.approx(1.0, abs=0.05)  # the click model's rates stay the average user's
    assert spread == pytest.approx(0.6, abs=0.06)  # Beta(2, 8) / 0.2: standard deviation 0.6
    assert min(values) < 0.3 and max(values) > 2.5
    model = ClickModel(p_relevant=0.3, decay=0.5)
    assert model.p_click(1, True, 2.0) == pytest.approx(0.3)  # the user's propensity multiplies the model's
    assert model.p_click(0, True, 5.0) == 1.0  # and a probability stays a probability


def test_a_uniform_population_draws_exactly_as_the_old_simulator():
    population = Population.uniform(37, user_prefix="u")
    rng, old = random.Random(9), random.Random(9)
    for _ in range(200):
        visitor = population.visit(rng)
        assert visitor.user_id == f"u-{old.randrange(37)}" and visitor.propensity == 1.0
    assert set(population.propensity) == {1.0} and population.anonymous == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "zipf"}, "users-like 'zipf' is not one of uniform, heterogeneous"),
    ({"users": 0}, "users must be a whole number of at least 1"),
    ({"anonymous": 1.0}, r"anonymous must be a share in \[0, 1\)"),
    ({"anonymous": float("nan")}, "anonymous must be a share"),
    ({"pareto_shape": 0.0}, "pareto_shape must be a positive number"),
    ({"activity_cap": 0.5}, "activity_cap must be at least 1"),
    ({"propensity_shape": (2.0, -1.0)}, "propensity_shape must be two positive Beta parameters"),
    ({"user_prefix": "u/../x"}, "user_prefix must be letters, digits"),
])
def test_bad_settings_are_refused_naming_the_setting(kwargs, message):
    args = {"users": 10, **kwargs}
    with pytest.raises(PopulationError, match=message):
        Population.draw(args.pop("users"), **args)


def test_lockstep_simulate_refuses_an_unknown_population_before_sending_anything(lockstep_home):
    from typer.testing import CliRunner

    from lockstep.cli import app

    result = CliRunner().invoke(app, ["simulate", "--users-like", "zipf", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert isinstance(result.exception, PopulationError) and "users-like 'zipf'" in str(result.exception)
    result = CliRunner().invoke(app, ["simulate", "--anonymous", "1.5", "--url", "http://127.0.0.1:9"])
    assert "anonymous must be a share" in str(result.exception)
