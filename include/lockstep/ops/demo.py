"""The whole lifecycle on the embedded stack, driven through Airflow's REST API.

``lockstep up`` and ``lockstep demo`` start the real components (Airflow api-server,
scheduler, dag-processor and triggerer; the MLflow UI; the serving app), then play
the story Lockstep exists for, step by step, as a user would:

1. load the corpus: 10 of the 20 newsgroups (the world as it was);
2. ``lockstep_retrain`` trains the first model; the challenger asset starts
   ``lockstep_reembed``; its index becomes champion at 100 %; the index-ready asset
   starts ``lockstep_rollout`` (nothing to roll out for the first champion);
3. traffic: the simulator sends searches and clicks as many users who differ (their own
   click propensity, heavy-tailed activity, some anonymous; seeded: ``ops.population``);
4. the world changes: posts of the other 10 newsgroups arrive as live writes
   through the serving API (``PUT /records``), reaching every index version;
5. ``lockstep_drift`` flags the change and emits the drift asset, which starts
   ``lockstep_retrain``; the new model (trained on all 20 groups) is better, so it is
   re-embedded and rolled out by canary steps under the statistical gates, with live
   traffic, until it serves 100 % and holds alias ``champion``.

``demo`` runs all of it headless and exits non-zero if a step failed; ``up`` runs
steps 1-3 and keeps the stack running until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.core.config import api_token


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class LifecycleReport:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def summary(self) -> str:
        lines = ["step                          result   seconds  detail"]
        for s in self.steps:
            lines.append(f"{s.name:<29} {'ok' if s.ok else 'FAILED':<8} {s.seconds:7.1f}  {s.detail}")
        lines.append("lifecycle " + ("completed" if self.ok else "FAILED"))
        return "\n".join(lines)


DAG_IDS = ("lockstep_retrain", "lockstep_reembed", "lockstep_rollout", "lockstep_drift", "lockstep_rollback")
# Alerts a clean demo raises: it makes the data drift on purpose, and the better model is
# promoted (good news is announced too). Any other alert (a failed task, a rollback, an
# overridden rollout) means the run was not clean.
EXPECTED_ALERTS = frozenset({"drift_detected", "promoted"})
FIRST_HALF = 10  # newsgroups in the first corpus; the other 10 arrive later as drift
DEMO_TRAFFIC_RATE = 30.0  # simulated searches per second
# The demo's simulated users: heterogeneous (lockstep.ops.population), drawn from this seed.
# Enough of them that the heaviest users (Pareto activity) are a small share of a look's
# traffic, so the user-level gates see many users per arm (benchmarks/demo_power.py).
DEMO_USERS = 20000
DEMO_USERS_SEED = 1
# The demo's rollout: canary steps judged by counts, sized so that a candidate no worse than
# the champion is promoted with at least 99 % probability (benchmarks/demo_power.py computes
# it with these very settings; docs/benchmarks.md has the figures).
DEMO_ROLLOUT = {
    "strategy": "canary",
    "canary_steps": [25, 50, 100],
    "min_samples": 600,  # answered requests per arm and look
    "bake_seconds": 0,  # no minimum time: a step is judged once both arms have their counts
    "max_bake_seconds": 900,  # the safety net for a stalled simulator (a look needs ~80 s at 30 searches/s)
    # Per-user (delta-method) gates need more looks than impression counts when a few heavy
    # users dominate an arm: 5 extensions keep an equal candidate's promotion >= 99 % with the
    # demo's heterogeneous users (3 left ~1 % inconclusive; benchmarks/demo_power.py).
    "max_extensions": 5,
    "ctr_tau": 0.5,  # the mixture scale of the mSPRT: wide, so an equal candidate is almost never called worse
    "ctr_margin": 0.1,  # click-through may not drop by more than 0.1 (absolute)
    # The latency gate compares the serving app's own time per search, under a millisecond
    # here: the drift-driven model (a larger vocabulary) measured 0.2 ms (+25 %) slower, which
    # fails the default 20 % tolerance for certain. The demo fails a candidate only when its
    # median search takes twice the champion's.
    "latency_tolerance": 1.0,
    # Between looks the rollout task defers (no worker held). Under LocalExecutor a resume
    # sooner than the scheduler processes the deferring process's exit is taken for an
    # external kill (the task fails), so the demo looks every 15 s, not every second.
    "poll_seconds": 15,
    "rollback_window_seconds": 20,  # the old champion is retired within the demo
}


@dataclass(frozen=True)
class DemoOptions:
    home: Path
    per_category: int = 150  # demo posts per newsgroup and phase (None-like 0: all)
    airflow_port: int = 0  # 0: a free port
    mlflow_port: int = 0
    serving_port: int = 0
    metadata_url: str | None = None
    rate: float = DEMO_TRAFFIC_RATE  # simulated searches per second
    users: int = DEMO_USERS  # simulated users of the search demo (the recommender's are its MovieLens users)
    # "heterogeneous" or "uniform" (identical, equally active users: the old world); None: the
    # story's own default (DemoRun.USERS_LIKE)
    users_like: str | None = None
    drift_phase: bool = True
    # The demo triggers drift itself; a clock-driven drift check or retrain in the middle
    # would start a second lifecycle. ``lockstep up`` keeps them (weekly / hourly).
    time_schedules: bool = False
    timeout: float = 1500.0  # per DAG run
    rollout: dict[str, Any] = field(default_factory=lambda: dict(DEMO_ROLLOUT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoRun:
    """One run of the story; each step is recorded in ``report``."""

    USERS_LIKE = "heterogeneous"  # the simulated users unless DemoOptions.users_like says otherwise

    def __init__(self, options: DemoOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say
        self.report = LifecycleReport()
        self.stack = None
        self.client = None
        self.simulator = None
        self.token = api_token() or secrets.token_urlsafe(16)
        self.facts: dict[str, Any] = {}
        self._seen: dict[str, set[str]] = {}  # DAG runs already followed, per DAG

    # --- steps ---------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], str]) -> bool:
        self.say(f"==> {name}")
        started = time.perf_counter()
        try:
            detail = fn()
        except Exception as exc:  # a failed step ends the story with its reason
            self.report.steps.append(StepResult(name, False, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"))
            self.say(f"    FAILED: {exc}")
            return False
        self.report.steps.append(StepResult(name, True, time.perf_counter() - started, detail))
        self.say(f"    {detail}")
        return True

    def start_stack(self) -> str:
        """Start the stack (after the corpus is loaded); its DAGs are created paused and unpaused here."""
        from lockstep.ops.stack import StackConfig, start

        o = self.options
        config = StackConfig(
            home=o.home,
            airflow_port=o.airflow_port or free_port(),
            mlflow_port=o.mlflow_port or free_port(),
            serving_port=o.serving_port or free_port(),
            metadata_url=o.metadata_url,
            api_token=self.token,
            time_schedules=o.time_schedules,
        )
        # the demo's shorter bakes reach the DAG files the stack parses, not this process
        rollout_defaults = json.dumps({**o.rollout, "serving_url": config.serving_url})
        config = dataclasses.replace(config, extra_env={"LOCKSTEP_ROLLOUT_DEFAULTS": rollout_defaults})
        self.stack = start(config, self.say)
        self.client = self.stack.client()
        self.client.wait_for_dags(list(DAG_IDS))
        for dag_id in self.client.dag_ids():
            self.client.unpause(dag_id)
        return (
            f"Airflow {config.airflow_url} (login admin / {self.stack.password}), "
            f"MLflow UI http://127.0.0.1:{config.mlflow_port}, serving {config.serving_url}"
        )

    def load_first_half(self) -> str:
        from lockstep.store.corpus import DEMO_CATEGORIES
        from lockstep.store.records import RecordStore

        store = RecordStore()
        if store.count():
            return f"record store already holds {store.count():,} records"
        records = self._demo_records("train", DEMO_CATEGORIES[:FIRST_HALF])
        seq = store.upsert_many(records)
        return f"{len(records):,} posts of {FIRST_HALF} newsgroups loaded (sequence {seq})"

    def first_model(self) -> str:
        # The DAG's default dimension, the same as the drift-driven retrain will use: the two
        # versions then differ in what they learnt, not in how long a search takes.
        retrain = self._run("lockstep_retrain", {})
        reembed = self._next_run("lockstep_reembed")
        rollout = self._next_run("lockstep_rollout")
        from lockstep.model.registry import Registry

        champion = Registry().version_for_alias("champion")
        if champion is None:
            raise RuntimeError("no champion after the first re-embedding")
        self.facts["first_champion"] = champion.version
        return f"v{champion.version} is champion at 100 % (runs {retrain}, {reembed}, {rollout})"

    def start_traffic(self) -> str:
        from lockstep.ops.population import Population
        from lockstep.ops.simulator import Simulator, held_out_queries, record_categories

        queries = held_out_queries(seed=1)
        population = Population.draw(self.options.users, self.users_like, seed=DEMO_USERS_SEED)
        self.simulator = Simulator(
            self.stack.config.serving_url, queries, record_categories(), concurrency=3,
            rate=self.options.rate, seed=1, population=population,
        ).start()
        time.sleep(5)
        return f"{len(queries)} held-out queries as {population.describe()} at {self.options.rate:g} searches/s"

    def stream_second_half(self) -> str:
        import httpx

        from lockstep.store.corpus import DEMO_CATEGORIES

        records = self._demo_records("test", DEMO_CATEGORIES[FIRST_HALF:])
        url = self.stack.config.serving_url
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
            for r in records:
                resp = http.put(f"/records/{r.id}", json={"text": r.text, "metadata": r.metadata})
                resp.raise_for_status()
        # Simulated users judge a result by its record's newsgroup: tell them about the new
        # records too, or every click on one would count as irrelevant and the model that
        # finds them would earn no more clicks than the one that does not.
        self.simulator.categories = {**self.simulator.categories, **{r.id: r.metadata["category"] for r in records}}
        return f"{len(records):,} posts of the other {len(DEMO_CATEGORIES) - FIRST_HALF} newsgroups written through PUT /records"

    def drift_and_retrain(self) -> str:
        drift = self._run("lockstep_drift", {"window_hours": 1, "min_records": 50})
        states = self.client.task_states("lockstep_drift", drift)
        if states.get("emit_drift") != "success":
            raise RuntimeError(f"drift was not flagged: {states}")
        retrain = self._next_run("lockstep_retrain")
        from lockstep.model.registry import Registry

        challenger = Registry().version_for_alias("challenger")
        if challenger is None:
            raise RuntimeError("the drift-driven retrain did not produce a challenger (rejected?)")
        self.facts["challenger"] = challenger.version
        return f"drift flagged (run {drift}); retrain {retrain} registered challenger v{challenger.version}"

    def reembed_and_rollout(self) -> str:
        candidate = self.facts.get("challenger")
        reembed = self._next_run("lockstep_reembed")
        return f"v{candidate} {self.rolled_out(candidate, reembed)}"

    def rolled_out(self, candidate: str | None, reembed: str) -> str:
        """Follow the rollout the re-embed's index-ready asset starts; the candidate must end champion."""
        from lockstep.model.registry import Registry

        try:
            rollout = self._next_run("lockstep_rollout")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{explain_rollout(candidate)}") from exc
        champion = Registry().version_for_alias("champion")
        if champion is None or champion.version != candidate:
            raise RuntimeError(
                f"rollout {rollout} ended but the champion is {champion and champion.version}\n{explain_rollout(candidate)}"
            )
        steps = [s for s in rollout_steps_of(candidate) if s["phase"] == "canary"]
        return f"rolled out by canary to 100 % and is champion after {len(steps)} judged looks (runs {reembed}, {rollout})"

    def traffic_summary(self) -> str:
        report = self.simulator.stop()
        self.simulator = None
        self.say(report.summary())
        if report.mixed:
            raise RuntimeError(f"{report.mixed} responses mixed model and index versions")
        if report.errors:
            raise RuntimeError(f"{report.errors} of {report.requests} requests failed: {report.error_samples[:3]}")
        return f"{report.requests} requests, no errors, no mixed versions"

    def clean_run(self) -> str:
        """Nothing went red: no failed DAG run in Airflow, no alert but the drift and the promotion."""
        failed = [f"{r['dag_id']} {r['dag_run_id']}" for r in self.client.failed_runs()]
        alerts = unexpected_alerts(self.options.home / "alerts.jsonl")
        if failed or alerts:
            raise RuntimeError(f"failed DAG runs: {failed or 'none'}; unexpected alerts: {alerts or 'none'}")
        return "no failed DAG run; no alert but the drift the demo causes and the promotion"

    # --- plumbing ------------------------------------------------------------------------------

    @property
    def users_like(self) -> str:
        return self.options.users_like or self.USERS_LIKE

    def _demo_records(self, split: str, categories):
        from lockstep.store.corpus import load_demo_corpus

        records = load_demo_corpus(split=split, categories=list(categories))
        n = self.options.per_category
        if not n:
            return records
        kept: dict[str, int] = {}
        out = []
        for r in records:
            c = r.metadata["category"]
            if kept.get(c, 0) < n:
                kept[c] = kept.get(c, 0) + 1
                out.append(r)
        return out

    def _run(self, dag_id: str, conf: dict[str, Any]) -> str:
        run_id = self.client.trigger(dag_id, conf)
        self._seen.setdefault(dag_id, set()).add(run_id)
        self._finish(dag_id, run_id)
        return run_id

    def _next_run(self, dag_id: str) -> str:
        """Wait for the asset-triggered run of ``dag_id`` we have not seen yet, then for its end."""
        seen = self._seen.setdefault(dag_id, set())
        run_id = self.client.wait_for_new_run(dag_id, seen, timeout=300)
        seen.add(run_id)
        self._finish(dag_id, run_id)
        return run_id

    def _finish(self, dag_id: str, run_id: str) -> None:
        self.say(f"    waiting for {dag_id} run {run_id} ...")
        state = self.client.wait(dag_id, run_id, timeout=self.options.timeout, stack=self.stack)
        if state != "success":
            failed = {k: v for k, v in self.client.task_states(dag_id, run_id).items() if v not in ("success", "skipped")}
            raise RuntimeError(f"{dag_id} run {run_id} ended {state}: {failed}")

    def stop(self) -> None:
        if self.simulator is not None:
            self.simulator.stop()
        if self.stack is not None:
            self.stack.stop()

    # --- the stories ---------------------------------------------------------------------------

    def first_steps(self) -> list[tuple[str, Callable[[], str]]]:
        """Data, stack, first model, traffic: what ``up`` and ``demo`` both run."""
        return [
            ("load 10 newsgroups", self.load_first_half),  # before the scheduler starts
            ("start the stack", self.start_stack),
            ("first model", self.first_model),
            ("start traffic", self.start_traffic),
        ]

    def drift_steps(self) -> list[tuple[str, Callable[[], str]]]:
        """The world changes, drift is flagged, the retrained model is rolled out."""
        return [
            ("stream 10 new newsgroups", self.stream_second_half),
            ("drift -> retrain", self.drift_and_retrain),
            ("re-embed + canary rollout", self.reembed_and_rollout),
        ]

    def run_demo(self) -> LifecycleReport:
        return self._story(self.first_steps(), self.drift_steps())

    def _story(self, first: list[tuple[str, Callable[[], str]]], drift: list[tuple[str, Callable[[], str]]]) -> LifecycleReport:
        """Run the steps in order until one fails (the drift phase only if asked), then stop everything."""
        steps = first + (drift if self.options.drift_phase else [])
        steps += [("traffic summary", self.traffic_summary), ("clean run", self.clean_run)]
        try:
            for name, fn in steps:
                if not self.step(name, fn):
                    break
        finally:
            self.stop()
        return self.report

    def run_up(self, wait: Callable[[], None]) -> LifecycleReport:
        """Start, run the first lifecycle, keep serving with traffic until ``wait`` returns."""
        try:
            for name, fn in self.first_steps():
                if not self.step(name, fn):
                    return self.report
            wait()
        finally:
            self.stop()
        return self.report


# --- reading what a rollout left behind ----------------------------------------------------------


def newest_rollout(model_version: str | None) -> dict[str, Any] | None:
    """The newest recorded rollout of ``model_version`` (None if there is none)."""
    from lockstep.rollout import record

    return next((r for r in record.recent(50) if r["model_version"] == str(model_version)), None)


def rollout_steps_of(model_version: str | None) -> list[dict[str, Any]]:
    """The recorded steps of the newest rollout of ``model_version`` ([] if there is none)."""
    from lockstep.rollout import record

    rollout = newest_rollout(model_version)
    return record.steps(rollout["rollout_id"]) if rollout else []


def explain_rollout(model_version: str | None) -> str:
    """Why the rollout of ``model_version`` did not promote it: the deciding step, its gates and figures.

    Read from the rollout record (tables lockstep_rollouts / lockstep_rollout_steps), so a
    failed demo says which step, which gate and which numbers, not just "failed".
    """
    from lockstep.rollout import record

    rollout = newest_rollout(model_version)
    if rollout is None:
        return f"no rollout of v{model_version} was recorded"
    lines = [f"rollout {rollout['rollout_id']} of v{model_version}: {rollout['status']}"
             + (f" ({rollout['reason']})" if rollout.get("reason") else "")]
    steps = record.steps(rollout["rollout_id"])
    deciding = record.last_failure(rollout["rollout_id"]) or (steps[-1] if steps else None)
    if deciding is None:
        return "\n".join([*lines, "no step was recorded"])
    judged = [s for s in steps if s.get("gates")]
    if not deciding.get("gates") and judged:  # e.g. a task died: show the last look that was judged too
        lines.extend(_step_lines(judged[-1], "last judged look: "))
    lines.extend(_step_lines(deciding, ""))
    return "\n".join(lines)


def _step_lines(deciding: dict[str, Any], prefix: str) -> list[str]:
    """A recorded step: where, what verdict, and each gate that did not pass with its figures."""
    lines = []
    weight = "" if deciding.get("weight") is None else f", {deciding['weight']} % of traffic"
    lines.append(f"{prefix}step {deciding['step']!r} look {deciding.get('look')}{weight}: verdict {deciding['verdict']}, "
                 f"action {deciding.get('action')}")
    gates = [g for g in deciding.get("gates") or [] if g.get("verdict") != "pass"] or list(deciding.get("gates") or [])
    for gate in gates:
        lines.append(f"  gate {gate['name']}: {gate['verdict']}: {gate.get('reason', '')}")
        figures = gate.get("figures") or {}
        if figures:
            lines.append("    " + ", ".join(f"{k}={_number(v)}" for k, v in figures.items()))
    if not gates and deciding.get("reason"):
        lines.append(f"  {deciding['reason']}")
    return lines


def unexpected_alerts(path: Path) -> list[str]:
    """Alerts in ``alerts.jsonl`` other than EXPECTED_ALERTS, as 'event: message' lines."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry.get("event") not in EXPECTED_ALERTS:
            out.append(f"{entry.get('event')}: {entry.get('message', '')}"[:500])
    return out


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
