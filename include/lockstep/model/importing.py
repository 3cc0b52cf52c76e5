"""Register a model trained elsewhere (``lockstep model import``), and load it back.

An imported version is the user's MLflow model directory, byte for byte, plus the probe
set's embeddings (``pyfunc_embedder.PROBE_FILE``): Lockstep proves the contract on it
(``check_contract``), logs the directory to a run of its own experiment and registers
it under Lockstep's model name, tagged like a trained version (fingerprint, dimension,
content digest, ``lockstep.family=imported``) and with the source URI. From then on it
is a version like any other: the re-embed builds its index, the rollout stages it,
serving pairs it with that index only.

Loading keeps a verified copy under ``$LOCKSTEP_HOME/cache/models/<digest>``: a
pyfunc model may read its files lazily, so it cannot live in a temporary folder, and a
serving replica that restarts should not download it again. The copy is checked
against the registry's digest on every load (``PyfuncEmbedder.load``).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from lockstep.core.config import settings
from lockstep.core.errors import RegistryError
from lockstep.model.pyfunc_embedder import (
    ModelContractError,
    PyfuncEmbedder,
    _load_pyfunc,
    artifact_digest,
    check_contract,
    directory_digest,
    fingerprint_of,
    write_probe,
)

if TYPE_CHECKING:
    from lockstep.model.registry import ModelVersionInfo, Registry

IMPORT_EXPERIMENT = "lockstep-imports"
MODEL_PATH_IN_RUN = "model"


def import_model(
    registry: Registry,
    model_uri: str,
    *,
    tags: Mapping[str, str] | None = None,
    set_challenger: bool = True,
) -> ModelVersionInfo:
    """Check that ``model_uri`` meets the contract, then register it as a new version.

    ``model_uri`` is anything MLflow downloads: ``runs:/<id>/<path>``, ``models:/<name>/<v>``,
    ``models:/<model_id>``, a local directory. Nothing is registered when the check fails
    (``ModelContractError`` names the problem).
    """
    from lockstep.model.registry import (
        CHALLENGER,
        IMPORTED,
        TAG_DIM,
        TAG_FAMILY,
        TAG_FINGERPRINT,
        TAG_MODEL_SHA256,
    )

    with tempfile.TemporaryDirectory(prefix="lockstep-import-") as tmp:
        local = _fetch(model_uri, Path(tmp) / MODEL_PATH_IN_RUN, registry.tracking_uri)
        probe = check_contract(_load_pyfunc(local))
        write_probe(local, probe)
        version_tags = {
            **dict(tags or {}),
            TAG_FINGERPRINT: fingerprint_of(artifact_digest(local), probe.shape[1], probe),
            TAG_DIM: str(probe.shape[1]),
            TAG_MODEL_SHA256: directory_digest(local),
            TAG_FAMILY: IMPORTED,
            "lockstep.source_uri": model_uri,
        }
        version = _register(registry, local, version_tags)
    registry.describe_version(version, _description(model_uri, version_tags, len(probe)))
    if set_challenger:
        registry.set_alias(CHALLENGER, version)
    return registry.get_version(version)


def _description(model_uri: str, tags: Mapping[str, str], probes: int) -> str:
    """What a reviewer reads on the version's page in the MLflow UI."""
    return (
        f"**Imported model** from `{model_uri}` (`lockstep model import`).\n\n"
        f"- dimension {tags['dim']}; fingerprint `{tags['fingerprint']}`\n"
        f"- the embedding contract was checked on {probes} probe texts: a 2-D finite float array, one row per "
        "text, one dimension in any batch size, the same vectors on a second call\n"
        "- no offline evaluation was run by Lockstep; the rollout's gates judge it on live traffic\n"
    )


def load_imported(registry: Registry, info: ModelVersionInfo, expected_sha256: str) -> PyfuncEmbedder:
    """The imported version from the local cache (downloaded once), checked on every load."""
    folder = settings().cache_dir / "models" / expected_sha256.removeprefix("sha256:")[:32]
    if not folder.is_dir() or directory_digest(folder) != expected_sha256:
        _download_into(registry, info, folder, expected_sha256)
    return PyfuncEmbedder.load(folder, expected_sha256=expected_sha256)


def _fetch(model_uri: str, dest: Path, tracking_uri: str) -> Path:
    """The model directory behind a URI, copied to ``dest`` (never the user's own folder)."""
    source = Path(model_uri.removeprefix("file://")).expanduser()
    if model_uri.startswith("file://") or (":" not in model_uri.split("/")[0] and source.exists()):
        if not (source / "MLmodel").is_file():
            raise ModelContractError(f"{source} is not an MLflow model directory (it has no MLmodel file)")
        shutil.copytree(source, dest)
        return dest
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest.parent), tracking_uri=tracking_uri))
    except Exception as exc:  # MLflow raises MlflowException, OSError or its own for a bad URI
        raise ModelContractError(f"could not fetch the model at {model_uri!r}: {exc}") from exc
    if not (got / "MLmodel").is_file():
        raise ModelContractError(f"{model_uri!r} is not an MLflow model (no MLmodel file at that location)")
    if got != dest:
        got.rename(dest)
    return dest


def _register(registry: Registry, local: Path, tags: dict[str, str]) -> str:
    """Log the directory to a run and register it; the new version number."""
    client = registry._client()
    experiment_id = registry._experiment_id(IMPORT_EXPERIMENT)
    run_name = f"import {tags['lockstep.source_uri']}"[:250]
    with registry._scoped(), mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({**tags, "lockstep.model_name": registry.model_name})
        mlflow.log_artifacts(str(local), MODEL_PATH_IN_RUN)
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_PATH_IN_RUN}"
    try:
        try:
            client.create_registered_model(registry.model_name)
        except mlflow.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = client.create_model_version(registry.model_name, source, run_id=run.info.run_id, tags=tags)
    except mlflow.MlflowException as exc:
        raise RegistryError(f"could not register the imported model as {registry.model_name!r}: {exc.message}") from exc
    registry._describe_model()
    return str(mv.version)


def _download_into(registry: Registry, info: Any, folder: Path, expected_sha256: str) -> None:
    """Download beside ``folder`` and rename into place, so a reader never sees half a model.

    Two processes may download at once: the first rename wins, and a folder already in
    place that matches the digest is never removed (another process may be loading it).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    try:
        local = registry.download_version(info, staging)
        if folder.is_dir() and directory_digest(folder) != expected_sha256:
            shutil.rmtree(folder, ignore_errors=True)  # a stale or damaged copy
        try:
            local.rename(folder)
        except OSError:  # another process put a copy in place meanwhile
            if directory_digest(folder) != expected_sha256:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
