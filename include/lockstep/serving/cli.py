"""Plain functions behind ``lockstep serve``, ``lockstep routing ...`` and ``lockstep search``.

They take and return plain values so the typer commands stay one-liners and tests can
call them directly. Errors are ``LockstepError``s with a message for the person typing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from lockstep.core.config import Settings
from lockstep.core.errors import LockstepError
from lockstep.index.vector_index import SearchHits
from lockstep.serving.bodies import MAX_K, MAX_QUERY_CHARS
from lockstep.serving.slots import load_slot
from lockstep.store.db import get_engine
from lockstep.store.records import RecordStore
from lockstep.store.routing import RoutingError, RoutingTable, read_table, set_weights


@dataclass(frozen=True)
class SearchOutcome:
    model_version: str
    generation: int
    hits: SearchHits


def serve(host: str = "127.0.0.1", port: int = 8000, *, app: str | None = None) -> None:
    """Run one serving replica in the foreground (configuration from the environment);
    ``app``: the import path of the system's app factory (default: the search app)."""
    from lockstep.serving.runner import SEARCH_APP, run

    run(host, port, app=app or SEARCH_APP)


def routing_show(engine: Engine | str | None = None) -> str:
    """The routing table as a small text table."""
    return format_table(read_table(engine))


def routing_set(
    pairs: list[str],
    shadow: list[str] | None = None,
    *,
    reason: str | None = None,
    actor: str = "cli",
    engine: Engine | str | None = None,
) -> str:
    """Apply ``VERSION=WEIGHT`` pairs in one transaction; returns the new table as text.

    ``shadow`` names the versions that get mirrored traffic; empty or None keeps the
    current shadow flags, and the single value ``none`` clears them.
    """
    weights: dict[str, int] = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        if not sep or not version.strip() or not weight.strip().lstrip("-").isdigit():
            raise RoutingError(f"expected VERSION=WEIGHT (for example 2=10), got {pair!r}")
        if version.strip() in weights:
            raise RoutingError(f"version {version.strip()} is given twice")
        weights[version.strip()] = int(weight)
    if not shadow:
        shadow_list = None
    elif [s.strip().lower() for s in shadow] == ["none"]:
        shadow_list = []
    else:
        shadow_list = list(shadow)
    set_weights(weights, shadow=shadow_list, reason=reason or "lockstep routing set", actor=actor, engine=engine)
    return routing_show(engine)


def search_once(
    text: str,
    k: int = 10,
    user_id: str | None = None,
    *,
    settings: Settings | None = None,
    echo: bool = True,
) -> SearchOutcome:
    """One search through the current routing without HTTP: the version the table picks."""
    if not text.strip() or len(text) > MAX_QUERY_CHARS:
        raise LockstepError(f"the query must be 1 to {MAX_QUERY_CHARS} characters")
    if not 1 <= k <= MAX_K:
        raise LockstepError(f"k must be between 1 and {MAX_K}, got {k}")
    settings = settings or Settings.from_env()
    settings.ensure_home()
    engine = get_engine(settings.database_url)
    store = RecordStore(engine)
    table = read_table(engine)
    row = table.choose(user_id)
    if row is None:
        raise LockstepError(
            "no model version is live: build an index (lockstep index build --model-version N) "
            "and give it traffic (lockstep routing set N=100)"
        )
    slot = load_slot(row, store, settings.mlflow_tracking_uri)
    hits = slot.search(text, k)
    outcome = SearchOutcome(row.model_version, table.generation, hits)
    if echo:
        print(format_hits(outcome, store))
    return outcome


def format_table(table: RoutingTable) -> str:
    lines = [f"routing generation {table.generation}"]
    if table.holdback is not None:  # issue 13: these users are served by it whatever the weights
        lines.append(f"holdback: {table.holdback.percent:g} % of users on version {table.holdback.model_version}")
    if not table.slots:
        lines.append("no slots registered yet (lockstep index build --model-version N registers one)")
        return "\n".join(lines)
    header = ("version", "state", "weight", "shadow", "model", "index", "note")
    rows = [
        (s.model_version, s.state, str(s.weight), "yes" if s.shadow else "", s.model_uri, s.index_location, s.note or "")
        for s in table.slots
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines)


def format_hits(outcome: SearchOutcome, store: RecordStore) -> str:
    texts = store.get_many(outcome.hits.ids)
    lines = [f"model version {outcome.model_version} (routing generation {outcome.generation})"]
    if not outcome.hits.ids:
        lines.append("no results (no word of the query is in the model's vocabulary)")
    for rank, (rid, score) in enumerate(zip(outcome.hits.ids, outcome.hits.scores, strict=True), start=1):
        record = texts.get(rid)
        snippet = " ".join(record.text.split())[:80] if record else ""
        lines.append(f"{rank:>3}. {score:.4f}  {rid}  {snippet}")
    return "\n".join(lines)
