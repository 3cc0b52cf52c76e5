"""What the Lockstep page in the Airflow UI shows, read from the Lockstep database.

The page is an operator's answer to "what is serving, how did it get there, and did
anything roll back?". Everything here is plain Python over the routing table, its
history, the rollout records and the alert log, so the same figures feed the HTML page,
its JSON endpoint and the tests, and none of it needs Airflow.

Rollbacks are read from the records that say so (``lockstep.rollout.record.rollbacks``),
never guessed from the words of a free-text reason: the routing change and the alert of
a rollback are linked to its record by routing generation and rollout id. A traffic
change an operator makes with ``lockstep routing set`` is a routing change (it shows in
the charts with its reason), not a recorded rollback; ``lockstep_rollback`` records one.

The weight chart is an inline SVG rendered here: the page needs no JavaScript and no
network (the Airflow UI is often behind a firewall with no CDN), and a test can read the
chart's numbers straight out of the markup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from lockstep.core import clock, jsonio
from lockstep.core.alerts import recent_alerts
from lockstep.core.config import settings
from lockstep.core.errors import LockstepError
from lockstep.holdback.chart import lift_chart_svg
from lockstep.holdback.report import lift_report
from lockstep.index.early_verdict import early_verdict_of
from lockstep.index.load_progress import latest_load_version, version_load_status
from lockstep.model.registry import Registry
from lockstep.model.version_ref import ModelRef, ModelRefError
from lockstep.ops.weight_chart import WeightPoint, weight_chart_svg
from lockstep.rollout import record
from lockstep.store import schema
from lockstep.store.batch_results import BatchResultStore
from lockstep.store.db import get_engine
from lockstep.store.routing import HistoryEntry, history, read_table, version_key
from lockstep.streaming.status import stream_status

FINGERPRINT_CHARS = 12
# An alert of a rollback that names no rollout id is the same rollback as a record
# within this time of it about the same version.
_SAME_ROLLBACK = timedelta(minutes=5)
# Colours of the chart's series, in version order (readable on white, distinct in print).


@dataclass(frozen=True)
class SlotView:
    """One serving slot as the page lists it."""

    model_version: str
    state: str
    weight: int
    shadow: bool
    fingerprint: str
    fingerprint_short: str
    index_location: str
    model_uri: str
    note: str | None
    updated_at: datetime | None
    mlflow_url: str
    search: str = ""  # the index type, its chosen search setting and the validated recall bound (issue 26)


@dataclass(frozen=True)
class GateView:
    name: str
    verdict: str
    reason: str
    figures: dict[str, float]


@dataclass(frozen=True)
class StepView:
    """One analysis or decision of a rollout (a gate look, a promotion, a rollback)."""

    step: str
    phase: str
    look: int
    weight: int | None
    verdict: str
    action: str | None
    reason: str | None
    gates: tuple[GateView, ...]
    figures: dict[str, float]
    at: datetime | None


@dataclass(frozen=True)
class RolloutView:
    rollout_id: str
    model_version: str
    baseline_version: str | None
    strategy: str
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    reason: str | None
    figures: dict[str, Any]
    steps: tuple[StepView, ...]
    history: tuple[WeightPoint, ...]
    mlflow_url: str
    baseline_mlflow_url: str | None

    @property
    def chart_svg(self) -> str:
        versions = [v for v in (self.baseline_version, self.model_version) if v]
        return weight_chart_svg(self.history, versions=versions, title=f"Traffic weights, rollout of version {self.model_version}")


@dataclass(frozen=True)
class RollbackView:
    at: datetime | None
    model_version: str | None
    reason: str
    sources: tuple[str, ...]  # "rollout", "routing", "alert"


@dataclass(frozen=True)
class Dashboard:
    """Everything the page shows, read at one moment."""

    generated_at: datetime
    generation: int
    model_name: str
    mlflow_ui_url: str
    slots: tuple[SlotView, ...]
    rollouts: tuple[RolloutView, ...]
    rollbacks: tuple[RollbackView, ...]
    alerts: tuple[dict[str, Any], ...]
    history: tuple[WeightPoint, ...]  # oldest first, the most recent changes
    problems: tuple[str, ...] = field(default=())  # parts that could not be read, said plainly
    system: str = "search"  # the deployment's system (LOCKSTEP_SYSTEM): search or recommender
    # Issue 13: the holdback's daily lift (``LiftReport.to_dict``: never the salt) and its chart,
    # the streaming loader's progress per (source, group).
    holdback: dict[str, Any] | None = None
    holdback_chart: str = ""
    streams: tuple[dict[str, Any], ...] = ()
    # Batch serving's freshness per version: its state row, and how many input changes it is behind.
    batch: tuple[dict[str, Any], ...] = ()
    # Issue 14: the early verdict of the newest versions (``early_verdict_of``), newest first.
    early_verdicts: tuple[dict[str, Any], ...] = ()
    # Issue 24: each bulk load of the newest versions (``index.load_progress.load_status``):
    # records done, rate, ETA, the shards' states; a finished load stays visible.
    loads: tuple[dict[str, Any], ...] = ()

    @property
    def history_svg(self) -> str:
        return weight_chart_svg(self.history, title="Traffic weights, recent routing changes")

    def to_dict(self) -> dict[str, Any]:
        """The ``/api/state`` answer: the same data as the page, JSON-ready."""
        return jsonio.plain(asdict(self))


# --- reading ---------------------------------------------------------------------------------


def load_dashboard(
    engine: Engine | str | None = None,
    *,
    system: Any,
    mlflow_ui_url: str | None = None,
    model_name: str | None = None,
    rollout_limit: int = 10,
    history_limit: int = 500,
    alert_limit: int = 50,
    verdict_limit: int = 10,
) -> Dashboard:
    """Read the page's data; parts that fail (alert file, rollout tables) become ``problems``.

    The routing table is the one part that must be readable: without it the page has
    nothing true to say, so its errors (a ``ConfigurationError`` naming the database)
    propagate to the caller. ``system`` is the deployment's ``lockstep.systems.System``
    (``lockstep.systems.load_dashboard`` passes the current one).
    """
    eng = engine if isinstance(engine, Engine) else get_engine(engine)
    base = (mlflow_ui_url or configured_mlflow_ui_url()).rstrip("/")
    name = model_name or _configured_model_name()
    problems: list[str] = []

    table = read_table(eng)
    points = tuple(reversed([_point(e) for e in history(limit=history_limit, engine=eng)]))
    slots = tuple(_slot_view(s, base, name) for s in table.slots)

    try:
        rollouts = tuple(_rollouts(eng, points, base, name, rollout_limit))
    except (SQLAlchemyError, KeyError, TypeError, ValueError) as exc:  # the rest of the page still helps
        problems.append(f"rollout records could not be read: {exc}")
        rollouts = ()

    try:
        recorded = record.rollbacks(rollout_limit, engine=eng)
    except SQLAlchemyError as exc:
        problems.append(f"rollback records could not be read: {exc}")
        recorded = []

    try:
        alerts = tuple(reversed(recent_alerts(alert_limit)))
    except (OSError, ValueError) as exc:
        problems.append(f"the alert log could not be read: {exc}")
        alerts = ()

    holdback, holdback_chart = _holdback(eng, problems)
    streams = _streams(eng, problems)
    batch = _batch_freshness(eng, problems, system.input_head)
    verdicts = _early_verdicts(slots, problems, verdict_limit if system.has_early_verdict else 0)
    loads = _loads(slots, problems, verdict_limit if system.has_early_verdict else 0)

    return Dashboard(
        generated_at=clock.now(),
        generation=table.generation,
        model_name=name,
        mlflow_ui_url=base,
        slots=slots,
        rollouts=rollouts,
        rollbacks=tuple(find_rollbacks(recorded, points, alerts)),
        alerts=alerts,
        history=points,
        problems=tuple(problems),
        system=system.name,
        holdback=holdback,
        holdback_chart=holdback_chart,
        streams=streams,
        batch=batch,
        early_verdicts=verdicts,
        loads=loads,
    )


def _holdback(eng: Engine, problems: list[str]) -> tuple[dict[str, Any] | None, str]:
    """The lift report of the last days and its chart; (None, "") with a problem when unreadable."""
    try:
        report = lift_report(eng)
    except (SQLAlchemyError, ValueError) as exc:
        problems.append(f"the holdback report could not be read: {exc}")
        return None, ""
    return report.to_dict(), lift_chart_svg(report)


def _early_verdicts(slots: Sequence[SlotView], problems: list[str], limit: int) -> tuple[dict[str, Any], ...]:
    """The early verdicts of the newest ``limit`` slots' versions, read from their MLflow tags.

    The tags outlive a stopped load (its files are deleted), so a version stopped early
    still shows why. A system without an early verdict (the recommender's fit is judged
    whole) asks for none (``limit`` 0).
    """
    if limit < 1:
        return ()
    try:
        registry = Registry()
        registered = {v.version for v in registry.latest_versions(limit)}  # a slot may name another model
        newest = sorted({s.model_version for s in slots} & registered, key=version_key, reverse=True)
        found = [early_verdict_of(version, registry) for version in newest]
    except Exception as exc:  # noqa: BLE001 - the registry may be down; the rest of the page still helps
        problems.append(f"early verdicts could not be read from MLflow: {type(exc).__name__}: {exc}")
        return ()
    return tuple(v for v in found if v is not None)


def _loads(slots: Sequence[SlotView], problems: list[str], limit: int) -> tuple[dict[str, Any], ...]:
    """The load state of the newest ``limit`` versions with a slot or a load folder, newest first.

    A load in progress has no slot until its index is published, so the version whose load
    was updated last is shown too. Only a system whose versions are loaded in shards (the
    search system: ``limit`` > 0) has any.
    """
    if limit < 1:
        return ()
    try:
        versions = {s.model_version for s in slots}
        latest = latest_load_version()
        if latest is not None:
            versions.add(latest)
        newest = sorted(versions, key=version_key, reverse=True)[:limit]
        found = [version_load_status(v) for v in newest]
    except (OSError, ValueError, LockstepError) as exc:  # a broken load file: the rest of the page still helps
        problems.append(f"load progress could not be read: {type(exc).__name__}: {exc}")
        return ()
    return tuple(f for f in found if f is not None)


def _batch_freshness(eng: Engine, problems: list[str], input_head: Callable[[Engine], int]) -> tuple[dict[str, Any], ...]:
    """Each version's batch rows: complete or not, how many, through which input sequence, and
    ``behind``: the input changes (record changes, or interactions) committed since then."""
    try:
        states = BatchResultStore(eng).states()
        head = input_head(eng)
    except SQLAlchemyError as exc:
        problems.append(f"batch serving's table could not be read: {exc}")
        return ()
    newest_first = sorted(states, key=lambda st: version_key(st.model_version), reverse=True)
    return tuple({**st.to_dict(), "behind": max(0, head - st.through_seq)} for st in newest_first)


def _streams(eng: Engine, problems: list[str]) -> tuple[dict[str, Any], ...]:
    """The streaming loader's progress rows (empty: no loader has run against this database)."""
    try:
        return tuple(stream_status(eng))
    except SQLAlchemyError as exc:
        problems.append(f"the streaming loader's progress could not be read: {exc}")
        return ()


def configured_mlflow_ui_url() -> str:
    """Where people open the MLflow UI (``LOCKSTEP_MLFLOW_UI_URL``); not the tracking URI,
    which may be a database or a compose-internal host name a browser cannot reach."""

    return settings().mlflow_ui_url


def mlflow_version_url(base: str, model_name: str, version: str) -> str:
    """Link to a model version's page in the MLflow UI."""
    return f"{base.rstrip('/')}/#/models/{quote(model_name, safe='')}/versions/{quote(str(version), safe='')}"


def short_fingerprint(fingerprint: str, chars: int = FINGERPRINT_CHARS) -> str:
    """The fingerprint's digest cut to a readable prefix (``sha256:`` dropped)."""
    digest = fingerprint.split(":", 1)[1] if ":" in fingerprint else fingerprint
    return digest[:chars]


def find_rollbacks(
    recorded: Iterable[record.Rollback], points: Sequence[WeightPoint], alerts: Iterable[Mapping[str, Any]]
) -> list[RollbackView]:
    """One entry per recorded rollback, newest first, with where else it shows.

    The routing change is the record's generation (or, for a record that names none,
    the change in the rollout's span that took the version's last traffic); an alert
    belongs to the record its ``rollout_id``/``rollback_id`` names. An alert no record
    matches is listed too (a record that could not be written still shows).
    """
    views: dict[str, RollbackView] = {}
    for rb in recorded:
        sources = ("rollout", "routing") if _routing_change_of(rb, points) is not None else ("rollout",)
        views[rb.rollout_id] = RollbackView(rb.at, rb.version, rb.reason, sources)
    unlinked: list[RollbackView] = []
    for a in alerts:
        if a.get("event") != "rollback":
            continue
        details = a.get("details") or {}
        rid = details.get("rollout_id") or details.get("rollback_id")
        if rid in views:
            views[rid] = replace(views[rid], sources=(*views[rid].sources, "alert"))
            continue
        version = details.get("model_version") or details.get("candidate") or _version_in(str(a.get("message", "")))
        unlinked.append(RollbackView(clock.utc_or_none(a.get("at")), None if version is None else str(version), str(a.get("message", "")), ("alert",)))
    return _merge_rollbacks([*views.values(), *unlinked])


# --- the chart -------------------------------------------------------------------------------


# --- internals -------------------------------------------------------------------------------


def _configured_model_name() -> str:

    return settings().model_name


def _slot_view(slot: Any, base: str, model_name: str) -> SlotView:
    name = _model_name_in(slot.model_uri) or model_name
    return SlotView(
        model_version=slot.model_version,
        state=slot.state,
        weight=slot.weight,
        shadow=slot.shadow,
        fingerprint=slot.fingerprint,
        fingerprint_short=short_fingerprint(slot.fingerprint),
        index_location=slot.index_location,
        model_uri=slot.model_uri,
        note=slot.note,
        updated_at=clock.utc_or_none(slot.updated_at),
        mlflow_url=mlflow_version_url(base, name, slot.model_version),
        search=index_search_summary(slot.index_location),
    )


def index_search_summary(location: str | None) -> str:
    """"hnsw, ef_search 192: recall@10 0.957, 95 % lower bound 0.951 (1,000 fragments)" from a version's manifest.

    What validation chose and how sure it is (``lockstep.index.tuning``); empty when the
    manifest cannot be read (a version still loading, a store that is down): the page
    must render whatever the store does.
    """
    from lockstep.index import mirror
    from lockstep.index.kinds import SEARCH_KNOBS
    from lockstep.index.manifest import MANIFEST, read_manifest

    if not location:
        return ""
    try:
        folder = mirror.working_dir(location)
        mirror.pull(folder / MANIFEST, refresh=True)
        manifest = read_manifest(folder)
    except Exception:  # noqa: BLE001 - a summary, never a reason for the page to fail
        return ""
    kind = str(manifest.spec.get("kind", ""))
    figures = dict(manifest.extra.get("validation") or {})
    knobs = SEARCH_KNOBS.get(kind, ())
    settings = ", ".join(f"{name} {manifest.spec[name]}" for name in knobs if name in manifest.spec)
    head = f"{kind}, {settings}" if settings else kind
    if "recall_at_10_lower_95" not in figures:
        return head + (": exact" if kind == "flat" else "")
    worst = min((k for k in figures if k.startswith("recall_at_10_") and k.endswith("_lower_95") and k != "recall_at_10_lower_95"),
                key=lambda k: figures[k], default=None)
    kind_name = worst[len("recall_at_10_"):-len("_lower_95")] if worst else ""
    count = int(figures.get(f"queries_{kind_name}", 0))
    return (f"{head}: recall@10 {figures.get('recall_at_10', 0):.3f}, 95 % lower bound "
            f"{figures['recall_at_10_lower_95']:.3f}" + (f" ({count:,} {kind_name})" if count else ""))


def _point(entry: HistoryEntry) -> WeightPoint:
    return WeightPoint(
        generation=entry.generation,
        at=clock.utc_or_none(entry.at) or clock.now(),
        weights=dict(sorted(entry.weights.items(), key=lambda kv: version_key(kv[0]))),
        shadow=tuple(entry.shadow),
        reason=entry.reason,
        actor=entry.actor,
    )


def _rollouts(eng: Engine, points: Sequence[WeightPoint], base: str, model_name: str, limit: int) -> list[RolloutView]:
    """Recent rollouts with their steps; none if the rollout tables are not in this schema."""
    rollouts_t = getattr(schema, "rollouts", None)
    steps_t = getattr(schema, "rollout_steps", None)
    if rollouts_t is None:
        return []
    with eng.connect() as conn:
        rows = conn.execute(select(rollouts_t).order_by(rollouts_t.c.started_at.desc()).limit(limit)).mappings().all()
        ids = [r["rollout_id"] for r in rows]
        step_rows: list[Mapping[str, Any]] = []
        if steps_t is not None and ids:
            step_rows = conn.execute(
                select(steps_t).where(steps_t.c.rollout_id.in_(ids)).order_by(steps_t.c.id)
            ).mappings().all()
    steps_by_rollout: dict[str, list[StepView]] = {i: [] for i in ids}
    for s in step_rows:
        steps_by_rollout[s["rollout_id"]].append(_step_view(s))

    out = []
    for r in rows:
        started, ended = clock.utc_or_none(r["started_at"]), clock.utc_or_none(r.get("ended_at"))
        baseline = r.get("baseline_version")
        out.append(
            RolloutView(
                rollout_id=r["rollout_id"],
                model_version=str(r["model_version"]),
                baseline_version=None if baseline is None else str(baseline),
                strategy=r.get("strategy") or "",
                status=r.get("status") or "",
                started_at=started,
                ended_at=ended,
                reason=r.get("reason"),
                figures=dict(r.get("figures") or {}),
                steps=tuple(steps_by_rollout[r["rollout_id"]]),
                history=_window(points, started, ended),
                mlflow_url=mlflow_version_url(base, model_name, str(r["model_version"])),
                baseline_mlflow_url=None if baseline is None else mlflow_version_url(base, model_name, str(baseline)),
            )
        )
    return out


def _step_view(row: Mapping[str, Any]) -> StepView:
    gates = []
    for g in row.get("gates") or []:
        if isinstance(g, Mapping):
            gates.append(
                GateView(
                    name=str(g.get("name", "?")),
                    verdict=str(g.get("verdict", "")),
                    reason=str(g.get("reason", "")),
                    figures=dict(g.get("figures") or {}),
                )
            )
    weight = row.get("weight")
    return StepView(
        step=str(row.get("step") or ""),
        phase=str(row.get("phase") or ""),
        look=int(row.get("look") or 1),
        weight=None if weight is None else int(weight),
        verdict=str(row.get("verdict") or ""),
        action=row.get("action"),
        reason=row.get("reason"),
        gates=tuple(gates),
        figures=dict(row.get("figures") or {}),
        at=clock.utc_or_none(row.get("at")),
    )


def _window(points: Sequence[WeightPoint], start: datetime | None, end: datetime | None) -> tuple[WeightPoint, ...]:
    """The changes of a rollout: those inside its time span, led by the state it started from."""
    if start is None:
        return ()
    inside = [p for p in points if p.at >= start and (end is None or p.at <= end)]
    before = [p for p in points if p.at < start]
    return tuple(before[-1:] + inside)


def _merge_rollbacks(found: list[RollbackView]) -> list[RollbackView]:
    """Newest first; an alert that named no rollout joins the record close in time about the same version."""
    found.sort(key=lambda r: r.at or datetime.min.replace(tzinfo=UTC))
    merged: list[RollbackView] = []
    for r in found:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.at is not None
            and r.at is not None
            and r.at - last.at <= _SAME_ROLLBACK
            and (last.model_version is None or r.model_version is None or last.model_version == r.model_version)
            and not set(r.sources) & set(last.sources)
        ):
            # The rollout record's reason is the most specific; keep the first reason otherwise.
            reason = r.reason if "rollout" in r.sources else last.reason
            merged[-1] = RollbackView(last.at, last.model_version or r.model_version, reason, last.sources + r.sources)
        else:
            merged.append(r)
    return list(reversed(merged))


def _model_name_in(model_uri: str) -> str | None:
    """The registered model's name in a ``models:/<name>/<version>`` URI."""
    try:
        ref = ModelRef.parse(model_uri)
    except ModelRefError:
        return None
    return ref.name if ref.version is not None else None


def _routing_change_of(rb: record.Rollback, points: Sequence[WeightPoint]) -> WeightPoint | None:
    """The routing change that moved a recorded rollback's traffic, if the history still holds it."""
    if rb.generation is not None:
        return next((p for p in points if p.generation == rb.generation), None)
    if rb.version is None or rb.at is None:
        return None
    previous: WeightPoint | None = None
    found = None
    for p in points:  # oldest first: the last change up to the record's end that cut the version to 0
        if p.at > rb.at:
            break
        if previous is not None and previous.weights.get(rb.version, 0) > 0 and p.weights.get(rb.version, 0) == 0:
            found = p
        previous = p
    return found


def _version_in(text: str) -> str | None:
    match = re.search(r"\bversion\s+(\w[\w.-]*)", text, re.IGNORECASE)
    return match.group(1) if match else None
