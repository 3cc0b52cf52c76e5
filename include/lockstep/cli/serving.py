"""``lockstep routing``, ``serve``, ``search``, ``holdback`` and ``batch``: what serves, and to whom."""

from __future__ import annotations

from typing import Annotated

import typer

from lockstep.cli.base import (
    SystemOption,
    app,
    batch_app,
    echo_json,
    holdback_app,
    routing_app,
    use_system,
)

# --- routing, serving, search ----------------------------------------------------------------


@routing_app.command("show")
def routing_show(system: SystemOption = None) -> None:
    """Print the routing table: slots, states, weights and the generation."""
    use_system(system)
    from lockstep.serving.cli import routing_show as show

    typer.echo(show())


@routing_app.command("set")
def routing_set(
    pairs: Annotated[list[str], typer.Argument(help="VERSION=WEIGHT pairs; live weights must sum to 100.")],
    shadow: Annotated[list[str] | None, typer.Option("--shadow", help="Versions that get mirrored traffic.")] = None,
    system: SystemOption = None,
) -> None:
    """Change traffic weights in one transaction."""
    use_system(system)
    from lockstep.serving.cli import routing_set as set_

    typer.echo(set_(pairs, shadow or []))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    system: SystemOption = None,
) -> None:
    """Run the serving API (one replica); --system recommender serves /recommend and /interactions."""
    use_system(system)
    from lockstep.serving.cli import serve as run

    run(host, port, app="lockstep.systems:create_app")


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="The query text.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=100, help="How many results.")] = 10,
    user_id: Annotated[str | None, typer.Option(help="Route as this user (sticky).")] = None,
) -> None:
    """One search through the current routing, printed."""
    from lockstep.serving.cli import search_once

    search_once(text, k, user_id)


# --- holdback (issue 13) ------------------------------------------------------------------------


@holdback_app.command("set")
def holdback_set(
    version: Annotated[str, typer.Argument(help="The model version to freeze users on: a ready or live slot.")],
    percent: Annotated[float, typer.Argument(help="Share of users (with a user id) held back: above 0, at most 50.")],
    system: SystemOption = None,
) -> None:
    """Freeze a sticky share of users on VERSION: rollouts never move them, retention keeps the version."""
    use_system(system)
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
    use_system(system)
    from lockstep.holdback.steps import format_table, report

    lift = report(days=days)
    if as_json:
        echo_json(lift.to_dict())
        return
    typer.echo(format_table(lift))


@holdback_app.command("clear")
def holdback_clear(system: SystemOption = None) -> None:
    """End the holdback: its users are routed by the weights again."""
    use_system(system)
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
    use_system(system)
    from lockstep.batch.steps import run

    summary = run(k=k, versions=list(model_version) if model_version else None, full=full)
    if as_json:
        echo_json(summary)
        return
    if not summary["versions"]:
        typer.echo("no serving version: nothing computed")
    for v in summary["versions"]:
        typer.echo(f"{summary['kind']} v{v['model_version']}: {v['mode']}, {v['computed']:,} keys computed, "
                   f"{v['removed']:,} removed; {v['rows']:,} rows complete through seq {v['through_seq']} ({v['reason']})")
    for name, rows in summary["dropped"].items():
        typer.echo(f"retired {name}: {rows:,} rows removed")

