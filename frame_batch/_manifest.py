"""A finished plan's row keys, kept per frame, so an unchanged frame is not encoded again.

Planning computes every row's key from its canonical input JSON: about 3 µs a row to
convert, encode and hash, seconds for a million rows. Running the same frame again would
compute the same keys. So after a run that planned every row, the keys (and the reasons
rows were skipped) are saved under a fingerprint of the frame; a later run over an equal
frame reads them back in a fraction of the time. They are only used when every keyed row
already has a final stored result (the no-op resume): then nothing needs a payload.

The fingerprint is a 128-bit BLAKE2b of what the keys depend on: the scope (provider,
workflow, version), the input mapping, each input column's dtype and Arrow buffers, the
index (skip reasons name row labels), and the limits that skip rows. Any change, even a
different memory layout of equal values, gives another fingerprint: the frame is then
encoded as usual. Frames whose inputs cannot be fingerprinted safely are always encoded:
object columns holding anything but str (Arrow could read two values alike that the
encoder writes differently, like a datetime's UTC offset), and runs that read files from
disk (a file's content may change under the same cell).

Layout: ``<cache>/plans/<scope>/<fingerprint>.parquet`` (``key``, ``error``, ``row``: the
row's position in the merged result part, so an unchanged store is joined without hashing a
single key), written atomically; the newest ``KEEP`` per scope are kept. Frames under ``MIN_ROWS`` rows encode
fast enough and are not recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._encode import column_position
from ._fs import atomic_write

FORMAT = 1  # bump when the encoder or the key scheme changes: old plans stop matching
MIN_ROWS = 10_000
KEEP = 4
_SCHEMA = pa.schema([("key", pa.string()), ("error", pa.string()), ("row", pa.int32())])
_META = b"frame_batch.plan"


@dataclass(frozen=True, slots=True)
class KnownPlan:
    """Every row's key (null: skipped), the reasons rows were skipped, how many keys are
    distinct, and where each row's result is in the merged part ``merged`` (when the run
    that recorded the plan ended with its results merged into one part)."""

    keys: pa.Array
    errors: dict[int, str]
    unique: int
    merged: str | None = None
    rows: pa.Array | None = None  # int32 positions in ``merged``; null: no result there


def fingerprint(
    df: pd.DataFrame, columns: list[tuple[str, pd.Series]], context: object, *, reads_files: bool
) -> str | None:
    """The frame's fingerprint for these input columns and ``context`` (scope, limits), or
    None when it cannot be taken safely (see the module docstring)."""
    if reads_files or len(df) < MIN_ROWS:
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(orjson.dumps([FORMAT, len(df), context], default=str))
    if not _add_index(digest, df.index):
        return None
    for name, column in columns:
        digest.update(orjson.dumps([name, str(column.dtype)]))
        if not _add_column(digest, column):
            return None
    return digest.hexdigest()


def _add_index(digest: hashlib.blake2b, index: pd.Index) -> bool:
    if isinstance(index, pd.RangeIndex):
        digest.update(orjson.dumps(["range", index.start, index.stop, index.step]))
        return True
    if isinstance(index, pd.MultiIndex):
        return False
    digest.update(orjson.dumps(["index", str(index.dtype)]))
    return _add_column(digest, index.to_series())


def _add_column(digest: hashlib.blake2b, column: pd.Series) -> bool:
    if column.dtype == object and pd.api.types.infer_dtype(column, skipna=True) not in ("string", "empty"):
        return False
    try:
        array = pa.array(column, from_pandas=True)
    except (pa.ArrowException, ValueError, TypeError, UnicodeError):
        return False
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    if len(chunks) != 1 or chunks[0].offset:
        # Equal values read back in other pieces (Parquet row groups, a slice) would hash
        # differently: one fresh array makes the layout the values' own.
        chunks = [pa.concat_arrays(chunks) if chunks else pa.array([], array.type)]
    _add_array(digest, chunks[0])
    return True


def _add_array(digest: hashlib.blake2b, array: pa.Array) -> None:
    if isinstance(array, pa.DictionaryArray):  # categoricals: codes and categories
        _add_array(digest, array.indices)
        _add_array(digest, array.dictionary)
        return
    digest.update(orjson.dumps([str(array.type), len(array), array.offset, array.null_count]))
    for i, buffer in enumerate(array.buffers()):
        if i == 0 and array.null_count == 0:
            buffer = None  # no nulls: an all-valid bitmap and none at all say the same
        if buffer is None:
            digest.update(b"\x00" * 8)
        else:
            digest.update(buffer.size.to_bytes(8, "little"))
            digest.update(memoryview(buffer))


class Plans:
    """The recorded plans of one cache."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, scope: str, print_: str) -> KnownPlan | None:
        path = self.root / scope / f"{print_}.parquet"
        try:
            # ParquetFile, not read_table: that imports pyarrow.dataset (~8 ms before a first run).
            handle = pq.ParquetFile(path)
            meta = orjson.loads((handle.schema_arrow.metadata or {})[_META])
            table = handle.read(columns=_SCHEMA.names)
            if table.schema.names != _SCHEMA.names:
                return None  # an unknown layout
            table = table.cast(_SCHEMA)
        except (OSError, KeyError, pa.ArrowException, orjson.JSONDecodeError):
            return None  # absent, or unreadable: encode the frame as usual
        skipped = table["error"].is_valid()
        positions = pc.indices_nonzero(skipped).to_pylist()
        messages = table["error"].filter(skipped).to_pylist()
        return KnownPlan(
            table["key"].combine_chunks(),
            dict(zip(positions, messages, strict=True)),
            int(meta["unique"]),
            meta.get("merged"),
            table["row"].combine_chunks() if meta.get("merged") else None,
        )

    def save(self, scope: str, print_: str, plan: KnownPlan) -> None:
        folder = self.root / scope
        folder.mkdir(parents=True, exist_ok=True)
        messages: list[str | None] = [None] * len(plan.keys)
        for position, message in plan.errors.items():
            messages[position] = message
        rows = plan.rows if plan.rows is not None else pa.nulls(len(plan.keys), pa.int32())
        table = pa.table(
            {"key": plan.keys, "error": pa.array(messages, pa.string()), "row": rows.cast(pa.int32())}
        )
        meta = {"unique": plan.unique, "merged": plan.merged}
        table = table.replace_schema_metadata({_META: orjson.dumps(meta)})
        with atomic_write(folder / f"{print_}.parquet") as handle:
            pq.write_table(table, handle, compression="none")  # hex keys do not compress
        self._prune(folder)

    def _prune(self, folder: Path) -> None:
        plans = sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in plans[KEEP:]:
            old.unlink(missing_ok=True)


def input_columns(df: pd.DataFrame, pairs: tuple[tuple[str, Hashable], ...]) -> list[tuple[str, pd.Series]]:
    """The frame's input columns by input name (labels are checked unique by ``resolve_inputs``)."""
    return [(name, df.iloc[:, column_position(df.columns, label)]) for name, label in pairs]
