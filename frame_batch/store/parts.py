"""Result part files: one Parquet file per stored group of collected batches, written atomically.

Why parts and not one growing file: a ``ParquetWriter`` file has no footer until it is
closed, so a crash makes the whole file unreadable (reliability notes §1.5). A part is
written through ``_fs.atomic_write`` (a ``.``-prefixed temp name that dataset discovery
skips, fsync, ``os.replace``, fsync of the directory): after a crash a part is either
complete or absent. A part holds one batch, or several collected together whose vendor keeps
their results (``_pending``); each row has its own batch id. The part is named after its
(first) batch; after a crash between writing and journaling, every batch in it is closed
from its rows (``Store.open_batches``, ``whole_batches``), none collected again.

Layout: ``results/<scope>/part-<batch_id>.parquet`` with the columns of ``RESULT_SCHEMA`` and
the outputs as columns (``columns.py``); ``part-merged-<uuid>.parquet`` after ``compact``.
Everything here goes through a directory path and plain file operations, so a future backend
on shared storage (fsspec-style URLs) only has to provide the same three methods.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._files import file_saver
from .._fs import atomic_write
from .._types import RowResult
from .columns import LEGACY, is_output, legacy_columns, output_columns, unify

RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("run_id", pa.string()),
        ("batch_id", pa.string()),
        ("finished_at", pa.float64()),
    ]
)
"""The base columns of every part; the outputs follow as columns (see ``columns``)."""
OUTPUTS = "outputs"  # in ``columns=``: every output column
MERGED = "part-merged-"  # the name's start of a part written by ``compact``
ROW_GROUP_ROWS = 262_144
COMPACT_AFTER = 32  # parts of one scope before a finished run merges them into one


def part_name(batch_id: str) -> str:
    """The file name of a batch's part: its existence says the batch's results are stored."""
    return f"part-{batch_id}.parquet"


class PartStore:
    """The directory of result parts."""

    def __init__(self, root: Path, *, files: Path) -> None:
        self.root = root
        self.files = files  # file outputs are saved here before the part that names them
        # The tables of the parts this process wrote, by path: reading them back (the end of
        # a run, a snapshot) costs ~1 ms a file from disk and nothing from here. Parts are
        # never changed once written, and the run holds the cache lock, so these stay true.
        self._written: dict[Path, pa.Table] = {}

    def write(self, scope: str, batch_id: str, results: Sequence[RowResult]) -> Path:
        """Write one batch's results durably; return the part's path."""
        return self.write_batches(scope, [(batch_id, results)])

    def write_batches(self, scope: str, batches: Sequence[tuple[str, Sequence[RowResult]]]) -> Path:
        """Write the results of one or more batches durably as one part, named after the
        first batch (each row keeps its own batch id); return the part's path."""
        table = _to_table(batches, self.files)
        # Uncompressed: a batch's part lives until the run's end merges it (when there are
        # many); lz4 cost ~0.2 ms a 1,000-row part and halved a file that is soon deleted.
        return self._publish(scope, part_name(batches[0][0]), table, compression="none")

    def read(self, scope: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Every stored result of ``scope`` (one row per key and batch, in no set order).
        ``columns``: base column names, and ``outputs`` for every output column."""
        return self.read_counted(scope, columns)[0]

    def read_counted(self, scope: str, columns: Sequence[str] | None = None) -> tuple[pa.Table, int]:
        """``read``, and how many parts it read."""
        for _ in range(_READ_TRIES):
            paths = self.parts(scope)
            try:
                return self._read_all(paths, columns), len(paths)
            except FileNotFoundError:
                continue  # merged away while listed (``compact`` from the run's thread): list again
        paths = self.parts(scope)
        return self._read_all(paths, columns), len(paths)

    def parts(self, scope: str) -> list[Path]:
        folder = self.root / scope
        return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []

    def whole_batches(self, scope: str) -> set[str]:
        """The ids of the batches whose results are in a part written whole (``write_batches``),
        read from the parts' rows: a part shared by several batches is named after the first
        only. Merged parts are not read (a merge comes at the end of a run, after every part's
        journal commit: their batches are closed already, and the column is every stored row),
        nor partial ones (``{batch}.{n}``, their rows' batch id too: never a whole batch)."""
        ids: set[str] = set()
        for path in self.parts(scope):
            stem = path.name.removeprefix("part-").removesuffix(".parquet")
            if path.name.startswith(MERGED) or "." in stem:
                continue
            table = self._read_one(path, ["batch_id"])
            if "batch_id" in table.column_names:
                ids.update(pc.unique(table["batch_id"]).to_pylist())
        return ids

    def compact(self, scope: str, latest: Callable[[pa.Table], pa.Table]) -> pa.Table | None:
        """Merge the scope's parts into one (``latest`` picks the rows to keep), when there are
        many: reading one file is what makes the next run's start cheap. The merged part is
        published before the old ones are removed, so a crash in between leaves both, which
        ``latest`` reads as duplicates of the same results. Returns the merged table."""
        paths = self.parts(scope)
        if len(paths) < COMPACT_AFTER:
            return None
        table = latest(self._read_all(paths, None))
        self._publish(scope, f"{MERGED}{uuid.uuid4().hex}.parquet", table, compression="lz4")
        for path in paths:
            path.unlink(missing_ok=True)
            self._written.pop(path, None)
        return table

    def forget(self) -> None:
        """Drop the tables kept of the parts this process wrote (they are read from disk)."""
        self._written.clear()

    def _publish(self, scope: str, name: str, table: pa.Table, *, compression: str) -> Path:
        folder = self.root / scope
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / name
        with atomic_write(final) as handle:
            # lz4 for a merged part: read by every later run, and zstd costs 3x the CPU.
            # Dictionaries only where values repeat, no statistics (nothing filters on them):
            # 0.43 -> 0.26 µs a row to write.
            # Row groups of 256Ki rows: the writer holds one group's pages at a time (a merge
            # of 1M rows in one group held ~110 MB more), and a reader decodes the groups of a
            # merged part in parallel (1M rows: 0.059 s, against 0.074 in one group and 0.105
            # in groups of 64Ki).
            pq.write_table(
                table,
                handle,
                compression=compression,
                use_dictionary=["status"],
                write_statistics=False,
                row_group_size=ROW_GROUP_ROWS,
            )
        self._written[final] = table
        return final

    def _read_all(self, paths: Sequence[Path], columns: Sequence[str] | None) -> pa.Table:
        if not paths:
            names = RESULT_SCHEMA.names if columns is None else [c for c in columns if c != OUTPUTS]
            return RESULT_SCHEMA.empty_table().select(names)
        return unify([self._read_one(p, columns) for p in paths])

    def _read_one(self, path: Path, columns: Sequence[str] | None) -> pa.Table:
        table = self._written.get(path)
        if table is not None:
            return table.select(_wanted(table.schema.names, columns))
        return _read_file(path, columns)


_READ_TRIES = 5


def _wanted(names: Sequence[str], columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(names)
    return [n for n in names if n in columns or (OUTPUTS in columns and (is_output(n) or n == LEGACY))]


def _read_file(path: Path, columns: Sequence[str] | None) -> pa.Table:
    handle = pq.ParquetFile(path)
    names = handle.schema_arrow.names
    legacy = LEGACY in names
    wanted = _wanted(names, columns)
    table = handle.read(columns=wanted)
    if legacy and LEGACY in wanted:
        texts = table[LEGACY].to_pylist()
        table = table.drop_columns([LEGACY])
        for name, array in legacy_columns(texts).items():
            table = table.append_column(name, array)
    return table


def _to_table(batches: Sequence[tuple[str, Sequence[RowResult]]], files: Path) -> pa.Table:
    now = time.time()
    results = batches[0][1] if len(batches) == 1 else list(chain.from_iterable(r for _, r in batches))
    rows = len(results)
    # One transpose in C instead of a list comprehension per field.
    keys, statuses, outputs, errors, run_ids = zip(*results, strict=True) if rows else ((),) * 5
    base = {
        "key": pa.array(keys, pa.string()),
        "status": pa.array(statuses, pa.string()),
        "error": pa.array(errors, pa.string()),
        "run_id": pa.array(run_ids, pa.string()),
        "batch_id": _batch_ids(batches, rows),
        "finished_at": pa.repeat(pa.scalar(now, pa.float64()), rows),
    }
    return pa.table({**base, **output_columns(outputs, file_saver(files))})


def _batch_ids(batches: Sequence[tuple[str, Sequence[RowResult]]], rows: int) -> pa.Array:
    """Each row's batch id: the batches' ids, each repeated over its rows (no string per row)."""
    if len(batches) == 1:
        return pa.repeat(pa.scalar(batches[0][0], pa.string()), rows)
    ids = pa.array([batch_id for batch_id, _ in batches], pa.string())
    return ids.take(np.repeat(np.arange(len(batches)), [len(results) for _, results in batches]))
