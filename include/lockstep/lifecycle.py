"""The first lifecycle on the embedded default, as one headless run.

Load the demo corpus (once), train and register a model, build and validate its
index, make it the champion at 100 % of traffic, and answer a few searches through
the routing table. Each step is timed and reported; the run stops at the first
failed step and says which one, so ``lockstep demo`` can exit non-zero.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEMO_QUERIES = (
    "nasa shuttle launch orbit",
    "gun control laws and the second amendment",
    "graphics card drivers for windows",
)


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
        return all(s.ok for s in self.steps)

    def summary(self) -> str:
        lines = ["step                 result   seconds  detail"]
        for s in self.steps:
            lines.append(f"{s.name:<20} {'ok' if s.ok else 'FAILED':<8} {s.seconds:7.1f}  {s.detail}")
        lines.append("lifecycle " + ("completed" if self.ok else "FAILED"))
        return "\n".join(lines)


def run_first_lifecycle(say: Callable[[str], None] = print, *, dim: int = 256) -> LifecycleReport:
    from .config import settings
    from .records import RecordStore
    from .registry import Registry

    cfg = settings()
    cfg.ensure_home()
    report = LifecycleReport()
    state: dict[str, Any] = {}

    def step(name: str, fn: Callable[[], str]) -> bool:
        say(f"==> {name}")
        started = time.perf_counter()
        try:
            detail = fn()
            report.steps.append(StepResult(name, True, time.perf_counter() - started, detail))
            say(f"    {detail}")
            return True
        except Exception as exc:  # a failed step ends the run with its reason
            report.steps.append(StepResult(name, False, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"))
            say(f"    FAILED: {exc}")
            say(traceback.format_exc(limit=3))
            return False

    def load() -> str:
        from .corpus import load_demo_corpus

        store = RecordStore()
        if store.count() > 0:
            return f"record store already holds {store.count():,} records (sequence {store.head()})"
        records = load_demo_corpus()
        seq = store.upsert_many(records)
        return f"loaded {len(records):,} demo records (sequence {seq})"

    def train() -> str:
        from .training import TrainConfig, train_and_register

        outcome = train_and_register(
            RecordStore(), Registry(), TrainConfig(dim=dim), work_dir=cfg.home / "runs" / time.strftime("up-%Y%m%d-%H%M%S")
        )
        state["version"] = outcome.version
        if outcome.alias is None:
            raise RuntimeError(f"v{outcome.version} was not accepted: {outcome.report.reason}")
        return f"registered {cfg.model_name} v{outcome.version}: {outcome.report.reason}"

    def index() -> str:
        from .reembed import reembed_version

        out = reembed_version(RecordStore(), Registry(), state["version"])
        champion = "; now champion at 100 %" if out["became_champion"] else ""
        return f"index of v{out['model_version']}: {out['records']:,} records in {out['shards']} shards{champion}"

    def search() -> str:
        from .serving.cli import search_once

        versions = set()
        for q in DEMO_QUERIES:
            outcome = search_once(q, 5, user_id="demo-user", echo=False)
            versions.add(outcome.model_version)
            say(f"    '{q}' -> v{outcome.model_version}: {', '.join(outcome.hits.ids[:5])}")
        return f"{len(DEMO_QUERIES)} searches answered by version(s) {sorted(versions)}"

    for name, fn in (("load demo corpus", load), ("train + register", train), ("build index", index), ("search", search)):
        if not step(name, fn):
            break
    return report
