"""Register a model trained elsewhere (``lockstep model import``), and load it back.

An imported version is the user's MLflow model directory, byte for byte, plus the probe
set's embeddings (``pyfunc_embedder.PROBE_FILE``): Lockstep proves the contract on it
(``check_contract``), logs the directory to a run of its own experiment and registers
it under Lockstep's model name, tagged like a trained version (fingerprint, dimension,
content digest, ``lockstep.family=imported``) and with the source URI. From then on it
is a version like any other: the re-embed builds its index, the rollout stages it,
serving pairs it with that index only.

Once registered it is judged against the champion offline, as a retrain is (issue 24):
``import_model``'s ``evaluator`` (``lockstep.training.imports.offline_evaluator``; the
model layer cannot read the record store itself) gives the verdict, written on the
version as ``lockstep.offline_verdict*`` and ``eval.*`` tags, its figures as metrics of the
import's run and as a block of the version's description. A rejected version is tagged
rejected and is not made the challenger; its index is built only with ``allow_rejected``.

Loading keeps a verified copy under ``$LOCKSTEP_HOME/cache/models/<digest[:32]>``: a
pyfunc model may read its files lazily, so it cannot live in a temporary folder, and a
serving replica that restarts should not download it again. The registry's
``lockstep.model_sha256`` tag is the trust anchor: it is checked to be a sha256 before it
names a folder (``core.paths``), a download must hash to it before it enters the cache,
and the cached copy is compared with it on every load (``PyfuncEmbedder.load``); the
``lockstep.json`` beside a copy is never consulted on that path.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import mlflow

from lockstep.core import paths
from lockstep.core.config import settings
from lockstep.core.errors import RegistryError
from lockstep.model.integrity import ModelIntegrityError
from lockstep.model.offline_verdict import REJECTED, SKIPPED, OfflineOutcome, evaluation_block
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
from lockstep.model.registry.tags import (
    CHALLENGER,
    IMPORTED,
    TAG_DIM,
    TAG_FAMILY,
    TAG_FINGERPRINT,
    TAG_MODEL_SHA256,
)

if TYPE_CHECKING:
    from lockstep.model.registry import ModelVersionInfo, Registry

IMPORT_EXPERIMENT = "lockstep-imports"
MODEL_PATH_IN_RUN = "model"


class VersionEvaluator(Protocol):
    """Judges a registered version against the champion (``lockstep.training.imports.offline_evaluator``)."""

    def __call__(self, registry: Registry, info: ModelVersionInfo) -> OfflineOutcome: ...


def import_model(
    registry: Registry,
    model_uri: str,
    *,
    tags: Mapping[str, str] | None = None,
    set_challenger: bool = True,
    evaluate: bool = True,
    evaluator: VersionEvaluator | None = None,
) -> ModelVersionInfo:
    """Check that ``model_uri`` meets the contract, then register it as a new version.

    ``model_uri`` is anything MLflow downloads: ``runs:/<id>/<path>``, ``models:/<name>/<v>``,
    ``models:/<model_id>``, a local directory. Nothing is registered when the check fails
    (``ModelContractError`` names the problem).

    Once registered, the version is evaluated against the champion by ``evaluator`` (the
    model layer cannot read the record store: ``lockstep model import`` passes
    ``lockstep.training.imports.offline_evaluator()``). Its verdict is written on the
    version as a retrain's is (``lockstep.model.offline_verdict``): a rejected version is
    tagged rejected and does not become the challenger. ``evaluate=False`` skips it (the
    verdict ``skipped`` says so); with no ``evaluator`` the verdict is ``skipped`` too.
    """
    with tempfile.TemporaryDirectory(prefix="lockstep-import-") as tmp:
        with registry._scoped():  # MLflow resolves a models:/ URI through its process-wide URIs, not the argument
            local = _fetch(model_uri, Path(tmp) / MODEL_PATH_IN_RUN, registry.tracking_uri)
        probe = check_contract(_load_pyfunc(local))
        write_probe(local, probe)
        version_tags = {
            **dict(tags or {}),
            TAG_FINGERPRINT: fingerprint_of(artifact_digest(local), probe.shape[1], probe),
            TAG_DIM: str(probe.shape[1]),
            TAG_MODEL_SHA256: directory_digest(local),
            TAG_FAMILY: (tags or {}).get(TAG_FAMILY, IMPORTED),  # onnx_text.import_onnx names its family
            "lockstep.source_uri": (tags or {}).get("lockstep.source_uri", model_uri),  # onnx_text: the user's folder
        }
        version = _register(registry, local, version_tags)
    outcome = _evaluate(registry, version, evaluate, evaluator)
    registry.describe_version(version, _description(model_uri, version_tags, len(probe), outcome))
    if outcome.verdict == REJECTED:
        registry.reject(version, outcome.reason, outcome.metrics())
    elif set_challenger:
        registry.set_alias(CHALLENGER, version)
    return registry.get_version(version)


def _evaluate(registry: Registry, version: str, evaluate: bool, evaluator: VersionEvaluator | None) -> OfflineOutcome:
    """The version's offline verdict, written on it as tags (and its figures as metrics of its run)."""
    if not evaluate:
        outcome = OfflineOutcome(SKIPPED, "skipped: asked not to evaluate (evaluate=False, --no-evaluate)")
    elif evaluator is None:
        outcome = OfflineOutcome(SKIPPED, "skipped: no evaluator was given to import_model")
    else:
        outcome = evaluator(registry, registry.get_version(version))
    registry.set_tags(version, outcome.tags())
    registry.log_version_metrics(version, outcome.metrics())
    return outcome


def _description(model_uri: str, tags: Mapping[str, str], probes: int, outcome: OfflineOutcome) -> str:
    """What a reviewer reads on the version's page in the MLflow UI."""
    return (
        f"**Imported model** (family `{tags[TAG_FAMILY]}`) from `{tags['lockstep.source_uri']}` (`lockstep model import`).\n\n"
        f"- dimension {tags['dim']}; fingerprint `{tags['fingerprint']}`\n"
        f"- the embedding contract was checked on {probes} probe texts: a 2-D finite float array, one row per "
        "text, one dimension in any batch size, the same vectors on a second call\n\n"
        + evaluation_block(outcome) + "\n"
    )


def load_imported(registry: Registry, info: ModelVersionInfo, expected_sha256: str) -> PyfuncEmbedder:
    """The imported version from the local cache (downloaded once), checked on every load.

    The registry's ``lockstep.model_sha256`` tag is the only trust anchor: it names the
    cache folder, so it is checked to be a sha256 before any path is made from it (a tag
    like ``sha256:../../../indexes`` is refused here, before anything is read or removed),
    and the folder's content is compared with it on every load. Whatever sits in the
    cache (its files, its ``lockstep.json``) vouches for nothing: a copy that does not
    hash to the tag is downloaded again.
    """
    trusted = paths.digest(expected_sha256, f"tag {TAG_MODEL_SHA256} of version {info.version}")
    folder = _cache_folder(trusted)
    if not folder.is_dir() or directory_digest(folder) != trusted:
        _download_into(registry, info, folder, trusted)
    return PyfuncEmbedder.load(folder, expected_sha256=trusted)


def _cache_folder(trusted: str) -> Path:
    """``<cache>/models/<digest[:32]>``, confined to the cache; a symlink planted there is removed, not followed."""
    root = settings().cache_dir / "models"
    entry = root / paths.hex_digest(trusted)[:32]
    if entry.is_symlink():
        entry.unlink()  # the link itself; whatever it points to is left alone
    return paths.inside(root, entry.name, what="model cache folder")


def _fetch(model_uri: str, dest: Path, tracking_uri: str) -> Path:
    """The model directory behind a URI, copied to ``dest`` (never the user's own folder).

    MLflow downloads into a fresh empty folder beside ``dest`` and that download is moved
    to ``dest``: a ``models:/m-<id>`` URI (a LoggedModel) lands in the folder itself,
    a ``runs:/<id>/<path>`` one in a subfolder, and neither may be renamed into its own child.
    """
    source = _local_source(model_uri)
    if source is not None:
        if not (source / "MLmodel").is_file():
            raise ModelContractError(f"{source} is not an MLflow model directory (it has no MLmodel file)")
        shutil.copytree(source, dest)
        return dest
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(staging), tracking_uri=tracking_uri))
        except Exception as exc:  # MLflow raises MlflowException, OSError or its own for a bad URI
            raise ModelContractError(f"could not fetch the model at {model_uri!r}: {exc}") from exc
        got = paths.within(staging, got, what=f"the download of {model_uri!r}")
        if not (got / "MLmodel").is_file():
            raise ModelContractError(f"{model_uri!r} is not an MLflow model (no MLmodel file at that location)")
        got.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _local_source(model_uri: str) -> Path | None:
    """The folder a local path or ``file:`` URI names; None for a URI MLflow must resolve."""
    parsed = urllib.parse.urlparse(model_uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ModelContractError(f"{model_uri!r} names another host; only local file: URIs can be imported")
        return Path(urllib.request.url2pathname(parsed.path))
    source = Path(model_uri).expanduser()
    if ":" not in model_uri.split("/")[0] and source.exists():
        return source
    return None


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


def _download_into(registry: Registry, info: Any, folder: Path, trusted: str) -> None:
    """Download beside ``folder``, check it against ``trusted``, and rename it into place.

    A reader never sees half a model, and a download that does not hash to the registry's
    digest never takes the cache's place. ``folder`` is confined to the cache
    (``_cache_folder``), and so is what the download returns. Two processes may download
    at once: the first rename wins, and a folder already in place that matches the
    digest is never removed (another process may be loading it).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    try:
        local = paths.within(staging, registry.download_version(info, staging), what="the downloaded model")
        got = directory_digest(local)
        if got != trusted:
            raise ModelIntegrityError(
                f"version {info.version} as downloaded from the registry has content digest {got}, but its "
                f"{TAG_MODEL_SHA256} tag says {trusted}: the artifact or the tag was changed after registration; "
                "it was not loaded (import the model again)"
            )
        if folder.is_dir() and directory_digest(folder) != trusted:
            shutil.rmtree(folder, ignore_errors=True)  # a stale, damaged or tampered copy, inside the cache
        try:
            local.rename(folder)
        except OSError:  # another process put a copy in place meanwhile
            if directory_digest(folder) != trusted:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
