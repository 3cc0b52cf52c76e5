"""Re-embedding every record into a new index version while live writes keep flowing.

The order is what makes it safe (issue: no write lost, no delete resurrected):

1. ``prepare_slot``: the new slot is registered in state ``loading`` *before* the
   snapshot. Every write from then on is in the change log, which is the slot's feed.
2. ``take_snapshot``: all live records as of sequence S, in one read transaction.
3. ``embed_shard`` for each shard (the DAG maps over shards): partial indexes, each
   reused on retry when its key (fingerprint, S, ids and texts) matches.
4. ``merge_and_catch_up``: merge, then apply every change after S in order; the last
   change of each record wins, so a delete after S stays deleted.
5. ``validate_built_index``: ids equal the store's at the applied sequence, stored
   vectors equal fresh embeddings of current text (sample), recall@10 against exact
   search for approximate types, fingerprint equals the registered model's.
6. ``publish``: save (atomic manifest), mark the slot ``ready``, tag the MLflow version.

A failure anywhere leaves the slot in ``loading`` (never ``ready``), with the reason
in its note; a rerun starts over and reuses the finished shards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LockstepError
from .index_store import (
    build_shard,
    catch_up,
    clear_shards,
    index_location,
    merge_shards,
    save_index,
    shard_bounds,
)
from .records import Record, RecordStore, Snapshot
from .vector_index import IndexSpec, VectorIndex, recall_at_k


class IndexValidationError(LockstepError):
    """A built index does not hold exactly what the record store holds."""


@dataclass(frozen=True)
class SlotPlan:
    model_name: str
    model_version: str
    model_uri: str
    fingerprint: str
    location: str


@dataclass(frozen=True)
class IndexValidation:
    ok: bool
    checks: dict[str, bool]
    figures: dict[str, float]
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def plan_slot(registry, version: str | int) -> SlotPlan:
    """Resolve a model version in the registry (a clear error if it does not exist)."""
    info = registry.get_version(version)
    return SlotPlan(
        model_name=registry.model_name,
        model_version=str(info.version),
        model_uri=f"models:/{registry.model_name}/{info.version}",
        fingerprint=info.fingerprint,
        location=str(index_location(registry.model_name, info.version)),
    )


def resolve_version(requested: str | None, asset_extra: dict[str, Any] | None, registry) -> str:
    """The version to index: the Param, else the triggering asset event, else alias challenger."""
    if requested not in (None, ""):
        return str(requested)
    if asset_extra and asset_extra.get("model_version"):
        return str(asset_extra["model_version"])
    challenger = registry.version_for_alias("challenger")
    if challenger is None:
        raise LockstepError(
            "no model version to index: pass Param model_version, or train one first (alias 'challenger' is unset)"
        )
    return challenger.version


# --- steps (each is one task of lockstep_reembed; JSON in, JSON out) ---------------------------


def prepare(version: str | int, registry=None, engine=None) -> dict[str, Any]:
    """Register the slot as a write target (state ``loading``) before any snapshot."""
    from . import routing
    from .registry import Registry

    registry = registry or Registry()
    plan = plan_slot(registry, version)
    routing.register_slot(
        plan.model_version, plan.model_uri, plan.location, plan.fingerprint, state="loading", engine=engine
    )
    # One download from the registry; every shard task then loads this local copy.
    registry.load_embedder(plan.model_version).save(_model_file(plan))
    return asdict(plan)


def snapshot(plan: dict[str, Any], shard_size: int, store: RecordStore | None = None) -> dict[str, Any]:
    """Snapshot at sequence S and keep it beside the shards, so every shard task reads its slice."""
    store = store or RecordStore()
    snap = store.snapshot()
    if not snap.records:
        raise LockstepError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    path = _snapshot_file(plan, snap.seq)
    if not path.exists():
        _write_snapshot(path, snap)
    n_shards = len(shard_bounds(len(snap.records), shard_size))
    return {"seq": snap.seq, "records": len(snap.records), "shards": list(range(n_shards)), "shard_size": shard_size}


def embed(plan: dict[str, Any], snap: dict[str, Any], shard: int, embedder=None) -> dict[str, Any]:
    """Embed one shard into a partial index (reused when a matching one exists)."""
    from .faults import maybe_fail

    p = SlotPlan(**plan)
    embedder = embedder or _load_embedder(p)
    records = _read_snapshot(_snapshot_file(plan, snap["seq"]))
    start, end = shard_bounds(len(records), snap["shard_size"])[shard]
    result = build_shard(
        embedder,
        records[start:end],
        shard,
        Path(p.location) / "shards",
        fingerprint=p.fingerprint,
        snapshot_seq=snap["seq"],
    )
    maybe_fail("reembed.embed", shard)  # after the output exists: a retry must reuse, not duplicate
    return asdict(result)


def merge(plan: dict[str, Any], snap: dict[str, Any], shards: list[dict[str, Any]], spec: dict[str, Any] | None = None,
          store: RecordStore | None = None, embedder=None) -> dict[str, Any]:
    """Merge the partial indexes, catch up every change after S, save (slot stays ``loading``)."""
    p = SlotPlan(**plan)
    store = store or RecordStore()
    embedder = embedder or _load_embedder(p)
    expected = set(snap["shards"])
    got = {s["shard"] for s in shards}
    if got != expected:
        raise LockstepError(f"shards missing from the merge: {sorted(expected - got)}")
    index = merge_shards([s["path"] for s in shards], IndexSpec.from_dict(spec or {}))
    applied = catch_up(index, embedder, store, snap["seq"])
    manifest = save_index(
        index, p.location, model_name=p.model_name, model_version=p.model_version,
        fingerprint=p.fingerprint, applied_seq=max(applied, snap["seq"]),
    )
    return {"applied_seq": manifest.applied_seq, "records": manifest.record_count, "index_sha256": manifest.index_sha256}


def validate(plan: dict[str, Any], *, sample_size: int = 200, min_recall: float = 0.9,
             store: RecordStore | None = None, embedder=None, engine=None) -> dict[str, Any]:
    """Load the saved index (checksums verified), catch up to the head, check it, save again."""
    from . import routing
    from .index_store import load_index

    p = SlotPlan(**plan)
    store = store or RecordStore()
    embedder = embedder or _load_embedder(p)
    loaded = load_index(p.location, expected_fingerprint=p.fingerprint, model_label=f"{p.model_name} v{p.model_version}")
    result, applied = validate_built_index(
        loaded.index, loaded.applied_seq, embedder, store,
        expected_fingerprint=p.fingerprint, sample_size=sample_size, min_recall=min_recall,
    )
    if not result.ok:
        note = "validation failed: " + "; ".join(result.problems)
        routing.set_state(p.model_version, "loading", note=note[:2000], engine=engine)
        raise IndexValidationError(f"index of {p.model_name} v{p.model_version} failed validation: " + "; ".join(result.problems))
    save_index(
        loaded.index, p.location, model_name=p.model_name, model_version=p.model_version,
        fingerprint=p.fingerprint, applied_seq=applied, extra={"validation": result.figures},
    )
    return {"ok": True, "applied_seq": applied, "figures": result.figures, "checks": result.checks}


def publish(plan: dict[str, Any], promote_if_first: bool = True, registry=None, engine=None) -> dict[str, Any]:
    """Mark the slot ready, tag the MLflow version, and make a first model the champion."""
    from . import routing
    from .index_store import read_manifest
    from .registry import Registry

    p = SlotPlan(**plan)
    registry = registry or Registry()
    manifest = read_manifest(p.location)
    clear_shards(p.location)
    routing.set_state(p.model_version, "ready", note=f"index built: {manifest.record_count} records", engine=engine)
    registry.set_tags(
        p.model_version,
        {
            "lockstep.index_location": p.location,
            "lockstep.index_type": manifest.index_type,
            "lockstep.index_sha256": manifest.index_sha256,
            "lockstep.index_records": manifest.record_count,
            "lockstep.index_applied_seq": manifest.applied_seq,
        },
    )
    became = False
    if promote_if_first and registry.version_for_alias("champion") is None:
        routing.set_weights({p.model_version: 100}, reason="first champion", actor="lockstep", engine=engine)
        registry.promote_champion(p.model_version, reason="first valid model with a built index")
        became = True
    return {
        "model_version": p.model_version,
        "fingerprint": p.fingerprint,
        "index_location": p.location,
        "records": manifest.record_count,
        "applied_seq": manifest.applied_seq,
        "became_champion": became,
    }


def validate_built_index(
    index: VectorIndex,
    applied_seq: int,
    embedder,
    store: RecordStore,
    *,
    expected_fingerprint: str,
    sample_size: int = 200,
    min_recall: float = 0.9,
    seed: int = 0,
) -> tuple[IndexValidation, int]:
    """Check the index against the record store; catches up to the store's head first.

    Returns the validation and the sequence the index now reflects.
    """
    truth = store.snapshot()
    applied_seq = max(applied_seq, catch_up(index, embedder, store, applied_seq, until=truth.seq))
    checks: dict[str, bool] = {}
    figures: dict[str, float] = {}
    problems: list[str] = []

    checks["fingerprint"] = embedder.fingerprint == expected_fingerprint
    if not checks["fingerprint"]:
        problems.append(f"model fingerprint {embedder.fingerprint} differs from the registered {expected_fingerprint}")
    ids_index, ids_store = set(index.ids), set(truth.ids)
    figures["record_count"] = float(len(ids_index))
    figures["store_count"] = float(len(ids_store))
    checks["record_count"] = len(ids_index) == len(ids_store)
    checks["id_set"] = ids_index == ids_store
    if not checks["id_set"]:
        missing, extra = ids_store - ids_index, ids_index - ids_store
        problems.append(
            f"id sets differ: {len(missing)} records missing from the index (e.g. {sorted(missing)[:3]}), "
            f"{len(extra)} extra (e.g. {sorted(extra)[:3]})"
        )
    pool = sorted(ids_index & ids_store)
    if pool:
        rng = np.random.default_rng(seed)
        sample = [pool[i] for i in sorted(rng.choice(len(pool), min(sample_size, len(pool)), replace=False))]
        by_id = {r.id: r for r in truth.records}
        stored = index.vectors_of(sample)
        fresh = embedder.transform([by_id[i].text for i in sample])
        max_diff = float(np.abs(stored - fresh).max())
        figures["sample_max_abs_diff"] = max_diff
        checks["sample_vectors"] = max_diff < 1e-4
        if not checks["sample_vectors"]:
            problems.append(f"stored vectors differ from fresh embeddings of current text by up to {max_diff:.3g}")
        if index.spec.kind != "flat":
            exact = VectorIndex.build(pool, index.vectors_of(pool))
            recall = recall_at_k(index, exact, fresh, k=10)
            figures["recall_at_10"] = recall
            checks["recall_at_10"] = recall >= min_recall
            if not checks["recall_at_10"]:
                problems.append(f"recall@10 against exact search is {recall:.3f}, below {min_recall}")
    return IndexValidation(ok=all(checks.values()), checks=checks, figures=figures, problems=problems), applied_seq


# --- the whole path in one process (lockstep index build) -------------------------------------


def reembed_version(
    store: RecordStore,
    registry,
    version: str | int,
    *,
    spec: IndexSpec | None = None,
    shard_size: int = 2000,
    progress: Callable[[int], None] | None = None,
    promote_if_first: bool = True,
) -> dict[str, Any]:
    """Every step of the re-embed DAG in a row, sharing one loaded model."""
    plan = prepare(version, registry)
    embedder = registry.load_embedder(plan["model_version"])
    snap = snapshot(plan, shard_size, store)
    shards = []
    for shard in snap["shards"]:
        shards.append(embed(plan, snap, shard, embedder))
        if progress is not None:
            progress(shards[-1]["count"])
    merged = merge(plan, snap, shards, (spec or IndexSpec()).to_dict(), store, embedder)
    checked = validate(plan, store=store, embedder=embedder)
    published = publish(plan, promote_if_first, registry)
    return {
        **published,
        "snapshot_seq": snap["seq"],
        "shards": len(shards),
        "reused_shards": sum(s["skipped"] for s in shards),
        "merged_applied_seq": merged["applied_seq"],
        "validation": checked["figures"],
    }


# --- helpers -----------------------------------------------------------------------------------


def _model_file(plan: SlotPlan) -> Path:
    return Path(plan.location) / "shards" / "model.joblib"


def _load_embedder(plan: SlotPlan):
    """The local copy made by ``prepare`` (checked against the plan's fingerprint), else the registry."""
    from .embedding import TextEmbedder
    from .registry import Registry

    path = _model_file(plan)
    if path.exists():
        model = TextEmbedder.load(path)
        if model.fingerprint == plan.fingerprint:
            return model
    return Registry().load_embedder(plan.model_version)


def _snapshot_file(plan: dict[str, Any] | SlotPlan, seq: int) -> Path:
    location = plan["location"] if isinstance(plan, dict) else plan.location
    return Path(location) / "shards" / f"snapshot-{seq}.parquet"


def _write_snapshot(path: Path, snap: Snapshot) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .atomic import atomic_path

    table = pa.table({"id": [r.id for r in snap.records], "text": [r.text for r in snap.records]})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _read_snapshot(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return [Record(i, t) for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True)]
