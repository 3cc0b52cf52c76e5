"""The early verdict's first slice: which records are embedded first, and the snapshot that holds them last.

The first slice is a *uniform sample* of the snapshot (``early_verdict_share``, default
10 %), chosen by a seeded hash of the record id (``in_first_slice``), not by position,
so it is spread evenly over old and new records, every category and every id range.
``write_sliced_snapshot`` streams the store once: the other records become the usual
row groups, the sample is collected in a side file and appended as the last row groups
(the parquet footer names how many), so each shard task still reads only its own row
group and memory holds one shard at a time. The settings of an early verdict (share,
margin, action) and their check live here too, below the verdict that uses them
(``lockstep.index.early_verdict``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lockstep.core.errors import LockstepError

if TYPE_CHECKING:
    from lockstep.store.records import RecordStore, SnapshotChunk

ACTIONS = ("warn", "stop")
DEFAULT_SHARE = 0.1
DEFAULT_MARGIN = 0.01
DEFAULT_ACTION = "warn"
MAX_SHARE = 0.5  # past half, an early verdict saves little: build the whole index instead
SAMPLE_SALT = "lockstep-early-verdict"  # independent of the hold-out hash (different input)
FIRST_SLICE_KEY = "lockstep.first_slice_groups"
SHARE_KEY = "lockstep.first_slice_share"


class EarlyVerdictError(LockstepError, ValueError):
    """An early-verdict setting that cannot work (a share outside (0, 0.5], an unknown action)."""


def check_settings(share: float, margin: float, action: str) -> None:
    """Refuse settings that cannot give a meaningful verdict, naming the one at fault."""
    if not isinstance(share, (int, float)) or not 0.0 < float(share) <= MAX_SHARE:
        raise EarlyVerdictError(f"early_verdict_share must lie in (0, {MAX_SHARE}], got {share!r}")
    if not isinstance(margin, (int, float)) or not 0.0 <= float(margin) <= 1.0:
        raise EarlyVerdictError(f"early_verdict_margin must lie in [0, 1] (an nDCG@10 difference), got {margin!r}")
    if action not in ACTIONS:
        raise EarlyVerdictError(f"early_verdict_action must be one of {', '.join(ACTIONS)}, got {action!r}")


# --- the first slice: a uniform sample by a seeded hash of the id ------------------------------


def sample_position(record_id: str, salt: str = SAMPLE_SALT) -> float:
    """A record's place in [0, 1), uniform over ids and independent of their order or age."""
    digest = hashlib.blake2b(f"{salt}\0{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_first_slice(record_id: str, share: float, salt: str = SAMPLE_SALT) -> bool:
    """Whether a record is embedded in the first slice (the same answer in every run)."""
    return sample_position(record_id, salt) < share


@dataclass(frozen=True)
class SlicedSnapshot:
    """Where a sliced snapshot's shards are: the others first, the first slice last."""

    counts: list[int]  # rows per row group (= shard)
    first_slice: list[int]  # shard numbers of the uniform sample
    rest: list[int]  # shard numbers of everything else
    seq: int
    file: str


def sliced_snapshot_name(seq: int, shard_size: int, share: float) -> str:
    return f"snapshot-{seq}-{shard_size}-first{round(share * 10_000):05d}.parquet"


def write_sliced_snapshot(store: RecordStore, shards_dir: str | Path, shard_size: int, share: float) -> SlicedSnapshot:
    """Stream the store's live records into one parquet file whose last row groups are the first slice.

    One read of the store: each chunk's records outside the sample become one row group
    (at most ``shard_size`` rows); the sample goes to a side file in row groups of
    ``shard_size`` and is appended at the end, and the footer records how many row groups
    it has. Both parts get at least one (possibly empty) row group, so the DAG always has
    a first slice to judge and a rest to map. A file already written for the same
    sequence, shard size and share (a retried task) is reused.
    """
    import pyarrow.parquet as pq

    check_settings(share, 0.0, "warn")
    shards_dir = Path(shards_dir)
    with store.stream_snapshot(shard_size) as stream:
        path = shards_dir / sliced_snapshot_name(stream.seq, shard_size, share)
        if not path.exists():
            _write_sliced(path, stream.chunks, shard_size, share)
        seq = stream.seq
    meta = pq.ParquetFile(path).metadata
    counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    first = int((meta.metadata or {}).get(FIRST_SLICE_KEY.encode(), b"0"))
    if sum(counts) == 0:
        raise LockstepError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    n_rest = len(counts) - first
    return SlicedSnapshot(counts, list(range(n_rest, len(counts))), list(range(n_rest)), seq, path.name)


def _write_sliced(path: Path, chunks: Iterator[SnapshotChunk], shard_size: int, share: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lockstep.core.atomic import atomic_path

    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    side = path.with_name(f".{path.name}.first-slice")
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, use_dictionary=False, compression="snappy")
        try:
            n_rest = _write_rest_and_side(writer, side, chunks, schema, shard_size, share)
            if n_rest == 0:
                writer.write_table(_table([], [], schema))
            n_first = _append_side(writer, side, schema)
            writer.add_key_value_metadata({FIRST_SLICE_KEY: str(n_first), SHARE_KEY: repr(float(share))})
        finally:
            writer.close()
            side.unlink(missing_ok=True)


def _write_rest_and_side(writer, side: Path, chunks, schema, shard_size: int, share: float) -> int:
    """Rest rows straight into ``writer`` (a row group per chunk); sample rows into ``side``."""
    import pyarrow.parquet as pq

    n_rest = 0
    buf_ids: list[str] = []
    buf_texts: list[str] = []
    with pq.ParquetWriter(side, schema, use_dictionary=False, compression="snappy") as side_writer:
        for chunk in chunks:
            rest_ids, rest_texts = [], []
            for rid, text in zip(chunk.ids, chunk.texts, strict=True):
                target = (buf_ids, buf_texts) if in_first_slice(rid, share) else (rest_ids, rest_texts)
                target[0].append(rid)
                target[1].append(text)
            if rest_ids:
                writer.write_table(_table(rest_ids, rest_texts, schema))
                n_rest += 1
            while len(buf_ids) >= shard_size:
                side_writer.write_table(_table(buf_ids[:shard_size], buf_texts[:shard_size], schema))
                del buf_ids[:shard_size], buf_texts[:shard_size]
        if buf_ids:
            side_writer.write_table(_table(buf_ids, buf_texts, schema))
    return n_rest


def _append_side(writer, side: Path, schema) -> int:
    """Copy the side file's row groups to the end of the snapshot (one at a time); their number."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(side)
    groups = [g for g in range(parquet.num_row_groups) if parquet.metadata.row_group(g).num_rows > 0]
    for g in groups:
        writer.write_table(parquet.read_row_group(g, columns=["id", "text"]).cast(schema))
    if not groups:
        writer.write_table(_table([], [], schema))
    return max(1, len(groups))


def _table(ids: list[str], texts: list[str], schema):
    import pyarrow as pa

    return pa.table({"id": ids, "text": texts}, schema=schema)


def snapshot_ids(path: str | Path) -> list[str]:
    """Every id of a snapshot file (the id column only)."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()
