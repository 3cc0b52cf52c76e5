"""``lockstep index plan|status|pause|resume``: a load that takes hours, before and while it runs.

``plan`` times the version's model on a sample of the records and projects the load
(``lockstep.index.load_estimate``); ``status`` shows a running or finished load's records
done, rate, ETA and shards (``lockstep.index.load_progress``); ``pause`` makes every shard
stop at its next checkpoint and wait, ``resume`` lets them go on.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lockstep.cli.base import echo_json, index_app

VersionOption = Annotated[str, typer.Option("--model-version", help="Registered model version.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")]


def _version(value: str) -> str:
    from lockstep.core import paths
    from lockstep.core.errors import UnsafePathError

    try:
        return str(paths.version_number(value, "--model-version"))
    except UnsafePathError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--model-version'") from None


def _worker_counts(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or max(counts) > 4096:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of worker counts (1 to 4096), e.g. 1,2,4",
                                 param_hint="'--workers'")
    return counts


def _location(model_version: str):
    from lockstep.core.config import settings
    from lockstep.index.storage import index_location

    return index_location(settings().model_name, model_version)


@index_app.command("plan")
def index_plan(
    model_version: VersionOption,
    records: Annotated[int | None, typer.Option(min=0, help="Records to project for (default: the store's count).")] = None,
    workers: Annotated[str | None, typer.Option(help="Worker counts to project, comma-separated (default: 1,2,cores).")] = None,
    sample: Annotated[int, typer.Option(min=1, max=10_000, help="Texts timed (after a warm-up call).")] = 128,
    as_json: JsonOption = False,
) -> None:
    """Time the version's model on a sample of the records; print the expected load time, index size and memory."""
    from lockstep.index.load_estimate import estimate_load, sample_texts
    from lockstep.model.registry import Registry
    from lockstep.store.records import RecordStore

    version = _version(model_version)
    counts = _worker_counts(workers)
    store = RecordStore()
    texts, id_chars = sample_texts(store, sample)
    embedder = Registry().load_embedder(version)
    estimate = estimate_load(embedder, texts, store.count() if records is None else records,
                             workers=counts, id_chars=id_chars)
    estimate["model_version"] = version
    if as_json:
        echo_json(estimate)
        return
    measured = estimate["measured"]
    typer.echo(f"v{version} ({estimate['cost']} model, dim {estimate['dim']}, batch {estimate['batch_size']}): "
               f"{measured['texts_per_second']:.1f} texts/s measured on {estimate['sample_texts']} texts "
               f"with {measured['threads']} thread(s)")
    typer.echo(f"{estimate['records']} records in {estimate['shards']} shards of {estimate['shard_size']}:")
    for row in estimate["workers"]:
        typer.echo(f"  {row['workers']} worker(s) x {row['threads_per_worker']} thread(s): "
                   f"{_duration(row['seconds'])} ({row['texts_per_second']:.1f} texts/s, projected)")
    typer.echo(f"index: {estimate['index_type']}, {_size(estimate['index_bytes'])} on disk; "
               f"peak memory about {_size(estimate['peak_memory_bytes'])}")


@index_app.command("status")
def index_status(
    model_version: Annotated[str | None, typer.Option("--model-version", help="Version (default: the latest load).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show a running or finished load: records done, rate, ETA and each shard's state and worker."""
    from lockstep.core.errors import LockstepError
    from lockstep.index.load_progress import latest_load_version, version_load_status

    version = _version(model_version) if model_version is not None else latest_load_version()
    if version is None:
        raise LockstepError("no load has started yet: nothing to show (lockstep index build, or the lockstep_reembed DAG)")
    status = version_load_status(version)
    if status is None:
        raise LockstepError(f"v{version} has no load: it was never snapshotted for a build")
    if as_json:
        echo_json(status)
        return
    typer.echo(_status_lines(status))


def _status_lines(status: dict[str, Any]) -> str:
    eta = status["eta_s"]
    rate = status["rate_per_s"]
    lines = [
        f"v{status['model_version']}: {status['state']}, {status['done']}/{status['records']} records "
        f"({status['percent']:.1f} %), rate {f'{rate:.1f}/s' if rate else 'unknown'}, "
        f"ETA {_duration(eta) if eta is not None else 'unknown'}"
        + (" (paused: lockstep index resume)" if status["paused"] else ""),
        "shards: " + ", ".join(f"{n} {state}" for state, n in status["shard_states"].items() if n),
    ]
    for shard in status["shards"]:
        if shard["state"] != "pending":
            where = f" on {shard.get('host')} pid {shard.get('pid')}" if shard.get("host") else ""
            error = f": {shard['error']}" if shard.get("error") else ""
            lines.append(f"  shard {shard['shard']}: {shard['state']} {shard.get('done', 0)}/{shard['total']}{where}{error}")
    return "\n".join(lines)


@index_app.command("pause")
def index_pause(model_version: VersionOption) -> None:
    """Pause a load: every shard stops at its next checkpoint and waits until resume."""
    from lockstep.index.load_progress import pause

    version = _version(model_version)
    typer.echo(f"v{version}: " + ("paused: each shard stops at its next checkpoint" if pause(_location(version))
                                  else "was already paused"))


@index_app.command("resume")
def index_resume(model_version: VersionOption) -> None:
    """Resume a paused load: waiting shards go on within a few seconds."""
    from lockstep.index.load_progress import resume

    version = _version(model_version)
    typer.echo(f"v{version}: " + ("resumed" if resume(_location(version)) else "was not paused"))


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
