"""The plan of one re-embed: which model version, where its index goes, and the model copy it embeds with.

A ``SlotPlan`` travels between the tasks of ``lockstep_reembed`` (XCom) and between the
steps of ``lockstep index build``. Every step that embeds (the shard tasks, the early
verdict, merge and validation) loads the model from the local copy ``prepare`` wrote
beside the shards (``model_file``), trusted only by the digest ``prepare`` recorded in
the plan (``load_embedder``), and reads the snapshot the plan's ``snapshot`` step wrote
(``snapshot_path``). Kept apart from the steps so that the early verdict, which needs
the same three, does not import the steps that call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockstep.core import paths
from lockstep.index import mirror
from lockstep.index.snapshot import snapshot_name
from lockstep.index.storage import published_location


@dataclass(frozen=True)
class SlotPlan:
    model_name: str
    model_version: str
    model_uri: str
    fingerprint: str
    location: str
    model_sha256: str = ""  # digest of the local model copy ``prepare`` wrote: the shard tasks' trust anchor

    def __post_init__(self) -> None:
        """A plan travels between tasks (XCom): its version and folder are checked wherever it is rebuilt."""
        from lockstep.index.storage import store_root

        paths.version_number(self.model_version, "the plan's model version")
        paths.within(store_root(), mirror.working_dir(self.location), what="the plan's index location")
        if self.model_sha256:
            paths.digest(self.model_sha256, "the plan's model digest")


def plan_slot(registry, version: str | int) -> SlotPlan:
    """Resolve a model version in the registry (a clear error if it does not exist)."""
    info = registry.get_version(version)
    return SlotPlan(
        model_name=registry.model_name,
        model_version=str(info.version),
        model_uri=f"models:/{registry.model_name}/{info.version}",
        fingerprint=info.fingerprint,
        location=published_location(registry.model_name, info.version),
    )


def plan_folder(plan: SlotPlan | dict[str, Any]) -> Path:
    """This host's folder of the plan's version (``mirror.working_dir``: the cache of an object store)."""
    return mirror.working_dir(plan.location if isinstance(plan, SlotPlan) else plan["location"])


def snapshot_path(plan: SlotPlan, snap: dict[str, Any]) -> Path:
    """The snapshot file of a ``snapshot`` step's outcome, inside the plan's shard folder.

    Pulled into this host's cache when the snapshot task ran on another host (an object store).
    """
    name = snap.get("file") or snapshot_name(snap["seq"], snap["shard_size"])
    path = plan_folder(plan) / "shards" / paths.name(name, "snapshot file name")
    mirror.pull(path)
    return path


def model_file(plan: SlotPlan) -> Path:
    """Where ``prepare`` saves the local model copy: a built-in family's file, or an imported model's directory."""
    return plan_folder(plan) / "shards" / "model"


def load_embedder(plan: SlotPlan):
    """The local copy made by ``prepare`` (checked against the plan's fingerprint), else the registry.

    Cached per process: a worker that embeds several shards loads the model once.
    """
    key = (str(model_file(plan)), plan.fingerprint)
    cached = _EMBEDDERS.get(key)
    if cached is not None:
        return cached
    from lockstep.index.slot_files import open_model
    from lockstep.model.families import load_model_file

    path = model_file(plan)
    if plan.model_sha256 and not path.exists():
        mirror.pull_path(path)  # prepare ran on another host: its copy is in the object store
    # Never trusted by a sidecar beside it: the digest prepare recorded, else the registry.
    model = load_model_file(path, expected_sha256=plan.model_sha256) if plan.model_sha256 and path.exists() else None
    if model is None or model.fingerprint != plan.fingerprint:
        model = open_model(plan)  # the registry version the plan names (model_uri), checked against its fingerprint
    _EMBEDDERS.clear()
    _EMBEDDERS[key] = model
    return model


def local_digest(path: Path) -> str:
    """The digest ``load_model_file`` checks: content digest of a directory, sha256 of a file."""
    from lockstep.model.integrity import file_sha256
    from lockstep.model.pyfunc_embedder import directory_digest

    return directory_digest(path) if path.is_dir() else file_sha256(path)


_EMBEDDERS: dict[tuple[str, str], Any] = {}


def cached_embedders() -> list[Any]:
    """The models this process has loaded (a forked embedding worker hands them its thread count)."""
    return list(_EMBEDDERS.values())
