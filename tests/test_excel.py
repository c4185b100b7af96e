"""Excel-safe export: text stays text, nothing is cut silently, writes are atomic."""

from __future__ import annotations

import copy
import importlib.resources
import warnings
import zipfile
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pandas as pd
import pytest
from openpyxl.worksheet.worksheet import Worksheet

from frame_batch import excel
from frame_batch.errors import ConfigError, InputError
from frame_batch.excel import (
    EXCEL_MAX_CHARS,
    ExcelTruncationWarning,
    csv_safe_frame,
    excel_safe_text,
    write_xlsx,
)

FORMULAS = ["=1+1", '=HYPERLINK("http://x.test","c")', "{=1+1}", "=", "#N/A", "@SUM(A1)"]


def _sheet(path: Path) -> Worksheet:
    ws = openpyxl.load_workbook(path)["results"]
    assert isinstance(ws, Worksheet)
    return ws


def _rows(path: Path) -> list[tuple[Any, ...]]:
    return list(_sheet(path).iter_rows(values_only=True))


def _sheet_xml(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.read("xl/worksheets/sheet1.xml").decode()


def test_formula_text_round_trips_as_string(tmp_path: Path) -> None:
    """Text that Excel would run (=..., {=...}, #N/A) reads back as the same string."""
    path = write_xlsx(pd.DataFrame({"note": FORMULAS}), tmp_path / "out.xlsx")
    cells = [row[0] for row in _sheet(path).iter_rows(min_row=2)]
    assert [c.value for c in cells] == FORMULAS
    assert [c.data_type for c in cells] == ["s"] * len(FORMULAS)


def test_sheet_xml_has_no_formula_element(tmp_path: Path) -> None:
    """No <f> element is written, even for a formula-looking header or index."""
    df = pd.DataFrame({"=SUM(A1:A2)": FORMULAS}, index=pd.Index(FORMULAS, name="=1"))
    xml = _sheet_xml(write_xlsx(df, tmp_path / "out.xlsx", index=True))
    assert "<f>" not in xml
    assert "<f " not in xml
    assert 'HYPERLINK("http://x.test","c")' in xml.replace("&quot;", '"')


def test_excel_safe_text_removes_illegal_characters() -> None:
    """C0 controls except TAB/LF/CR and U+FFFE/U+FFFF go; lone surrogates become U+FFFD."""
    assert excel_safe_text("a\x00b\x08c\x0bd\x0ce\x0ef\x1fg") == "abcdefg"
    assert excel_safe_text("tab\there\nline\rcr") == "tab\there\nline\rcr"
    assert excel_safe_text("x\ufffey\uffff") == "xy"
    assert excel_safe_text("bad\udcffbyte") == "bad\ufffdbyte"
    assert excel_safe_text("ok 🚀 é") == "ok 🚀 é"


def test_control_characters_removed_in_workbook(tmp_path: Path) -> None:
    """A cell and a header with control characters are written without them."""
    df = pd.DataFrame({"col\x01": ["a\x00b\x07c\td", "\x1b[31mred\x1b[0m"]})
    assert _rows(write_xlsx(df, tmp_path / "out.xlsx")) == [
        ("col",),
        ("abc\td",),
        ("[31mred[0m",),
    ]


def test_long_text_truncated_with_marker_and_one_warning(tmp_path: Path) -> None:
    """Over-long cells keep 32,700 chars plus a marker; one warning names count and columns."""
    body = "x" * 40_000
    df = pd.DataFrame({"body": [body, "short", body], "raw": ["y" * 33_000, "", "ok"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_xlsx(df, tmp_path / "out.xlsx")
    assert [w.category for w in caught] == [ExcelTruncationWarning]
    message = str(caught[0].message)
    assert "3 cell(s)" in message
    assert "'body', 'raw'" in message
    rows = _rows(path)
    marker = "…[truncated: 40000 chars; full value in the Parquet output]"
    assert rows[1][0] == "x" * 32_700 + marker
    assert rows[3][0] == rows[1][0]
    assert rows[1][1].endswith("…[truncated: 33000 chars; full value in the Parquet output]")
    assert rows[2] == ("short", None)


def test_text_at_the_limit_is_kept_whole(tmp_path: Path) -> None:
    """Exactly 32,767 characters fit: no marker, no warning."""
    text = "z" * EXCEL_MAX_CHARS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_xlsx(pd.DataFrame({"t": [text]}), tmp_path / "out.xlsx")
    assert _rows(path)[1] == (text,)


def test_limit_counts_utf16_units_like_excel(tmp_path: Path) -> None:
    """20,000 emoji are 40,000 UTF-16 units: truncated without splitting a surrogate pair."""
    df = pd.DataFrame({"t": ["🚀" * 20_000]})
    with pytest.warns(ExcelTruncationWarning, match="1 cell"):
        path = write_xlsx(df, tmp_path / "out.xlsx")
    value = _rows(path)[1][0]
    assert value == "🚀" * 16_350 + "…[truncated: 20000 chars; full value in the Parquet output]"


def test_numbers_bools_dates_and_missing(tmp_path: Path) -> None:
    """Numbers, bools and naive datetimes keep their types; every kind of missing is empty."""
    df = pd.DataFrame(
        {
            "int": [1, -2, 3],
            "float": [1.5, np.nan, -0.25],
            "bool": [True, False, True],
            "nullable": pd.array([1, None, 3], dtype="Int64"),
            "when": pd.to_datetime(["2024-01-02 03:04:05", None, "1999-12-31 00:00:00"]),
            "text": ["a", None, np.nan],
            "obj": [pd.NA, pd.NaT, None],
            "delta": [timedelta(hours=36), None, timedelta(0)],
            "numpy": pd.Series(
                [np.datetime64("2024-01-02T03:04"), np.datetime64("NaT"), np.timedelta64(90, "s")],
                dtype=object,
            ),
        }
    )
    path = write_xlsx(df, tmp_path / "out.xlsx")
    ws = _sheet(path)
    rows = _rows(path)
    assert rows[1][:6] == (1, 1.5, True, 1, datetime(2024, 1, 2, 3, 4, 5), "a")
    assert rows[2][:7] == (-2, None, False, None, None, None, None)
    assert rows[3][:5] == (3, -0.25, True, 3, datetime(1999, 12, 31))
    assert ws["E2"].is_date
    assert "yy" in ws["E2"].number_format
    assert [ws.cell(2, c).data_type for c in (1, 2, 3)] == ["n", "n", "b"]
    assert rows[1][7] == timedelta(hours=36)
    assert [r[8] for r in rows[1:]] == [datetime(2024, 1, 2, 3, 4), None, timedelta(seconds=90)]


def test_values_excel_cannot_hold_become_text(tmp_path: Path) -> None:
    """±inf, 16+ digit integers and pre-1900 dates are written as text, not mangled."""
    df = pd.DataFrame(
        {
            "x": [float("inf"), float("-inf"), 2.0],
            "id": [1234567890123456789, 999_999_999_999_999, -(10**15)],
            "day": [datetime(1850, 5, 1), datetime(1900, 1, 1), datetime(2000, 1, 1)],
            "date": [date(1850, 5, 1), date(2000, 1, 1), None],
        }
    )
    rows = _rows(write_xlsx(df, tmp_path / "out.xlsx"))
    assert [r[0] for r in rows[1:]] == ["inf", "-inf", 2]
    assert [r[1] for r in rows[1:]] == [
        "1234567890123456789",
        999_999_999_999_999,
        "-1000000000000000",
    ]
    assert [r[2] for r in rows[1:]] == [
        "1850-05-01T00:00:00",
        datetime(1900, 1, 1),
        datetime(2000, 1, 1),
    ]
    assert [r[3] for r in rows[1:]] == ["1850-05-01", datetime(2000, 1, 1), None]


def test_nested_values_written_as_json_text(tmp_path: Path) -> None:
    """Dicts and lists (nested outputs) become compact JSON strings."""
    df = pd.DataFrame(
        {
            "out": [
                {"name": "Acme", "tags": ["a", "b"], "score": np.float64(0.5)},
                [1, 2, None],
                {"when": pd.Timestamp("2024-01-02"), "missing": pd.NA, "ids": {"b", "a"}},
            ]
        }
    )
    rows = _rows(write_xlsx(df, tmp_path / "out.xlsx"))
    assert [r[0] for r in rows[1:]] == [
        '{"name":"Acme","tags":["a","b"],"score":0.5}',
        "[1,2,null]",
        '{"when":"2024-01-02T00:00:00","missing":null,"ids":["a","b"]}',
    ]


def test_tz_aware_datetimes_written_in_utc(tmp_path: Path) -> None:
    """Tz-aware values (a tz column and loose objects) are converted to UTC and written naive."""
    berlin = pd.Timestamp("2024-03-01 12:00", tz="Europe/Berlin")
    df = pd.DataFrame(
        {
            "tzcol": pd.Series([berlin, pd.NaT], dtype="datetime64[ns, Europe/Berlin]"),
            "objcol": pd.Series([berlin.tz_convert("America/New_York").to_pydatetime(), None], dtype=object),
            "n": [1, 2],
        }
    )
    rows = _rows(write_xlsx(df, tmp_path / "out.xlsx"))
    assert rows[1] == (datetime(2024, 3, 1, 11, 0), datetime(2024, 3, 1, 11, 0), 1)
    assert rows[2] == (None, None, 2)


def test_header_bold_frozen_and_widths(tmp_path: Path) -> None:
    """The header is bold and frozen at A2; widths follow content and are capped at 60."""
    df = pd.DataFrame({"id": [1, 2], "long": ["x" * 500, "y"], "name": ["Alexandra", "Bo"]})
    ws = _sheet(write_xlsx(df, tmp_path / "out.xlsx"))
    assert ws.freeze_panes == "A2"
    assert all(ws.cell(1, c).font.b for c in (1, 2, 3))
    assert not ws["A2"].font.b
    widths = [ws.column_dimensions[c].width for c in "ABC"]
    assert widths[0] < widths[2] < widths[1] == 60


def test_index_written_as_leading_columns(tmp_path: Path) -> None:
    """index=True writes each index level first, named like reset_index."""
    idx = pd.MultiIndex.from_tuples([("eu", 1), ("us", 2)], names=["region", None])
    df = pd.DataFrame({"v": ["a", "b"]}, index=idx)
    rows = _rows(write_xlsx(df, tmp_path / "out.xlsx", index=True))
    assert rows == [("region", "level_1", "v"), ("eu", 1, "a"), ("us", 2, "b")]
    plain = pd.DataFrame({"v": [1]}, index=pd.Index(["k"]))
    assert _rows(write_xlsx(plain, tmp_path / "p.xlsx", index=True))[0] == ("index", "v")
    assert _rows(write_xlsx(plain, tmp_path / "n.xlsx"))[0] == ("v",)


def test_non_str_and_duplicate_column_names(tmp_path: Path) -> None:
    """Non-str column names are written with str(); duplicate names are all kept."""
    df = pd.DataFrame([[1, 2, 3, 4]], columns=[0, ("a", "b"), 2.5, 0])
    rows = _rows(write_xlsx(df, tmp_path / "out.xlsx"))
    assert rows == [("0", "('a', 'b')", "2.5", "0"), (1, 2, 3, 4)]


def test_rows_stream_in_chunks_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiny chunks every row is still written once, in order."""
    monkeypatch.setattr(excel, "_CHUNK_ROWS", 3)
    df = pd.DataFrame({"n": range(10), "s": [f"r{i}" for i in range(10)]})
    rows = _rows(write_xlsx(df, tmp_path / "out.xlsx"))
    assert rows[1:] == [(i, f"r{i}") for i in range(10)]


def test_empty_frame_writes_header_only(tmp_path: Path) -> None:
    """A frame with no rows still gives a workbook with its header."""
    df = pd.DataFrame({"a": pd.Series([], dtype="int64"), "b": pd.Series([], dtype=object)})
    assert _rows(write_xlsx(df, tmp_path / "out.xlsx")) == [("a", "b")]


def test_atomic_write_overwrites_and_leaves_no_temp(tmp_path: Path) -> None:
    """An existing file is replaced whole and no temp file is left in the directory."""
    target = tmp_path / "out.xlsx"
    target.write_bytes(b"old, not a workbook")
    result = write_xlsx(pd.DataFrame({"a": [1]}), str(target))
    assert result == target
    assert _rows(target) == [("a",), (1,)]
    assert [p.name for p in tmp_path.iterdir()] == ["out.xlsx"]


def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies half-way leaves the old file as it was and removes its temp file."""
    target = tmp_path / "out.xlsx"
    target.write_bytes(b"previous workbook")

    real_write = zipfile.ZipFile.write

    def write_then_fail(self: zipfile.ZipFile, *args: Any, **kwargs: Any) -> None:
        real_write(self, *args, **kwargs)  # the sheet lands in the zip, then the disk fills
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "write", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_xlsx(pd.DataFrame({"a": [1]}), target)
    assert target.read_bytes() == b"previous workbook"
    assert [p.name for p in tmp_path.iterdir()] == ["out.xlsx"]


def test_invalid_sheet_name_raises(tmp_path: Path) -> None:
    """A sheet name Excel refuses is a ConfigError before anything is written."""
    for bad in ["a/b", "x" * 32, "", "'quoted'"]:
        with pytest.raises(ConfigError, match="sheet_name"):
            write_xlsx(pd.DataFrame({"a": [1]}), tmp_path / "out.xlsx", sheet_name=bad)
    assert not list(tmp_path.iterdir())


def test_frame_too_long_for_a_sheet_raises(tmp_path: Path) -> None:
    """More rows than a sheet holds is an InputError that suggests Parquet."""
    df = pd.DataFrame({"a": np.zeros(1_048_576, dtype=np.int8)})
    with pytest.raises(InputError, match="Parquet"):
        write_xlsx(df, tmp_path / "out.xlsx")


def test_csv_safe_frame_prefixes_trigger_text_only() -> None:
    """Str cells led by = + - @ TAB CR get a quote; numbers, even negative, stay as they are."""
    df = pd.DataFrame(
        {
            "obj": pd.Series(["=1+1", "+1", "-x", "@SUM(A1)", "\tx", "\rx", "plain", -5], dtype=object),
            "str": pd.Series(["=cmd", "ok", None, "a=b", "-", "", "@", "x"], dtype="string"),
            "num": [-1, -2.5, 3, 0, -7, 1, 2, 3],
        }
    )
    out = csv_safe_frame(df)
    assert out["obj"].tolist() == ["'=1+1", "'+1", "'-x", "'@SUM(A1)", "'\tx", "'\rx", "plain", -5]
    assert out["str"].tolist()[:5] == ["'=cmd", "ok", pd.NA, "a=b", "'-"]
    assert out["str"].dtype == df["str"].dtype
    assert out["num"].tolist() == df["num"].tolist()
    assert out["num"].dtype == df["num"].dtype


def test_csv_safe_frame_escapes_labels_and_categoricals() -> None:
    """Column and index labels and categorical text are escaped too."""
    df = pd.DataFrame(
        {"=bad": [1, 2], "cat": pd.Categorical(["@x", "y"])},
        index=pd.Index(["-1", "k"]),
    )
    out = csv_safe_frame(df)
    assert list(out.columns) == ["'=bad", "cat"]
    assert list(out.index) == ["'-1", "k"]
    assert out["cat"].tolist() == ["'@x", "y"]
    assert out.to_csv().splitlines()[1] == "'-1,1,'@x"


def test_input_frame_is_not_modified(tmp_path: Path) -> None:
    """Neither write_xlsx nor csv_safe_frame changes the caller's frame."""
    df = pd.DataFrame(
        {
            "f": ["=1+1", "a\x00b"],
            "long": ["x" * 40_000, "y"],
            "tz": pd.to_datetime(["2024-01-01", "2024-06-01"]).tz_localize("Asia/Tokyo"),
            "nested": [{"a": 1}, [1]],
            "s": pd.Series(["-x", "ok"], dtype="string"),
        },
        index=pd.Index(["=i", "j"], name="=n"),
    )
    before = copy.deepcopy(df)
    with pytest.warns(ExcelTruncationWarning):
        write_xlsx(df, tmp_path / "out.xlsx", index=True)
    csv_safe_frame(df)
    pd.testing.assert_frame_equal(df, before)
    assert df.loc["=i", "f"] == "=1+1"


def test_leads_sample_table_loads() -> None:
    """The packaged leads.csv has the demo's columns, 250+ rows, duplicates and an '=' note."""
    resource = importlib.resources.files("frame_batch") / "data" / "leads.csv"
    with resource.open("rb") as fh:
        leads = pd.read_csv(fh)
    expected = ["company", "website", "industry", "country", "employees", "founded"]
    assert list(leads.columns) == [*expected, "contact", "notes"]
    assert len(leads) >= 250
    assert leads.duplicated().sum() == 3
    assert leads["notes"].str.startswith("=", na=False).any()
    assert leads["notes"].isna().sum() >= 2
    assert leads["website"].str.match(r"https://www\.[a-z-]+\.(example|test)$").all()
    assert leads["employees"].dtype.kind == "i"
    assert leads["founded"].between(1900, 2025).all()
    assert leads["industry"].nunique() == 12
