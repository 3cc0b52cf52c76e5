"""The re-embed plan, written once: its steps in order, each with what it does in one process.

    prepare -> snapshot (the first slice last) -> embed_first_slice -> early_verdict
    -> stop_or_continue (stop_load ends the plan) -> embed (the rest) -> merge -> validate -> publish

A step's name is its task id in ``lockstep_reembed``, which runs each step as a task
(the shards mapped over worker slots, results passed as XCom); that DAG's task order is
checked against ``STEPS`` (``tests/dags/test_reembed_plan.py``). ``lockstep index build``
runs the same steps in one process (``lockstep.index.build.reembed_version``): ``run``
walks ``STEPS`` over one ``Build``, which carries one loaded model and what each step
hands the next. How a step's shards are embedded (in a row, or by a pool of worker
processes) is the runner's choice (``Build.embed_shards``), as the mapped tasks are the DAG's.

``prepare`` refuses a version whose offline verdict is ``rejected`` unless the build
is told ``allow_rejected`` (the DAG's Param, ``lockstep index build --allow-rejected``);
an unevaluated version is built with a warning line.

Without a first slice (``early_verdict_share`` None, the library's default) the snapshot
has a single part, the first-slice steps have nothing to embed or judge, and ``embed``
embeds every shard: the plan of a build before the early verdict existed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lockstep.core.errors import LockstepError
from lockstep.index import steps
from lockstep.index.early_verdict import STOP, judge_first_slice
from lockstep.index.first_slice import DEFAULT_ACTION, DEFAULT_MARGIN
from lockstep.index.manifest import Manifest
from lockstep.index.slot_plan import SlotPlan, load_embedder
from lockstep.index.snapshot import DEFAULT_TARGET_SHARDS
from lockstep.index.vector_index import IndexSpec, VectorIndex
from lockstep.store.records import RecordStore


@dataclass(frozen=True)
class BuildOptions:
    """What one build is told: the DAG's Params, as ``lockstep index build`` takes them."""

    spec: IndexSpec | None = None  # None: chosen from the record count (``vector_index.choose_spec``)
    shard_size: int | None = None  # None: chosen from the record count
    target_shards: int = DEFAULT_TARGET_SHARDS
    promote_if_first: bool = True
    sample_size: int = 200
    min_recall: float = 0.95
    early_verdict_share: float | None = None  # None: no first slice, no early verdict
    early_verdict_action: str = DEFAULT_ACTION
    early_verdict_margin: float = DEFAULT_MARGIN
    allow_rejected: bool = False  # build a version its offline evaluation rejected (``offline_verdict.check_buildable``)


ShardEmbedder = Callable[["Build", list[int]], list[dict[str, Any]]]


@dataclass
class Build:
    """One in-process run of the plan: its inputs, and what each step hands the next (the DAG's XComs)."""

    store: RecordStore
    registry: Any
    version: str | int
    options: BuildOptions
    embed_shards: ShardEmbedder  # embeds these shards of ``snap`` with ``embedder``; their ``embed`` results
    plan: dict[str, Any] = field(default_factory=dict)
    embedder: Any = None
    snap: dict[str, Any] = field(default_factory=dict)
    first: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    rest: list[dict[str, Any]] = field(default_factory=list)
    index: VectorIndex | None = None
    manifest: Manifest | None = None
    checked: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)

    @property
    def slot(self) -> SlotPlan:
        return SlotPlan(**self.plan)


@dataclass(frozen=True)
class Step:
    """One step of the plan: its task id in ``lockstep_reembed``, and what it does in one process."""

    name: str
    run: Callable[[Build], None]


@dataclass(frozen=True)
class Branch:
    """A fork of the plan: when ``taken``, the step ``to`` runs and ends the plan; else the plan goes on."""

    name: str
    taken: Callable[[Build], bool]
    to: Step


def _prepare(build: Build) -> None:
    build.plan = steps.prepare(build.version, build.registry, allow_rejected=build.options.allow_rejected)
    build.embedder = load_embedder(build.slot)  # the local copy prepare just wrote: no second download


def _snapshot(build: Build) -> None:
    o = build.options
    build.snap = steps.snapshot(
        build.plan, o.shard_size, build.store, target_shards=o.target_shards, first_slice_share=o.early_verdict_share,
    )


def _embed_first_slice(build: Build) -> None:
    build.first = build.embed_shards(build, build.snap.get("first_slice", []))


def _early_verdict(build: Build) -> None:
    if "first_slice" not in build.snap:
        return  # no first slice: nothing to judge
    o = build.options
    build.verdict = judge_first_slice(
        build.plan, build.snap, build.first, margin=o.early_verdict_margin, action=o.early_verdict_action,
        registry=build.registry, store=build.store,
    )


def stops(verdict: dict[str, Any] | None) -> bool:
    """Whether an early verdict ends the load (the DAG's ``stop_or_continue`` branches on the same)."""
    return verdict is not None and verdict["verdict"] == STOP


def _stop_load(build: Build) -> None:
    build.stopped = steps.stop_load(build.plan, build.verdict or {}, registry=build.registry)


def _embed_rest(build: Build) -> None:
    build.rest = build.embed_shards(build, build.snap.get("rest", build.snap["shards"]))


def _merge(build: Build) -> None:
    spec = build.options.spec.to_dict() if build.options.spec else None
    extra = {"early_verdict": build.verdict} if build.verdict is not None else None
    build.index, build.manifest = steps.merge_and_save(
        build.slot, build.snap, [*build.first, *build.rest], spec, build.store, build.embedder, extra=extra,
    )


def _validate(build: Build) -> None:
    """Validate the merged index in memory rather than reloading the files just written."""
    if build.index is None or build.manifest is None:
        raise LockstepError("validate runs after merge: there is no merged index")
    build.checked = steps.validate_and_save(
        build.slot, build.index, build.manifest.applied_seq, build.store, build.embedder,
        sample_size=build.options.sample_size, min_recall=build.options.min_recall,
    )
    build.index = None  # the merged index is not needed to publish: free its memory


def _publish(build: Build) -> None:
    build.published = steps.publish(build.plan, build.options.promote_if_first, build.registry)


STEPS: tuple[Step | Branch, ...] = (
    Step("prepare", _prepare),
    Step("snapshot", _snapshot),
    Step("embed_first_slice", _embed_first_slice),
    Step("early_verdict", _early_verdict),
    Branch("stop_or_continue", lambda build: stops(build.verdict), Step("stop_load", _stop_load)),
    Step("embed", _embed_rest),
    Step("merge", _merge),
    Step("validate", _validate),
    Step("publish", _publish),
)


def step_names() -> list[str]:
    """The plan's steps in order, a branch followed by the step it may take (the DAG's task ids)."""
    names: list[str] = []
    for step in STEPS:
        names.append(step.name)
        if isinstance(step, Branch):
            names.append(step.to.name)
    return names


def run(build: Build, done: Callable[[str], None] | None = None) -> Build:
    """Every step of the plan in order over ``build``; ``done`` is told each step's name as it ends."""
    for step in STEPS:
        if isinstance(step, Branch):
            if step.taken(build):
                step.to.run(build)
                if done is not None:
                    done(step.to.name)
                return build
            continue
        step.run(build)
        if done is not None:
            done(step.name)
    return build
