"""The snapshot a re-embed works from: one parquet file, one row group per shard.

``write_snapshot`` streams the store's live records (one read transaction) into the file;
each embed task reads only its own row group, so the cost grows with the records, not
with shards x records. The shard size comes from the record count (``shard_size_for``):
tens of shards at 1M records, because Airflow costs a few seconds per task.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lockstep.core.errors import LockstepError, UnsafePathError
from lockstep.store.records import RecordStore, SnapshotChunk

# --- shard size ----------------------------------------------------------------------------------

DEFAULT_TARGET_SHARDS = 16  # Airflow costs ~3 s per task: tens of shards at 1M records, not hundreds
SHARDS_PER_PROCESS = 4  # the DAG's default: a few rounds of shard tasks per embedding process
MIN_SHARD_SIZE = 5_000
MAX_SHARD_SIZE = 250_000  # bounds one embed task's memory (vectors and the TF-IDF of one batch)


def shard_size_for(
    n_records: int,
    target_shards: int = DEFAULT_TARGET_SHARDS,
    *,
    min_size: int = MIN_SHARD_SIZE,
    max_size: int = MAX_SHARD_SIZE,
) -> int:
    """Records per shard so a snapshot of ``n_records`` splits into about ``target_shards`` shards.

    Clamped so a small store is not split into tasks that cost more to schedule than to
    run, and a huge one gets more shards rather than shards too large for one task.
    """
    if target_shards < 1:
        raise LockstepError(f"target shard count must be at least 1, got {target_shards}")
    return max(min_size, min(max_size, -(-max(n_records, 1) // target_shards)))


def target_shards_for(processes: int) -> int:
    """Shards a DAG run aims for when ``processes`` shard tasks embed at once: 4 rounds of them.

    Fewer, larger shards waste less on Airflow's per-task cost (~2-3 s each under the
    LocalExecutor); enough rounds keep a retry small and let the last round finish
    together. Measured at 1M records on 2 cores (docs/benchmarks.md): 16 shards two at a
    time spent 34 s embedding, where the in-process build needs 17.6 s.
    """
    return max(4, SHARDS_PER_PROCESS * max(1, processes))




# --- the snapshot file: one parquet row group per shard ----------------------------------------


def write_snapshot(store: RecordStore, shards_dir: str | Path, shard_size: int) -> tuple[list[int], int]:
    """Stream the store's live records into ``snapshot-<seq>-<shard_size>.parquet``, a row group per shard.

    Returns the row count of each shard and the snapshot's sequence. A file already
    written for the same sequence and shard size (a retried task) is reused. Memory
    holds one shard's ids and texts at a time.
    """
    import pyarrow.parquet as pq

    with store.stream_snapshot(shard_size) as stream:
        path = Path(shards_dir) / snapshot_name(stream.seq, shard_size)
        if path.exists():
            meta = pq.ParquetFile(path).metadata
            counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        else:
            counts = _write_row_groups(path, stream.chunks)
    if not counts:
        raise LockstepError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    return counts, stream.seq


def read_snapshot_shard(path: str | Path, shard: int) -> SnapshotChunk:
    """The ids and texts of one shard: only its row group is read from the file."""
    import pyarrow.parquet as pq

    with _open_snapshot(Path(path)) as fh:
        parquet = pq.ParquetFile(fh)
        if not 0 <= shard < parquet.num_row_groups:
            raise LockstepError(f"shard {shard} does not exist: snapshot {path} has {parquet.num_row_groups} shards")
        table = parquet.read_row_group(shard, columns=["id", "text"])
    return SnapshotChunk(table.column("id").to_pylist(), table.column("text").to_pylist())


def _write_row_groups(path: Path, chunks: Iterator[SnapshotChunk]) -> list[int]:
    """Each chunk becomes one row group; the file appears only when complete (atomic rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lockstep.core.atomic import atomic_path

    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    counts: list[int] = []
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, use_dictionary=False, compression="snappy")
        try:
            for chunk in chunks:
                table = pa.table({"id": chunk.ids, "text": chunk.texts}, schema=schema)
                writer.write_table(table, row_group_size=max(len(chunk), 1))
                counts.append(len(chunk))
        finally:
            writer.close()
        if not counts:
            raise LockstepError("the record store is empty: load a corpus first (lockstep corpus load --demo)")
    return counts


def _open_snapshot(path: Path):
    """The snapshot file opened for reading (a seam: tests count the bytes a shard reads)."""
    try:
        return open(path, "rb")  # noqa: SIM115 - returned to a with-block in the caller
    except FileNotFoundError as exc:
        raise LockstepError(f"snapshot {path} is missing: rerun the snapshot task") from exc


def snapshot_name(seq: int, shard_size: int) -> str:
    """The snapshot's file name; both numbers come from tasks' results, so they must be plain ints."""
    _check_int("snapshot sequence", seq, 0)
    _check_int("shard size", shard_size, 1)
    return f"snapshot-{seq}-{shard_size}.parquet"


def _check_int(what: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UnsafePathError(f"{what} {value!r} must be an integer of at least {least}")


def shard_counts(path: str | Path) -> list[int]:
    """Rows of each shard (row group) of a snapshot file, from its footer alone."""
    import pyarrow.parquet as pq

    with _open_snapshot(Path(path)) as fh:
        meta = pq.ParquetFile(fh).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
