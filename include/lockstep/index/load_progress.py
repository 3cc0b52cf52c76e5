"""How far a load is: records done, rate, ETA and each shard's state, in files beside the index.

A load (one re-embed of a version) keeps its state in ``<index version>/load/``, beside
the shards and outside them, so it outlives ``publish`` (which frees the shards) and a
finished load can still be shown:

    load/load.json            the load: version, snapshot sequence, records, rows per shard
    load/shard-00003.json     one shard: state, records done, host and pid of its worker
    load/paused               present while the load is paused (``lockstep index pause``)

Each shard's file is written by the one worker embedding it, atomically
(``core.atomic``), so no two processes ever write the same file and a reader never sees
a torn one; ``load_status`` adds them up. The DAG's shard tasks, ``lockstep index
build``'s worker processes and ``lockstep index status`` all meet here, on any machine that
shares the index store. A file per batch would cost an fsync per model call for a fast
model, so a running shard's file is rewritten at most every ``PROGRESS_EVERY_S`` seconds
(and at every change of state).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.core import clock
from lockstep.core.atomic import atomic_write
from lockstep.core.errors import LockstepError
from lockstep.index import mirror

LOAD_DIR = "load"
LOAD_FILE = "load.json"
PAUSE_FILE = "paused"
PROGRESS_EVERY_S = 1.0  # a running shard's file is rewritten at most this often (state changes always)
PENDING, RUNNING, PAUSED, DONE, FAILED = "pending", "running", "paused", "done", "failed"
STATES = (PENDING, RUNNING, PAUSED, DONE, FAILED)


def load_dir(location: str | Path) -> Path:
    """The folder of a version's load state (inside the index version folder)."""
    return mirror.working_dir(location) / LOAD_DIR


def _wall() -> float:
    return clock.now().timestamp()


def start_load(location: str | Path, *, model_version: str, seq: int, counts: list[int], file: str,
               now: Callable[[], float] = _wall) -> dict[str, Any]:
    """Record a load's shape when its snapshot is taken; a retried snapshot of the same load keeps its shards' state.

    Another snapshot (a new sequence or file) starts a new load: the old shards' files go,
    a pause of the old load stays (a paused version stays paused until resumed).
    """
    folder = load_dir(location)
    folder.mkdir(parents=True, exist_ok=True)
    mirror.pull_tree(folder)  # an object store: the load's state as every host wrote it
    previous = _read_json(folder / LOAD_FILE)
    same = bool(previous) and previous.get("seq") == seq and previous.get("file") == file
    if not same:
        for old in folder.glob("shard-*.json"):
            old.unlink(missing_ok=True)
            mirror.delete(old)
    load = {
        "model_version": str(model_version), "seq": int(seq), "file": file, "records": int(sum(counts)),
        "shards": {str(i): int(n) for i, n in enumerate(counts)},
        "started_at": previous["started_at"] if same else now(), "updated_at": now(),
    }
    atomic_write(folder / LOAD_FILE, json.dumps(load, sort_keys=True))
    mirror.push(folder / LOAD_FILE)
    return load


# --- pause and resume ----------------------------------------------------------------------------


def pause(location: str | Path, *, now: Callable[[], float] = _wall) -> bool:
    """Ask the load to pause: each shard stops at its next checkpoint. False when it was already paused."""
    folder = load_dir(location)
    if not mirror.pull(folder / LOAD_FILE):
        raise LockstepError(f"no load to pause at {location}: nothing has been snapshotted for this version yet")
    flag = folder / PAUSE_FILE
    if is_paused(location):
        return False
    atomic_write(flag, json.dumps({"paused_at": now(), "host": socket.gethostname(), "pid": os.getpid()}))
    mirror.push(flag)  # shards on every host see it at their next checkpoint
    return True


def resume(location: str | Path) -> bool:
    """Let a paused load go on (waiting shards continue within their poll interval). False when it was not paused."""
    flag = load_dir(location) / PAUSE_FILE
    if not is_paused(location):
        return False
    mirror.delete(flag)
    flag.unlink(missing_ok=True)
    return True


def is_paused(location: str | Path) -> bool:
    """Whether the load's pause flag is set (in the object store when there is one: any host may set it)."""
    return mirror.exists(load_dir(location) / PAUSE_FILE)  # on disk for a local store


# --- one shard's progress, written by its worker -------------------------------------------------


@dataclass
class ShardProgress:
    """One shard's state file, kept by the worker that embeds it.

    ``listener`` (in-process builds: the CLI's progress bar) is told every batch's new
    records as they are done, unthrottled.
    """

    location: Path
    shard: int
    total: int
    now: Callable[[], float] = _wall
    every: float = PROGRESS_EVERY_S
    listener: Callable[[int], None] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    _written_at: float = float("-inf")
    _told: int = 0

    @classmethod
    def for_shard(cls, shards_dir: str | Path, shard: int, total: int) -> ShardProgress | None:
        """The progress of a shard of a registered load (its ``load.json`` exists), else None (a bare build)."""
        location = Path(shards_dir).parent
        if not mirror.pull(load_dir(location) / LOAD_FILE):
            return None
        return cls(location, shard, total, listener=_LISTENER.get("listener"))

    @property
    def path(self) -> Path:
        return load_dir(self.location) / f"shard-{self.shard:05d}.json"

    def start(self, *, done: int, unique: int, checkpointed: int) -> None:
        """A worker begins (or resumes) the shard: ``done`` records are already there from its checkpoint."""
        t = self.now()
        self.state = {
            "shard": self.shard, "state": RUNNING, "total": self.total, "done": done, "unique_texts": unique,
            "embedded": checkpointed, "resumed_from": done, "host": socket.gethostname(), "pid": os.getpid(),
            "attempt_started_at": t, "updated_at": t, "error": None,
        }
        self._told = done
        self._write(force=True)

    def advance(self, *, done: int, embedded: int, force: bool = False) -> None:
        """A batch is done: ``done`` records of the shard have vectors, ``embedded`` distinct texts are embedded.

        Written at most every ``every`` seconds unless ``force`` (a checkpoint was just written).
        """
        self.state.update(done=done, embedded=embedded, state=RUNNING)
        if self.listener is not None and done > self._told:
            self.listener(done - self._told)
        self._told = max(self._told, done)
        self._write(force=force)

    def set_state(self, state: str, error: str | None = None) -> None:
        if not self.state:
            self.start(done=0, unique=0, checkpointed=0)
        self.state.update(state=state, error=error)
        if state == DONE:
            if self.listener is not None and self.total > self._told:
                self.listener(self.total - self._told)
            self._told = self.total
            self.state["done"] = self.total
        self._write(force=True)

    def paused(self) -> bool:
        return is_paused(self.location)

    def _write(self, force: bool = False) -> None:
        t = self.now()
        if not force and t - self._written_at < self.every:
            return
        self.state["updated_at"] = t
        atomic_write(self.path, json.dumps(self.state, sort_keys=True))
        mirror.push(self.path)  # `lockstep index status` on any host reads it
        self._written_at = t


_LISTENER: dict[str, Callable[[int], None]] = {}  # the in-process build's progress bar (one per process)


class progress_listener:  # noqa: N801 - used as a context manager, like contextlib's
    """While open, shards embedded in this process tell ``listener`` each batch's records (the CLI's bar)."""

    def __init__(self, listener: Callable[[int], None] | None) -> None:
        self.listener = listener

    def __enter__(self) -> None:
        if self.listener is not None:
            _LISTENER["listener"] = self.listener

    def __exit__(self, *exc: object) -> None:
        _LISTENER.pop("listener", None)


# --- the whole load, read back --------------------------------------------------------------------


def load_status(location: str | Path, *, now: Callable[[], float] = _wall) -> dict[str, Any] | None:
    """Records done, rate (records/s of the current attempts), ETA and every shard's state; None if never loaded.

    The rate counts the records each shard did in its current attempt (not those found in
    its checkpoint) over the time from the earliest attempt's start to the latest update,
    so parallel workers add up and a resumed load is not credited with earlier work.
    """
    folder = load_dir(location)
    mirror.pull_tree(folder)
    load = _read_json(folder / LOAD_FILE)
    if not load:
        return None
    shards = []
    for key, total in sorted(load["shards"].items(), key=lambda kv: int(kv[0])):
        state = _read_json(folder / f"shard-{int(key):05d}.json") or {"shard": int(key), "state": PENDING, "done": 0}
        state["total"] = total
        shards.append(state)
    done = sum(min(s.get("done", 0), s["total"]) for s in shards)
    rate = _rate(shards)
    remaining = load["records"] - done
    counts = {state: sum(s["state"] == state for s in shards) for state in STATES}
    paused = is_paused(location)
    finished = counts[DONE] == len(shards)
    return {
        "model_version": load["model_version"], "snapshot_seq": load["seq"], "records": load["records"],
        "done": done, "percent": round(100.0 * done / load["records"], 2) if load["records"] else 100.0,
        "rate_per_s": round(rate, 2) if rate else None,
        "eta_s": 0.0 if finished else (round(remaining / rate, 1) if rate and not paused else None),
        "state": DONE if finished else PAUSED if paused else FAILED if counts[FAILED] else RUNNING if done or counts[RUNNING] else PENDING,
        "paused": paused, "shard_states": counts, "shards": shards,
        "started_at": load["started_at"], "updated_at": max([load["updated_at"], *(s.get("updated_at", 0) for s in shards)]),
        "embedded_texts": sum(s.get("embedded", 0) for s in shards),
        "age_s": round(now() - load["started_at"], 1),
    }


def _rate(shards: list[dict[str, Any]]) -> float | None:
    active = [s for s in shards if "attempt_started_at" in s and s.get("done", 0) > s.get("resumed_from", 0)]
    if not active:
        return None
    work = sum(s["done"] - s.get("resumed_from", 0) for s in active)
    span = max(s["updated_at"] for s in active) - min(s["attempt_started_at"] for s in active)
    return work / span if span > 0 else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def version_load_status(model_version: str | int) -> dict[str, Any] | None:
    """The load state of a version of the deployment's model: what the UI page and ``lockstep index status`` show."""
    from lockstep.core import paths
    from lockstep.core.config import settings
    from lockstep.index.storage import index_location

    paths.version_number(str(model_version), "model version")
    return load_status(index_location(settings().model_name, model_version))


def register_load(plan: dict[str, Any], snap: dict[str, Any]) -> dict[str, Any]:
    """Record the load a ``snapshot`` step just took (rows per shard read from its file); returns ``snap`` as it is."""
    from lockstep.index.slot_plan import SlotPlan, snapshot_path
    from lockstep.index.snapshot import shard_counts

    p = SlotPlan(**plan)
    start_load(p.location, model_version=p.model_version, seq=snap["seq"],
               counts=shard_counts(snapshot_path(p, snap)), file=snapshot_path(p, snap).name)
    return snap


def latest_load_version() -> str | None:
    """The version of the deployment's model whose load was last updated (None: no load yet)."""
    from lockstep.core.config import settings
    from lockstep.index.storage import index_location

    folder = index_location(settings().model_name, 1).parent
    best: tuple[float, str] | None = None
    for load_file in folder.glob(f"v*/{LOAD_DIR}/{LOAD_FILE}"):
        version = load_file.parent.parent.name.removeprefix("v")
        if not version.isdigit():
            continue
        seen = (load_file.stat().st_mtime, version)
        best = seen if best is None or seen > best else best
    return best[1] if best else None
