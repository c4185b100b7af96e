"""Write-back into the user's own workbook: their work survives, our text stays text, hostile files fail fast.

Every workbook is built in ``tmp_path``; hostile ones are bounded, so a broken guard fails a test
instead of hanging it.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from copy import copy
from datetime import datetime
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
from openpyxl.cell.cell import Cell
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.worksheet.worksheet import Worksheet

from frame_batch.errors import ColumnError, ConfigError, InputError
from frame_batch.excel import ExcelTruncationWarning
from frame_batch.tables import ReadLimits, read_table
from frame_batch.workbook import (
    STATE_COLUMNS,
    STATE_SHEET,
    OutputColumn,
    WorkbookFeatureWarning,
    _cells_to_build,
    read_state,
    write_back,
    write_state,
)

INJECTIONS = ["=1+1", '=HYPERLINK("http://example.invalid","x")', "@SUM(A1)", "-2+3"]
SHEET = "xl/worksheets/sheet1.xml"


# --------------------------------------------------------------------------- helpers


def user_workbook(path: Path) -> Path:
    """Two sheets, a styled header, formulas, a number format, dates, merged cells, a frozen pane."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert isinstance(ws, Worksheet)
    ws.title = "leads"
    ws.append(["company", "employees", "double", "founded"])
    for cell in ws[1]:
        cell.font = Font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor="1F4E78")
        cell.border = Border(bottom=Side(style="thin"))
        cell.alignment = Alignment(horizontal="center")
    ws.append(["Acme", 1200, "=B2*2", datetime(1999, 5, 17)])
    ws.append(["Globex", 3400, "=B3*2", datetime(2010, 1, 2, 8, 30)])
    ws.append(["Initech", 55, "=B4*2", datetime(2001, 9, 9)])
    ws.append([])
    ws["A6"] = "merged note"
    ws.merge_cells("A6:B6")
    ws["B2"].number_format = "#,##0"
    ws.freeze_panes = "B2"
    ws.column_dimensions["A"].width = 25
    notes = wb.create_sheet("notes")
    notes["A1"] = "keep me"
    notes["B1"] = "=LEN(A1)"
    wb.save(path)
    return path


def sheet(path: Path, name: str = "leads") -> Worksheet:
    ws = openpyxl.load_workbook(path)[name]
    assert isinstance(ws, Worksheet)
    return ws


def cell(ws: Worksheet, ref: str) -> Cell:
    found = ws[ref]
    assert isinstance(found, Cell)
    return found


def member(path: Path, name: str = SHEET) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.read(name).decode()


def rewrite_member(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as zf:
        parts = {info.filename: zf.read(info) for info in zf.infolist()}
    parts[name] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for part, content in parts.items():
            zf.writestr(part, content)


def state_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_key": ["k0", "k1", "k2", "k3", "k4"],
            "status": ["succeeded", "failed", None, "pending", "succeeded"],
            "remote_id": ["run_1", "run_2", None, "=1+1", 7],
            "batch_id": ["b1"] * 5,
            "extra": [1, 2, 3, 4, 5],
        }
    )


def outputs_frame(src: Path) -> pd.DataFrame:
    df = read_table(src)
    df["summary"] = [*INJECTIONS, "plain"]
    df["score"] = [1, 2.5, None, -3, 4]
    df["checked"] = pd.to_datetime(["2024-01-02", "2024-01-03", None, "2024-01-05", "2024-01-06"])
    return df


def write(src: Path, dst: Path, df: pd.DataFrame, **options: Any) -> list[OutputColumn]:
    columns = options.pop("columns", ["summary", "score", "checked"])
    return list(write_back(src, dst, frame=df, columns=columns, **options).columns)


# --------------------------------------------------------------------------- round trip


def test_round_trip_keeps_the_users_workbook(tmp_path: Path) -> None:
    """Sheets, styles, formats, widths, panes, merges, formulas and dates all survive."""
    src = user_workbook(tmp_path / "in.xlsx")
    out = tmp_path / "out.xlsx"
    write(src, out, outputs_frame(src))
    wb = openpyxl.load_workbook(out)
    ws = wb["leads"]
    assert isinstance(ws, Worksheet)
    assert wb.sheetnames == ["leads", "notes"]
    assert wb.active is not None
    assert wb.active.title == "leads"
    assert [cell(ws, f"C{r}").value for r in (2, 3, 4)] == ["=B2*2", "=B3*2", "=B4*2"]
    assert {cell(ws, f"C{r}").data_type for r in (2, 3, 4)} == {"f"}
    assert cell(wb["notes"], "B1").value == "=LEN(A1)"  # type: ignore[arg-type]
    assert cell(wb["notes"], "A1").value == "keep me"  # type: ignore[arg-type]
    assert cell(ws, "B2").number_format == "#,##0"
    assert cell(ws, "D3").value == datetime(2010, 1, 2, 8, 30)
    assert cell(ws, "D3").is_date
    assert [str(r) for r in ws.merged_cells.ranges] == ["A6:B6"]
    assert ws.freeze_panes == "B2"
    assert ws.column_dimensions["A"].width == 25
    assert wb.calculation.fullCalcOnLoad  # Excel recomputes the formulas openpyxl saved bare


def test_new_header_styled_like_the_old_one(tmp_path: Path) -> None:
    """New header cells copy font, fill, border and alignment of the last header cell."""
    src = user_workbook(tmp_path / "in.xlsx")
    out = tmp_path / "out.xlsx"
    placed = write(src, out, outputs_frame(src))
    assert placed == [
        OutputColumn("summary", "E", added=True),
        OutputColumn("score", "F", added=True),
        OutputColumn("checked", "G", added=True),
    ]
    ws = sheet(out)
    old = cell(ws, "D1")
    for ref, text in (("E1", "summary"), ("F1", "score"), ("G1", "checked")):
        new = cell(ws, ref)
        assert new.value == text
        # copy(): a style read from a cell is a proxy; compare the styles themselves.
        assert copy(new.font) == copy(old.font)
        assert new.font.b
        assert copy(new.fill) == copy(old.fill)
        assert new.fill.fgColor.rgb == "001F4E78"
        assert copy(new.border) == copy(old.border)
        assert new.border.bottom.style == "thin"
        assert copy(new.alignment) == copy(old.alignment)
        assert new.alignment.horizontal == "center"
    assert ws.column_dimensions["E"].width == 10


def test_injection_text_written_as_string_cells(tmp_path: Path) -> None:
    """=1+1, =HYPERLINK(...), @SUM(A1), -2+3 are string cells with the exact text, never formulas."""
    src = user_workbook(tmp_path / "in.xlsx")
    out = tmp_path / "out.xlsx"
    write(src, out, outputs_frame(src))
    ws = sheet(out)
    cells = [cell(ws, f"E{r}") for r in range(2, 6)]
    assert [c.value for c in cells] == INJECTIONS
    assert [c.data_type for c in cells] == ["s"] * 4
    xml = member(out)
    assert xml.count("<f>") == 3  # the user's three formulas, nothing of ours
    assert not re.search(r'<c r="E\d+"[^>]*>\s*<f>', xml)
    assert read_table(out)["summary"].tolist() == [*INJECTIONS, "plain"]


def test_values_keep_their_types_and_blanks_create_no_cells(tmp_path: Path) -> None:
    """Numbers stay numbers, datetimes are dates; a missing value writes no cell at all."""
    src = user_workbook(tmp_path / "in.xlsx")
    out = tmp_path / "out.xlsx"
    write(src, out, outputs_frame(src))
    ws = sheet(out)
    assert [cell(ws, f"F{r}").value for r in range(2, 7)] == [1, 2.5, None, -3, 4]
    assert cell(ws, "F2").data_type == "n"
    assert cell(ws, "G2").value == datetime(2024, 1, 2)
    assert cell(ws, "G2").is_date
    xml = member(out)
    assert 'r="F4"' not in xml
    assert 'r="G4"' not in xml
    assert 'r="E7"' not in xml


def test_state_sheet_round_trips_hidden(tmp_path: Path) -> None:
    """The checkpoint is written in the same save, veryHidden, and reads back as text."""
    src = user_workbook(tmp_path / "in.xlsx")
    out = tmp_path / "out.xlsx"
    assert read_state(src) is None
    write(src, out, outputs_frame(src), state=state_frame())
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["leads", "notes", STATE_SHEET]
    assert wb[STATE_SHEET].sheet_state == "veryHidden"
    assert wb.active is not None
    assert wb.active.title == "leads"
    state = read_state(out)
    assert state is not None
    assert list(state.columns) == [*STATE_COLUMNS, "extra"]  # other columns are kept, after
    assert state.to_dict("list") == {
        "row_key": ["k0", "k1", "k2", "k3", "k4"],
        "status": ["succeeded", "failed", None, "pending", "succeeded"],
        "remote_id": ["run_1", "run_2", None, "=1+1", "7"],
        "batch_id": ["b1"] * 5,
        "extra": ["1", "2", "3", "4", "5"],
    }
    assert cell(wb[STATE_SHEET], "C4").data_type == "s"  # type: ignore[arg-type]
    assert cell(wb[STATE_SHEET], "A1").value == "frame-batch state"  # type: ignore[arg-type]


def test_rerun_updates_columns_in_place(tmp_path: Path) -> None:
    """Writing back onto its own output reuses the columns by header text and clears stale rows."""
    src = user_workbook(tmp_path / "in.xlsx")
    out = tmp_path / "out.xlsx"
    write(src, out, outputs_frame(src), state=state_frame())
    again = read_table(out).iloc[:3].copy()
    again["summary"] = ["new 1", "new 2", "new 3"]
    again["checked"] = [5, 6, 7]  # numbers into cells an earlier run formatted as dates
    placed = write(out, out, again)
    assert [(p.letter, p.added) for p in placed] == [("E", False), ("F", False), ("G", False)]
    ws = sheet(out)
    header = [cell(ws, f"{c}1").value for c in "ABCDEFGH"]
    assert header == ["company", "employees", "double", "founded", "summary", "score", "checked", None]
    assert [cell(ws, f"E{r}").value for r in range(2, 7)] == ["new 1", "new 2", "new 3", None, None]
    assert cell(ws, "G2").value == 5
    assert not cell(ws, "G2").is_date
    assert read_state(out) is not None  # a write without state leaves the checkpoint alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xlsx", "out.xlsx"]


def test_long_text_and_control_characters(tmp_path: Path) -> None:
    """Text over 32,767 chars ends with the marker and warns once; control characters are removed."""
    src = user_workbook(tmp_path / "in.xlsx")
    df = read_table(src)
    df["body"] = ["x" * 40_000, "a\x00b\x1bc", "ok", None, "\ufffe"]
    with pytest.warns(ExcelTruncationWarning, match=r"1 cell\(s\) in column\(s\) 'body'"):
        write_back(src, tmp_path / "out.xlsx", frame=df, columns=["body"])
    ws = sheet(tmp_path / "out.xlsx")
    assert (
        cell(ws, "E2").value == "x" * 32_700 + "…[truncated: 40000 chars; full value in the Parquet output]"
    )
    assert cell(ws, "E3").value == "abc"
    assert cell(ws, "E6").value is None


def test_header_row_below_a_title(tmp_path: Path) -> None:
    """With header_row=2, rows map from 3 on and the title row above is untouched."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert isinstance(ws, Worksheet)
    ws["A1"] = "Quarterly report"
    ws.merge_cells("A1:B1")
    ws.append(["name", "value"])
    ws["B2"].font = Font(italic=True)
    ws.append(["a", 1])
    ws.append(["b", 2])
    src = tmp_path / "titled.xlsx"
    wb.save(src)
    frame = pd.DataFrame({"out": ["A", "B"]})
    placed = write(src, src, frame, columns=None, header_row=2)
    assert placed == [OutputColumn("out", "C", added=True)]
    ws = sheet(src, "Sheet")
    assert [cell(ws, f"C{r}").value for r in (1, 2, 3, 4)] == [None, "out", "A", "B"]
    assert cell(ws, "C2").font.i
    assert [str(r) for r in ws.merged_cells.ranges] == ["A1:B1"]


# --------------------------------------------------------------------------- refusals


def test_frame_longer_than_sheet_refused(tmp_path: Path) -> None:
    """A frame with more rows than the sheet is not the frame read from it."""
    src = user_workbook(tmp_path / "in.xlsx")
    with pytest.raises(InputError, match=r"frame has 9 rows but sheet 'leads' has 5 below its header"):
        write_back(src, tmp_path / "out.xlsx", frame=pd.DataFrame({"x": range(9)}))
    assert not (tmp_path / "out.xlsx").exists()


def test_bad_columns_and_options(tmp_path: Path) -> None:
    """Unknown columns, one string for columns=, a bad header_row and non-xlsx paths are refused."""
    src = user_workbook(tmp_path / "in.xlsx")
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(ColumnError, match=r"columns not in the frame: 'nope'; columns are: 'a'"):
        write_back(src, tmp_path / "o.xlsx", frame=frame, columns=["nope"])
    with pytest.raises(ConfigError, match="list of column names"):
        write_back(src, tmp_path / "o.xlsx", frame=frame, columns="a")
    with pytest.raises(ConfigError, match="header_row must be"):
        write_back(src, tmp_path / "o.xlsx", frame=frame, header_row=0)
    with pytest.raises(ConfigError, match=r"\.xlsx workbooks only"):
        write_back(src, tmp_path / "o.csv", frame=frame)
    (tmp_path / "in.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"\.xlsx workbooks only"):
        write_back(tmp_path / "in.csv", tmp_path / "o.xlsx", frame=frame)
    with pytest.raises(InputError, match="no worksheet named 'nope'"):
        write_back(src, tmp_path / "o.xlsx", frame=frame, sheet="nope")
    with pytest.raises(InputError, match="row 5 of sheet 'leads' holds no header"):
        write_back(src, tmp_path / "o.xlsx", frame=frame, header_row=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "in.xlsx"]


def test_users_formula_column_never_overwritten(tmp_path: Path) -> None:
    """An output named like a user column that holds formulas is refused."""
    src = user_workbook(tmp_path / "in.xlsx")
    df = read_table(src)
    with pytest.raises(InputError, match=r"column headed 'double' \(C\) that holds formulas \(e\.g\. C2\)"):
        write_back(src, src, frame=df, columns=["double"])
    assert sheet(src)["C2"].value == "=B2*2"


def test_output_crossing_merged_cells_refused(tmp_path: Path) -> None:
    """An existing output column crossed by merged cells is refused, not half-written."""
    src = user_workbook(tmp_path / "in.xlsx")
    wb = openpyxl.load_workbook(src)
    ws = wb["leads"]
    assert isinstance(ws, Worksheet)
    ws["E1"] = "summary"
    ws.merge_cells("E3:F4")
    wb.save(src)
    df = read_table(src).iloc[:, :4]
    df["summary"] = list("abcde")
    with pytest.raises(InputError, match=r"crosses the merged cells E3:F4"):
        write_back(src, tmp_path / "out.xlsx", frame=df, columns=["summary"])


# --------------------------------------------------------------------------- hostile files

RANGE_BOMBS = {
    "merged": b'<mergeCells count="1"><mergeCell ref="A1:CV200"/></mergeCells>',
    "hyperlink": b'<hyperlinks><hyperlink display="a&gt;b" ref="A1:CV200"/></hyperlinks>',
}


@pytest.mark.parametrize("kind", sorted(RANGE_BOMBS))
def test_range_bombs_refused_before_loading(tmp_path: Path, kind: str) -> None:
    """Merged or hyperlink ranges that openpyxl would expand cell by cell count against max_cells."""
    src = user_workbook(tmp_path / "in.xlsx")
    xml = member(src).encode().replace(b"</sheetData>", b"</sheetData>" + RANGE_BOMBS[kind])
    rewrite_member(src, SHEET, xml)
    limits = ReadLimits(max_cells=10_000)  # 20,000 cells: bounded even if the guard were broken
    with pytest.raises(InputError, match=r"build more than 10,000 cells.*merged, hyperlink"):
        write_back(src, tmp_path / "out.xlsx", frame=read_table(src), limits=limits)
    assert not (tmp_path / "out.xlsx").exists()


def test_comment_bomb_in_any_part_refused(tmp_path: Path) -> None:
    """Every part is scanned, whatever its path: a sheet may live anywhere the package says."""
    src = user_workbook(tmp_path / "in.xlsx")
    ns = b"http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    part = b'<comments xmlns="' + ns + b'"><commentList><comment ref="A1:CV200"/></commentList></comments>'
    rewrite_member(src, "xl/odd/place.bin", part)
    with pytest.raises(InputError, match=r"'xl/odd/place\.bin' would make openpyxl build more than 10,000"):
        write_back(src, src, frame=read_table(src), limits=ReadLimits(max_cells=10_000))


def test_whole_sheet_merge_counted_without_expanding() -> None:
    """The scanner itself counts A1:XFD1048576 arithmetically and stops at the cap."""
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    xml = f'<worksheet xmlns="{ns}"><mergeCells><mergeCell ref="A1:XFD1048576"/></mergeCells></worksheet>'
    assert _cells_to_build(io.BytesIO(xml.encode()), 10_000_000) == 16_384 * 1_048_576


def test_hostile_files_refused_by_write_back_and_read_state(tmp_path: Path) -> None:
    """Entity bombs, zip bombs and text named .xlsx: an InputError saying so, from both entry points."""
    laughs = user_workbook(tmp_path / "laughs.xlsx")
    doctype = b'<!DOCTYPE worksheet [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    rewrite_member(laughs, SHEET, doctype + member(laughs).encode().replace(b"Acme", b"&b;"))
    bomb = user_workbook(tmp_path / "bomb.xlsx")
    rewrite_member(bomb, SHEET, bytes(40 << 20))
    fake = tmp_path / "fake.xlsx"
    fake.write_text("a,b\n1,2\n")
    cases = [(laughs, "billion laughs"), (bomb, "zip bomb"), (fake, "not a zip archive")]
    for path, reason in cases:
        with pytest.raises(InputError, match=reason):
            write_back(path, tmp_path / "out.xlsx", frame=pd.DataFrame({"x": [1]}))
        with pytest.raises(InputError, match=reason):
            read_state(path)
    assert not (tmp_path / "out.xlsx").exists()


def test_feature_openpyxl_drops_is_warned(tmp_path: Path) -> None:
    """A workbook with slicers (a part openpyxl does not keep) gets a WorkbookFeatureWarning."""
    src = user_workbook(tmp_path / "in.xlsx")
    rewrite_member(src, "xl/slicers/slicer1.xml", b"<slicers/>")
    with pytest.warns(WorkbookFeatureWarning, match="slicers"):
        write_back(src, tmp_path / "out.xlsx", frame=outputs_frame(src), columns=["summary"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_back(
            tmp_path / "out.xlsx", tmp_path / "out.xlsx", frame=outputs_frame(src), columns=["summary"]
        )


def test_failed_save_keeps_the_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that dies half-way leaves the target as it was and no temp file."""
    src = user_workbook(tmp_path / "in.xlsx")
    before = src.read_bytes()

    def fail(_self: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("openpyxl.writer.excel.ExcelWriter.write_data", fail)
    with pytest.raises(OSError, match="disk full"):
        write_back(src, src, frame=outputs_frame(src), columns=["summary"])
    assert src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["in.xlsx"]


# --------------------------------------------------------------------------- state


def test_write_state_alone_and_replace(tmp_path: Path) -> None:
    """write_state stores a checkpoint; a second call replaces it instead of adding a sheet."""
    src = user_workbook(tmp_path / "in.xlsx")
    out = write_state(src, tmp_path / "out.xlsx", state=state_frame())
    smaller = state_frame().iloc[:2]
    write_state(out, out, state=smaller)
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames.count(STATE_SHEET) == 1
    state = read_state(out)
    assert state is not None
    assert state["row_key"].tolist() == ["k0", "k1"]


def test_state_errors(tmp_path: Path) -> None:
    """Missing columns, inexact values, a foreign sheet of that name and a newer format are refused."""
    src = user_workbook(tmp_path / "in.xlsx")
    with pytest.raises(ColumnError, match=r"state lacks column\(s\) 'batch_id'"):
        write_state(src, src, state=state_frame().drop(columns="batch_id"))
    bad = state_frame()
    bad.loc[0, "row_key"] = "k\x00"
    with pytest.raises(InputError, match="cannot be stored exactly"):
        write_state(src, src, state=bad)
    wb = openpyxl.load_workbook(src)
    wb.create_sheet(STATE_SHEET)["A1"] = "mine"
    wb.save(tmp_path / "foreign.xlsx")
    with pytest.raises(InputError, match="not written by frame-batch"):
        read_state(tmp_path / "foreign.xlsx")
    with pytest.raises(InputError, match="frame-batch did not write"):
        write_state(tmp_path / "foreign.xlsx", tmp_path / "foreign.xlsx", state=state_frame())
    newer = write_state(src, tmp_path / "newer.xlsx", state=state_frame())
    wb = openpyxl.load_workbook(newer)
    wb[STATE_SHEET]["C1"] = "2"  # type: ignore[index]
    wb.save(newer)
    with pytest.raises(InputError, match="format '2'"):
        read_state(newer)
