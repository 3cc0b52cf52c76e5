"""``lockstep demo``, ``up`` and ``simulate``: the whole lifecycle, headless or as an embedded stack."""

from __future__ import annotations

from typing import Annotated

import typer

from lockstep.cli.base import (
    SystemOption,
    app,
    use_system,
)

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
    family: Annotated[str, typer.Option(help="The challenger: 'tfidf_svd' (drift, then a retrained model) or 'onnx_text' (the shipped transformer, all-MiniLM-L6-v2, challenges the TF-IDF champion).")] = "tfidf_svd",
    system: SystemOption = None,
) -> None:
    """One complete lifecycle headless (first model, drift, retrain, canary rollout); non-zero exit if a step failed.

    --system recommender tells the story with MovieLens-100k on a recommender deployment;
    --family onnx_text rolls the shipped transformer out against the TF-IDF champion.
    """
    from lockstep.ops.stack import stop_on_sigterm

    story = _demo_story(system, family)
    stop_on_sigterm()
    options = _demo_options(per_category, 0, 0, 0, metadata_url=airflow_db, drift_phase=not no_drift)
    report = story(options, lambda msg: typer.echo(msg, err=True)).run_demo()
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


def _demo_story(system: str | None, family: str) -> type:
    """The story class for ``--system`` and ``--family`` (a clear error for a pair there is none of)."""
    from lockstep.core.errors import LockstepError

    chosen = use_system(system)
    if family == "tfidf_svd":
        return chosen.demo_story()
    if family != "onnx_text":
        raise LockstepError(f"--family {family!r}: the demo knows 'tfidf_svd' and 'onnx_text'")
    if chosen.name != "search":
        raise LockstepError("--family onnx_text is a search demo (the recommender's models are ALS factors)")
    from lockstep.ops.demo_transformer import TransformerDemoRun

    return TransformerDemoRun


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

    from lockstep.ops.stack import stop_on_sigterm

    stop_on_sigterm()
    story = use_system(system).demo_story()
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
