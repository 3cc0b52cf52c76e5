"""The two sides a drift check compares, read from the record store and the request log.

* the **reference**: the champion's training snapshot, split by whether training held a
  record out (the embedding reference must be texts the champion was not fitted on) plus a
  sample of the whole snapshot for the vocabulary;
* the **window**: records upserted in a span of time (their last version, live, and made
  after the champion's snapshot) and the unpinned search queries of that span;
* the champion's **click-through** counts of the window and the period before it.

Only ids, sequences and metadata are read for a whole snapshot, and texts for the
samples alone, so a snapshot of millions of records costs memory for the ids only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.store import serving_logs
from lockstep.store.records import UPSERT, RecordStore, last_change_seqs
from lockstep.store.schema import changes
from lockstep.training.config import TrainConfig
from lockstep.training.fit import is_holdout


class DriftCheckError(LockstepError, ValueError):
    """The check cannot run: bad parameters, or a champion without a training snapshot."""


@dataclass(frozen=True)
class Reference:
    """What the champion was trained on, split by whether it was fitted on it."""

    version: str
    snapshot_seq: int
    held_out: list[str]  # texts training held out: the embedding reference
    fitted_fill: list[str]  # training texts added because too few were held out
    vocabulary: list[str]  # a sample of the whole snapshot: the vocabulary reference
    snapshot_records: int
    holdout_percent: int

    @property
    def embedding_texts(self) -> list[str]:
        return self.held_out + self.fitted_fill

    @property
    def embedding_judged(self) -> bool:
        """Only a reference free of fitted texts gives an unbiased AUC."""
        return not self.fitted_fill


@dataclass(frozen=True)
class Window:
    """What arrived between ``start`` and ``end`` (UTC)."""

    start: datetime
    end: datetime
    records: list[str]  # texts, sampled down to max_samples
    n_records: int  # before sampling
    queries: list[str]
    n_queries: int


def reference(
    store: RecordStore,
    version: str,
    snapshot_seq: int,
    *,
    holdout_percent: int = TrainConfig.holdout_percent,
    label_key: str = TrainConfig.label_key,
    min_records: int = 50,
    max_samples: int = 2000,
    seed: int = 0,
) -> Reference:
    """The champion's training snapshot as drift reference (see the module docstring).

    Reads only ids, sequences and metadata of the whole snapshot, then the texts of the
    sample, so a snapshot of millions of records costs memory for the ids alone.
    """
    head = store.head()
    if snapshot_seq < 0 or snapshot_seq > head:
        raise DriftCheckError(
            f"champion version {version} was trained on snapshot {snapshot_seq}, but this record "
            f"store's change log ends at {head}: LOCKSTEP_DATABASE_URL points at another store "
            "than the one the champion was trained on"
        )
    rows = _snapshot_index(store.engine, snapshot_seq)
    if not rows:
        raise DriftCheckError(
            f"champion version {version} was trained on snapshot {snapshot_seq}, which holds no "
            "records; retrain on a loaded corpus (lockstep train)"
        )
    held = [
        seq for rid, seq, meta in rows
        if _labelled(meta, label_key) and is_holdout(rid, holdout_percent)
    ]
    held_set = set(held)
    fitted = [seq for _, seq, _ in rows if seq not in held_set]
    rng = random.Random(seed)
    held = _sample(held, max_samples, rng)
    fill: list[int] = []
    if len(held) < min_records:
        fill = _sample(fitted, max(0, max_samples - len(held)), rng)
    vocab_seqs = _sample([seq for _, seq, _ in rows], max_samples, rng)
    texts = _texts_by_seq(store.engine, set(held) | set(fill) | set(vocab_seqs))
    return Reference(
        version=str(version),
        snapshot_seq=int(snapshot_seq),
        held_out=[texts[s] for s in held],
        fitted_fill=[texts[s] for s in fill],
        vocabulary=[texts[s] for s in vocab_seqs],
        snapshot_records=len(rows),
        holdout_percent=int(holdout_percent),
    )


def current_window(
    store: RecordStore,
    end: datetime,
    window_hours: float,
    *,
    after_seq: int = 0,
    max_samples: int = 2000,
    seed: int = 0,
) -> Window:
    """Records upserted and queries searched in ``[end - window_hours, end)``.

    A record counts once, in its last version within the window, and only when that
    version is an upsert (deleted records are gone) made after ``after_seq`` (the
    champion's snapshot: records it was trained on are not new data).
    """
    end = clock.utc(end)
    start = end - timedelta(hours=window_hours)
    rng = random.Random(seed)
    last = (
        select(changes.c.record_id, func.max(changes.c.seq).label("seq"))
        .where(changes.c.at >= start, changes.c.at < end, changes.c.seq > after_seq)
        .group_by(changes.c.record_id)
        .subquery()
    )
    live = (
        select(changes.c.seq)
        .join(last, changes.c.seq == last.c.seq)
        .where(changes.c.op == UPSERT)
        .order_by(changes.c.seq)
    )
    with store.engine.connect() as conn:
        seqs = [int(s) for s in conn.execute(live).scalars()]
    # Unpinned only: pinned traffic is any client's choice, not users'.
    all_queries = serving_logs.queries(store.engine, serving_logs.Window(start, end))
    sampled = _sample(seqs, max_samples, rng)
    texts = _texts_by_seq(store.engine, set(sampled))
    return Window(
        start=start,
        end=end,
        records=[texts[s] for s in sampled],
        n_records=len(seqs),
        queries=_sample(all_queries, max_samples, rng),
        n_queries=len(all_queries),
    )


def click_through_counts(
    engine: Engine, model_version: str, end: datetime, window_hours: float
) -> dict[str, int]:
    """Impressions and clicks of one model version: the window and the period before it.

    Impressions and clicks are those of ``lockstep.store.serving_logs`` (the rollout gates
    count the same): an impression is a search answered with a result list, a click such
    a search that got at least one click, so clicks never exceed impressions. Only the
    champion's requests count: during a rollout the other versions' traffic says nothing
    about whether the champion's data has moved.
    """
    reference, current = click_through_periods(engine, model_version, end, window_hours)
    return {
        "reference_impressions": reference.impressions,
        "reference_clicks": reference.clicks,
        "current_impressions": current.impressions,
        "current_clicks": current.clicks,
    }


def click_through_periods(
    engine: Engine, model_version: str, end: datetime, window_hours: float
) -> tuple[serving_logs.ClickThrough, serving_logs.ClickThrough]:
    """The reference period's and the window's click-through, each with its per-user sums.

    The per-user sums (``ClickThrough.clusters``) are what the drift check's z-test uses:
    a user's searches are one unit, not independent trials (issue 22).
    """
    end = clock.utc(end)
    start = end - timedelta(hours=window_hours)
    before = start - timedelta(hours=window_hours)
    reference = serving_logs.click_through(engine, model_version, serving_logs.Window(before, start))
    current = serving_logs.click_through(engine, model_version, serving_logs.Window(start, end))
    return reference, current


def _snapshot_index(engine: Engine, at_seq: int) -> list[tuple[str, int, dict | None]]:
    """(id, seq, metadata) of every live record as of ``at_seq``, without the texts."""
    last = last_change_seqs(at_seq)
    stmt = (
        select(changes.c.record_id, changes.c.seq, changes.c.metadata)
        .join(last, changes.c.seq == last.c.seq)
        .where(changes.c.op == UPSERT)
        .order_by(changes.c.record_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [(r.record_id, int(r.seq), json.loads(r.metadata) if r.metadata else None) for r in rows]


def _texts_by_seq(engine: Engine, seqs: set[int]) -> dict[int, str]:
    wanted = sorted(seqs)
    found: dict[int, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        with engine.connect() as conn:
            rows = conn.execute(select(changes.c.seq, changes.c.text).where(changes.c.seq.in_(chunk)))
            found.update({int(seq): text for seq, text in rows})
    return found


def _labelled(meta: dict | None, key: str) -> bool:
    return (meta or {}).get(key) not in (None, "")


def _sample(items: list[Any], n: int, rng: random.Random) -> list[Any]:
    """At most ``n`` items, in their original order."""
    if len(items) <= n:
        return list(items)
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]
