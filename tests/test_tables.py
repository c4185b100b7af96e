"""Reading and writing user tables: formats by extension, and hostile files refused with a clear error.

Every hostile file is generated in ``tmp_path`` and bounded in size, so a broken guard makes a test
fail instead of hang.
"""

from __future__ import annotations

import csv
import re
import struct
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from frame_batch.errors import ConfigError, InputError
from frame_batch.tables import (
    DEFAULT_LIMITS,
    ReadLimits,
    check_xlsx_archive,
    read_table,
    write_table,
)

SHEET = "xl/worksheets/sheet1.xml"
INJECTIONS = ["=1+1", '=HYPERLINK("http://example.invalid","x")', "@SUM(A1)", "-2+3"]


# --------------------------------------------------------------------------- file makers


def make_workbook(path: Path, rows: list[list[object]], *, title: str = "data") -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = title
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


def rewrite_member(path: Path, name: str, change: Callable[[bytes], bytes]) -> None:
    """Replace one member of a zip with ``change(old bytes)``, keeping the others."""
    with zipfile.ZipFile(path) as zf:
        parts = {info.filename: zf.read(info) for info in zf.infolist()}
    parts[name] = change(parts[name])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in parts.items():
            zf.writestr(member, data)


def sheet_xml(cells: str, *, dimension: str | None = None, prolog: str = "") -> bytes:
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"{prolog}"
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f"{dim}<sheetData>{cells}</sheetData></worksheet>"
    ).encode()


def inline(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


def hostile_workbook(path: Path, xml: bytes) -> Path:
    """A valid one-sheet workbook whose sheet XML is replaced by ``xml``."""
    make_workbook(path, [["a"], [1]])
    rewrite_member(path, SHEET, lambda _old: xml)
    return path


def forge_declared_size(path: Path, name: str, size: int) -> None:
    """Make the central directory claim ``size`` unpacked bytes for member ``name``."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + name_len]) == encoded:
            struct.pack_into("<I", data, at + 24, size)  # uncompressed size field
        at += 4
    path.write_bytes(bytes(data))


def expect_input_error(path: Path, *patterns: str, **options: object) -> InputError:
    with pytest.raises(InputError) as caught:
        read_table(path, **options)  # type: ignore[arg-type]
    assert type(caught.value) is InputError
    for pattern in patterns:
        assert re.search(pattern, str(caught.value)), str(caught.value)
    return caught.value


# --------------------------------------------------------------------------- xlsx values


def test_xlsx_header_numbers_dates_and_cached_formulas(tmp_path: Path) -> None:
    """Header from row 1; numbers, dates and the saved value of a formula come back typed."""
    path = make_workbook(
        tmp_path / "in.xlsx",
        [
            ["name", "n", "double", "when"],
            ["a", 1, "=B2*2", datetime(2024, 1, 2, 3, 4)],
            ["b", 2.5, "=B3*2", None],
        ],
    )
    # openpyxl cannot save a formula's last value: give the formulas the values Excel would save.
    rewrite_member(
        path,
        SHEET,
        lambda xml: xml.replace(b"<f>B2*2</f><v />", b"<f>B2*2</f><v>2</v>").replace(
            b"<f>B3*2</f><v />", b"<f>B3*2</f><v>5</v>"
        ),
    )
    df = read_table(path)
    assert list(df.columns) == ["name", "n", "double", "when"]
    assert df["name"].tolist() == ["a", "b"]
    assert df["n"].tolist() == [1, 2.5]
    assert df["double"].tolist() == [2, 5]
    assert df["when"].iloc[0] == pd.Timestamp("2024-01-02 03:04")
    assert df["when"].dtype.kind == "M"
    assert pd.isna(df["when"].iloc[1])


def test_xlsx_blank_rows_kept_trailing_blanks_dropped_headers_named(tmp_path: Path) -> None:
    """Inner blank rows stay (frame row i = sheet row i+2); blank/repeated headers get pandas names."""
    path = make_workbook(
        tmp_path / "in.xlsx",
        [["id", None, "id", "id.1"], [1, "x", 2, 3], [None], [4, None, None, None], [None], [None]],
    )
    df = read_table(path)
    assert list(df.columns) == ["id", "Unnamed: 1", "id.2", "id.1"]
    assert len(df) == 3
    assert df["id"].tolist()[0] == 1
    assert pd.isna(df["id"].iloc[1])
    assert df["id"].iloc[2] == 4


def test_xlsx_sheet_choice(tmp_path: Path) -> None:
    """Default: first visible sheet; a name or 0-based index picks one; a wrong one lists them."""
    wb = openpyxl.Workbook()
    hidden = wb.active
    assert hidden is not None
    hidden.title = "secret"
    hidden.append(["h"])
    hidden.sheet_state = "hidden"
    wb.create_sheet("first").append(["f"])
    wb.create_sheet("second").append(["s"])
    wb.active = 1
    path = tmp_path / "multi.xlsx"
    wb.save(path)
    assert list(read_table(path).columns) == ["f"]
    assert list(read_table(path, sheet="second").columns) == ["s"]
    assert list(read_table(path, sheet=0).columns) == ["h"]
    expect_input_error(path, "no worksheet named 'nope'", "'first', 'second'", sheet="nope")
    expect_input_error(path, "sheet=7 is not one", sheet=7)


def test_empty_sheet_and_empty_csv_give_empty_frames(tmp_path: Path) -> None:
    """No rows at all is an empty frame, not an error."""
    assert read_table(make_workbook(tmp_path / "e.xlsx", [])).empty
    (tmp_path / "e.csv").write_bytes(b"")
    assert read_table(tmp_path / "e.csv").empty


# --------------------------------------------------------------------------- not a workbook


def test_missing_file_and_folder(tmp_path: Path) -> None:
    """A path that is not there, or is a folder, says so."""
    expect_input_error(tmp_path / "nope.xlsx", "no such file")
    expect_input_error(tmp_path / "nope.csv", "no such file")
    (tmp_path / "dir.xlsx").mkdir()
    expect_input_error(tmp_path / "dir.xlsx", "is not a file")


def test_unknown_extension(tmp_path: Path) -> None:
    """Reading or writing another extension names the three that work; .xls gets a hint."""
    (tmp_path / "t.txt").write_text("a\n1\n")
    expect_input_error(tmp_path / "t.txt", r"unsupported file type '\.txt'", r"\.xlsx, \.csv, \.parquet")
    expect_input_error(tmp_path / "old.xls", r"Save an old \.xls workbook as \.xlsx")
    with pytest.raises(ConfigError, match=r"'\.json'.*\.xlsx, \.csv, \.parquet"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_text_renamed_to_xlsx(tmp_path: Path) -> None:
    """A CSV saved under .xlsx is not a zip archive, and the message says so."""
    path = tmp_path / "fake.xlsx"
    path.write_text("name,value\na,1\n")
    expect_input_error(path, r"not an \.xlsx workbook", "not a zip archive", "real extension")


def test_ole2_file_hint(tmp_path: Path) -> None:
    """An OLE2 file (old .xls or an encrypted .xlsx) is named as such."""
    path = tmp_path / "locked.xlsx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    expect_input_error(path, "OLE2", r"old \.xls", "password-protected")


def test_truncated_workbook(tmp_path: Path) -> None:
    """A workbook cut short in copying is reported, not a zipfile traceback."""
    path = make_workbook(tmp_path / "cut.xlsx", [["a"], [1]])
    path.write_bytes(path.read_bytes()[:700])
    expect_input_error(path, r"not an \.xlsx workbook|damaged zip")


def test_corrupt_member_data(tmp_path: Path) -> None:
    """A member whose compressed bytes are damaged fails its read with a clear error."""
    path = make_workbook(tmp_path / "bad.xlsx", [["a"], *[[f"row {i}"] for i in range(200)]])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(SHEET)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 20, start + 60):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))
    expect_input_error(path, r"damaged zip|malformed XML|could not be read as an \.xlsx workbook")


def test_zip_that_is_not_a_workbook(tmp_path: Path) -> None:
    """A zip without the workbook parts is reported as unreadable, with a next step."""
    path = tmp_path / "notes.xlsx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    expect_input_error(path, r"could not be read as an \.xlsx workbook", "save it again")


# --------------------------------------------------------------------------- zip bombs


def test_zip_bomb_ratio_refused(tmp_path: Path) -> None:
    """A 40 MiB sheet of zeros packs about 1000:1: refused by the ratio cap before parsing."""
    path = tmp_path / "bomb.xlsx"
    make_workbook(path, [["a"]])
    rewrite_member(path, SHEET, lambda _old: bytes(40 << 20))
    err = expect_input_error(path, "xl/worksheets/sheet1.xml", "times its packed size", "zip bomb")
    assert "40.0 MiB" in str(err)


def test_zip_bomb_declared_total_refused(tmp_path: Path) -> None:
    """A member that claims 4 GiB unpacked is refused from the central directory alone."""
    path = make_workbook(tmp_path / "big.xlsx", [["a"], [1]])
    forge_declared_size(path, SHEET, 0xFFFF_FFF0)
    expect_input_error(path, r"unpacks to 4\.0 GiB", r"1\.0 GiB limit", "max_unpacked_bytes")


def test_total_cap_is_configurable(tmp_path: Path) -> None:
    """ReadLimits lowers (or raises) the caps per call."""
    path = make_workbook(tmp_path / "small.xlsx", [["a"], *[[f"value {i}"] for i in range(5000)]])
    assert len(read_table(path)) == 5000
    expect_input_error(path, "over the 1,000 bytes limit", limits=ReadLimits(max_unpacked_bytes=1000))


def test_too_many_members_refused(tmp_path: Path) -> None:
    """A zip with 10,001 members is not a workbook."""
    path = tmp_path / "many.xlsx"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(10_001):
            zf.writestr(f"x/{i}", b"")
    expect_input_error(path, "10,001 files inside", "max_members")


def test_repetitive_real_sheet_passes_the_guard(tmp_path: Path) -> None:
    """A 12+ MiB sheet of identical cells, laid out as openpyxl writes it, packs far under 100:1."""
    rows = "".join(
        f'<row r="{i}">{inline(f"A{i}", "same")}{inline(f"B{i}", "same")}</row>' for i in range(1, 110_000)
    )
    xml = sheet_xml(rows)
    assert len(xml) > DEFAULT_LIMITS.ratio_min_bytes
    path = hostile_workbook(tmp_path / "repetitive.xlsx", xml)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(SHEET)
    assert info.file_size / info.compress_size < DEFAULT_LIMITS.max_ratio / 3
    assert check_xlsx_archive(path).unpacked_bytes > len(xml)


# --------------------------------------------------------------------------- XML and size bombs


def test_billion_laughs_refused(tmp_path: Path) -> None:
    """A sheet with an entity-expansion DOCTYPE is refused (defusedxml), quickly and clearly."""
    entities = '<!ENTITY a0 "lol">' + "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10))
    xml = sheet_xml(inline("A1", "&a9;"), prolog=f"<!DOCTYPE worksheet [{entities}]>")
    path = hostile_workbook(tmp_path / "laughs.xlsx", xml)
    expect_input_error(path, "entity declaration", "billion laughs")


def test_absurd_declared_dimension_refused(tmp_path: Path) -> None:
    """<dimension ref="A1:XFD1048576"> is refused before any row is read."""
    xml = sheet_xml(f'<row r="1">{inline("A1", "a")}</row>', dimension="A1:XFD1048576")
    path = hostile_workbook(tmp_path / "huge.xlsx", xml)
    expect_input_error(path, "A1:XFD1048576", "17,179,869,184 cells", "10,000,000-cell limit")


def test_lying_dimension_stopped_while_streaming(tmp_path: Path) -> None:
    """A sheet that declares A1 but holds more cells is stopped by the count while rows stream."""
    rows = "".join(
        f'<row r="{r}">' + "".join(inline(f"{c}{r}", "x") for c in "ABCDEFGHIJ") + "</row>"
        for r in range(1, 41)
    )
    path = hostile_workbook(tmp_path / "liar.xlsx", sheet_xml(rows, dimension="A1"))
    assert read_table(path).shape == (39, 10)
    expect_input_error(path, "more than 100 cells", "rows × 10 columns", limits=ReadLimits(max_cells=100))


def test_row_number_past_excel_end_stopped(tmp_path: Path) -> None:
    """A row numbered past 1,048,576 (no dimension) is stopped at Excel's last row, not looped to."""
    rows = f'<row r="1">{inline("A1", "a")}</row><row r="2000000">{inline("A2000000", "b")}</row>'
    path = hostile_workbook(tmp_path / "far.xlsx", sheet_xml(rows))
    expect_input_error(path, "past Excel's last row", "1,048,576")


# --------------------------------------------------------------------------- CSV


def test_csv_not_utf8_names_offset_and_fix(tmp_path: Path) -> None:
    """Undecodable bytes give offset, line and the two ways out; a UTF-16 mark gets its own hint."""
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\xff\xfe\x00bad")
    expect_input_error(
        path, "not valid UTF-8", "0xff at offset 0, line 1", "UTF-16", "encoding=", "CSV UTF-8"
    )
    late = tmp_path / "latin.csv"
    late.write_bytes(b"city,n\nOslo,1\nS\xe3o Paulo,2\n")
    expect_input_error(late, r"0xe3 at offset 15, line 3", "encoding='cp1252'")
    assert read_table(late, encoding="latin-1")["city"].tolist() == ["Oslo", "São Paulo"]


def test_csv_bom_and_unknown_encoding(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark is dropped; an unknown encoding name is a ConfigError."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfname,n\n\xc3\xa9t\xc3\xa9,1\n")
    df = read_table(path)
    assert list(df.columns) == ["name", "n"]
    assert df["name"].tolist() == ["été"]
    with pytest.raises(ConfigError, match="not a text encoding"):
        read_table(path, encoding="utf-42")


def test_csv_malformed_rows(tmp_path: Path) -> None:
    """A row with more fields than the header is an InputError naming the problem."""
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3,4,5,6\n")
    expect_input_error(path, "not a well-formed CSV", "Expected 2 fields")


def test_format_specific_options_refused(tmp_path: Path) -> None:
    """sheet= is for xlsx and encoding= for CSV; elsewhere they are ConfigErrors."""
    (tmp_path / "a.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"sheet= applies to \.xlsx"):
        read_table(tmp_path / "a.csv", sheet="x")
    with pytest.raises(ConfigError, match=r"encoding= applies to \.csv"):
        read_table(make_workbook(tmp_path / "a.xlsx", [["a"]]), encoding="latin-1")


def test_csv_write_escapes_formula_leaders(tmp_path: Path) -> None:
    """The CSV holds '=1+1 etc. (quote visible), UTF-8 with a BOM; numbers stay unescaped."""
    df = pd.DataFrame({"out": [*INJECTIONS, "plain"], "n": [-1, 2, -3, 4, 5]})
    path = write_table(df, tmp_path / "out.csv")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["out", "n"]
    assert [r[0] for r in rows[1:]] == [*("'" + v for v in INJECTIONS), "plain"]
    assert [r[1] for r in rows[1:]] == ["-1", "2", "-3", "4", "5"]
    assert read_table(path)["out"].tolist()[0] == "'=1+1"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# --------------------------------------------------------------------------- writing


def test_xlsx_write_keeps_text_as_text(tmp_path: Path) -> None:
    """write_table to .xlsx goes through write_xlsx: injection text is a string cell, and reads back."""
    df = pd.DataFrame({"out": INJECTIONS, "n": [1, 2, 3, 4]})
    path = write_table(df, tmp_path / "out.xlsx", sheet_name="res")
    ws = openpyxl.load_workbook(path)["res"]
    cells = [ws.cell(row=r, column=1) for r in range(2, 6)]
    assert [c.value for c in cells] == INJECTIONS
    assert [c.data_type for c in cells] == ["s"] * 4
    pd.testing.assert_frame_equal(read_table(path), df)


def test_parquet_round_trip_and_errors(tmp_path: Path) -> None:
    """Parquet keeps dtypes; garbage and unwritable frames are InputErrors."""
    df = pd.DataFrame({"a": [1, 2], "when": pd.to_datetime(["2024-01-01", "2024-01-02"]), "s": ["=x", None]})
    path = write_table(df, tmp_path / "out.parquet")
    pd.testing.assert_frame_equal(read_table(path), df)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    expect_input_error(tmp_path / "junk.parquet", "could not be read as a Parquet file")
    with pytest.raises(InputError, match=r"cannot be written to Parquet.*one type"):
        write_table(pd.DataFrame({"mixed": ["a", 1]}), tmp_path / "mixed.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.parquet", "out.parquet"]


def test_write_into_missing_folder(tmp_path: Path) -> None:
    """A missing output folder is a ConfigError, for every format."""
    for name in ("out.csv", "out.parquet", "out.xlsx"):
        with pytest.raises(ConfigError, match="does not exist"):
            write_table(pd.DataFrame({"a": [1]}), tmp_path / "missing" / name)


def test_csv_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV write that fails half-way leaves the old file and no temp file."""
    target = tmp_path / "out.csv"
    target.write_text("old\n")

    def boom(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError, match="disk full"):
        write_table(pd.DataFrame({"a": [1]}), target)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
