"""The ``lockstep`` command line: the app, its command groups and the helpers every command shares.

Every command reads the same configuration as the DAGs and the serving app
(``LOCKSTEP_*`` and ``MLFLOW_TRACKING_URI``), so what you do here is what the DAGs do.
Errors print one clear line instead of a traceback. Exit codes: 0 done, 1 a runtime error
(``LockstepError``: a missing index, an unreachable database, a failed step), 2 a usage
error (a wrong option or argument, Click's convention), 130 interrupted.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Annotated

import typer

from lockstep.core import jsonio
from lockstep.core.errors import LockstepError

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
def progress(total: int, desc: str, unit: str = "rec"):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    try:
        yield bar.update
    finally:
        bar.close()


def echo_json(data) -> None:
    typer.echo(jsonio.dumps(data, indent=2, sort_keys=True))


def use_system(system: str | None):
    """Point this process at one system's deployment before anything reads the settings.

    ``--system recommender`` is ``LOCKSTEP_SYSTEM=recommender`` for this command: the
    recommender's database (routing table, logs, interactions) and registered model.
    Returns the system (``lockstep.systems.System``).
    """
    import os

    from lockstep import systems
    from lockstep.core.errors import ConfigurationError

    if system is not None:
        try:
            systems.by_name(system)
        except ConfigurationError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--system'") from None
        os.environ["LOCKSTEP_SYSTEM"] = system
    return systems.current()


def is_recommender(system) -> bool:
    from lockstep.systems import RecommenderSystem

    return isinstance(system, RecommenderSystem)


SystemOption = Annotated[
    str | None,
    typer.Option("--system", help="search (default) or recommender: which deployment (database, model, routing)."),
]
