"""Turn DataFrame rows into canonical JSON objects, column by column.

Each row becomes one JSON object ``{input name: value}`` with its keys sorted (nested
object keys too), so equal inputs always give equal bytes. A cell that cannot be sent
makes *its row* an error (payload ``None``, message in ``EncodedChunk.errors``); every
other row is unaffected.

Encoding rules (the user-facing reference), for cells of any dtype and values nested in
lists and dicts alike:

- Missing -> ``null``: ``None``, ``NaN`` (float, numpy, nullable ``Float64``), ``pd.NA``,
  ``pd.NaT``, ``np.datetime64('NaT')``, ``np.timedelta64('NaT')``, ``Decimal('NaN')``.
- bool, int, float (Python, numpy, nullable ``Int64``/``boolean``/``Float64``) -> JSON
  bool / number. float32 and float16 are sent as the shortest decimal of their own
  precision: ``np.float32(0.1)`` -> ``0.1``, not ``0.10000000149011612``.
- str (any string dtype, categories included) -> string.
- tz-aware timestamps (``pd.Timestamp``, ``datetime`` with tzinfo, tz-aware ``datetime64``
  columns) -> RFC 3339 in UTC with ``Z``: ``"2024-01-02T03:04:05Z"``.
- Naive timestamps -> ISO 8601 wall-clock time with no offset, exactly as shown:
  ``"2024-01-02T03:04:05"``. They are *not* assumed to be UTC; localize the column
  (``df[c].dt.tz_localize(...)``) if the workflow needs an instant.
- Fractional seconds appear only when non-zero (``".123456"``, always six digits).
  Nanoseconds are dropped: times are rounded down to the microsecond.
- ``datetime.date`` and day-unit ``np.datetime64`` -> ``"2024-01-02"``.
- ``datetime.time`` -> ``"03:04:05"`` (an aware time keeps its offset: there is no date
  to convert it to UTC with).
- ``timedelta`` / ``pd.Timedelta`` / ``np.timedelta64`` -> ISO 8601 duration from
  ``pd.Timedelta.isoformat()``: ``"P0DT0H0M1.5S"``. ``pd.Period`` -> ``str(period)``.
- ``Decimal`` -> string ``str(d)`` (``"1.10"``: exact, never rounded through float).
- ``uuid.UUID`` -> string. ``Enum`` member -> its ``.value``, encoded by these rules.
- list, tuple, ``np.ndarray`` (any shape) -> array; set and frozenset -> array, sorted
  when the members can be sorted, else in iteration order.
- dict (any Mapping) -> object: str keys kept, bool/int/float keys become ``str(key)``.

These make the row an error, with a message naming the row (position and index label),
the column, the value's type and what to do; the first bad cell in input-name order is
reported:

- ``inf`` / ``-inf`` anywhere (also inside lists and dicts) and ``Decimal('Infinity')``:
  JSON has no infinity, and orjson would silently send ``null``;
- an int outside the signed/unsigned 64-bit range (convert the column to str);
- a str with a lone surrogate such as ``"\\udcff"`` (from ``surrogateescape`` decoding);
- bytes, bytearray, memoryview (decode to str or base64 first), except for providers that
  take files: there a whole cell of bytes (or a path, with ``file_root=``) is a file, see
  ``_files``;
- a dict key that is not str/bool/int/float, or two keys that become the same string;
- anything else: complex numbers, intervals, arbitrary objects, nesting deeper than
  orjson's limit of 255 levels.

How: each column of a chunk becomes a list of JSON-safe Python values in one vectorised
step chosen by its dtype; only object columns (and rare dtypes with no fast path) look
at values one by one. The lists are zipped into row dicts, each dumped by orjson.
Lone surrogates are not searched for up front: orjson refuses them when it dumps the
row, and only then are that row's cells examined.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd

from frame_batch._files import FileInputs, FileRejected, bytes_marker, path_marker
from frame_batch._types import EncodedChunk
from frame_batch.errors import ColumnError, ConfigError

__all__ = ["encode_frame", "resolve_inputs"]

Pairs = tuple[tuple[str, Hashable], ...]

_SORT = orjson.OPT_SORT_KEYS
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1
_SUBSECOND_UNITS = frozenset({"ms", "us", "ns", "ps", "fs", "as"})
_DATE_UNITS = frozenset({"D", "W", "M", "Y"})
_FIX_FINITE = "replace it with a finite number or null"
_FIX_SURROGATE = "decode the source text with errors='replace' or remove the character"
_FIX_OTHER = "convert it to a str, number, bool, list or dict first"
_HINT_MAP = "pass inputs={'name': <column>} to choose the columns and name their inputs"


# --------------------------------------------------------------------------- inputs


def resolve_inputs(df: pd.DataFrame, inputs: Mapping[str, Hashable] | Sequence[str] | None) -> Pairs:
    """Return (input name, column label) pairs, sorted by input name.

    ``None`` takes every column under its own name (labels must then be unique str);
    a list takes the named columns under their own names; a mapping names each input
    and may point at any hashable label (an int, a MultiIndex tuple).
    """
    pairs = _requested_pairs(df, inputs)
    if not pairs:
        raise ConfigError(f"no input columns selected; {_HINT_MAP}")
    seen: set[str] = set()
    for name, label in pairs:
        if name in seen:
            raise ConfigError(f"input {name!r} is listed twice; list each input once")
        seen.add(name)
        column_position(df.columns, label)  # raises ColumnError when missing or ambiguous
    return tuple(sorted(pairs, key=lambda pair: pair[0]))


def _requested_pairs(df: pd.DataFrame, inputs: object) -> list[tuple[str, Hashable]]:
    if inputs is None:
        return [(_label_as_name(df.columns, label), label) for label in df.columns]
    if isinstance(inputs, Mapping):
        return [(_input_name(name), label) for name, label in inputs.items()]
    if isinstance(inputs, (str, bytes)):
        # A bare string is a Sequence too; taking it letter by letter is never meant.
        raise ConfigError(
            "inputs must be a list of column names or a mapping {input name: column}, "
            f"not a single {type(inputs).__name__}; did you mean inputs=[{inputs!r}]?"
        )
    if isinstance(inputs, Iterable):
        return [(_input_name(label), label) for label in inputs]
    raise ConfigError(
        "inputs must be None, a list of column names or a mapping {input name: column}, "
        f"not {type(inputs).__name__}"
    )


def _label_as_name(columns: pd.Index, label: Hashable) -> str:
    """The input name of a column taken whole (``inputs=None``)."""
    if not isinstance(label, str):
        raise ColumnError(
            f"column label {label!r} is a {type(label).__name__}, not a str, so it cannot "
            f"name an input; pass inputs={{'name': {label!r}}} to name it"
        )
    count = int(np.count_nonzero(columns == label))
    if count > 1:
        raise ColumnError(f"column {label!r} appears {count} times; rename the duplicates, or {_HINT_MAP}")
    return _input_name(label)


def _input_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"input names must be non-empty str, got {name!r} ({type(name).__name__}); {_HINT_MAP}"
        )
    return str.__str__(name)  # a plain str even for np.str_ and other subclasses


def column_position(columns: pd.Index, label: Hashable) -> int:
    """Where ``label`` is in ``columns``; it must be there exactly once."""
    try:
        loc = columns.get_loc(label)
    except (KeyError, TypeError, pd.errors.InvalidIndexError):
        raise ColumnError(f"column {label!r} not found", available=list(columns)) from None
    if isinstance(loc, (int, np.integer)):
        return int(loc)
    # A slice or boolean mask: the label is duplicated, or is a partial MultiIndex key.
    count = len(range(*loc.indices(len(columns)))) if isinstance(loc, slice) else int(np.count_nonzero(loc))
    if isinstance(columns, pd.MultiIndex) and not (
        isinstance(label, tuple) and len(label) == columns.nlevels
    ):
        raise ColumnError(
            f"column {label!r} names {count} columns of the column MultiIndex; "
            "give the full tuple of one column",
            available=list(columns),
        )
    raise ColumnError(
        f"column {label!r} appears {count} times; rename the duplicates so each input reads one column"
    )


# --------------------------------------------------------------------------- frames

# Rows encoded and planned at a time. A chunk is encoded in one go on the event loop, so it
# is also the longest pause of polling (~3 µs a row); measured per row, 4,000 was also the
# cheapest (2.9 µs to encode and plan, against 3.1-3.3 at 10,000 and 3.6 at 1,000).
CHUNK_ROWS = 4_000


def encode_frame(
    df: pd.DataFrame, pairs: Pairs, *, chunk_rows: int = CHUNK_ROWS, files: FileInputs | None = None
) -> Iterator[EncodedChunk]:
    """Yield one EncodedChunk per ``chunk_rows`` consecutive rows (by position).

    ``payloads[i]`` is the canonical JSON object of row ``start + i``, or ``None`` with the
    reason in ``errors[start + i]``. Bad cells never raise; bad arguments raise at once.
    ``files`` (for providers that take files) turns file cells into file markers (``_files``).
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    if not pairs:
        raise ConfigError(f"no input columns selected; {_HINT_MAP}")
    names = [_input_name(name) for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"input names must be unique, got {names!r}")
    labels = [label for _, label in pairs]
    positions = [column_position(df.columns, label) for label in labels]
    unknown = sorted(files.path_inputs - set(names)) if files is not None else []
    if unknown:
        raise ConfigError(f"file_inputs names {unknown!r}, which are not inputs of this run: {names!r}")
    converters = [
        _converter(df.iloc[:, pos].dtype, name, files) for name, pos in zip(names, positions, strict=True)
    ]
    return _chunks(df, names, labels, positions, converters, chunk_rows)


# The first chunk is small so the first batch leaves in milliseconds; chunks then grow to
# ``chunk_rows`` (per-chunk costs are paid once per thousands of rows again).
FIRST_CHUNK_ROWS = 1_000


def _converter(dtype: object, name: str, files: FileInputs | None) -> Callable[[pd.Series], _Column]:
    """How one column is converted: files look at object (and path) columns value by value."""
    if files is None:
        return _convert
    as_path = name in files.path_inputs
    if as_path or (isinstance(dtype, np.dtype) and dtype.kind == "O"):
        return lambda series: _file_column(series.to_numpy(dtype=object), files, as_path=as_path)
    return _convert


def _chunks(
    df: pd.DataFrame,
    names: list[str],
    labels: list[Hashable],
    positions: list[int],
    converters: list[Callable[[pd.Series], _Column]],
    chunk_rows: int,
) -> Iterator[EncodedChunk]:
    start, size = 0, min(chunk_rows, FIRST_CHUNK_ROWS)
    while start < len(df):
        stop = min(start + size, len(df))
        columns = [
            convert(df.iloc[start:stop, pos]) for convert, pos in zip(converters, positions, strict=True)
        ]
        yield _assemble(df.index, start, names, labels, columns)
        start, size = stop, min(chunk_rows, size * 4)


class _Column(NamedTuple):
    """One column of a chunk: JSON-safe values, and problems by chunk-local row."""

    values: list[Any]
    problems: dict[int, str]


def _assemble(
    index: pd.Index,
    start: int,
    names: list[str],
    labels: list[Hashable],
    columns: list[_Column],
) -> EncodedChunk:
    known = _first_problems(columns)
    payloads: list[bytes | None] = []
    errors: dict[int, str] = {}
    row_labels: list[Any] | None = None  # index labels, fetched only if a row fails
    dumps = orjson.dumps
    for i, row in enumerate(zip(*(column.values for column in columns), strict=True)):
        found = known.get(i)
        if found is None:
            try:
                payloads.append(dumps(dict(zip(names, row, strict=True)), option=_SORT))
                continue
            except TypeError:  # orjson.JSONEncodeError: a lone surrogate, or too deep
                found = _first_unencodable(row, len(row))
        else:
            # A cell before the known bad one may hide a surrogate; report the first.
            found = _first_unencodable(row, found[0]) or found
        if row_labels is None:
            row_labels = index[start : start + len(columns[0].values)].tolist()
        payloads.append(None)
        errors[start + i] = _row_message(start + i, row_labels[i], labels, found)
    return EncodedChunk(start=start, payloads=payloads, errors=errors)


def _first_problems(columns: list[_Column]) -> dict[int, tuple[int, str]]:
    """For each bad row, its first problem by column order (= input-name order)."""
    first: dict[int, tuple[int, str]] = {}
    for j, column in enumerate(columns):
        for i, problem in column.problems.items():
            first.setdefault(i, (j, problem))
    return first


def _first_unencodable(row: tuple[Any, ...], limit: int) -> tuple[int, str] | None:
    for j in range(limit):
        try:
            orjson.dumps(row[j], option=_SORT)
        except TypeError as exc:
            return j, _diagnose(row[j], exc).describe()
    return None


def _row_message(position: int, row_label: Any, labels: list[Hashable], found: tuple[int, str] | None) -> str:
    where = f"row {position} (index {row_label!r})"
    if found is None:
        return f"{where}: the row could not be encoded as JSON"
    column, problem = found
    return f"{where}, column {labels[column]!r}: {problem}"


# --------------------------------------------------------------------------- columns


def _convert(series: pd.Series) -> _Column:
    """Convert one column slice to JSON-safe values with the fastest path for its dtype."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        kind = dtype.kind
        if kind in "biu":
            return _Column(series.to_numpy().tolist(), {})  # Python ints and bools
        if kind == "f":
            return _float_column(series.to_numpy())
        if kind == "M":
            return _Column(_datetime_strings(series.to_numpy(), utc=False), {})
        # Object, timedelta, complex, bytes: to_numpy boxes into pandas scalars first.
        return _object_column(series.to_numpy(dtype=object))
    if isinstance(dtype, pd.DatetimeTZDtype):
        utc = series.dt.tz_convert(None)  # UTC wall-clock, tz dropped: a plain M8 array
        return _Column(_datetime_strings(utc.to_numpy(), utc=True), {})
    if isinstance(dtype, pd.CategoricalDtype):
        return _categorical_column(series)
    if isinstance(dtype, pd.StringDtype):
        # Missing is NA or NaN by storage; both become None here. Surrogates surface
        # when orjson dumps the row, which keeps the all-valid path free of checks.
        strings = series.to_numpy(dtype=object, na_value=None)  # type: ignore[call-overload]
        return _Column(strings.tolist(), {})
    if isinstance(series.array, _MASKED_ARRAYS):
        return _masked_column(series)
    return _object_column(series.to_numpy(dtype=object))  # Sparse, Period, Interval, Arrow


_MASKED_ARRAYS = (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)


def _with_none(values: npt.NDArray[Any], missing: npt.NDArray[np.bool_]) -> list[Any]:
    """``values.tolist()`` with None where ``missing``; never writes into ``values``."""
    if not missing.any():
        return values.tolist()  # type: ignore[no-any-return]
    boxed = values.astype(object)  # a copy: the frame's own array is never written
    boxed[missing] = None
    return boxed.tolist()  # type: ignore[no-any-return]


def _float_column(values: npt.NDArray[Any]) -> _Column:
    infinite = np.isinf(values)
    problems = {int(i): _Bad(f"float {values[i]}", _FIX_FINITE).describe() for i in np.flatnonzero(infinite)}
    return _Column(_float_list(values), problems)


def _float_list(values: npt.NDArray[Any]) -> list[Any]:
    """Python floats, None for NaN and inf (inf is reported by the caller)."""
    if values.dtype == np.float32:
        # orjson prints float32 at its own precision (0.1, not 0.10000000149011612) and
        # turns NaN/inf into null; 12x faster than formatting through numpy strings.
        return orjson.loads(orjson.dumps(np.ascontiguousarray(values), option=_NUMPY))  # type: ignore[no-any-return]
    if values.dtype != np.float64:
        # float16 (orjson widens it) and longdouble: go through numpy's shortest repr.
        values = values.astype(str).astype(np.float64)
    return _with_none(values, ~np.isfinite(values))


def _datetime_strings(values: npt.NDArray[np.datetime64], *, utc: bool) -> list[Any]:
    """ISO 8601 strings (``Z`` when ``utc``), fractional seconds only when non-zero."""
    timezone: Literal["UTC", "naive"] = "UTC" if utc else "naive"
    missing = np.isnat(values)
    unit, _ = np.datetime_data(values.dtype)
    if unit in _SUBSECOND_UNITS:
        fine = values.astype("M8[us]")  # rounds nanoseconds down to microseconds
        whole = fine.astype("M8[s]")
        text = np.datetime_as_string(whole, unit="s", timezone=timezone)
        fraction = (fine != whole) & ~missing  # NaT != NaT: keep it off the slow path
        if fraction.any():
            fine_text = np.datetime_as_string(fine, unit="us", timezone=timezone)
            text = np.where(fraction, fine_text, text)
    elif unit in _DATE_UNITS:  # np.datetime64 scalars only: pandas never holds these
        text = np.datetime_as_string(values.astype("M8[D]"), unit="D")
    else:
        text = np.datetime_as_string(values, unit="s", timezone=timezone)
    return _with_none(text, missing)


def _masked_column(series: pd.Series) -> _Column:
    """Nullable Int*/UInt*/Float*/boolean: the numpy path plus None under the mask."""
    numpy_dtype = np.dtype(cast(Any, series.dtype).numpy_dtype)
    if numpy_dtype.kind == "f":
        # NA and NaN (the array may hold both) both become NaN, then null.
        return _float_column(series.to_numpy(dtype=numpy_dtype, na_value=np.nan))
    filler = False if numpy_dtype.kind == "b" else 0
    data = series.to_numpy(dtype=numpy_dtype, na_value=filler)
    return _Column(_with_none(data, np.asarray(series.isna())), {})


def _categorical_column(series: pd.Series) -> _Column:
    """Convert each category once, then look rows up by code (-1, missing, hits None)."""
    categories = _convert(pd.Series(series.cat.categories))
    table = np.empty(len(categories.values) + 1, dtype=object)
    for k, value in enumerate(categories.values):  # item by item: values may be lists
        table[k] = value
    codes = series.cat.codes.to_numpy()
    problems: dict[int, str] = {}
    for k, problem in categories.problems.items():
        for i in np.flatnonzero(codes == k):
            problems[int(i)] = problem
    return _Column(table[codes].tolist(), problems)


def _object_column(values: npt.NDArray[Any]) -> _Column:
    if _all_str_or_missing(values):
        return _Column(_with_none(values, np.asarray(pd.isna(values))), {})
    return _each(values, _normalise)


def _file_column(values: npt.NDArray[Any], files: FileInputs, *, as_path: bool) -> _Column:
    """An object column where bytes (and paths, when allowed) are files; the rest as usual."""
    return _each(values, lambda value: _file_cell(value, files, as_path))


def _each(values: npt.NDArray[Any], convert: Callable[[Any], object]) -> _Column:
    """Convert value by value; a value that cannot be sent is a problem of its row."""
    out: list[Any] = []
    problems: dict[int, str] = {}
    for i, value in enumerate(values.tolist()):
        try:
            out.append(convert(value))
            continue
        except FileRejected as exc:
            problems[i] = str(exc)
        except _Bad as exc:
            problems[i] = exc.describe()
        except Exception as exc:  # a value we could not even inspect must not stop the run
            problems[i] = _unexpected(value, exc)
        out.append(None)
    return _Column(out, problems)


def _file_cell(value: object, files: FileInputs, as_path: bool) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes_marker(value, files)
    if isinstance(value, PurePath) or (as_path and isinstance(value, str)):
        return path_marker(value, files)
    if as_path and not _is_missing(value):
        raise FileRejected(f"{type(value).__name__} is not a path; file_inputs cells must be str or Path")
    return _normalise(value)


def _is_missing(value: object) -> bool:
    try:
        return value is None or _normalise(value) is None  # NaN, NA, NaT and friends
    except _Bad:
        return False


def _all_str_or_missing(values: npt.NDArray[Any]) -> bool:
    """Checked in C; such columns need no per-value work beyond the NA mask."""
    try:
        return pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")
    except Exception:  # odd objects (e.g. signalling NaN) break pandas' NA checks
        return False


def _unexpected(value: object, exc: BaseException) -> str:
    name = type(value).__name__
    return f"{name} could not be converted ({type(exc).__name__}: {exc}); {_FIX_OTHER}"


# --------------------------------------------------------------------------- values


class _Bad(Exception):
    """A value that cannot be sent; ``describe()`` is the user-facing explanation."""

    def __init__(self, what: str, fix: str, reason: str = "cannot be sent as JSON") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix
        self.reason = reason
        self.path: list[str] = []  # innermost step first, added as the error leaves containers

    def describe(self) -> str:
        where = f" at {''.join(reversed(self.path))}" if self.path else ""
        return f"{self.what}{where} {self.reason}; {self.fix}"


_Handler = Callable[[Any], object]


def _normalise(value: object) -> object:
    """A JSON-safe equivalent of one value (recursively), or raise _Bad."""
    handler = _HANDLERS.get(type(value))
    if handler is None:
        handler = _handler_for(type(value))
        if len(_HANDLERS) < 1000:  # cache by exact type; bounded against generated classes
            _HANDLERS[type(value)] = handler
    return handler(value)


def _same(value: object) -> object:
    return value


def _none(_: object) -> None:
    return None


def _int(value: int) -> int:
    if _INT_MIN <= value <= _UINT_MAX:
        return value
    shown = str(value) if value.bit_length() < 128 else f"of {value.bit_length()} bits"
    raise _Bad(
        f"int {shown}",
        "convert the column to str (df[col].astype(str)) to send it as text",
        reason="is outside the 64-bit range JSON numbers can carry",
    )


def _float(value: float, name: str = "float") -> float | None:
    if value != value:
        return None
    if math.isinf(value):
        raise _Bad(f"{name} {value}", _FIX_FINITE)
    return value


def _numpy_float(value: np.floating[Any]) -> float | None:
    # float32/16 through their own shortest repr, as whole float32 columns are sent.
    exact = float(value) if value.dtype.itemsize >= 8 else float(str(value))
    return _float(exact, type(value).__name__)


def _decimal(value: decimal.Decimal) -> str | None:
    if value.is_nan():
        return None
    if value.is_infinite():
        raise _Bad(f"Decimal {value}", _FIX_FINITE)
    return str(value)


def _datetime(value: dt.datetime) -> str:
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime(warn=False)  # drops nanoseconds, like the columns
    if value.utcoffset() is None:
        return value.isoformat()
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "Z"


def _numpy_datetime(value: np.datetime64) -> object:
    return _datetime_strings(np.array([value]), utc=False)[0]


def _timedelta(value: dt.timedelta | np.timedelta64) -> str | None:
    if isinstance(value, np.timedelta64) and np.isnat(value):
        return None
    return str(pd.Timedelta(value).isoformat())


def _enum(value: enum.Enum) -> object:
    return _normalise(value.value)


def _bytes(value: object) -> object:
    raise _Bad(type(value).__name__, "decode to str or base64 first")


def _complex(value: object) -> object:
    raise _Bad(f"{type(value).__name__} {value}", "convert it to str or split it into two columns")


def _unsupported(value: object) -> object:
    raise _Bad(type(value).__name__, _FIX_OTHER)


def _sequence(value: Iterable[Any]) -> list[object]:
    try:
        return [_normalise(item) for item in value]
    except _Bad:
        pass
    for i, item in enumerate(value):  # again, slowly, to say where the bad item is
        try:
            _normalise(item)
        except _Bad as exc:
            exc.path.append(f"[{i}]")
            raise
    raise AssertionError("unreachable: the second pass must fail like the first")


def _set(value: set[Any] | frozenset[Any]) -> list[object]:
    items = _sequence(value)
    try:
        return sorted(items)  # type: ignore[type-var]
    except TypeError:  # mixed or unorderable members: keep iteration order
        return items


def _ndarray(value: npt.NDArray[Any]) -> object:
    if value.ndim == 0:
        return _normalise(value[()])
    kind = value.dtype.kind
    if kind in "biu" or value.dtype in (np.float32, np.float64):
        if kind == "f" and np.isinf(value).any():
            where = np.argwhere(np.isinf(value))[0]
            bad = _Bad(f"float {value[tuple(where)]}", _FIX_FINITE)
            bad.path.extend(f"[{i}]" for i in reversed(where.tolist()))
            raise bad
        # orjson walks numeric arrays in C (NaN becomes null), far faster than per item.
        return orjson.loads(orjson.dumps(np.ascontiguousarray(value), option=_NUMPY))
    return _sequence(value)  # item by item: datetimes, objects, strings, float16


def _mapping(value: Mapping[Any, Any]) -> dict[str, object]:
    out: dict[str, object] = {}
    originals: dict[str, object] = {}  # JSON key -> the key it came from, to name clashes
    for key, item in value.items():
        name = _key(key)
        if name in originals:
            raise _Bad(
                f"dict keys {originals[name]!r} and {key!r}",
                "rename one of them",
                reason=f"both become {name!r} in JSON",
            )
        originals[name] = key
        try:
            out[name] = _normalise(item)
        except _Bad as exc:
            exc.path.append(f"[{key!r}]")
            raise
    return out


def _key(key: object) -> str:
    if not isinstance(key, enum.Enum):  # an Enum key has no one obvious string form
        if isinstance(key, str):
            return str.__str__(key)
        if isinstance(key, (bool, int, float, np.bool_, np.integer, np.floating)):
            return str(key)
    raise _Bad(
        f"dict key {key!r} ({type(key).__name__})",
        "use str keys",
        reason="cannot be a JSON object key",
    )


def _handler_for(kind: type) -> _Handler:
    """Pick the handler for a type not in _HANDLERS; order matters (subclasses first)."""
    if issubclass(kind, enum.Enum):  # before str/int: StrEnum and IntEnum are both
        return _enum
    if kind is type(pd.NA) or kind is type(pd.NaT):  # NaT is a datetime subclass
        return _none
    for base, handler in _BY_BASE:
        if issubclass(kind, base):
            return handler
    return _unsupported


_HANDLERS: dict[type, _Handler] = {
    str: _same,
    bool: _same,
    type(None): _none,
    int: _int,
    float: _float,
    list: _sequence,
    tuple: _sequence,
    dict: _mapping,
}

_BY_BASE: tuple[tuple[type | tuple[type, ...], _Handler], ...] = (
    (np.bool_, bool),
    (str, str.__str__),
    ((dt.timedelta, np.timedelta64), _timedelta),  # before int: timedelta64 is an np.integer
    ((int, np.integer), lambda v: _int(int(v))),
    (np.floating, _numpy_float),
    (float, lambda v: _float(float(v))),
    (decimal.Decimal, _decimal),
    (dt.datetime, _datetime),
    (dt.date, dt.date.isoformat),
    (dt.time, dt.time.isoformat),
    (np.datetime64, _numpy_datetime),
    (pd.Period, str),
    (uuid.UUID, str),
    ((bytes, bytearray, memoryview), _bytes),
    (Mapping, _mapping),
    ((list, tuple), _sequence),
    ((set, frozenset), _set),
    (np.ndarray, _ndarray),
    ((complex, np.complexfloating), _complex),
)


# --------------------------------------------------------------------------- diagnosis


def _diagnose(value: object, exc: BaseException) -> _Bad:
    """Say why orjson refused an already-normalised value (in practice: surrogates)."""
    found = _find_surrogate(value)
    if found is not None:
        return found
    return _Bad(
        type(value).__name__,
        "simplify it or convert it to str",
        reason=f"could not be encoded as JSON ({exc})",
    )


def _find_surrogate(value: object) -> _Bad | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            what = f"str with a lone surrogate {value[exc.start]!r} (character {exc.start})"
            return _Bad(what, _FIX_SURROGATE)
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_surrogate(item)
            if found is not None:
                found.path.append(f"[{i}]")
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_surrogate(key)
            if found is not None:
                found.what = f"dict key {key!r}: {found.what}"
                return found
            found = _find_surrogate(item)
            if found is not None:
                found.path.append(f"[{key!r}]")
                return found
    return None
