"""frame_batch._encode: column selection and DataFrame rows -> canonical JSON objects."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Hashable
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frame_batch._encode import encode_frame, resolve_inputs
from frame_batch._types import EncodedChunk
from frame_batch.errors import ColumnError, ConfigError

UTC = dt.UTC
FINITE_FIX = "cannot be sent as JSON; replace it with a finite number or null"


# --------------------------------------------------------------------------- helpers


def encode(
    df: pd.DataFrame, inputs: Any = None, *, chunk_rows: int = 10_000
) -> tuple[list[bytes | None], dict[int, str]]:
    """All payloads and errors of a frame, chunks joined."""
    payloads: list[bytes | None] = []
    errors: dict[int, str] = {}
    for chunk in encode_frame(df, resolve_inputs(df, inputs), chunk_rows=chunk_rows):
        assert chunk.start == len(payloads)
        payloads.extend(chunk.payloads)
        errors.update(chunk.errors)
    return payloads, errors


def one_column(values: list[Any], dtype: Any = object, index: Any = None) -> pd.DataFrame:
    """A frame with one column ``v`` holding ``values`` exactly (no inference)."""
    if dtype is object:
        data = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):  # item by item: lists must stay cells
            data[i] = value
        return pd.DataFrame({"v": pd.Series(data, dtype=object, index=index)})
    return pd.DataFrame({"v": pd.Series(values, dtype=dtype, index=index)})


def cells(values: list[Any], dtype: Any = object) -> list[Any]:
    """The JSON value sent for each cell, or the error message for bad cells."""
    payloads, errors = encode(one_column(values, dtype))
    return [errors[i] if p is None else orjson.loads(p)["v"] for i, p in enumerate(payloads)]


def cell(value: Any) -> Any:
    """The JSON value sent for one object cell, or its error message."""
    return cells([value])[0]


def payload(value: Any, dtype: Any = object) -> bytes | None:
    """The exact payload bytes for one cell."""
    return encode(one_column([value], dtype))[0][0]


def error_of(value: Any) -> str:
    """The error message for one bad object cell (fails if it was accepted)."""
    payloads, errors = encode(one_column([value]))
    assert payloads == [None], payloads
    return errors[0]


# --------------------------------------------------------------------------- resolve_inputs


def test_resolve_none_takes_every_column_sorted_by_name() -> None:
    """inputs=None: every column under its own name, sorted by input name."""
    df = pd.DataFrame({"b": [1], "a": [2], "c": [3]})
    assert resolve_inputs(df, None) == (("a", "a"), ("b", "b"), ("c", "c"))


def test_resolve_list_takes_named_columns() -> None:
    """A list picks those columns under their own names."""
    df = pd.DataFrame({"b": [1], "a": [2], "c": [3]})
    assert resolve_inputs(df, ["c", "a"]) == (("a", "a"), ("c", "c"))


def test_resolve_mapping_names_inputs_and_allows_any_hashable_label() -> None:
    """A mapping may point at int labels; pairs are sorted by input name."""
    df = pd.DataFrame({0: [1], "x": [2]})
    assert resolve_inputs(df, {"zeta": 0, "alpha": "x"}) == (("alpha", "x"), ("zeta", 0))


def test_resolve_mapping_same_column_under_two_names() -> None:
    """One column may feed two inputs."""
    df = pd.DataFrame({"x": [1]})
    assert resolve_inputs(df, {"a": "x", "b": "x"}) == (("a", "x"), ("b", "x"))


def test_resolve_mapping_to_multiindex_tuple_label() -> None:
    """A full tuple selects one column of MultiIndex columns, and it encodes."""
    df = pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")]))
    pairs = resolve_inputs(df, {"second": ("a", "y")})
    assert pairs == (("second", ("a", "y")),)
    assert next(encode_frame(df, pairs)).payloads == [b'{"second":2}']


def test_resolve_partial_multiindex_key_is_rejected() -> None:
    """A partial MultiIndex key names several columns: ColumnError."""
    df = pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")]))
    with pytest.raises(ColumnError, match="full tuple"):
        resolve_inputs(df, {"v": "a"})


def test_resolve_missing_column_lists_available_columns() -> None:
    """A missing column says which and lists the available ones."""
    df = pd.DataFrame({"title": [1], "body": [2]})
    with pytest.raises(ColumnError) as info:
        resolve_inputs(df, {"q": "topic"})
    assert str(info.value) == "column 'topic' not found; columns are: 'title', 'body'"
    assert info.value.available == ("title", "body")
    with pytest.raises(ColumnError, match="column 'topic' not found"):
        resolve_inputs(df, ["topic"])


def test_resolve_duplicate_columns_with_none() -> None:
    """Duplicate labels cannot all be taken under their own names."""
    df = pd.DataFrame([[1, 2, 3]], columns=["a", "b", "a"])
    with pytest.raises(ColumnError, match=r"column 'a' appears 2 times.*inputs="):
        resolve_inputs(df, None)


def test_resolve_duplicate_column_in_mapping_and_list() -> None:
    """Selecting a duplicated label explicitly is rejected too."""
    df = pd.DataFrame([[1, 2, 3]], columns=["a", "b", "a"])
    with pytest.raises(ColumnError, match="column 'a' appears 2 times"):
        resolve_inputs(df, {"x": "a"})
    with pytest.raises(ColumnError, match="column 'a' appears 2 times"):
        resolve_inputs(df, ["a"])
    assert resolve_inputs(df, ["b"]) == (("b", "b"),)


def test_resolve_int_labels_need_a_mapping() -> None:
    """inputs=None with int labels: ColumnError naming the label and the fix."""
    df = pd.DataFrame([[1, 2]])
    with pytest.raises(ColumnError, match=r"column label 0 is a int.*inputs=\{'name': 0\}"):
        resolve_inputs(df, None)


def test_resolve_multiindex_columns_need_a_mapping() -> None:
    """inputs=None with tuple labels: ColumnError."""
    df = pd.DataFrame([[1]], columns=pd.MultiIndex.from_tuples([("a", "x")]))
    with pytest.raises(ColumnError, match=r"\('a', 'x'\) is a tuple"):
        resolve_inputs(df, None)


@pytest.mark.parametrize("inputs", [{"": "a"}, {1: "a"}, [1], [""]])
def test_resolve_input_names_must_be_non_empty_str(inputs: Any) -> None:
    """Input names that are not non-empty str raise ConfigError."""
    df = pd.DataFrame({"a": [1], 1: [2], "": [3]})
    with pytest.raises(ConfigError, match="input names must be non-empty str"):
        resolve_inputs(df, inputs)


@pytest.mark.parametrize("inputs", [[], {}, None])
def test_resolve_empty_selection(inputs: Any) -> None:
    """Selecting no column at all is a ConfigError."""
    df = pd.DataFrame(index=[0, 1]) if inputs is None else pd.DataFrame({"a": [1]})
    with pytest.raises(ConfigError, match="no input columns selected"):
        resolve_inputs(df, inputs)


def test_resolve_bare_string_is_rejected() -> None:
    """inputs='topic' is a mistake for ['topic'], never read letter by letter."""
    df = pd.DataFrame({"topic": [1]})
    with pytest.raises(ConfigError, match=r"did you mean inputs=\['topic'\]"):
        resolve_inputs(df, "topic")  # type: ignore[arg-type]


def test_resolve_repeated_list_name() -> None:
    """Listing a column twice is a ConfigError (it would be one input twice)."""
    df = pd.DataFrame({"a": [1]})
    with pytest.raises(ConfigError, match="listed twice"):
        resolve_inputs(df, ["a", "a"])


# --------------------------------------------------------------------------- encode_frame API


def test_payloads_are_sorted_canonical_json() -> None:
    """Keys are sorted at every level, whatever the dict order."""
    df = pd.DataFrame({"z": [1], "a": [{"y": 1, "b": {"d": 2, "c": 3}}]})
    payloads, errors = encode(df, {"zz": "z", "aa": "a"})
    assert payloads == [b'{"aa":{"b":{"c":3,"d":2},"y":1},"zz":1}']
    assert errors == {}


def test_chunks_cover_positions_and_match_single_chunk() -> None:
    """chunk_rows slices by position; errors are keyed by absolute position."""
    df = pd.DataFrame({"x": [1.0, 2.0, math.inf, 4.0, 5.0, 6.0, -math.inf, 8.0, 9.0, 10.0]})
    chunks = list(encode_frame(df, resolve_inputs(df, None), chunk_rows=3))
    assert [c.start for c in chunks] == [0, 3, 6, 9]
    assert [len(c.payloads) for c in chunks] == [3, 3, 3, 1]
    assert all(isinstance(c, EncodedChunk) for c in chunks)
    assert set(chunks[0].errors) == {2}
    assert set(chunks[2].errors) == {6}
    assert chunks[2].payloads[0] is None
    assert encode(df, chunk_rows=3) == encode(df, chunk_rows=100)


def test_empty_frame_yields_no_chunks() -> None:
    """A frame with columns but no rows yields nothing."""
    df = pd.DataFrame({"a": pd.Series([], dtype="int64")})
    assert list(encode_frame(df, resolve_inputs(df, None))) == []


@pytest.mark.parametrize("chunk_rows", [0, -1, True, 1.5])
def test_bad_chunk_rows(chunk_rows: Any) -> None:
    """chunk_rows must be a positive int; raised on the call, not on iteration."""
    df = pd.DataFrame({"a": [1]})
    with pytest.raises(ConfigError, match="chunk_rows"):
        encode_frame(df, (("a", "a"),), chunk_rows=chunk_rows)


def test_encode_frame_checks_pairs() -> None:
    """No pairs, or a label not in the frame, raise at once."""
    df = pd.DataFrame({"a": [1]})
    with pytest.raises(ConfigError):
        encode_frame(df, ())
    with pytest.raises(ColumnError, match="column 'b' not found"):
        encode_frame(df, (("b", "b"),))


def test_no_row_iteration_or_to_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are built column by column: iterrows/itertuples/to_dict are never used."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("row-wise pandas API used")

    for name in ("iterrows", "itertuples", "to_dict", "apply"):
        monkeypatch.setattr(pd.DataFrame, name, boom)
    for name in ("to_dict", "apply", "map", "items"):
        monkeypatch.setattr(pd.Series, name, boom)
    df = mixed_frame()
    payloads, errors = encode(df)
    assert len(payloads) == len(df)
    assert set(errors) == {2}


# --------------------------------------------------------------------------- missing values


@pytest.mark.parametrize(
    "value",
    [
        None,
        float("nan"),
        np.nan,
        np.float32("nan"),
        pd.NA,
        pd.NaT,
        np.datetime64("NaT"),
        np.datetime64("NaT", "ns"),
        np.timedelta64("NaT"),
        decimal.Decimal("NaN"),
        decimal.Decimal("sNaN"),
    ],
)
def test_missing_object_values_become_null(value: Any) -> None:
    """Every flavour of missing in an object column is JSON null."""
    assert payload(value) == b'{"v":null}'


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([1.5, np.nan], "float64"),
        ([1.5, np.nan], "float32"),
        ([1, None], "Int64"),
        ([1, None], "UInt8"),
        ([1.5, None], "Float64"),
        ([True, None], "boolean"),
        (["x", None], "string"),
        (["x", None], pd.StringDtype("python")),
        (["x", None], "str"),
        (["x", None], "category"),
        ([pd.Timestamp("2024-01-02"), None], "datetime64[ns]"),
        ([pd.Timestamp("2024-01-02", tz="UTC"), None], "datetime64[ns, UTC]"),
        ([pd.Timedelta(1, "s"), None], "timedelta64[ns]"),
        ([pd.Period("2024-01", "M"), None], pd.PeriodDtype("M")),
        ([1.5, np.nan], pd.SparseDtype("float64")),
    ],
)
def test_missing_in_typed_columns_becomes_null(values: list[Any], dtype: Any) -> None:
    """NaN, NA and NaT in every typed column are JSON null; the other cell is kept."""
    out = cells(values, dtype)
    assert out[1] is None
    assert out[0] is not None


def test_float64_nan_column_with_na_and_nan_in_float64_extension() -> None:
    """A Float64 array holding both NA and a computed NaN sends both as null."""
    arr = pd.array([0.0, None, 1.0], dtype="Float64")
    arr = arr / pd.array([0.0, 1.0, 1.0], dtype="Float64")  # 0/0 = NaN, not NA
    assert cells(list(arr), "Float64")[:1] == [None]
    df = pd.DataFrame({"v": arr})
    assert encode(df)[0] == [b'{"v":null}', b'{"v":null}', b'{"v":1.0}']


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(-5), b'{"v":-5}'),
        (np.int8(7), b'{"v":7}'),
        (np.uint64(2**64 - 1), b'{"v":18446744073709551615}'),
        (np.float64(1.5), b'{"v":1.5}'),
        (np.float32(0.1), b'{"v":0.1}'),
        (np.float16(0.1), b'{"v":0.1}'),
        (np.bool_(True), b'{"v":true}'),
        (np.bool_(False), b'{"v":false}'),
        (True, b'{"v":true}'),
        (3, b'{"v":3}'),
        (0.1, b'{"v":0.1}'),
    ],
)
def test_numpy_and_python_scalars(value: Any, expected: bytes) -> None:
    """numpy scalars become plain JSON numbers and bools (float32 at its own precision)."""
    assert payload(value) == expected


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([1, -2], "int64", [b'{"v":1}', b'{"v":-2}']),
        ([2**64 - 1], "uint64", [b'{"v":18446744073709551615}']),
        ([True, False], "bool", [b'{"v":true}', b'{"v":false}']),
        ([0.1, 2.5], "float64", [b'{"v":0.1}', b'{"v":2.5}']),
        ([0.1, 2.5], "float32", [b'{"v":0.1}', b'{"v":2.5}']),
        ([0.1], "float16", [b'{"v":0.1}']),
        ([1, None], "Int64", [b'{"v":1}', b'{"v":null}']),
        ([2**64 - 1], "UInt64", [b'{"v":18446744073709551615}']),
        ([0.1, None], "Float32", [b'{"v":0.1}', b'{"v":null}']),
        ([True, None], "boolean", [b'{"v":true}', b'{"v":null}']),
        ([3, None], "category", [b'{"v":3}', b'{"v":null}']),
    ],
)
def test_numeric_columns_exact_bytes(values: list[Any], dtype: str, expected: list[bytes]) -> None:
    """Numeric column dtypes give exact JSON numbers."""
    assert encode(one_column(values, dtype)) == (expected, {})


def test_int_outside_64_bits_is_a_row_error() -> None:
    """Python ints beyond signed/unsigned 64 bits cannot be carried: row error."""
    assert cells([2**64 - 1, -(2**63)]) == [2**64 - 1, -(2**63)]
    message = error_of(2**64)
    assert message == (
        "row 0 (index 0), column 'v': int 18446744073709551616 is outside the 64-bit range "
        "JSON numbers can carry; convert the column to str (df[col].astype(str)) to send it "
        "as text"
    )
    assert "outside the 64-bit range" in error_of(-(2**63) - 1)
    assert "int of 5000 bits" in error_of(2**4999)  # huge ints do not break the message
    assert "at [0] is outside" in error_of([2**70])


@pytest.mark.parametrize(
    ("values", "dtype", "shown"),
    [
        ([1.0, math.inf], "float64", "float inf"),
        ([1.0, -math.inf], "float64", "float -inf"),
        ([1.0, math.inf], "float32", "float inf"),
        ([1.0, math.inf], "Float64", "float inf"),
        ([1.0, math.inf], object, "float inf"),
        ([1.0, np.float32("-inf")], object, "float32 -inf"),
        ([1.0, np.float64("inf")], object, "float64 inf"),
        ([1.0, [1.0, math.inf]], object, "float inf at [1]"),
        ([1.0, {"a": [-math.inf]}], object, "float -inf at ['a'][0]"),
        ([1.0, np.array([[1.0, 2.0], [3.0, np.inf]])], object, "float inf at [1][1]"),
        ([1.0, (math.inf,)], object, "float inf at [0]"),
    ],
)
def test_infinity_is_a_row_error(values: list[Any], dtype: Any, shown: str) -> None:
    """±inf anywhere (columns, objects, nested) makes the row an error, not null."""
    payloads, errors = encode(one_column(values, dtype))
    assert payloads[0] == b'{"v":1.0}'
    assert payloads[1] is None
    assert errors == {1: f"row 1 (index 1), column 'v': {shown} {FINITE_FIX}"}


def test_decimal_is_sent_as_exact_string() -> None:
    """Decimal -> str(d); NaN -> null; ±Infinity -> row error."""
    assert payload(decimal.Decimal("1.10")) == b'{"v":"1.10"}'
    assert payload(decimal.Decimal("-1E+3")) == b'{"v":"-1E+3"}'
    assert payload(decimal.Decimal("NaN")) == b'{"v":null}'
    assert error_of(decimal.Decimal("Infinity")).endswith(f"Decimal Infinity {FINITE_FIX}")
    assert error_of(decimal.Decimal("-Infinity")).endswith(f"Decimal -Infinity {FINITE_FIX}")


# --------------------------------------------------------------------------- time


def test_tz_aware_timestamps_are_utc_with_z() -> None:
    """Aware Timestamp and datetime values go to UTC with a Z suffix."""
    paris = pd.Timestamp("2024-01-02 04:04:05", tz="Europe/Paris")
    plus2 = dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert cells([paris, plus2]) == ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"]


def test_tz_aware_column_is_utc_with_z() -> None:
    """A tz-aware datetime64 column is converted to UTC, 'Z', fraction only when non-zero."""
    series = pd.Series(
        pd.to_datetime(
            ["2024-07-02 05:04:05", "2024-07-02 05:04:05.123456", "2024-07-02 05:04:05.5", None],
            format="ISO8601",
        )
    ).dt.tz_localize("Europe/Paris")
    assert cells(list(series), series.dtype) == [
        "2024-07-02T03:04:05Z",
        "2024-07-02T03:04:05.123456Z",
        "2024-07-02T03:04:05.500000Z",
        None,
    ]


def test_naive_timestamps_are_wall_clock_without_offset() -> None:
    """Naive values are sent exactly as shown, with no offset and no UTC assumption."""
    expected = ["2024-01-02T03:04:05", "2024-01-02T03:04:05.000123"]
    values = [pd.Timestamp("2024-01-02 03:04:05"), dt.datetime(2024, 1, 2, 3, 4, 5, 123)]
    assert cells(values) == expected
    for unit in ("s", "ms", "us", "ns"):
        assert cells(values, f"datetime64[{unit}]")[0] == expected[0]
    assert cells(values, "datetime64[ms]")[1] == "2024-01-02T03:04:05"  # ms cannot hold 123us
    assert cells([np.datetime64("2024-01-02T03:04:05")]) == expected[:1]
    assert cells([np.datetime64("2024-01-02"), np.datetime64("2024-01")]) == [
        "2024-01-02",
        "2024-01-01",
    ]


def test_nanoseconds_are_rounded_down_to_microseconds() -> None:
    """Nanoseconds are dropped (floored), in columns and objects alike, also before 1970."""
    stamps = [pd.Timestamp("2024-01-02 03:04:05.123456789"), pd.Timestamp(-1, unit="ns")]
    expected = ["2024-01-02T03:04:05.123456", "1969-12-31T23:59:59.999999"]
    assert cells(stamps) == expected
    assert cells(stamps, "datetime64[ns]") == expected
    assert cells([stamps[0].tz_localize("UTC")], "datetime64[ns, UTC]") == [expected[0] + "Z"]
    assert cells([stamps[0].tz_localize("UTC")]) == [expected[0] + "Z"]


def test_object_and_column_timestamps_agree() -> None:
    """The vectorised column path and the per-value path give identical strings."""
    stamps = pd.to_datetime(
        ["1900-03-01", "2024-02-29 23:59:59.999999", "2262-04-11 23:47:16.854775807", None],
        format="ISO8601",
    )
    column = cells(list(stamps), "datetime64[ns]")
    assert column == cells(list(stamps))
    assert column == cells([None if x is pd.NaT else x.to_pydatetime(warn=False) for x in stamps])
    aware = stamps.tz_localize("Asia/Kolkata")
    assert cells(list(aware), aware.dtype) == cells(list(aware))


def test_date_time_timedelta_period() -> None:
    """date, time, timedelta (ISO 8601 duration) and Period have fixed string forms."""
    values = [
        dt.date(2024, 1, 2),
        dt.time(3, 4, 5),
        dt.time(3, 4, 5, 250000),
        dt.timedelta(days=1, seconds=1.5),
        pd.Timedelta(hours=2),
        np.timedelta64(3, "s"),
        pd.Period("2024-01", "M"),
    ]
    assert cells(values) == [
        "2024-01-02",
        "03:04:05",
        "03:04:05.250000",
        "P1DT0H0M1.5S",
        "P0DT2H0M0S",
        "P0DT0H0M3S",
        "2024-01",
    ]
    assert cells([pd.Timedelta(seconds=90), None], "timedelta64[ns]") == ["P0DT0H1M30S", None]


# --------------------------------------------------------------------------- strings and bytes


# pyarrow storage cannot even hold a lone surrogate, so categories are object-backed here.
OBJECT_CATEGORIES = pd.Categorical.from_codes(
    [0, 1, 2], dtype=pd.CategoricalDtype(pd.Index(["ok", "a\udcff", "fine"], dtype=object))
)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(["ok", "a\udcff", "fine"], dtype=object),
        pd.Series(["ok", "a\udcff", "fine"], dtype=pd.StringDtype("python")),
        pd.Series(OBJECT_CATEGORIES),
    ],
    ids=["object", "string", "category"],
)
def test_lone_surrogate_is_a_row_error(column: pd.Series) -> None:
    """A str with a lone surrogate fails its row only, naming the character."""
    payloads, errors = encode(pd.DataFrame({"v": column}))
    assert payloads[0] == b'{"v":"ok"}'
    assert payloads[2] == b'{"v":"fine"}'
    assert payloads[1] is None
    assert errors == {
        1: "row 1 (index 1), column 'v': str with a lone surrogate '\\udcff' (character 1) "
        "cannot be sent as JSON; decode the source text with errors='replace' or remove "
        "the character"
    }


def test_nested_lone_surrogates_are_located() -> None:
    """Surrogates inside lists, dict values and dict keys are reported with a path."""
    assert "'\\ud800' (character 0) at [1] cannot" in error_of(["x", "\ud800"])
    assert "at ['k'][0] cannot" in error_of({"k": ["\udc80"]})
    assert error_of({"\udc80": 1}).startswith(
        "row 0 (index 0), column 'v': dict key '\\udc80': str with a lone surrogate"
    )


@pytest.mark.parametrize("value", [b"ab", bytearray(b"ab"), memoryview(b"ab"), np.bytes_(b"x")])
def test_bytes_are_a_row_error(value: Any) -> None:
    """bytes-like values are never guessed at: decode them first."""
    name = type(value).__name__
    assert error_of(value) == (
        f"row 0 (index 0), column 'v': {name} cannot be sent as JSON; decode to str or base64 first"
    )


def test_pandas_string_dtypes() -> None:
    """Every string dtype (object, str, string[python], string[pyarrow]) encodes alike."""
    values = ["a", None, "é"]
    expected = [b'{"v":"a"}', b'{"v":null}', b'{"v":"\xc3\xa9"}']
    for dtype in (object, "str", pd.StringDtype("python"), pd.StringDtype("pyarrow")):
        assert encode(one_column(values, dtype)) == (expected, {}), dtype


# --------------------------------------------------------------------------- containers


def test_nested_containers_are_normalised() -> None:
    """Lists, tuples, arrays and dicts are normalised recursively."""
    value = {
        "l": [1, np.int64(2), np.nan, pd.NA, None],
        "t": (np.float32(0.1), np.bool_(True)),
        "ts": [pd.Timestamp("2024-01-02 03:04:05", tz="UTC"), pd.NaT],
        "d": {"dec": decimal.Decimal("2.50"), "arr": np.array([1, 2])},
    }
    assert payload(value) == (
        b'{"v":{"d":{"arr":[1,2],"dec":"2.50"},"l":[1,2,null,null,null],'
        b'"t":[0.1,true],"ts":["2024-01-02T03:04:05Z",null]}}'
    )


def test_numpy_arrays() -> None:
    """Arrays of any shape become nested lists; NaN -> null; float32 at its precision."""
    assert cell(np.array([[0.1, np.nan]], dtype=np.float32)) == [[0.1, None]]
    assert cell(np.array([0.1], dtype=np.float16)) == [0.1]
    assert cell(np.array([True, False])) == [True, False]
    assert cell(np.array(["a", "b"])) == ["a", "b"]
    assert cell(np.array(["2024-01-02T03:04:05"], dtype="M8[s]")) == ["2024-01-02T03:04:05"]
    assert cell(np.array([1, "x", None], dtype=object)) == [1, "x", None]
    assert cell(np.array(5)) == 5
    assert cell(np.zeros((2, 0))) == [[], []]
    assert "complex" in error_of(np.array([1 + 2j]))


def test_sets_are_sorted_when_sortable() -> None:
    """set/frozenset become arrays, sorted when possible, else in iteration order."""
    assert cell({3, 1, 2}) == [1, 2, 3]
    assert cell(frozenset({"b", "a"})) == ["a", "b"]
    mixed = {1, "a"}
    assert cell(mixed) == list(mixed)


def test_dict_keys() -> None:
    """str keys kept; int/float/bool keys become str(key); other keys are row errors."""
    assert cell({1: "a", 2.5: "b", np.int64(7): "d", "s": "e"}) == {
        "1": "a",
        "2.5": "b",
        "7": "d",
        "s": "e",
    }
    assert cell({True: "c", np.bool_(False): "f"}) == {"True": "c", "False": "f"}
    assert error_of({(1, 2): 1}) == (
        "row 0 (index 0), column 'v': dict key (1, 2) (tuple) cannot be a JSON object key; use str keys"
    )
    assert error_of({"x": {None: 1}}).endswith(
        "dict key None (NoneType) at ['x'] cannot be a JSON object key; use str keys"
    )


def test_dict_keys_that_collide_are_a_row_error() -> None:
    """Two keys that become the same JSON key would silently lose one: row error."""
    assert error_of({1: "a", "1": "b"}).endswith(
        "dict keys 1 and '1' both become '1' in JSON; rename one of them"
    )


def test_uuid_and_enum() -> None:
    """UUID -> str; Enum -> its value, normalised."""

    class Color(enum.Enum):
        RED = "red"
        BLUE = np.int64(2)

    class Level(enum.IntEnum):
        HIGH = 3

    assert cells([uuid.UUID(int=1), Color.RED, Color.BLUE, Level.HIGH]) == [
        "00000000-0000-0000-0000-000000000001",
        "red",
        2,
        3,
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (complex(1, 2), "complex (1+2j) cannot be sent as JSON"),
        (np.complex64(1), "complex64 (1+0j) cannot be sent as JSON"),
        (object(), "object cannot be sent as JSON"),
        (pd.Interval(0, 1), "Interval cannot be sent as JSON"),
        (pd.Series([1]), "Series cannot be sent as JSON"),
        ([1, [object()]], "object at [1][0] cannot be sent as JSON"),
    ],
)
def test_other_types_are_a_row_error(value: Any, shown: str) -> None:
    """Anything without a rule is a row error naming its type and what to do."""
    message = error_of(value)
    assert message.startswith(f"row 0 (index 0), column 'v': {shown}; ")
    assert message.split("; ", 1)[1]  # says what to do


def test_self_referencing_list_is_a_row_error() -> None:
    """A list containing itself fails its row instead of raising."""
    loop: list[Any] = [1]
    loop.append(loop)
    payloads, errors = encode(one_column([loop, "ok"]))
    assert payloads == [None, b'{"v":"ok"}']
    assert errors[0].startswith("row 0 (index 0), column 'v': list could not be converted")


def test_too_deep_nesting_is_a_row_error() -> None:
    """Nesting orjson refuses (over 255 levels) fails its row instead of raising."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    payloads, errors = encode(one_column([deep, 1]))
    assert payloads == [None, b'{"v":1}']
    assert "could not be encoded as JSON" in errors[0]


# --------------------------------------------------------------------------- other dtypes


def test_categorical_of_timestamps_and_bad_categories() -> None:
    """Categories are encoded once; a bad category fails exactly the rows using it."""
    stamps = pd.Categorical([pd.Timestamp("2024-01-02", tz="UTC"), None])
    assert cells(list(stamps), stamps.dtype) == ["2024-01-02T00:00:00Z", None]
    df = pd.DataFrame({"v": pd.Categorical([1.0, math.inf, 1.0, None, math.inf])})
    payloads, errors = encode(df)
    assert payloads[0] == payloads[2] == b'{"v":1.0}'
    assert payloads[3] == b'{"v":null}'
    assert sorted(errors) == [1, 4]
    assert errors[4] == f"row 4 (index 4), column 'v': float inf {FINITE_FIX}"


def test_arrow_and_interval_dtypes() -> None:
    """Arrow-backed columns go through the per-value rules; intervals are row errors."""
    pa = pytest.importorskip("pyarrow")
    ints = pd.Series([1, None], dtype=pd.ArrowDtype(pa.int64()))
    lists = pd.Series([[1, 2], None], dtype=pd.ArrowDtype(pa.list_(pa.int64())))
    assert encode(pd.DataFrame({"i": ints, "l": lists})) == (
        [b'{"i":1,"l":[1,2]}', b'{"i":null,"l":null}'],
        {},
    )
    payloads, errors = encode(pd.DataFrame({"v": pd.interval_range(0, 2)}))
    assert payloads == [None, None]
    assert "Interval cannot be sent as JSON" in errors[1]


def test_complex_column_is_a_row_error() -> None:
    """A complex128 column fails each row it has values in."""
    payloads, errors = encode(pd.DataFrame({"v": np.array([1 + 1j, 2])}))
    assert payloads == [None, None]
    assert "complex (2+0j) cannot be sent as JSON" in errors[1]


# --------------------------------------------------------------------------- rows and errors


def mixed_frame() -> pd.DataFrame:
    """Five columns of different dtypes; row 2 has an inf price, index labels are str."""
    return pd.DataFrame(
        {
            "price": [1.5, np.nan, math.inf, 4.0],
            "n": pd.array([1, None, 3, 4], dtype="Int64"),
            "topic": ["a", None, "c", "d"],  # inferred: str on pandas 3, object on 2.2
            "at": pd.to_datetime(["2024-01-02", None, "2024-01-03", "2024-01-04"], utc=True),
            "extra": [[1, np.nan], {"k": np.int64(1)}, None, decimal.Decimal("1.5")],
        },
        index=["a", "b", "c", "d"],
    )


def test_mixed_frame_exact_payloads_and_isolated_error() -> None:
    """One bad cell fails its row only; the other rows are exact."""
    payloads, errors = encode(mixed_frame())
    assert payloads == [
        b'{"at":"2024-01-02T00:00:00Z","extra":[1,null],"n":1,"price":1.5,"topic":"a"}',
        b'{"at":null,"extra":{"k":1},"n":null,"price":null,"topic":null}',
        None,
        b'{"at":"2024-01-04T00:00:00Z","extra":"1.5","n":4,"price":4.0,"topic":"d"}',
    ]
    assert errors == {2: f"row 2 (index 'c'), column 'price': float inf {FINITE_FIX}"}


def test_error_names_the_spec_example() -> None:
    """The message names position, index label, column, type and the fix."""
    df = pd.DataFrame({"price": [1.0] * 5 + [math.inf]}, index=list("aaaaab"))
    assert encode(df)[1] == {
        5: "row 5 (index 'b'), column 'price': float inf cannot be sent as JSON; "
        "replace it with a finite number or null"
    }


def test_first_bad_cell_by_input_name_is_reported() -> None:
    """With several bad cells, the one of the first input name (sorted) is reported."""
    df = pd.DataFrame({"b": [b"x"], "z": [math.inf], "a": pd.Series(["\udcff"], dtype=object)})
    assert encode(df)[1][0].startswith("row 0 (index 0), column 'a': str with a lone surrogate")
    assert encode(df, ["z", "b"])[1][0].startswith("row 0 (index 0), column 'b': bytes")
    assert encode(df, {"a1": "z", "b1": "a"})[1][0].startswith("row 0 (index 0), column 'z'")


@pytest.mark.parametrize(
    ("index", "label"),
    [
        (pd.Index([7, 7, 7]), "7"),
        (pd.MultiIndex.from_tuples([("x", 1), ("x", 2), ("y", 3)]), "('y', 3)"),
        (pd.date_range("2024-01-01", periods=3), "Timestamp('2024-01-03 00:00:00')"),
        (pd.Index([0.5, 1.5, 2.5]), "2.5"),
    ],
)
def test_any_index_works_and_is_named(index: pd.Index, label: str) -> None:
    """Non-unique, MultiIndex and DatetimeIndex frames encode; errors show the label."""
    df = pd.DataFrame({"v": [1.0, 2.0, math.inf]}, index=index)
    payloads, errors = encode(df)
    assert payloads[:2] == [b'{"v":1.0}', b'{"v":2.0}']
    assert errors == {2: f"row 2 (index {label}), column 'v': float inf {FINITE_FIX}"}


def test_column_label_repr_in_errors() -> None:
    """Errors name non-str column labels by repr (ints, MultiIndex tuples)."""
    df = pd.DataFrame([[b"x", b"y"]], columns=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]))
    assert "column ('b', 2): bytes" in encode(df, {"q": ("b", 2)})[1][0]
    assert "column 3: bytes" in encode(pd.DataFrame({3: [b"x"]}), {"q": 3})[1][0]


def test_input_frame_is_unchanged() -> None:
    """Encoding never writes into the frame or the objects it holds."""
    df = mixed_frame()
    df["obj"] = pd.Series([[np.nan, "s"], {"a": np.nan}, "x", np.nan], index=df.index)
    df["f32"] = np.array([np.nan, 1.0, 2.0, 3.0], dtype=np.float32)
    df["cat"] = pd.Categorical(["a", None, "b", "a"])
    before = copy.deepcopy(df)
    nested = [repr(v) for v in df["obj"]] + [repr(v) for v in df["extra"]]
    encode(df, chunk_rows=3)
    pd.testing.assert_frame_equal(df, before)
    assert nested == [repr(v) for v in df["obj"]] + [repr(v) for v in df["extra"]]


# --------------------------------------------------------------------------- property test


SURROGATES = st.sampled_from(["\udcff", "a\ud800", "x\udc80y"])
TEXT = st.text(max_size=8)
INT64 = st.integers(-(2**63), 2**63 - 1)
DATES = st.datetimes(min_value=dt.datetime(1700, 1, 1), max_value=dt.datetime(2200, 1, 1))
AWARE = st.datetimes(
    min_value=dt.datetime(1700, 1, 2),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))]),
)
SCALARS = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(pd.NA),
    st.just(pd.NaT),
    st.just(np.datetime64("NaT")),
    st.integers(-(2**70), 2**70),
    st.floats(),
    TEXT,
    SURROGATES,
    st.binary(max_size=3),
    # sNaN is covered by a unit test; here it would break pandas' own isna in the checks.
    st.decimals(allow_nan=True, allow_infinity=True, places=2).filter(lambda d: not d.is_snan()),
    INT64.map(np.int64),
    st.floats(width=32).map(np.float32),
    st.booleans().map(np.bool_),
    AWARE,
    DATES.map(pd.Timestamp),
)
OBJECTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(TEXT, inner, max_size=3),
    ),
    max_leaves=6,
)


def known_bad(value: Any) -> bool:
    """Whether a generated value must fail its row (the rules, independently)."""
    if isinstance(value, (float, np.floating)):
        return math.isinf(value)
    if isinstance(value, decimal.Decimal):
        return value.is_infinite()
    if isinstance(value, int) and not isinstance(value, bool):
        return not -(2**63) <= value < 2**64
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, bytes):
        return True
    if isinstance(value, list):
        return any(known_bad(v) for v in value)
    if isinstance(value, dict):
        return any(known_bad(v) for v in value.values())
    return False


def naive(value: dt.datetime | None) -> str | None:
    """Expected JSON for a naive datetime cell."""
    return None if value is None else value.isoformat()


def aware(value: dt.datetime | None) -> str | None:
    """Expected JSON for an aware datetime cell: UTC with Z."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def finite(value: float) -> float | None:
    """Expected JSON for a float64 cell (NaN -> null; inf rows are errors anyway)."""
    return None if math.isnan(value) or math.isinf(value) else value


def same(value: Any) -> Any:
    """Expected JSON for cells sent as they are."""
    return value


# kind -> (values strategy, dtype, expected JSON value for a good cell, or None if unchecked)
KINDS: dict[str, tuple[st.SearchStrategy[Any], Any, Any]] = {
    "int64": (INT64, "int64", same),
    "float64": (st.floats(), "float64", finite),
    "Int64": (st.none() | INT64, "Int64", same),
    "boolean": (st.none() | st.booleans(), "boolean", same),
    "string": (st.none() | TEXT | SURROGATES, pd.StringDtype("python"), same),
    "str": (st.none() | TEXT, "str", same),
    "category": (st.none() | st.sampled_from(["a", "b"]), "category", same),
    "naive": (st.none() | DATES, "datetime64[ns]", naive),
    "aware": (st.none() | AWARE, "datetime64[ns, UTC]", aware),
    "object": (OBJECTS, object, None),
}


def indexes(n: int) -> st.SearchStrategy[pd.Index]:
    """Plain, non-unique, MultiIndex and DatetimeIndex indexes of length n."""
    return st.sampled_from(
        [
            pd.RangeIndex(n),
            pd.Index([1] * n),
            pd.MultiIndex.from_arrays([["k"] * n, [i % 2 for i in range(n)]]),
            pd.date_range("2024-01-01", periods=n),
        ]
    )


@st.composite
def frames(draw: st.DrawFn) -> tuple[pd.DataFrame, dict[str, list[Any]], dict[str, str]]:
    """A frame of mixed dtypes, the raw values of each column and each column's kind."""
    n = draw(st.integers(0, 6))
    index = draw(indexes(n))
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=6))
    columns: dict[Hashable, pd.Series] = {}
    raw: dict[str, list[Any]] = {}
    kind_of: dict[str, str] = {}
    for j, kind in enumerate(kinds):
        strategy, dtype, _ = KINDS[kind]
        name = f"{chr(ord('z') - j)}_{kind}"  # names sort against the drawing order
        raw[name] = draw(st.lists(strategy, min_size=n, max_size=n))
        columns[name] = one_column(raw[name], dtype, index=index)["v"]
        kind_of[name] = kind
    return pd.DataFrame(columns, index=index), raw, kind_of


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.integers(1, 4))
def test_property_every_row_is_json_or_a_precise_error(
    case: tuple[pd.DataFrame, dict[str, list[Any]], dict[str, str]], chunk_rows: int
) -> None:
    """Never raises; each row is valid JSON with the right keys or an error naming its column."""
    df, raw, kind_of = case
    before = df.copy(deep=True)
    chunks = list(encode_frame(df, resolve_inputs(df, None), chunk_rows=chunk_rows))
    pd.testing.assert_frame_equal(df, before)
    names = sorted(raw)
    payloads = [p for chunk in chunks for p in chunk.payloads]
    errors = {k: v for chunk in chunks for k, v in chunk.errors.items()}
    assert len(payloads) == len(df)
    assert set(errors) == {i for i, p in enumerate(payloads) if p is None}
    for i, p in enumerate(payloads):
        bad = [name for name in names if known_bad(raw[name][i])]
        if bad:
            assert p is None, (i, bad, p)
            label = df.index[i : i + 1].tolist()[0]
            assert errors[i].startswith(f"row {i} (index {label!r}), column {bad[0]!r}: ")
            continue
        assert p is not None, errors.get(i)
        row = orjson.loads(p)
        assert list(row) == names  # exactly the inputs, sorted
        for name in names:
            expect = KINDS[kind_of[name]][2]
            if expect is not None:
                assert row[name] == expect(raw[name][i]), (name, raw[name][i])
