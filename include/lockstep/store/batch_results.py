"""The operational table of batch serving: the one reader and writer of its rows and states.

``lockstep_batch_results`` holds, per (kind, model version, key), the top-k ids and scores
that ``lockstep_batch`` computed, as JSON text; ``lockstep_batch_state`` says per (kind,
version) whether those rows are complete and through which input sequence. The
serving app reads a version's rows only while its state is complete, so a half-written
version is never served.

Writes replace a key's row (delete, then insert, in one transaction per page of keys):
the same on SQLite and PostgreSQL, and a rerun of a shard changes nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.store.db import get_engine
from lockstep.store.schema import batch_results, batch_state

RELATED = "related"  # search: key = record id, results = related records
RECOMMENDATIONS = "recommendations"  # recommender: key = user id, results = items
KINDS = (RELATED, RECOMMENDATIONS)
PAGE = 500  # keys per statement (well under SQLite's bound-parameter limit)

Hit = tuple[str, float]


@dataclass(frozen=True)
class BatchState:
    """Where one version's rows stand."""

    kind: str
    model_version: str
    fingerprint: str
    k: int
    complete: bool
    through_seq: int
    rows: int
    computed_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "model_version": self.model_version, "fingerprint": self.fingerprint, "k": self.k,
            "complete": self.complete, "through_seq": self.through_seq, "rows": self.rows,
            "computed_at": self.computed_at.isoformat(),
        }


@dataclass(frozen=True)
class BatchRow:
    """One key's precomputed answer."""

    key: str
    results: list[Hit]
    computed_at: datetime
    input_seq: int


class BatchResultStore:
    """Rows and states of the operational table in one database (the deployment's own)."""

    def __init__(self, engine: Engine | str | None = None) -> None:
        self.engine = engine if isinstance(engine, Engine) else get_engine(engine)

    # --- states ---------------------------------------------------------------------------------

    def state(self, kind: str, model_version: str) -> BatchState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(batch_state).where(_version_is(batch_state, kind, model_version))).first()
        return _state(row) if row is not None else None

    def states(self, kind: str | None = None) -> list[BatchState]:
        """Every state row (of one kind if given), by kind and version."""
        stmt = select(batch_state).order_by(batch_state.c.kind, batch_state.c.model_version)
        if kind is not None:
            stmt = stmt.where(batch_state.c.kind == _kind(kind))
        with self.engine.connect() as conn:
            return [_state(r) for r in conn.execute(stmt).all()]

    def complete_versions(self, kind: str) -> set[str]:
        """Versions whose rows are complete: the only ones batch reads may be routed to."""
        stmt = select(batch_state.c.model_version).where(batch_state.c.kind == _kind(kind), batch_state.c.complete)
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(stmt).all()}

    def start_full(self, kind: str, model_version: str, *, fingerprint: str, k: int, through_seq: int) -> None:
        """Begin a full recomputation: the version's rows go and it stops taking batch traffic."""
        with self.engine.begin() as conn:
            conn.execute(delete(batch_results).where(_version_is(batch_results, kind, model_version)))
            _put_state(conn, kind, model_version, fingerprint=fingerprint, k=k, complete=False,
                       through_seq=through_seq, rows=0)

    def finish(self, kind: str, model_version: str, *, fingerprint: str, k: int, through_seq: int) -> BatchState:
        """Mark the version's rows complete through ``through_seq`` (the caller wrote every key)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(func.count()).select_from(batch_results).where(_version_is(batch_results, kind, model_version))
            ).scalar()
            _put_state(conn, kind, model_version, fingerprint=fingerprint, k=k, complete=True,
                       through_seq=through_seq, rows=int(rows or 0))
        state = self.state(kind, model_version)
        assert state is not None
        return state

    # --- rows -----------------------------------------------------------------------------------

    def write_rows(self, kind: str, model_version: str, rows: Iterable[tuple[str, Sequence[Hit]]], *, input_seq: int) -> int:
        """Replace these keys' rows; returns how many were written."""
        written = 0
        now = clock.now()
        page: list[dict[str, Any]] = []
        for key, hits in rows:
            page.append({"kind": _kind(kind), "model_version": str(model_version), "key": key,
                         "results": encode_results(hits), "computed_at": now, "input_seq": int(input_seq)})
            if len(page) >= PAGE:
                written += self._replace(kind, model_version, page)
                page = []
        if page:
            written += self._replace(kind, model_version, page)
        return written

    def delete_keys(self, kind: str, model_version: str, keys: Iterable[str]) -> int:
        """Remove these keys' rows (deleted records); returns how many went."""
        removed = 0
        keys = list(dict.fromkeys(keys))
        with self.engine.begin() as conn:
            for start in range(0, len(keys), PAGE):
                chunk = keys[start : start + PAGE]
                removed += conn.execute(
                    delete(batch_results).where(_version_is(batch_results, kind, model_version), batch_results.c.key.in_(chunk))
                ).rowcount or 0
        return removed

    def read(self, kind: str, model_version: str, key: str) -> BatchRow | None:
        stmt = select(batch_results).where(_version_is(batch_results, kind, model_version), batch_results.c.key == key)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _row(row) if row is not None else None

    def iter_rows(self, kind: str, model_version: str, *, page: int = 20_000) -> Iterator[BatchRow]:
        """Every row of a version, by key, page by page (keyset pagination: no long transaction)."""
        after = ""
        while True:
            stmt = (select(batch_results)
                    .where(_version_is(batch_results, kind, model_version), batch_results.c.key > after)
                    .order_by(batch_results.c.key).limit(page))
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
            for r in rows:
                yield _row(r)
            if len(rows) < page:
                return
            after = rows[-1].key

    def keys(self, kind: str, model_version: str) -> set[str]:
        stmt = select(batch_results.c.key).where(_version_is(batch_results, kind, model_version))
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(stmt).all()}

    def drop_version(self, kind: str, model_version: str) -> int:
        """Remove a version's rows and state (retention); returns the rows removed."""
        with self.engine.begin() as conn:
            removed = conn.execute(delete(batch_results).where(_version_is(batch_results, kind, model_version))).rowcount
            conn.execute(delete(batch_state).where(_version_is(batch_state, kind, model_version)))
        return int(removed or 0)

    def versions(self) -> set[tuple[str, str]]:
        """Every (kind, version) with a state row or any row."""
        with self.engine.connect() as conn:
            stated = conn.execute(select(batch_state.c.kind, batch_state.c.model_version)).all()
            rowed = conn.execute(select(batch_results.c.kind, batch_results.c.model_version).distinct()).all()
        return {(r[0], r[1]) for r in (*stated, *rowed)}

    def _replace(self, kind: str, model_version: str, page: list[dict[str, Any]]) -> int:
        with self.engine.begin() as conn:
            conn.execute(delete(batch_results).where(
                _version_is(batch_results, kind, model_version), batch_results.c.key.in_([r["key"] for r in page])))
            conn.execute(insert(batch_results), page)
        return len(page)


def encode_results(hits: Sequence[Hit]) -> str:
    """The JSON text of a result list: ``[{"id", "score"}, ...]`` best first."""
    return json.dumps([{"id": i, "score": float(s)} for i, s in hits], separators=(",", ":"), allow_nan=False)


def decode_results(text: str) -> list[Hit]:
    return [(str(r["id"]), float(r["score"])) for r in json.loads(text)]


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise LockstepError(f"unknown batch kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def _version_is(table, kind: str, model_version: str):
    return and_(table.c.kind == _kind(kind), table.c.model_version == str(model_version))


def _put_state(conn, kind: str, model_version: str, **values: Any) -> None:
    conn.execute(delete(batch_state).where(_version_is(batch_state, kind, model_version)))
    conn.execute(insert(batch_state).values(kind=kind, model_version=str(model_version), computed_at=clock.now(), **values))


def _state(row: Any) -> BatchState:
    return BatchState(kind=row.kind, model_version=row.model_version, fingerprint=row.fingerprint, k=int(row.k),
                      complete=bool(row.complete), through_seq=int(row.through_seq), rows=int(row.rows),
                      computed_at=_utc(row.computed_at))


def _row(row: Any) -> BatchRow:
    return BatchRow(key=row.key, results=decode_results(row.results), computed_at=_utc(row.computed_at),
                    input_seq=int(row.input_seq))


def _utc(at: datetime) -> datetime:
    """SQLite gives back naive datetimes; every stamp Lockstep writes is UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at
