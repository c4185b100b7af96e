"""Join stored results back onto the caller's frame, by row key (never by position).

Naming rules for the new columns:
- One column per output name. Nested output maps are flattened with ``.``:
  ``{"address": {"city": "Oslo"}}`` becomes the column ``address.city``. Lists stay lists.
  A file output is one cell: the saved file's path (or its bytes), see ``_files``.
- Then three status columns: ``bulk_status`` (succeeded / failed / cancelled / skipped /
  pending), ``bulk_error`` (why a row failed or was skipped) and ``bulk_run_id`` (the vendor's
  run id, for support tickets).
- Where the provider knows the output schema, declared columns get their dtype: integer ->
  ``Int64`` (nullable, so a missing row does not turn it into float), number -> float64,
  boolean -> ``boolean``, date / date-time -> datetime64. Values that disagree with the
  schema are left as sent, with a warning: nothing is coerced to NaN silently. Declared
  columns come first, in the schema's order.
- A new column never overwrites an existing one: on a clash it is suffixed ``_out``
  (then ``_out2``, ``_out3``, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._memory import release as release_memory
from ._types import OutputShape
from .store.columns import JSON, is_output, output_name, parse_json

STATUS_COLUMNS = ("bulk_status", "bulk_error", "bulk_run_id")


def with_pending(keys: pa.Array, rows: int) -> pa.Array:
    """Keys for all ``rows`` of a frame planned only up to ``len(keys)``: the rest get a key
    no result has (""), so they join as ``pending``."""
    return pa.concat_arrays([keys, pa.repeat(pa.scalar("", pa.string()), rows - len(keys))])


class Handover:
    """Stored results handed to ``join_results`` to take apart: each column is let go as soon
    as it is taken into the new frame, so the results and the output frame are never both
    whole in memory (at 1M rows that is the process's peak). Hand over only a table nothing
    else keeps."""

    def __init__(self, table: pa.Table) -> None:
        self._table: pa.Table | None = table

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            raise RuntimeError("these results were joined already")
        return self._table

    def pop(self, name: str) -> pa.ChunkedArray:
        column = self.table[name]
        self._table = self.table.drop_columns([name])
        return column

    def done(self) -> None:
        self._table = None


def join_results(
    df: pd.DataFrame,
    keys: Sequence[str | None] | pa.Array,
    skipped: dict[int, str],
    results: pa.Table | Handover,
    shape: OutputShape | None = None,
    *,
    files: Callable[[Mapping[str, object]], object] | None = None,
    indexer: pa.Array | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """A new frame (``df``'s index and columns, then outputs, then status columns), and the
    status of every row, whatever name its column ended up with. ``results`` has one row per
    key (``Store.latest``); ``keys`` one per frame row (None: skipped). ``files`` turns a
    stored file output into what its cell shows (a path, or the bytes). ``indexer``: each
    row's position in ``results``, when the caller found it already."""
    held = results if isinstance(results, Handover) else Handover(results)
    if indexer is None:
        wanted = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
        # Position of each frame row's result (null: none). Arrow hashes the keys in C: far
        # cheaper than a Python dict or an object Index for a million rows.
        indexer = pc.index_in(wanted, value_set=held.table["key"])

    status, *columns = _status(held, indexer, skipped)
    outputs = _outputs(held, indexer, files)
    held.done()
    if shape is not None:
        outputs = _apply_shape(outputs, shape)

    out = df.copy(deep=False)  # a new frame; the caller's stays untouched
    taken = set(map(_label, out.columns))
    new: dict[str, Any] = {}
    for name in outputs.columns:
        new[_free(str(name), taken)] = outputs[name].array  # keeps extension dtypes (Int64)
    for name, values in zip(STATUS_COLUMNS, columns, strict=True):
        new[_free(name, taken)] = values
    added = pd.DataFrame(new, index=out.index, copy=False)  # the columns are new already
    added = added.infer_objects()
    joined: pd.DataFrame = pd.concat([out, added], axis=1) if len(out.columns) else added
    return joined, status


def _outputs(
    held: Handover, indexer: pa.Array, files: Callable[[Mapping[str, object]], object] | None
) -> pd.DataFrame:
    """The output columns, one row per frame row (rows without a result are null)."""
    columns: dict[str, Any] = {}
    for name in [n for n in held.table.column_names if is_output(n)]:
        picked = _take(held.pop(name), indexer)
        if name.startswith(JSON):
            columns[output_name(name)] = pd.Series(parse_json(picked.to_pylist(), files), dtype=object)
        else:
            columns[output_name(name)] = picked.to_pandas()
    if not columns:
        return pd.DataFrame(index=pd.RangeIndex(len(indexer)))
    return pd.DataFrame(columns, index=pd.RangeIndex(len(indexer)))


def _apply_shape(outputs: pd.DataFrame, shape: OutputShape) -> pd.DataFrame:
    """Drop hidden outputs; declared columns first, in schema order, with their dtype (left as
    is when the values disagree with it)."""
    hidden = tuple(shape.hidden)
    if hidden:
        keep = [c for c in outputs.columns if not any(c == h or str(c).startswith(h + ".") for h in hidden)]
        outputs = outputs[keep]
    converted = {
        name: _typed(outputs[name], kind, str(name))
        for name, kind in shape.types.items()
        if name in outputs.columns and kind in _CONVERTERS
    }
    if converted:
        outputs = outputs.assign(**converted)
    # Declared columns in the schema's order, whatever order the vendor's answer had.
    declared = [name for name in shape.types if name in outputs.columns]
    rest = [name for name in outputs.columns if name not in shape.types]
    return outputs[declared + rest]


def _typed(column: pd.Series, kind: str, name: str) -> pd.Series:
    try:
        return _CONVERTERS[kind](column)
    except (TypeError, ValueError, OverflowError) as exc:
        sample = next((v for v in column if v is not None and v == v), None)
        warnings.warn(
            f"output column {name!r} is declared {kind} in the output schema but holds values like "
            f"{sample!r} ({exc}); it is left as the vendor sent it",
            stacklevel=4,
        )
        return column


def _to_int(column: pd.Series) -> pd.Series:
    values = [None if v is None or v != v else v for v in column]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values if v is not None):
        raise TypeError("not all values are numbers")
    return pd.Series(pd.array(values, dtype="Int64"), index=column.index)  # nullable: no float upcast


def _to_bool(column: pd.Series) -> pd.Series:
    values = [None if v is None or v != v else v for v in column]
    if any(not isinstance(v, bool) for v in values if v is not None):
        raise TypeError("not all values are true/false")
    return pd.Series(pd.array(values, dtype="boolean"), index=column.index)


_CONVERTERS: dict[str, Callable[[pd.Series], pd.Series]] = {
    "integer": _to_int,
    "number": lambda c: pd.to_numeric(c, errors="raise").astype("float64"),
    "boolean": _to_bool,
    "date": lambda c: pd.to_datetime(c, format="ISO8601"),
    "datetime": lambda c: pd.to_datetime(c, format="ISO8601", utc=True),
}


PENDING_NOTE = "not finished yet: run again to resume"


def _take(column: pa.ChunkedArray, indexer: pa.Array) -> pa.Array:
    # Many chunks (one per stored part) are combined first: Arrow's take concatenates them
    # anyway, at over twice the cost (0.15 s against 0.06 s at 1,000 chunks of 1M rows).
    # A merged part's few row groups are taken as they are.
    source = column.combine_chunks() if column.num_chunks > _FEW_CHUNKS else column
    del column
    taken = source.take(indexer)
    del source
    release_memory(len(indexer))
    return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken


_FEW_CHUNKS = 64


def _status(held: Handover, indexer: pa.Array, skipped: dict[int, str]) -> tuple[Any, ...]:
    """The status columns, built in Arrow and converted once (no Python string per cell on
    pandas 3, whose ``str`` columns are Arrow), and every row's status as a numpy array."""
    missing = indexer.is_null()

    def take(name: str) -> pa.Array:
        return _take(held.pop(name), indexer)

    status = pc.if_else(missing, "pending", take("status"))
    error = take("error")
    run_id = take("run_id")
    error = pc.if_else(pc.and_(missing, error.is_null()), PENDING_NOTE, error)
    if skipped:
        positions = sorted(p for p in skipped if p < len(indexer))
        mask = np.zeros(len(indexer), dtype=bool)
        mask[positions] = True
        where = pa.array(mask)
        status = pc.replace_with_mask(status, where, pa.array(["skipped"] * len(positions), pa.string()))
        error = pc.replace_with_mask(error, where, pa.array([skipped[p] for p in positions], pa.string()))
        run_id = pc.replace_with_mask(run_id, where, pa.nulls(len(positions), pa.string()))
    # Every row's status as numpy objects without a string per row: a handful of names.
    encoded = pc.dictionary_encode(status)
    names = np.array(encoded.dictionary.to_pylist(), dtype=object)
    every = names[encoded.indices.to_numpy(zero_copy_only=False)]
    return every, *(_pandas(column) for column in (status, error, run_id))


def _pandas(column: pa.Array | pa.ChunkedArray) -> Any:
    """A string column as pandas shows it (``str`` on pandas 3, object on pandas 2), nulls
    as None where the column is object (an all-null column stays object of None)."""
    if column.null_count == len(column):
        return np.full(len(column), None, dtype=object)
    return column.to_pandas().array


def _label(column: Hashable) -> str:
    return column if isinstance(column, str) else str(column)


def _free(name: str, taken: set[str]) -> str:
    """``name``, or ``name_out``, ``name_out2``, ... whichever is not taken yet."""
    candidate = name
    counter = 1
    while candidate in taken:
        candidate = f"{name}_out" if counter == 1 else f"{name}_out{counter}"
        counter += 1
    taken.add(candidate)
    return candidate
