"""A traffic simulator: many users searching, and clicking results that are relevant.

Every rollout strategy needs live traffic and clicks to judge a candidate; on a laptop
there is neither, so this module makes them. Simulated users send ``POST /search``
with held-out queries (posts of the demo corpus's test split, cut to their first ~30
words, so no query is a document of the index) under a sticky ``user_id``, and click
at most one result per search in a cascade: they scan the results top down and click
a result with a probability that falls with its rank and is much higher when the
result is relevant (same newsgroup as the query). A version that ranks relevant
records higher therefore earns a higher click-through rate, which is what the gates
must notice.

The users are a ``Population`` (``lockstep.ops.population``): by default
``heterogeneous`` (``lockstep simulate`` and the demo), where each user's click
probability is the click model's times the user's own propensity (mean 1), a few users
make most of the requests (Pareto activity) and some requests are anonymous (no
``user_id``); ``uniform`` is the old world of identical, equally active users, and what
a ``Simulator`` built without a population gets.

Each response is also checked: the model version must equal the index version (one
request is answered by one vector space) and the status must be 200; the report counts
any that are not. The simulator is usable as ``lockstep simulate`` and from tests in a
background thread (``Simulator.start`` / ``stop``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.core.errors import LockstepError
from lockstep.ops.population import (
    DEFAULT_ACTIVITY_CAP,
    DEFAULT_ANONYMOUS,
    DEFAULT_PARETO_SHAPE,
    Population,
    Visitor,
)

QUERY_WORDS = 30
CLICK_MODELS = ("relevance", "uniform", "none")


class SimulatorError(LockstepError, ValueError):
    """The simulator was given something it cannot use."""


@dataclass(frozen=True)
class SimQuery:
    text: str
    category: str | None = None


@dataclass(frozen=True)
class ClickModel:
    """Cascade clicks: P(click at rank r) = p * decay**r, p by relevance; at most one click.

    ``relevance`` (default) makes p depend on whether the result's category matches the
    query's; ``uniform`` uses ``p_relevant`` for every result (an A/A world where all
    versions earn the same clicks); ``none`` never clicks.
    """

    kind: str = "relevance"
    p_relevant: float = 0.3
    p_irrelevant: float = 0.02
    decay: float = 0.8

    def __post_init__(self) -> None:
        if self.kind not in CLICK_MODELS:
            raise SimulatorError(f"click model {self.kind!r} is not one of {', '.join(CLICK_MODELS)}")
        for name in ("p_relevant", "p_irrelevant", "decay"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise SimulatorError(f"{name} must be a probability in [0, 1], got {value!r}")

    def p_click(self, rank: int, relevant: bool, propensity: float = 1.0) -> float:
        """P(click at ``rank``) for a user whose own propensity multiplies the model's (capped at 1)."""
        if self.kind == "none":
            return 0.0
        p = self.p_relevant if (relevant or self.kind == "uniform") else self.p_irrelevant
        return min(1.0, p * self.decay**rank * propensity)

    def choose(self, rng: random.Random, relevance: Sequence[bool], propensity: float = 1.0) -> int | None:
        """The rank clicked, or None: the user scans down and stops at the first click."""
        for rank, relevant in enumerate(relevance):
            if rng.random() < self.p_click(rank, relevant, propensity):
                return rank
        return None


@dataclass
class VersionCounts:
    requests: int = 0
    clicks: int = 0
    errors: int = 0
    relevant_at_1: int = 0

    @property
    def ctr(self) -> float:
        answered = self.requests - self.errors
        return self.clicks / answered if answered else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "clicks": self.clicks, "errors": self.errors, "ctr": self.ctr,
                "relevant_at_1": self.relevant_at_1}


@dataclass(frozen=True)
class SimReport:
    """What a run sent and saw. ``errors`` counts failed searches (non-200 or no answer);
    ``mixed`` counts answers whose model and index versions differ (must be 0)."""

    requests: int
    errors: int
    mixed: int
    seconds: float
    by_version: dict[str, dict[str, float]]
    statuses: dict[str, int]
    feedback_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "errors": self.errors, "mixed": self.mixed, "seconds": self.seconds,
            "rate": self.rate, "by_version": self.by_version, "statuses": self.statuses,
            "feedback_errors": self.feedback_errors, "error_samples": self.error_samples,
        }

    def summary(self) -> str:
        lines = [
            f"{self.requests} requests in {self.seconds:.1f} s ({self.rate:.0f}/s); "
            f"{self.errors} failed, {self.mixed} mixed versions, {self.feedback_errors} feedback errors",
            "version  requests  clicks  errors     CTR",
        ]
        for version in sorted(self.by_version, key=_version_order):
            c = self.by_version[version]
            lines.append(f"{version:>7}  {int(c['requests']):8d}  {int(c['clicks']):6d}  {int(c['errors']):6d}  {c['ctr']:6.3f}")
        lines.extend(f"  error: {e}" for e in self.error_samples[:5])
        return "\n".join(lines)


# --- inputs ---------------------------------------------------------------------------------------


def held_out_queries(
    limit: int | None = 2000, words: int = QUERY_WORDS, seed: int = 0, cache_dir: str | Path | None = None
) -> list[SimQuery]:
    """Queries from the demo corpus's test split: the first ``words`` words of each post."""
    from lockstep.store.corpus import load_demo_corpus

    records = load_demo_corpus("test", cache_dir=cache_dir)
    rng = random.Random(seed)
    rng.shuffle(records)
    queries = []
    for record in records:
        text = " ".join(record.text.split()[:words])
        if text:
            queries.append(SimQuery(text, (record.metadata or {}).get("category")))
        if limit is not None and len(queries) >= limit:
            break
    return queries


def record_categories(store: Any = None, key: str = "category") -> dict[str, str]:
    """Record id -> category, from the record store's metadata (what relevance is judged by)."""
    from lockstep.store.corpus import category_of
    from lockstep.store.records import RecordStore

    store = store or RecordStore()
    labels = category_of(store.snapshot().records, key)
    if not labels:
        raise SimulatorError(
            f"no record in the store has a {key!r} in its metadata, so no click can be judged relevant; "
            "load the demo corpus (lockstep corpus load --demo) or records with that field"
        )
    return labels


# --- the simulator --------------------------------------------------------------------------------


class Simulator:
    """Users sending searches and clicks to one serving API, from ``concurrency`` threads.

    ``population`` says who the users are; without one, ``users`` uniform users (ids
    ``{user_prefix}-{i}``). With one, its size is the number of users.
    """

    def __init__(
        self,
        url: str,
        queries: Sequence[SimQuery],
        categories: Mapping[str, str],
        *,
        users: int = 100,
        concurrency: int = 4,
        click_model: ClickModel | None = None,
        k: int = 10,
        seed: int = 0,
        rate: float | None = None,
        timeout: float = 10.0,
        user_prefix: str = "user",
        population: Population | None = None,
    ) -> None:
        if not queries:
            raise SimulatorError("no queries to send")
        if users < 1 or concurrency < 1:
            raise SimulatorError(f"users and concurrency must be at least 1, got {users} and {concurrency}")
        if rate is not None and rate <= 0:
            raise SimulatorError(f"rate must be positive (searches per second), got {rate!r}")
        self.url = url.rstrip("/")
        self.queries = list(queries)
        self.categories = dict(categories)
        self.population = population or Population.uniform(users, user_prefix)
        self.users = self.population.users
        self.concurrency = concurrency
        self.click_model = click_model or ClickModel()
        self.k = k
        self.seed = seed
        self.rate = rate
        self.timeout = timeout
        self.user_prefix = user_prefix
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report: SimReport | None = None
        self._stepper: tuple[random.Random, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self._counts: dict[str, VersionCounts] = defaultdict(VersionCounts)
        self._statuses: Counter[str] = Counter()
        self._sent = self._errors = self._mixed = self._feedback_errors = 0
        self._samples: list[str] = []
        self._next_slot = time.monotonic()

    # --- running ---------------------------------------------------------------------------

    def run(self, requests: int | None = None, duration: float | None = None, stop: threading.Event | None = None) -> SimReport:
        """Send ``requests`` searches, or search for ``duration`` seconds, or until ``stop`` is set."""
        if requests is None and duration is None and stop is None:
            raise SimulatorError("give a number of requests, a duration or a stop event")
        self._reset()
        started = time.monotonic()
        deadline = None if duration is None else started + duration
        budget = iter(range(requests)) if requests is not None else None

        def ticket() -> bool:
            if stop is not None and stop.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if budget is not None:
                with self._lock:
                    return next(budget, None) is not None
            return True

        workers = [threading.Thread(target=self._worker, args=(i, ticket), daemon=True) for i in range(self.concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return self._snapshot(time.monotonic() - started)

    def start(self, duration: float | None = None) -> Simulator:
        """Run in a background thread until ``stop()`` (or ``duration``)."""
        self._stop.clear()
        self._report = None

        def target() -> None:
            self._report = self.run(duration=duration, stop=self._stop)

        self._thread = threading.Thread(target=target, name="lockstep-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> SimReport:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._report is None:
            raise SimulatorError("the simulator thread did not finish")
        return self._report

    def step(self, requests: int = 1) -> SimReport:
        """Send exactly ``requests`` searches from the calling thread, one after another, and return the counts so far.

        The step-by-step mode for tests and notebooks: one seeded random stream carries on
        across calls (same seed, same queries, users and clicks in the same order), and
        the counts accumulate until ``reset_counts``. Pacing (``rate``) does not apply.
        """
        import httpx

        if requests < 0:
            raise SimulatorError(f"requests must be 0 or more, got {requests!r}")
        if self._stepper is None:
            self._stepper = (random.Random(f"{self.seed}:step"), httpx.Client(base_url=self.url, timeout=self.timeout))
        rng, client = self._stepper
        for _ in range(requests):
            query, visitor = self._draw(rng)
            self._one(client, rng, query, visitor)
        return self.snapshot()

    def reset_counts(self) -> None:
        """Start the counts afresh (the step mode's random stream carries on)."""
        with self._lock:
            self._reset()

    def close(self) -> None:
        """Close the step mode's HTTP client (a no-op if ``step`` was never called)."""
        if self._stepper is not None:
            self._stepper[1].close()
            self._stepper = None

    def snapshot(self) -> SimReport:
        """Counts so far, while running."""
        return self._snapshot(float("nan"))

    # --- one worker ------------------------------------------------------------------------

    def _worker(self, index: int, ticket: Callable[[], bool]) -> None:
        import httpx

        rng = random.Random(f"{self.seed}:{index}")
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while ticket():
                self._pace()
                query, visitor = self._draw(rng)
                self._one(client, rng, query, visitor)

    def _draw(self, rng: random.Random) -> tuple[SimQuery, Visitor]:
        """The next request: a random held-out query, from a user drawn by activity (or anonymous)."""
        query = self.queries[rng.randrange(len(self.queries))]
        return query, self.population.visit(rng)

    def _ask(self, client: Any, query: SimQuery, user: str | None) -> Any:
        """One request of a simulated user (a search here; a recommendation in ``RecommenderSimulator``)."""
        body: dict[str, Any] = {"query": query.text, "k": self.k}
        if user is not None:  # an anonymous search carries no user id
            body["user_id"] = user
        return client.post("/search", json=body)

    def _relevance(self, query: SimQuery, results: list[dict[str, Any]]) -> list[bool]:
        """Which results the user finds relevant: records of the query's category."""
        return [query.category is not None and self.categories.get(r["id"]) == query.category for r in results]

    def _one(self, client: Any, rng: random.Random, query: SimQuery, visitor: Visitor) -> None:
        try:
            response = self._ask(client, query, visitor.user_id)
        except Exception as exc:  # the server did not answer: a failed search
            self._failed("none", f"no answer: {type(exc).__name__}: {exc}", "exception")
            return
        version = response.headers.get("X-Lockstep-Model-Version", "none")
        if response.status_code != 200:
            self._failed(version, f"HTTP {response.status_code}: {response.text[:200]}", str(response.status_code))
            return
        body = response.json()
        version = str(body.get("model_version"))
        results = body.get("results") or []
        relevance = self._relevance(query, results)
        clicked = self.click_model.choose(rng, relevance, visitor.propensity)
        with self._lock:
            self._sent += 1
            self._statuses["200"] += 1
            counts = self._counts[version]
            counts.requests += 1
            counts.relevant_at_1 += bool(relevance and relevance[0])
            if str(body.get("index_version")) != version:
                self._mixed += 1
        if clicked is None:
            return
        try:
            ack = client.post("/feedback", json={"request_id": body["request_id"], "record_id": results[clicked]["id"], "event": "click"})
            ok = ack.status_code == 202
        except Exception:
            ok = False
        with self._lock:
            if ok:
                self._counts[version].clicks += 1
            else:
                self._feedback_errors += 1

    def _failed(self, version: str, message: str, status: str) -> None:
        with self._lock:
            self._sent += 1
            self._errors += 1
            self._statuses[status] += 1
            self._counts[version].requests += 1
            self._counts[version].errors += 1
            if len(self._samples) < 20:
                self._samples.append(message)

    def _pace(self) -> None:
        """Keep the total below ``rate`` searches per second (no pacing without a rate)."""
        if self.rate is None:
            return
        with self._lock:
            slot = max(self._next_slot, time.monotonic())
            self._next_slot = slot + 1.0 / self.rate
        wait = slot - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _snapshot(self, seconds: float) -> SimReport:
        with self._lock:
            return SimReport(
                requests=self._sent, errors=self._errors, mixed=self._mixed, seconds=seconds,
                by_version={v: c.to_dict() for v, c in self._counts.items()}, statuses=dict(self._statuses),
                feedback_errors=self._feedback_errors, error_samples=list(self._samples),
            )


# --- the command ------------------------------------------------------------------------------------


def simulate_command(
    users: int = 1000,
    requests: int | None = None,
    duration: float | None = None,
    url: str = "http://127.0.0.1:8000",
    click_model: str = "relevance",
    concurrency: int = 4,
    rate: float | None = None,
    seed: int = 0,
    p_relevant: float = 0.3,
    p_irrelevant: float = 0.02,
    echo: Callable[[str], None] = print,
    users_like: str = "heterogeneous",
    pareto_shape: float = DEFAULT_PARETO_SHAPE,
    anonymous: float = DEFAULT_ANONYMOUS,
    activity_cap: float = DEFAULT_ACTIVITY_CAP,
) -> SimReport:
    """``lockstep simulate``: held-out queries as ``users`` users against ``url``; prints a summary.

    Without ``requests`` or ``duration`` it sends 1000 searches. The population is drawn
    from ``seed`` before anything is sent, so a bad population setting fails first.
    """
    if requests is None and duration is None:
        requests = 1000
    model = ClickModel(click_model, p_relevant=p_relevant, p_irrelevant=p_irrelevant)
    population = Population.draw(users, users_like, seed=seed, pareto_shape=pareto_shape, anonymous=anonymous,
                                 activity_cap=activity_cap)
    categories = record_categories() if model.kind == "relevance" else {}
    queries = held_out_queries(seed=seed)
    echo(f"simulating {population.describe()} against {url} ({len(queries)} held-out queries, click model {model.kind})")
    simulator = Simulator(url, queries, categories, concurrency=concurrency, click_model=model, seed=seed, rate=rate,
                          population=population)
    report = simulator.run(requests=requests, duration=duration)
    echo(report.summary())
    return report


def _version_order(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)
