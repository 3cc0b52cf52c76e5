"""Re-embedding every record into a new index version while live writes keep flowing.

The order is what makes it safe (issue: no write lost, no delete resurrected):

1. ``prepare_slot``: the new slot is registered in state ``loading`` *before* the
   snapshot. Every write from then on is in the change log, which is the slot's feed.
2. ``snapshot``: all live records as of sequence S, streamed in one read transaction
   into a parquet file with one row group per shard (shard size from the record count).
3. ``embed`` for each shard (the DAG maps over shards): reads only its row group,
   embeds in batches straight into a partial index, reused on retry when its key
   (fingerprint, S, ids and texts) matches. Cost grows with records, not shards x records.
   With ``first_slice_share`` (the DAG), the last shards hold a uniform sample that is
   embedded first and judged against the champion (``early_verdict``, which may
   ``stop_load``) before the rest is embedded (``lockstep.index.early_verdict``).
   The order of these steps is written once, in ``lockstep.index.plan``.
4. ``merge``: add the partial indexes one at a time (never two full copies), then
   apply every change after S in order; the last change of each record wins, so a
   delete after S stays deleted.
5. ``validate_built_index``: ids equal the store's at the applied sequence, stored
   vectors equal fresh embeddings of current text (sample), recall@10 against exact
   search for approximate types, fingerprint equals the registered model's.
6. ``publish``: save (atomic manifest), mark the slot ``ready``, tag the MLflow version.

A failure anywhere leaves the slot in ``loading`` (never ``ready``), with the reason
in its note; a rerun starts over and reuses the finished shards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lockstep.core.errors import LockstepError
from lockstep.index import mirror
from lockstep.index.catch_up import catch_up
from lockstep.index.early_verdict import judge_first_slice
from lockstep.index.first_slice import write_sliced_snapshot
from lockstep.index.load_progress import register_load
from lockstep.index.manifest import Manifest
from lockstep.index.shards import (
    build_shard_columns,
    clear_shards,
    merge_shards,
    pulled_shard_files,
)
from lockstep.index.slot_plan import (
    SlotPlan,
    load_embedder,
    local_digest,
    model_file,
    plan_folder,
    plan_slot,
    snapshot_path,
)
from lockstep.index.snapshot import (
    DEFAULT_TARGET_SHARDS,
    read_snapshot_shard,
    shard_size_for,
    snapshot_name,
    write_snapshot,
)
from lockstep.index.storage import save_index, update_manifest
from lockstep.index.validation import IndexValidationError, validate_built_index
from lockstep.index.vector_index import VectorIndex, resolve_spec
from lockstep.store.records import RecordStore

verdict_log = logging.getLogger("lockstep.early_verdict")  # a stopped load is the early verdict's news


# --- steps (each is one task of lockstep_reembed; JSON in, JSON out) ---------------------------


def prepare_requested(requested: str | None, asset_extra: dict[str, Any] | None, registry=None, engine=None, *,
                      allow_rejected: bool = False) -> dict[str, Any]:
    """``prepare`` for the version a DAG run asks for (Param, asset event, else alias challenger)."""
    from lockstep.model.registry import Registry, requested_version

    registry = registry or Registry()
    version = requested_version(requested, asset_extra, registry, purpose="index")
    return prepare(version, registry, engine, allow_rejected=allow_rejected)


def prepare(version: str | int, registry=None, engine=None, *, allow_rejected: bool = False) -> dict[str, Any]:
    """Register the slot as a write target (state ``loading``) before any snapshot.

    A version its offline evaluation rejected is refused first, unless ``allow_rejected``
    (``lockstep.model.offline_verdict.check_buildable``; nothing is registered or written).
    """
    from lockstep.model.offline_verdict import check_buildable
    from lockstep.model.registry import Registry
    from lockstep.store import routing

    registry = registry or Registry()
    check_buildable(registry.get_version(version), allow_rejected)
    plan = plan_slot(registry, version)
    routing.register_slot(
        plan.model_version, plan.model_uri, plan.location, plan.fingerprint, state="loading", engine=engine
    )
    # One download from the registry; every shard task then loads this local copy, checked
    # against the digest recorded here (in the plan, not beside the copy).
    saved = registry.load_embedder(plan.model_version).save(model_file(plan))
    mirror.push(saved)  # shard tasks on other hosts pull this copy
    return asdict(replace(plan, model_sha256=local_digest(Path(saved))))


def dag_target_shards() -> int:
    """The shards a DAG run aims for by default: 4 rounds of ``LOCKSTEP_REEMBED_WORKERS`` shard tasks."""
    from lockstep.core.config import embedding_processes
    from lockstep.index.snapshot import target_shards_for

    return target_shards_for(embedding_processes())


def snapshot(
    plan: dict[str, Any],
    shard_size: int | None = None,
    store: RecordStore | None = None,
    *,
    target_shards: int = DEFAULT_TARGET_SHARDS,
    first_slice_share: float | None = None,
) -> dict[str, Any]:
    """Snapshot at sequence S into a parquet file beside the shards: one row group per shard.

    The store is streamed (never a list of every record), and each shard task later
    reads only its own row group. ``shard_size`` None: chosen from the record count.
    ``first_slice_share``: the last shards hold a uniform sample of that share, the
    early verdict's first slice (``first_slice.write_sliced_snapshot``).
    """
    store = store or RecordStore()
    size = shard_size or shard_size_for(store.count(), target_shards)
    shards_dir = plan_folder(plan) / "shards"
    if first_slice_share is not None:
        sliced = _sliced_snapshot(store, shards_dir, size, first_slice_share)
        mirror.push(shards_dir / sliced["file"])
        return register_load(plan, sliced)
    counts, seq = write_snapshot(store, shards_dir, size)
    mirror.push(shards_dir / snapshot_name(seq, size))
    return register_load(plan, {
        "seq": seq,
        "records": sum(counts),
        "shards": list(range(len(counts))),
        "shard_size": size,
        "file": snapshot_name(seq, size),
    })


def _sliced_snapshot(store: RecordStore, shards_dir: Path, size: int, share: float) -> dict[str, Any]:
    sliced = write_sliced_snapshot(store, shards_dir, size, share)
    return {
        "seq": sliced.seq,
        "records": sum(sliced.counts),
        "shards": list(range(len(sliced.counts))),
        "shard_size": size,
        "file": sliced.file,
        "first_slice": sliced.first_slice,
        "rest": sliced.rest,
        "first_slice_share": share,
        "first_slice_records": sum(sliced.counts[i] for i in sliced.first_slice),
    }


def embed(plan: dict[str, Any], snap: dict[str, Any], shard: int, embedder=None) -> dict[str, Any]:
    """Embed one shard (its row group of the snapshot only) into a partial index."""
    from lockstep.core.faults import maybe_fail

    p = SlotPlan(**plan)
    embedder = embedder or load_embedder(p)
    chunk = read_snapshot_shard(snapshot_path(p, snap), shard)
    result = build_shard_columns(
        embedder,
        chunk.ids,
        chunk.texts,
        shard,
        plan_folder(p) / "shards",
        fingerprint=p.fingerprint,
        snapshot_seq=snap["seq"],
    )
    maybe_fail("reembed.embed", shard)  # after the output exists: a retry must reuse, not duplicate
    return asdict(result)


def early_verdict(plan: dict[str, Any], snap: dict[str, Any], first: list[dict[str, Any]], *, margin: float,
                  action: str) -> dict[str, Any]:
    """Judge the candidate on its first slice against the champion (``lockstep.index.early_verdict``)."""
    return judge_first_slice(plan, snap, first, margin=margin, action=action)


def stop_load(plan: Mapping[str, Any], verdict: Mapping[str, Any], *, registry=None, engine=None) -> dict[str, Any]:
    """Stop a load the early verdict judged worse: slot retired with the reason, version rejected, files freed.

    Only the candidate's own records change. A version that is the champion or takes
    traffic is refused (the verdict never stops one, but the guard makes it certain).
    """
    from lockstep.index.storage import delete_index_version
    from lockstep.model.registry import Registry
    from lockstep.store import routing

    p = SlotPlan(**plan)
    registry = registry or Registry()
    slot = routing.read_table(engine).slot(p.model_version)
    champion = registry.version_for_alias("champion")
    if (champion is not None and champion.version == p.model_version) or (slot is not None and slot.weight > 0):
        raise LockstepError(f"v{p.model_version} serves traffic or is the champion; an early verdict never stops it")
    reason = f"stopped by the early verdict: {verdict['reason']}"
    if slot is not None:
        routing.set_state(p.model_version, routing.RETIRED, note=reason[:2000], engine=engine)
    registry.reject(p.model_version, reason[:5000], {k: repr(float(v)) for k, v in (verdict.get("figures") or {}).items()})
    freed = delete_index_version(p.location)
    verdict_log.warning("v%s: %s; slot retired, version rejected, %s", p.model_version, reason,
                        f"files at {p.location} deleted" if freed else "no files were left")
    return {"model_version": p.model_version, "stopped": True, "files_freed": freed, "reason": reason}


def merge(plan: dict[str, Any], snap: dict[str, Any], shards: list[dict[str, Any]], spec: dict[str, Any] | None = None,
          store: RecordStore | None = None, embedder=None, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the partial indexes, catch up every change after S, save (slot stays ``loading``).

    ``extra`` goes into the manifest (the early verdict's figures).
    """
    p = SlotPlan(**plan)
    _, manifest = merge_and_save(p, snap, shards, spec, store or RecordStore(), embedder or load_embedder(p), extra=extra)
    return {"applied_seq": manifest.applied_seq, "records": manifest.record_count, "index_sha256": manifest.index_sha256}


def validate(plan: dict[str, Any], *, sample_size: int = 200, min_recall: float = 0.95,
             store: RecordStore | None = None, embedder=None, engine=None) -> dict[str, Any]:
    """Load the saved index (checksums verified), catch up to the head, check it, save again."""
    from lockstep.index.storage import load_index

    p = SlotPlan(**plan)
    loaded = load_index(p.location, expected_fingerprint=p.fingerprint, model_label=f"{p.model_name} v{p.model_version}")
    return validate_and_save(
        p, loaded.index, loaded.applied_seq, store or RecordStore(), embedder or load_embedder(p),
        sample_size=sample_size, min_recall=min_recall, engine=engine,
    )


def publish(plan: dict[str, Any], promote_if_first: bool = True, registry=None, engine=None) -> dict[str, Any]:
    """Mark the slot ready, tag the MLflow version, and make a first model the champion."""
    from lockstep.index.manifest import read_manifest
    from lockstep.model.registry import Registry
    from lockstep.store import routing

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


def merge_and_save(
    p: SlotPlan, snap: dict[str, Any], shards: list[dict[str, Any]], spec: dict[str, Any] | None,
    store: RecordStore, embedder, *, extra: dict[str, Any] | None = None,
) -> tuple[VectorIndex, Manifest]:
    expected = set(snap["shards"])
    got = {s["shard"] for s in shards}
    if got != expected:
        raise LockstepError(f"shards missing from the merge: {sorted(expected - got)}")
    files = pulled_shard_files(plan_folder(p) / "shards", sorted(got))
    index = merge_shards(files, resolve_spec(spec, snap["records"], embedder.dim_))
    applied = catch_up(index, embedder, store, snap["seq"])
    manifest = save_index(
        index, p.location, model_name=p.model_name, model_version=p.model_version,
        fingerprint=p.fingerprint, applied_seq=max(applied, snap["seq"]), extra=extra,
    )
    return index, manifest


def validate_and_save(
    p: SlotPlan, index: VectorIndex, applied_seq: int, store: RecordStore, embedder, *,
    sample_size: int, min_recall: float, engine=None,
) -> dict[str, Any]:
    """Validate an index against the store; save it if catch-up changed it, else only its manifest."""
    from lockstep.store import routing

    result, applied = validate_built_index(
        index, applied_seq, embedder, store,
        expected_fingerprint=p.fingerprint, sample_size=sample_size, min_recall=min_recall,
    )
    if not result.ok:
        note = "validation failed: " + "; ".join(result.problems)
        routing.set_state(p.model_version, "loading", note=note[:2000], engine=engine)
        raise IndexValidationError(f"index of {p.model_name} v{p.model_version} failed validation: " + "; ".join(result.problems))
    extra = {**_manifest_extra(p.location), "validation": result.figures}  # keeps the early verdict
    if applied != applied_seq:
        save_index(
            index, p.location, model_name=p.model_name, model_version=p.model_version,
            fingerprint=p.fingerprint, applied_seq=applied, extra=extra,
        )
    else:
        update_manifest(p.location, extra=extra, spec=index.spec.to_dict())  # the beam validation chose
    return {"ok": True, "applied_seq": applied, "figures": result.figures, "checks": result.checks}


def _manifest_extra(location: str) -> dict[str, Any]:
    from lockstep.index.manifest import MANIFEST, read_manifest

    folder = mirror.working_dir(location)
    mirror.pull(folder / MANIFEST, refresh=True)
    return dict(read_manifest(folder).extra) if (folder / MANIFEST).exists() else {}
