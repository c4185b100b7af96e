"""Result part files: one Parquet file per collected batch, written atomically.

Why parts and not one growing file: a ``ParquetWriter`` file has no footer until it is
closed, so a crash makes the whole file unreadable (reliability notes §1.5). A part is
written through ``_fs.atomic_write`` (a ``.``-prefixed temp name that dataset discovery
skips, fsync, ``os.replace``, fsync of the directory): after a crash a part is either
complete or absent. The part name is the batch id, so collecting a batch again
(after a crash between writing and journaling) replaces the same file: no duplicates.

Layout: ``results/<scope>/part-<batch_id>.parquet`` with the columns of ``RESULT_SCHEMA``.
Everything here goes through a directory path and plain file operations, so a future backend
on shared storage (fsspec-style URLs) only has to provide the same three methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .._files import file_saver
from .._fs import atomic_write
from .._types import RowResult

RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("run_id", pa.string()),
        ("outputs", pa.string()),  # the output map as JSON text: nested and mixed types survive
        ("batch_id", pa.string()),
        ("finished_at", pa.float64()),
    ]
)


class PartStore:
    """The directory of result parts."""

    def __init__(self, root: Path, *, files: Path) -> None:
        self.root = root
        self.files = files  # file outputs are saved here before the part that names them

    def write(self, scope: str, batch_id: str, results: Sequence[RowResult]) -> Path:
        """Write one batch's results durably; return the part's path."""
        folder = self.root / scope
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"part-{batch_id}.parquet"
        with atomic_write(final) as handle:
            pq.write_table(_to_table(batch_id, results, file_saver(self.files)), handle, compression="zstd")
        return final

    def read(self, scope: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Every stored result of ``scope``, newest last (one row per key and batch)."""
        folder = self.root / scope
        paths = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
        names = list(columns) if columns is not None else RESULT_SCHEMA.names
        if not paths:
            return RESULT_SCHEMA.empty_table().select(names)
        tables = [pq.read_table(p, columns=names, schema=RESULT_SCHEMA) for p in paths]
        table = pa.concat_tables(tables)
        if "finished_at" in names:
            table = table.sort_by("finished_at")
        return table

    def parts(self, scope: str) -> list[Path]:
        folder = self.root / scope
        return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def _to_table(batch_id: str, results: Sequence[RowResult], save: Callable[[object], object]) -> pa.Table:
    now = time.time()
    # FileOutput is a dataclass: passed through to ``save`` rather than serialized as a dict.
    option = orjson.OPT_PASSTHROUGH_DATACLASS
    outputs = [
        None if r.outputs is None else orjson.dumps(r.outputs, default=save, option=option).decode()
        for r in results
    ]
    return pa.table(
        {
            "key": [r.key for r in results],
            "status": [r.status for r in results],
            "error": [r.error for r in results],
            "run_id": [r.run_id for r in results],
            "outputs": outputs,
            "batch_id": [batch_id] * len(results),
            "finished_at": [now] * len(results),
        },
        schema=RESULT_SCHEMA,
    )
