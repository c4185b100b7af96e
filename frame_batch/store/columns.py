"""Output maps as columns: how a batch's outputs are laid out in a result part, and back.

Why columns and not one JSON text per row: joining a million results back onto a frame
then costs a column conversion in Arrow instead of a million ``orjson.loads`` and dicts
(reliability notes §4.1: rebuilding columns from dicts is the costly step), the store
reads compactly, and a no-op resume never parses an output at all.

Layout (every name in a part that is not one of the base columns):
- ``o:<name>``: a typed column (string, int64, double, bool, or all-null), for outputs whose
  values in this part all have one plain JSON type;
- ``j:<name>``: one JSON text per cell, for everything else: lists, maps that are not
  flattened (empty ones), values of mixed types, file markers.
``<name>`` is the flattened output name: nested maps become ``a.b`` (see ``_join``).
Parts written before this layout hold the whole map as JSON text in ``outputs``; they are
converted when read (``legacy_columns``), so old caches resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

from .._files import FILE_MARK, is_marker

TYPED = "o:"
JSON = "j:"
LEGACY = "outputs"
_PLAIN = (pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.null())
_NUMERIC = {pa.int64(), pa.float64()}
# FileOutput is a dataclass: passed through to the ``save`` hook rather than serialized as a dict.
_DUMP_OPTION = orjson.OPT_PASSTHROUGH_DATACLASS


def is_output(name: str) -> bool:
    return name.startswith((TYPED, JSON))


def output_name(column: str) -> str:
    return column[len(TYPED) :]


def flatten(value: object, prefix: str = "") -> dict[str, Any]:
    """One output map as ``{flat name: leaf}``; a leaf is anything but a non-empty map
    (a stored file marker is a leaf too: one cell). A value that is not a map is ``output``."""
    if not isinstance(value, dict):
        return {prefix or "output": value}
    if not prefix and not any(isinstance(inner, dict) for inner in value.values()):
        return value  # already flat: the common case, no copy
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(inner, dict) and inner and not is_marker(inner):
            flat.update(flatten(inner, name))
        else:
            flat[name] = inner
    return flat


def output_columns(
    outputs: Sequence[Mapping[str, object] | None], save: Callable[[object], object] | None = None
) -> dict[str, pa.Array]:
    """The columns of a part for these output maps (``None``: the row has no outputs).
    ``save`` is the orjson default for values JSON cannot hold (file outputs)."""
    plain = _plain_columns(outputs)
    if plain is not None:
        return plain
    flat = [None if o is None else flatten(o) for o in outputs]
    names = dict.fromkeys(name for f in flat if f for name in f)  # first-seen order
    columns: dict[str, pa.Array] = {}
    for name in names:
        values = [None if f is None else f.get(name) for f in flat]
        typed = _typed(values)
        if typed is not None:
            columns[TYPED + name] = typed
        else:
            columns[JSON + name] = pa.array(_dump_all(values, save), pa.string())
    return columns


def _plain_columns(outputs: Sequence[Mapping[str, object] | None]) -> dict[str, pa.Array] | None:
    """The common case in one Arrow call: flat maps whose every output has one plain type.
    Arrow reads the maps into a struct (fields in first-seen order, as above) at ~0.26 µs a
    row against ~0.63 for the general path. None: anything else (nested maps, lists, mixed
    types, bools among numbers, files), which the general path lays out."""
    try:
        struct = pa.array(outputs)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return None
    if not pa.types.is_struct(struct.type) or any(f.type not in _PLAIN for f in struct.type):
        return None
    fields = struct.flatten()  # each field with the rows whose map is None as nulls
    return {TYPED + f.name: array for f, array in zip(struct.type, fields, strict=True)}


def _typed(values: list[object]) -> pa.Array | None:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return None
    if array.type in _NUMERIC and any(isinstance(v, bool) for v in values):
        return None  # Arrow may read True as 1 next to numbers: keep JSON's distinction
    return array if array.type in _PLAIN else None


def _dump_all(values: Iterable[object], save: Callable[[object], object] | None) -> list[str | None]:
    return [None if v is None else _dump(v, save) for v in values]


def _dump(value: object, save: Callable[[object], object] | None) -> str:
    try:
        return orjson.dumps(value, default=save, option=_DUMP_OPTION).decode()
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits, which orjson cannot write (the Respell adapter's msgspec
        # decoder keeps one exact, and so may any Provider object): stored as orjson reads
        # such a number, a float. Anything else still fails here.
        return orjson.dumps(_wide_ints_as_floats(value), default=save, option=_DUMP_OPTION).decode()


def _wide_ints_as_floats(value: object) -> object:
    if isinstance(value, dict):
        return {k: _wide_ints_as_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wide_ints_as_floats(v) for v in value]
    if type(value) is int and not -(2**63) <= value < 2**64:
        try:
            return float(value)
        except OverflowError:
            return str(value)  # beyond any float: its digits, as text
    return value


def legacy_columns(texts: Sequence[str | None]) -> dict[str, pa.Array]:
    """The columns for a part written with one JSON text per row (``outputs``)."""
    return output_columns([orjson.loads(t) if t else None for t in texts])


def unify(tables: list[pa.Table]) -> pa.Table:
    """One table from parts whose output columns differ: a name missing from a part is null
    there; a name typed differently in two parts (text in one, numbers in another) becomes
    JSON text everywhere (ints and floats just widen to float, as in a DataFrame)."""
    kinds: dict[str, set[str]] = {}
    for table in tables:
        for field in table.schema:
            if is_output(field.name):
                kind = "json" if field.name.startswith(JSON) else _kind(field.type)
                kinds.setdefault(output_name(field.name), set()).add(kind)
    mixed = {name for name, seen in kinds.items() if len(seen - {"null"}) > 1}
    if mixed:
        tables = [_as_json(table, mixed) for table in tables]
    return pa.concat_tables(tables, promote_options="permissive")


def _kind(type_: pa.DataType) -> str:
    return "number" if type_ in _NUMERIC else str(type_)


def _as_json(table: pa.Table, names: set[str]) -> pa.Table:
    for i, field in enumerate(table.schema):
        if field.name.startswith(TYPED) and output_name(field.name) in names:
            texts = _dump_all(table.column(i).to_pylist(), None)
            table = table.set_column(i, JSON + output_name(field.name), pa.array(texts, pa.string()))
    return table


def parse_json(
    texts: Sequence[str | None], files: Callable[[Mapping[str, object]], object] | None
) -> list[Any]:
    """A ``j:`` column's values; a stored file marker becomes what ``files`` shows for it."""
    values: list[Any] = []
    for text in texts:
        value: Any = None if text is None else orjson.loads(text)
        if files is not None and is_marker(value):
            value = files(value[FILE_MARK])
        values.append(value)
    return values


def outputs_json(table: pa.Table) -> list[str | None]:
    """Each row's flat output map as JSON text (None for a row without outputs): the form a
    workbook checkpoint keeps (see ``_checkpoint``)."""
    names = [n for n in table.column_names if is_output(n)]
    columns = [table[n].to_pylist() for n in names]
    statuses = table["status"].to_pylist() if "status" in table.column_names else [None] * table.num_rows
    texts: list[str | None] = []
    for row, status in enumerate(statuses):
        flat: dict[str, object] = {}
        for name, column in zip(names, columns, strict=True):
            value = column[row]
            if value is not None:
                flat[output_name(name)] = orjson.loads(value) if name.startswith(JSON) else value
        texts.append(orjson.dumps(flat).decode() if flat or status == "succeeded" else None)
    return texts
