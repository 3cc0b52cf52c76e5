"""The steps of ``lockstep_batch`` (JSON in, JSON out) and ``run``, the same steps in one process.

1. ``plan``: read the routing table and the input head T once; per serving version decide
   full / incremental / unchanged and write its key file (``lockstep.batch.plan``).
2. ``jobs``: one job per shard of each version's keys (the DAG maps ``compute`` over them).
3. ``compute``: one shard: the version's world at T (``lockstep.batch.world``), top-k for
   each of its keys, rows replaced in the operational table.
4. ``finish``: per version, remove the rows of deleted keys, check the version now holds
   exactly one row per key it has at T, and mark it complete through T. Only then does it
   take batch traffic (a full run) or advance its sequence (an incremental one).
5. ``drop_retired``: rows and state of versions whose slot is retired or gone (retention).

A failed shard leaves the version as it was: a full run stays incomplete (no traffic),
an incremental one keeps its old sequence, so the next run recomputes the same keys.
"""

from __future__ import annotations

from typing import Any

from lockstep.batch import plan as planning
from lockstep.batch.recommendations import recommendations
from lockstep.batch.related import related
from lockstep.batch.world import recommender_world, search_world
from lockstep.core.config import SYSTEMS, settings
from lockstep.core.errors import LockstepError
from lockstep.store import routing
from lockstep.store.batch_results import RECOMMENDATIONS, RELATED, BatchResultStore
from lockstep.store.db import get_engine

DEFAULT_K = 10
DEFAULT_SHARD_SIZE = 50_000
MAX_K = 100


class BatchRunError(LockstepError):
    """A batch step that cannot complete (the message says which version and why)."""


def plan(system: str | None = None, *, k: int = DEFAULT_K, shard_size: int = DEFAULT_SHARD_SIZE,
         versions: list[str] | None = None, full: bool = False) -> dict[str, Any]:
    """Step 1: the run's versions, their mode and key files, and the input head T."""
    system = _system(system)
    _check_numbers(k, shard_size)
    kind = planning.kind_of(system)
    inputs = input_store(system)
    table = routing.read_table(inputs.engine)
    slots = planning.serving_slots(table, versions)
    through = inputs.head() if kind == RELATED else inputs.max_seq()
    results = BatchResultStore(inputs.engine)
    plans = [planning.plan_version(kind, row, inputs, results, through_seq=through, k=k, full=full).to_dict()
             for row in slots]
    return {"system": system, "kind": kind, "k": k, "shard_size": shard_size, "through_seq": through, "versions": plans}


def jobs(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Step 2: one job per shard of every version's keys (empty when nothing changed)."""
    out = []
    for version in run["versions"]:
        for shard, (start, stop) in enumerate(planning.shard_ranges(version["keys"], run["shard_size"])):
            out.append({"system": run["system"], "model_version": version["model_version"], "shard": shard,
                        "start": start, "stop": stop})
    return out


def compute(run: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Step 3: compute one shard's keys at the run's sequence and replace their rows."""
    version = _version_plan(run, job["model_version"])
    inputs = input_store(run["system"])
    row = _slot_as_planned(inputs.engine, version)
    keys = planning.read_keys(version["keys_file"], job["start"], job["stop"])
    if run["kind"] == RELATED:
        computed = related(search_world(row, inputs, run["through_seq"]).index, keys, run["k"])
    else:
        computed = recommendations(recommender_world(row, inputs, run["through_seq"]), keys, run["k"])
    written = BatchResultStore(inputs.engine).write_rows(run["kind"], row.model_version, computed, input_seq=run["through_seq"])
    return {"model_version": row.model_version, "shard": job["shard"], "rows": written}


def finish(run: dict[str, Any], computed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Step 4: remove deleted keys' rows, check every key has its row, mark each version complete."""
    results = BatchResultStore(input_store(run["system"]).engine)
    done = []
    for version in run["versions"]:
        written = sum(c["rows"] for c in computed or () if c["model_version"] == version["model_version"])
        if version["mode"] != planning.UNCHANGED and written != version["keys"]:
            raise BatchRunError(
                f"version {version['model_version']}: {written} of {version['keys']} planned rows were written; "
                "it stays as it was (run again)"
            )
        removed = results.delete_keys(run["kind"], version["model_version"], planning.read_removed(version["keys_file"]))
        state = results.finish(run["kind"], version["model_version"], fingerprint=version["fingerprint"],
                               k=run["k"], through_seq=run["through_seq"])
        if state.rows != version["live_keys"]:
            results.start_full(run["kind"], version["model_version"], fingerprint=version["fingerprint"],
                               k=run["k"], through_seq=run["through_seq"])
            raise BatchRunError(
                f"version {version['model_version']}: {state.rows} rows for {version['live_keys']} keys at sequence "
                f"{run['through_seq']}; its rows were cleared and the next run recomputes them all"
            )
        done.append({**state.to_dict(), "mode": version["mode"], "computed": written, "removed": removed,
                     "reason": version["reason"]})
    return {"system": run["system"], "kind": run["kind"], "through_seq": run["through_seq"], "versions": done}


def drop_retired(system: str | None = None) -> dict[str, int]:
    """Step 5: remove the rows of versions whose slot is retired or no longer in the routing table."""
    engine = input_store(_system(system)).engine
    table = routing.read_table(engine)
    keep = {s.model_version for s in table.slots if s.state != routing.RETIRED}
    keep.update(planning.holdback_versions(table))
    results = BatchResultStore(engine)
    return {f"{kind}/v{version}": results.drop_version(kind, version)
            for kind, version in sorted(results.versions()) if version not in keep}


def run(system: str | None = None, *, k: int = DEFAULT_K, shard_size: int = DEFAULT_SHARD_SIZE,
        versions: list[str] | None = None, full: bool = False) -> dict[str, Any]:
    """Every step in this process (``lockstep batch run``): plan, each shard, finish, retention."""
    planned = plan(system, k=k, shard_size=shard_size, versions=versions, full=full)
    computed = [compute(planned, job) for job in jobs(planned)]
    summary = finish(planned, computed)
    summary["dropped"] = drop_retired(planned["system"])
    return summary


def input_store(system: str) -> Any:
    """The store whose sequence drives the system's batch: records (search) or interactions."""
    if system == "search":
        from lockstep.store.records import RecordStore

        return RecordStore(get_engine(_database_url(system)))
    from lockstep.store.interactions import InteractionStore

    return InteractionStore(get_engine(_database_url(system)))


def _database_url(system: str) -> str:
    """The deployment database of ``system`` (the recommender has its own)."""
    from lockstep.core.config import settings_for

    return settings_for(system).database_url


def _system(system: str | None) -> str:
    system = system or settings().system
    if system not in SYSTEMS:
        raise BatchRunError(f"unknown system {system!r}; use {' or '.join(SYSTEMS)}")
    return system


def _check_numbers(k: int, shard_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BatchRunError(f"k must be an integer 1..{MAX_K}, got {k!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise BatchRunError(f"shard_size must be a positive integer, got {shard_size!r}")


def _version_plan(run: dict[str, Any], version: str) -> dict[str, Any]:
    for planned in run["versions"]:
        if planned["model_version"] == version:
            return planned
    raise BatchRunError(f"version {version} is not in this run's plan")


def _slot_as_planned(engine: Any, version: dict[str, Any]) -> routing.SlotRow:
    """The version's slot, refused if it was re-registered with another space since the plan."""
    row = routing.read_table(engine).slot(version["model_version"])
    if row is None or row.fingerprint != version["fingerprint"]:
        raise BatchRunError(
            f"the slot of version {version['model_version']} changed since the run was planned "
            f"(fingerprint {version['fingerprint']}); plan a new run"
        )
    return row


__all__ = ["RECOMMENDATIONS", "RELATED", "compute", "drop_retired", "finish", "jobs", "plan", "run"]
