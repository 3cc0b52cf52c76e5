"""``lockstep index``: build (the re-embed plan in one process, early verdict included) and show index versions."""

from __future__ import annotations

from typing import Annotated

import typer

from lockstep.cli.base import (
    SystemOption,
    echo_json,
    index_app,
    is_recommender,
    progress,
    use_system,
)
from lockstep.index.first_slice import DEFAULT_ACTION, DEFAULT_MARGIN, DEFAULT_SHARE
from lockstep.index.kinds import INDEX_TYPES

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
    early_verdict_share: Annotated[
        float,
        typer.Option(help="Share of the records embedded first, as a uniform sample, and judged against the champion."),
    ] = DEFAULT_SHARE,
    early_verdict_action: Annotated[
        str,
        typer.Option(help="When the candidate is worse on the first slice: warn (build on) or stop (stop the load)."),
    ] = DEFAULT_ACTION,
    early_verdict_margin: Annotated[
        float,
        typer.Option(help="How much worse in nDCG@10 than the champion, beyond doubt, before the action applies."),
    ] = DEFAULT_MARGIN,
    allow_rejected: Annotated[
        bool,
        typer.Option("--allow-rejected", help="Build a version its offline evaluation rejected (refused otherwise)."),
    ] = False,
    system: SystemOption = None,
) -> None:
    """Build and validate the index of a model version (with catch-up of live writes).

    A version whose offline verdict is 'rejected' is refused unless --allow-rejected; a
    version never evaluated is built with a warning line.

    The steps are the lockstep_reembed DAG's, early verdict included: the first slice is
    judged against the champion before the rest is embedded (the verdict is printed).
    With --system recommender: write the fit's serving files and register its slot.
    """
    if is_recommender(use_system(system)):
        from dataclasses import asdict

        from lockstep.recommender.build import build_version

        echo_json(asdict(build_version(model_version, promote_if_first=not no_promote)))
        return
    from lockstep.index.build import reembed_version
    from lockstep.index.first_slice import EarlyVerdictError, check_settings
    from lockstep.index.vector_index import IndexSpec
    from lockstep.model.offline_verdict import check_buildable
    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore

    try:
        check_settings(early_verdict_share, early_verdict_margin, early_verdict_action)  # before anything is written
    except EarlyVerdictError as exc:
        raise typer.BadParameter(str(exc)) from exc
    store = RecordStore()
    registry = Registry()
    warning = check_buildable(registry.get_version(model_version), allow_rejected)  # before the progress bar
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    with progress(store.count(), f"embedding for v{model_version}") as advance:
        outcome = reembed_version(
            store,
            registry,
            model_version,
            spec=None if index_type == "auto" else IndexSpec(kind=index_type),
            shard_size=shard_size,
            progress=advance,
            promote_if_first=not no_promote,
            early_verdict_share=early_verdict_share,
            early_verdict_action=early_verdict_action,
            early_verdict_margin=early_verdict_margin,
            allow_rejected=allow_rejected,
        )
    verdict = outcome.get("early_verdict")
    if verdict is not None:
        typer.echo(f"early verdict for v{outcome['model_version']}: {verdict['reason']}", err=True)
    echo_json(outcome)


@index_app.command("show")
def index_show(model_version: Annotated[str, typer.Option("--model-version")]) -> None:
    """Print an index version's manifest after checking its files."""
    from lockstep.core.config import settings
    from lockstep.index.storage import index_location, verify_index_files

    manifest = verify_index_files(index_location(settings().model_name, model_version))
    typer.echo(manifest.to_json())


@index_app.command("store")
def index_store(
    create_bucket: Annotated[bool, typer.Option("--create-bucket", help="Create the object store's bucket if it is missing.")] = False,
) -> None:
    """Check the index store: where it is, this host's cache, and a write, read and delete of a probe file."""
    from lockstep.index.store_check import check_store

    echo_json(check_store(create_bucket=create_bucket))
