"""The early verdict: judge a candidate on its first slice of records while the bulk load runs.

At millions of records a full re-embed is the most expensive way to learn that a
candidate is worse. ``lockstep_reembed`` therefore embeds a *uniform sample* of the
snapshot first (``early_verdict_share``, default 10 %), and compares the candidate with
the champion on exactly those records before it embeds the rest:

- **The first slice** is chosen by a seeded hash of the record id (``in_first_slice``),
  not by position, so it is spread evenly over old and new records, every category and
  every id range. ``write_sliced_snapshot`` streams the store once: the other records
  become the usual row groups, the sample is collected in a side file and appended as
  the last row groups (the parquet footer names how many), so each shard task still
  reads only its own row group and memory holds one shard at a time
  (``lockstep.index.first_slice``, which also holds the settings and their check).
- **Restricted to the same records**: the champion's full index is searched with a FAISS
  ``IDSelector`` that admits only records the candidate has loaded
  (``VectorIndex.search_within``; a flat index gathers just those rows instead, which is
  exact and far faster than FAISS's filtered flat scan); the candidate's partial index is
  searched with the same filter. Both models answer the same queries over the same documents.
- **Held-out queries** are the offline evaluation's (same id hash as
  ``lockstep.training.fit.is_holdout``, labelled, seeded cap), the documents the loaded
  labelled records that are not held out; nDCG@10 and precision@10 per query, and the
  paired bootstrap CI of the difference (seeded), as in the retrain's evaluation.
- **Recent logged queries** (the request log, unpinned, last 24 h): top-k overlap of the
  two restricted result lists and each model's time to embed one query.

Verdict: ``no baseline`` (no champion, or it cannot be loaded: the load continues),
``stop`` (action ``stop`` and the CI's upper bound of the nDCG difference below
``-margin``), ``warn`` (the same finding under action ``warn``, the default: the load
continues), else ``continue``. It is logged to the MLflow version (tags
``lockstep.early_verdict*``, metrics ``early_verdict.*`` on the version's run), the task
log, the slot note and the index manifest (``extra.early_verdict``); ``early_verdict_of``
reads it back for the UI. Stopping (``lockstep.index.steps.stop_load``) retires the slot with the reason, tags
the version rejected and deletes its folder (shards, partial files); the champion's
routing, aliases and index files are never written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.index.first_slice import (
    DEFAULT_ACTION,
    DEFAULT_MARGIN,
    DEFAULT_SHARE,
    check_settings,
    snapshot_ids,
)
from lockstep.index.slot_plan import SlotPlan, load_embedder, snapshot_path
from lockstep.store.records import RecordStore

log = logging.getLogger("lockstep.early_verdict")

LOGGED_QUERY_HOURS = 24
MAX_LOGGED_QUERIES = 500
TAG = "lockstep.early_verdict"
METRIC_PREFIX = "early_verdict."
NO_BASELINE, CONTINUE, WARN, STOP = "no baseline", "continue", "warn", "stop"


# --- the evaluation settings the candidate was trained with ------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """What the offline evaluation used (from the version's run; defaults for imported models)."""

    label_key: str = "category"
    holdout_percent: int = 10
    max_eval_queries: int = 1500
    k: int = 10
    n_boot: int = 1000
    seed: int = 0
    alpha: float = 0.05

    @classmethod
    def from_run_params(cls, params: Mapping[str, str]) -> EvalSettings:
        """The run's params as settings; a missing or unreadable one keeps its default."""
        values: dict[str, Any] = {}
        for name, kind in (("label_key", str), ("holdout_percent", int), ("max_eval_queries", int),
                           ("k", int), ("n_boot", int), ("seed", int)):
            raw = params.get(name)
            try:
                values[name] = kind(raw) if raw not in (None, "", "None") else getattr(cls, name)
            except ValueError:
                values[name] = getattr(cls, name)
        return cls(**values)


def is_held_out(record_id: str, percent: int) -> bool:
    """The offline evaluation's hold-out (the same hash as ``lockstep.training.fit.is_holdout``).

    Repeated here because the index layer may not import training; a test keeps the two equal.
    """
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < percent


# --- the verdict ----------------------------------------------------------------------------------


@dataclass
class EarlyVerdict:
    """The decision, the sentence behind it, and its figures (flat, valid MLflow metric keys)."""

    verdict: str
    reason: str
    action: str
    margin: float
    share: float
    champion_version: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    at: str = field(default_factory=clock.now_iso)

    @property
    def stops(self) -> bool:
        return self.verdict == STOP

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(figures: Mapping[str, float], *, margin: float, action: str, champion: str, label: str = "nDCG@10") -> EarlyVerdict:
    """continue | warn | stop from the paired CI of the nDCG difference (candidate - champion).

    Worse means the CI's upper bound lies below ``-margin``: even the most favourable
    reading of the sample says the candidate loses more than the margin. Only then does
    ``action`` matter: ``stop`` stops the load, ``warn`` continues and warns.
    """
    diff, low, high = figures["delta_ndcg_at_10"], figures["delta_ndcg_at_10_ci_low"], figures["delta_ndcg_at_10_ci_high"]
    head = (
        f"on {int(figures['loaded_records'])} loaded records ({100 * figures['share']:.0f} % sample), "
        f"candidate {label} {figures['ndcg_at_10']:.4f} vs champion v{champion} {figures['champion_ndcg_at_10']:.4f}: "
        f"difference {diff:+.4f} (95% CI {low:+.4f} to {high:+.4f}) over {int(figures['n_queries'])} held-out queries"
    )
    if "logged_overlap_at_10" in figures:
        head += f"; top-10 overlap {figures['logged_overlap_at_10']:.2f} on {int(figures['logged_queries'])} logged queries"
    worse = high < -margin
    if not worse:
        return EarlyVerdict(CONTINUE, f"continue: {head}; not worse beyond the margin {margin:.4f}", action, margin,
                            figures["share"], champion, dict(figures))
    verdict = STOP if action == STOP else WARN
    tail = "the load is stopped" if verdict == STOP else "the load continues (action warn)"
    return EarlyVerdict(verdict, f"{verdict}: {head}; worse beyond the margin {margin:.4f}: {tail}", action, margin,
                        figures["share"], champion, dict(figures))


def no_baseline(reason: str, *, margin: float, action: str, share: float, figures: Mapping[str, float] | None = None,
                champion: str | None = None) -> EarlyVerdict:
    return EarlyVerdict(NO_BASELINE, f"no baseline: {reason}; the load continues", action, margin, share, champion,
                        dict(figures or {}))


# --- evaluating the first slice ----------------------------------------------------------------


@dataclass
class Side:
    """One model with the index it is judged on."""

    embedder: Any
    index: Any  # VectorIndex
    gather_below: float = 0.5  # a flat index: search the allowed rows only below this share (search_within)

    def search(self, texts: Sequence[str], allowed: set[str], k: int, ef_search: int | None = None):
        vectors = self.embedder.transform(list(texts))
        return self.index.search_within(vectors, allowed, k, ef_search=ef_search, gather_below=self.gather_below)

    def query_ms(self, texts: Sequence[str]) -> float:
        """Median time to embed one query (the model's share of a search's latency)."""
        times = []
        for text in texts:
            started = time.perf_counter()
            self.embedder.transform([text])
            times.append(1000 * (time.perf_counter() - started))
        return float(np.median(times)) if times else math.nan


def evaluate_first_slice(
    candidate: Side,
    champion: Side,
    store: RecordStore,
    snapshot_file: str | Path,
    settings: EvalSettings,
    *,
    logged_queries: Sequence[str] = (),
) -> dict[str, float]:
    """Candidate and champion on the held-out queries and logged queries, over the loaded records only."""
    from lockstep.model.evaluation import ndcg_at_k, paired_bootstrap_diff, precision_at_k

    loaded = set(candidate.index.ids)
    queries, docs = held_out_set(store, snapshot_ids(snapshot_file), loaded, settings)
    allowed = {rid for rid in docs if rid in champion.index}
    figures: dict[str, float] = {
        "loaded_records": float(len(loaded)), "judged_docs": float(len(allowed)), "n_queries": float(len(queries)),
    }
    if not queries or not allowed:
        return figures
    texts = [text for _, text, _ in queries]
    labels = [label for _, _, label in queries]
    doc_label = {rid: docs[rid] for rid in allowed}
    k = settings.k
    n_rel = _relevant_counts(labels, doc_label)
    ef = _ef_for(len(allowed), len(champion.index), k)
    per_model = {}
    for name, side in (("", candidate), ("champion_", champion)):
        hits = side.search(texts, allowed, k, ef_search=ef)
        rel = np.array([[1.0 if doc_label[r] == lab else 0.0 for r in h.ids] + [0.0] * (k - len(h.ids))
                        for h, lab in zip(hits, labels, strict=True)])
        per_model[name] = {"ndcg": ndcg_at_k(rel, n_rel, k), "precision": precision_at_k(rel, k)}
        figures[f"{name}ndcg_at_{k}"] = float(per_model[name]["ndcg"].mean())
        figures[f"{name}precision_at_{k}"] = float(per_model[name]["precision"].mean())
    for metric in ("ndcg", "precision"):
        diff, low, high, p_better = paired_bootstrap_diff(
            per_model[""][metric], per_model["champion_"][metric], n_boot=settings.n_boot, alpha=settings.alpha,
            seed=settings.seed,
        )
        key = f"{metric}_at_{k}"
        figures.update({f"delta_{key}": diff, f"delta_{key}_ci_low": low, f"delta_{key}_ci_high": high,
                        f"p_better_{key}": p_better})
    figures.update(_logged_figures(candidate, champion, logged_queries, loaded, k, ef, settings))
    return figures


def held_out_set(
    store: RecordStore, snapshot_ids_: Iterable[str], loaded: set[str], settings: EvalSettings,
) -> tuple[list[tuple[str, str, Any]], dict[str, Any]]:
    """(queries as (id, text, label), {doc id: label}): the offline evaluation's split, restricted.

    Queries are the held-out labelled records of the snapshot (a seeded sample of at most
    ``max_eval_queries``); documents are the loaded, labelled records not held out.
    Texts and labels are read from the store now (a record deleted since is left out).
    """
    held = [rid for rid in snapshot_ids_ if is_held_out(rid, settings.holdout_percent)]
    rng = np.random.default_rng(settings.seed)
    if len(held) > 2 * settings.max_eval_queries:  # most records are labelled: read twice the cap, not all
        held = [held[i] for i in np.sort(rng.choice(len(held), 2 * settings.max_eval_queries, replace=False))]
    found = store.get_many(held)
    queries = [(rid, found[rid].text, _label(found[rid], settings.label_key)) for rid in held if rid in found]
    queries = [q for q in queries if q[2] is not None]
    if len(queries) > settings.max_eval_queries:
        keep = np.sort(rng.choice(len(queries), settings.max_eval_queries, replace=False))
        queries = [queries[i] for i in keep]
    doc_ids = [rid for rid in loaded if not is_held_out(rid, settings.holdout_percent)]
    docs = {rid: _label(rec, settings.label_key) for rid, rec in store.get_many(doc_ids).items()}
    return queries, {rid: label for rid, label in docs.items() if label is not None}


def _logged_figures(candidate: Side, champion: Side, texts: Sequence[str], loaded: set[str], k: int, ef: int,
                    settings: EvalSettings) -> dict[str, float]:
    """Top-k overlap of the two restricted result lists on recent logged queries, and query latency."""
    from lockstep.model.evaluation import bootstrap_ci

    allowed = {rid for rid in loaded if rid in champion.index}
    if not texts or not allowed:
        return {"logged_queries": float(len(texts))}
    ours = candidate.search(texts, allowed, k, ef_search=ef)
    theirs = champion.search(texts, allowed, k, ef_search=ef)
    overlap = [len(set(a.ids) & set(b.ids)) / max(1, min(k, len(b.ids))) for a, b in zip(ours, theirs, strict=True)]
    mean, low, high = bootstrap_ci(overlap, n_boot=settings.n_boot, seed=settings.seed)
    timed = list(texts[:100])
    return {
        "logged_queries": float(len(texts)), "logged_overlap_at_10": mean,
        "logged_overlap_at_10_ci_low": low, "logged_overlap_at_10_ci_high": high,
        "query_ms": candidate.query_ms(timed), "champion_query_ms": champion.query_ms(timed),
    }


def _relevant_counts(labels: Sequence[Any], doc_label: Mapping[str, Any]) -> np.ndarray:
    counts: dict[Any, int] = {}
    for label in doc_label.values():
        counts[label] = counts.get(label, 0) + 1
    return np.array([counts.get(label, 0) for label in labels], dtype=np.int64)


def _ef_for(allowed: int, total: int, k: int) -> int:
    """An HNSW beam wide enough for a filter that admits ``allowed`` of ``total`` labels."""
    share = max(allowed / max(total, 1), 1e-3)
    return int(min(1024, max(128, 4 * k / share)))


def _label(record: Any, key: str) -> Any:
    value = (record.metadata or {}).get(key)
    return None if value in (None, "") else value


def recent_logged_queries(engine=None, *, hours: int = LOGGED_QUERY_HOURS, limit: int = MAX_LOGGED_QUERIES) -> list[str]:
    """The newest distinct unpinned search texts of the request log (at most ``limit``)."""
    from lockstep.store import serving_logs
    from lockstep.store.db import get_engine
    from lockstep.store.log_stats import Window

    now = clock.now()
    texts = serving_logs.queries(engine or get_engine(), Window(now - timedelta(hours=hours), now + timedelta(seconds=1)))
    newest = list(dict.fromkeys(reversed(texts)))
    return newest[:limit]


# --- the DAG's steps: judge, record, stop ----------------------------------------------------------


def judge_first_slice(
    plan: Mapping[str, Any],
    snap: Mapping[str, Any],
    first: Sequence[Mapping[str, Any]],
    *,
    margin: float = DEFAULT_MARGIN,
    action: str = DEFAULT_ACTION,
    registry=None,
    store: RecordStore | None = None,
    engine=None,
) -> dict[str, Any]:
    """The ``early_verdict`` task: evaluate the first slice, record the verdict, return it (JSON)."""
    from lockstep.model.registry import Registry

    share = float(snap.get("first_slice_share") or DEFAULT_SHARE)
    check_settings(share, margin, action)
    registry = registry or Registry()
    verdict = _judge(plan, snap, first, share=share, margin=margin, action=action, registry=registry,
                     store=store or RecordStore(), engine=engine)
    record(plan["model_version"], verdict, registry=registry, engine=engine)
    return verdict.to_dict()


def _judge(plan, snap, first, *, share, margin, action, registry, store, engine) -> EarlyVerdict:
    from lockstep.index.shards import merge_shards, pulled_shard_files
    from lockstep.index.slot_plan import plan_folder
    from lockstep.index.vector_index import IndexSpec

    p = SlotPlan(**plan)
    base = {"share": share, "margin": margin, "action": action}
    champion = registry.version_for_alias("champion")
    if champion is None:
        return no_baseline("no champion yet (first version)", **base)
    if champion.version == p.model_version:
        return no_baseline(f"v{p.model_version} is the champion itself", **base, champion=champion.version)
    if sum(int(s["count"]) for s in first) == 0:
        return no_baseline("the first slice holds no records", **base, champion=champion.version)
    champion_index = _champion_index(champion, engine)
    if isinstance(champion_index, str):
        return no_baseline(champion_index, **base, champion=champion.version)
    partial = merge_shards(pulled_shard_files(plan_folder(p) / "shards", [s["shard"] for s in first]), IndexSpec(kind="flat"))
    settings = EvalSettings.from_run_params(registry.run_params(registry.get_version(p.model_version).run_id))
    candidate_side = Side(load_embedder(p), partial, gather_below=1.0)  # the slice only: cheap to gather whole
    champion_side = Side(registry.load_embedder(champion.version), champion_index)
    figures = evaluate_first_slice(
        candidate_side, champion_side, store, snapshot_path(p, dict(snap)), settings,
        logged_queries=recent_logged_queries(engine),
    )
    figures["share"] = share
    if "delta_ndcg_at_10" not in figures or settings.k != 10:
        why = (f"no labelled held-out queries with '{settings.label_key}' among the loaded records"
               if settings.k == 10 else f"the evaluation uses k={settings.k}, the early verdict nDCG@10")
        return no_baseline(why, **base, figures=figures, champion=champion.version)
    return decide(figures, margin=margin, action=action, champion=champion.version)


def _champion_index(champion, engine) -> Any:
    """The champion's loaded index, or a sentence saying why it cannot be the baseline."""
    from lockstep.index.storage import load_index
    from lockstep.store import routing

    slot = routing.read_table(engine).slot(champion.version)
    location = slot.index_location if slot is not None else champion.tags.get("lockstep.index_location")
    if not location:
        return f"champion v{champion.version} has no index location"
    try:
        return load_index(location, expected_fingerprint=champion.fingerprint,
                          model_label=f"champion v{champion.version}").index
    except LockstepError as exc:
        return f"champion v{champion.version}'s index cannot be loaded ({exc})"


def record(version: str, verdict: EarlyVerdict, *, registry, engine=None) -> None:
    """The verdict in the task log, on the MLflow version (tags, run metrics) and in the slot note."""
    from lockstep.store import routing

    level = logging.WARNING if verdict.verdict in (WARN, STOP) else logging.INFO
    log.log(level, "early verdict for v%s: %s", version, verdict.reason)
    for key, value in sorted(verdict.figures.items()):
        log.info("early verdict figure %s = %s", key, value)
    registry.set_tags(version, version_tags(verdict))
    registry.log_version_metrics(version, {f"{METRIC_PREFIX}{k}": v for k, v in verdict.figures.items() if math.isfinite(v)})
    slot = routing.read_table(engine).slot(version)
    if slot is not None and slot.state == routing.LOADING:
        routing.set_state(version, routing.LOADING, note=f"early verdict: {verdict.reason}"[:2000], engine=engine)


def version_tags(verdict: EarlyVerdict) -> dict[str, str]:
    tags = {
        TAG: verdict.verdict, f"{TAG}.reason": verdict.reason[:5000], f"{TAG}.at": verdict.at,
        f"{TAG}.action": verdict.action, f"{TAG}.margin": repr(verdict.margin), f"{TAG}.share": repr(verdict.share),
        f"{TAG}.champion": verdict.champion_version or "none",
    }
    tags.update({f"{TAG}.{k}": repr(float(v)) for k, v in verdict.figures.items()})
    return tags


def early_verdict_of(model_version: str | int, registry=None) -> dict[str, Any] | None:
    """The early verdict of a model version for the UI page: verdict, reason, figures; None if it has none.

    Read from the MLflow version's tags, which outlive the slot's files (a stopped load
    deletes them).
    """
    from lockstep.model.registry import Registry

    info = (registry or Registry()).get_version(model_version)
    tags = info.tags
    if TAG not in tags:
        return None
    fixed = {"reason", "at", "action", "margin", "share", "champion"}
    figures = {}
    for key, value in tags.items():
        name = key[len(TAG) + 1 :] if key.startswith(f"{TAG}.") else None
        if name and name not in fixed:
            try:
                figures[name] = float(value)
            except ValueError:
                continue
    champion = tags.get(f"{TAG}.champion")
    return {
        "model_version": info.version,
        "verdict": tags[TAG],
        "reason": tags.get(f"{TAG}.reason", ""),
        "at": tags.get(f"{TAG}.at"),
        "action": tags.get(f"{TAG}.action"),
        "margin": _float(tags.get(f"{TAG}.margin")),
        "share": _float(tags.get(f"{TAG}.share")),
        "champion_version": None if champion in (None, "none") else champion,
        "figures": figures,
    }


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
