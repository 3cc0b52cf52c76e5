"""The retrain pipeline as steps: what each task of ``lockstep_retrain`` runs.

Every step takes and returns JSON-able values (they travel as XComs) and finds its
inputs again from durable places: the snapshot by its change-log sequence, the model
by its file in the run folder, the champion in the registry. So any step can be
retried on another worker and gives the same answer; a rerun never registers twice
(``register`` looks for a version already registered by the same run first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lockstep.core import jsonio
from lockstep.core.atomic import atomic_write
from lockstep.core.config import run_folder, settings
from lockstep.model.offline_verdict import TAG as OFFLINE_VERDICT_TAG
from lockstep.model.offline_verdict import verdict_of_evaluation
from lockstep.model.stored_vectors import StoredVectorReader
from lockstep.store.records import RecordStore
from lockstep.training.config import TrainConfig
from lockstep.training.fit import (
    EvalSet,
    evaluate_embedder,
    fit_embedder,
    fit_texts,
    judge,
    snapshot_digest,
    split_holdout,
    write_eval_artifacts,
)

MODEL_FILE = "model.joblib"
SNAPSHOT_FILE = "snapshot.json"  # in the run folder: what the run's dataset input describes
PLOTS_PREFIX = "plots/"


def snapshot(store: RecordStore | None = None) -> dict[str, Any]:
    """Fix the training snapshot at the change log's head; later steps rebuild it from there.

    Only the sequence and a count are read here (at a million records, reading the
    records themselves cost 1.3 GB and 20 s for a number). Every later step reads the
    snapshot at this sequence, so writes after it do not change what is trained on;
    the count, read just after, may include them and is for display.
    """
    store = store or RecordStore()
    seq, count = store.head(), store.count()
    if not count:
        from lockstep.training.config import TrainingError

        raise TrainingError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    return {"seq": seq, "records": count}


def validate(seq: int, run_dir: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Great Expectations suite over the snapshot; raises with the report's path on failure."""
    from lockstep.training.validation import (
        DataValidationError,
        ValidationConfig,
        validate_snapshot,
        write_report,
    )

    records = RecordStore().snapshot(at_seq=seq).records
    report = validate_snapshot(records, seq, ValidationConfig.from_dict(config or {}))
    paths = write_report(report, Path(run_dir) / "validation")
    summary = {"success": report.success, "report": {k: str(v) for k, v in paths.items()}}
    if not report.success:
        raise DataValidationError(
            "data validation failed (report: " + str(paths.get("markdown", paths)) + "): " + "; ".join(report.failures)
        )
    return summary


def train(seq: int, run_dir: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit on the snapshot's training records (a seeded sample of ``fit_sample`` at scale).

    Only the sampled texts outlive the split: the snapshot's records are freed before
    the fit, so the fit's memory adds to a sample, not to the whole corpus.
    """
    cfg = TrainConfig.from_dict(config)
    records = RecordStore().snapshot(at_seq=seq).records
    described = {"seq": seq, "records": len(records), "digest": snapshot_digest(records)}
    holdout = split_holdout(records, cfg)
    del records
    summary = holdout.summary()
    texts = fit_texts(holdout.train, cfg)
    del holdout
    embedder = fit_embedder(texts, cfg)
    path = embedder.save(Path(run_dir) / MODEL_FILE)
    atomic_write(Path(run_dir) / SNAPSHOT_FILE, jsonio.dumps({**described, **summary, "fit_texts": len(texts)}))
    return {
        "model_path": str(path), "family": cfg.family, "fingerprint": embedder.fingerprint, **summary,
        "fit_texts": len(texts),
    }


def evaluate(
    seq: int, model_path: str, run_dir: str, config: dict[str, Any] | None = None, registry=None, *,
    stored: StoredVectorReader | None = None, store: RecordStore | None = None,
) -> dict[str, Any]:
    """Challenger and champion on the same held-out queries; writes report and plot.

    The snapshot is reduced to the texts and labels evaluation reads before either
    model embeds anything, and the two models are evaluated one after the other.
    ``stored`` reads the champion's vectors from its published index
    (``lockstep.index.champion_vectors.read_stored_vectors``, which the DAG and ``lockstep
    train`` pass): only texts its index lacks or holds in an older state are embedded
    (``champion_side``). None: the champion embeds every text.
    """
    from lockstep.model.families import load_model_file
    from lockstep.model.registry import Registry
    from lockstep.training.champion_side import evaluate_champion

    cfg = TrainConfig.from_dict(config)
    registry = registry or Registry()
    store = store or RecordStore()
    data = EvalSet.from_holdout(split_holdout(store.snapshot(at_seq=seq).records, cfg), cfg.label_key, seq=seq)
    challenger = evaluate_embedder(load_model_file(model_path), data, cfg)
    champion = registry.version_for_alias("champion")
    champion_eval, reuse = None, None
    if champion is not None:
        champion_eval, reuse = evaluate_champion(
            lambda: registry.load_embedder(champion.version), champion, data, cfg, reader=stored, store=store,
        )
    report = judge(challenger, champion_eval, cfg, champion.version if champion else None, data)
    if reuse is not None:
        report.figures.update(reuse.figures())
    files = write_eval_artifacts(report, challenger, champion_eval, Path(run_dir) / "evaluation")
    return {
        "better": report.better,
        "reason": report.reason,
        "figures": report.figures,
        "champion_version": report.champion_version,
        "holdout": report.holdout,
        "artifacts": {k: str(v) for k, v in files.items()},
    }


def register(
    seq: int,
    model_path: str,
    evaluation: dict[str, Any],
    run_dir: str,
    run_id: str,
    config: dict[str, Any] | None = None,
    registry=None,
    drift: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Log and register the model once per DAG run (a retry finds the version it made).

    The run gets the snapshot as its training dataset, and the version a description for
    its reviewer (``describe``); ``drift`` is the extra of the drift asset event that
    started the run, if one did.
    """
    from lockstep.model.registry import Registry

    registry = registry or Registry()
    found = [i for i in registry.latest_versions(limit=20) if i.tags.get("lockstep.run_id") == run_id]
    info = found[0] if found else _log_and_register(seq, model_path, evaluation, run_dir, run_id, config, registry, drift)
    describe(info.version, evaluation, run_dir, config, registry, drift)
    return {"version": info.version, "fingerprint": info.fingerprint, "reused": bool(found)}


def _log_and_register(
    seq: int,
    model_path: str,
    evaluation: dict[str, Any],
    run_dir: str,
    run_id: str,
    config: dict[str, Any] | None,
    registry: Any,
    drift: Mapping[str, Any] | None,
) -> Any:
    import math

    from lockstep.model.families import load_model_file

    embedder = load_model_file(model_path)
    artifacts = {k: Path(v) for k, v in evaluation.get("artifacts", {}).items()}
    validation_dir = Path(run_dir) / "validation"
    if validation_dir.exists():
        artifacts.update({f"validation/{p.name}": p for p in validation_dir.iterdir() if p.is_file()})
    return registry.log_and_register(
        embedder,
        params={**TrainConfig.from_dict(config).to_dict(), **evaluation.get("holdout", {})},
        metrics={k: float(v) for k, v in evaluation["figures"].items() if math.isfinite(float(v))},
        artifacts=artifacts,
        tags={
            "lockstep.run_id": run_id,
            "lockstep.champion_at_training": evaluation.get("champion_version") or "none",
            "lockstep.evaluation": evaluation["reason"][:5000],
            OFFLINE_VERDICT_TAG: verdict_of_evaluation(bool(evaluation["better"])),
            f"{OFFLINE_VERDICT_TAG}.reason": evaluation["reason"][:5000],
            f"{OFFLINE_VERDICT_TAG}.champion": evaluation.get("champion_version") or "none",
            **_drift_tags(drift),
        },
        snapshot_seq=seq,
        run_name=run_id,
        snapshot=_training_snapshot(seq, run_dir),
    )


def describe(
    version: str,
    evaluation: dict[str, Any],
    run_dir: str,
    config: dict[str, Any] | None = None,
    registry=None,
    drift: Mapping[str, Any] | None = None,
) -> str:
    """Write the version's description for its reviewer (shown on its MLflow UI page).

    The parameters of this version and of the champion both come from their runs, so the
    table compares like with like; the training figures from the run folder's snapshot file.
    """
    from lockstep.model.description import VersionStory, version_description
    from lockstep.model.registry import Registry

    registry = registry or Registry()
    info = registry.get_version(version)
    keys = _param_keys()
    champion = evaluation.get("champion_version")
    champion_run = registry.get_version(champion).run_id if champion else None
    plots = sorted(k for k in evaluation.get("artifacts", {}) if k.startswith(PLOTS_PREFIX))
    story = VersionStory(
        version=info.version,
        family=_family_title(info.tags.get("lockstep.family")),
        params={k: v for k, v in registry.run_params(info.run_id).items() if k in keys},
        champion_params={k: v for k, v in registry.run_params(champion_run).items() if k in keys},
        training=_read_snapshot_file(run_dir) or {"seq": info.snapshot_seq, **evaluation.get("holdout", {})},
        evaluation=evaluation,
        drift=drift or None,
        links=registry.ui_links(info, plots, drift_run_id=(drift or {}).get("mlflow_run_id")),
        plots=plots,
    )
    text = version_description(story)
    registry.describe_version(info.version, text)
    return text


def _param_keys() -> set[str]:
    """The run params a description compares: every family's ``embedder.*`` and the config's."""
    from lockstep.model.families import families

    embedder_keys = {f"embedder.{k}" for cls in families().values() for k in cls().get_params()}
    return embedder_keys | set(TrainConfig.__dataclass_fields__)


def _family_title(name: str | None) -> str:
    """How a version's family is named to its reviewer, from its ``lockstep.family`` tag."""
    from lockstep.model.families import all_families

    known = all_families()
    return known.get(name or "", f"{name or 'unknown'} (not a known family)")


def _training_snapshot(seq: int, run_dir: str) -> Any:
    """What the run logs as its training dataset; None when train left no snapshot file."""
    from lockstep.model.registry import TrainingSnapshot

    described = _read_snapshot_file(run_dir)
    if not described:
        return None
    return TrainingSnapshot(
        source=settings().database_url, seq=seq, records=int(described["records"]), digest=described["digest"]
    )


def _read_snapshot_file(run_dir: str) -> dict[str, Any] | None:
    path = Path(run_dir) / SNAPSHOT_FILE
    return jsonio.loads(path.read_text(), what=str(path)) if path.is_file() else None


def _drift_tags(drift: Mapping[str, Any] | None) -> dict[str, str]:
    """Version tags naming the drift check that started the training (none without one)."""
    if not drift:
        return {}
    return {
        "lockstep.trigger": "drift",
        "lockstep.drift_run_id": str(drift.get("mlflow_run_id") or ""),
        "lockstep.drift_reasons": "; ".join(map(str, drift.get("reasons") or []))[:5000],
    }


def accept(version: str, registry=None) -> dict[str, Any]:
    """Mark the version as the challenger (the re-embed DAG picks it up)."""
    from lockstep.model.registry import Registry

    registry = registry or Registry()
    registry.set_alias("challenger", version)
    info = registry.get_version(version)
    return {"model_version": info.version, "fingerprint": info.fingerprint}


def reject(version: str, evaluation: dict[str, Any], registry=None) -> dict[str, Any]:
    from lockstep.model.registry import Registry

    registry = registry or Registry()
    registry.reject(version, evaluation["reason"], evaluation["figures"])
    return {"model_version": version, "status": "rejected", "reason": evaluation["reason"]}


def run_all(
    config: dict[str, Any] | None,
    run_id: str,
    *,
    validate_data: bool = True,
    step: Callable[[str], None] | None = None,
    stored: StoredVectorReader | None = None,
) -> dict[str, Any]:
    """Every step of ``lockstep_retrain`` in one process (what ``lockstep train`` runs).

    ``stored``: as ``evaluate`` takes it (the champion's vectors from its index).
    """
    say = step or (lambda _msg: None)
    folder = str(run_folder(run_id))
    say("snapshot")
    snap = snapshot()
    if validate_data:
        say("validate")
        validate(snap["seq"], folder)
    say(f"fit on {snap['records']} records")
    model = train(snap["seq"], folder, config)
    say("evaluate")
    evaluation = evaluate(snap["seq"], model["model_path"], folder, config, stored=stored)
    say("register")
    registered = register(snap["seq"], model["model_path"], evaluation, folder, run_id, config)
    outcome = accept(registered["version"]) if evaluation["better"] else reject(registered["version"], evaluation)
    return {**registered, "accepted": evaluation["better"], "reason": evaluation["reason"], **outcome}


def dumps(value: Any) -> str:
    return jsonio.dumps(value, indent=2, sort_keys=True)


def nothing_to_train(store: RecordStore | None = None) -> str | None:
    """Why a retraining has nothing to do (an empty record store), or None when it has.

    A scheduled run on a fresh install, before any corpus is loaded, is not a failure:
    ``lockstep_retrain`` skips with this reason and ``lockstep train`` prints it.
    """
    if (store or RecordStore()).count():
        return None
    return "nothing to train: the record store is empty; load records first (lockstep corpus load --demo or --path FILE)"
