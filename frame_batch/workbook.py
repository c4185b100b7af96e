"""Write results back into the user's own workbook, and keep a run's checkpoint inside it.

:func:`write_back` adds output columns to the sheet the input came from. :func:`write_state` and
:func:`read_state` keep a run's checkpoint on a hidden sheet of the same file. The rules:

1. **Same guards as reading.** The original goes through the zip guard of
   :func:`~frame_batch.tables.check_xlsx_archive` and defusedxml's refusal of XML bombs. openpyxl
   loads the whole workbook to edit it and creates an object for every cell it finds, and also
   for every cell of a merged range, a hyperlink range or a comment range: one
   ``<mergeCell ref="A1:XFD1048576">`` alone would hang it. So every part of the zip is first
   scanned for those cells with defusedxml's ``iterparse`` (about 15% of a write-back's time), and
   a part over ``ReadLimits.max_cells`` is refused before openpyxl sees it.
2. **Nothing of the user's is lost that openpyxl keeps.** The workbook is loaded with formulas as
   formulas and with rich text. Other sheets, cell styles, number formats, column widths, frozen
   panes, merged cells, formulas, dates, defined names, validation and conditional formats all
   stay. openpyxl drops a few features (shapes, slicers, form controls, pictures when Pillow is
   missing...); a :class:`WorkbookFeatureWarning` names those found in the file.
   openpyxl saves formulas without the values Excel last computed for them, so the workbook is
   marked to recalculate when Excel opens it. Until then, reading it with
   :func:`~frame_batch.tables.read_table` gives those cells as empty.
3. **Where the columns go.** Row ``i`` of ``frame`` is worksheet row ``header_row + 1 + i``, as
   :func:`~frame_batch.tables.read_table` numbers them. A column whose header text is already in
   the header row is taken to be an earlier output and is updated in place (the rightmost such
   header), with its cells below the frame cleared. Any other column is added to the right of
   the last column that holds anything. Output names must therefore differ from the user's own
   headers (the join suffixes clashing names with ``_out``). A matching column that holds
   formulas is refused, never overwritten. A new header cell copies the font, fill, border,
   alignment, number format and protection of the last header cell.
4. **Excel-safe values**, by the rules of :mod:`frame_batch.excel`: text is always a string cell,
   so ``=1+1`` stays text; illegal XML characters are removed; text over 32,767 characters ends
   with a marker and raises one ``ExcelTruncationWarning``. Numbers, bools and dates keep their
   types.
5. **Checkpoint sheet.** ``_frame_batch_state`` is ``veryHidden`` (only VBA can show it). Row 1
   holds ``frame-batch state | format | 1``, row 2 the column names (``row_key, status,
   remote_id, batch_id``, then any other columns of the state given), and then one row per
   entry. Every value is text, stored exactly: a
   value too long for a cell, or holding characters a cell cannot hold, is refused rather than
   altered.
6. **Atomic.** The workbook is saved to a temp file next to ``target`` and moved over it, so
   ``target`` may be ``source`` itself.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from copy import copy
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import IO

import openpyxl
import pandas as pd
from defusedxml.ElementTree import iterparse  # type: ignore[import-untyped]
from openpyxl.cell.cell import Cell
from openpyxl.styles.numbers import is_date_format
from openpyxl.utils import column_index_from_string, get_column_letter, range_boundaries
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet
from openpyxl.xml.constants import SHEET_MAIN_NS

from frame_batch.errors import ColumnError, ConfigError, InputError
from frame_batch.excel import (
    EXCEL_MAX_CHARS,
    _atomic_save,
    _CellValue,
    _chunks,
    _Column,
    _Truncations,
    excel_safe_text,
)
from frame_batch.tables import (
    DEFAULT_LIMITS,
    EXCEL_MAX_ROWS,
    ReadLimits,
    XlsxArchive,
    check_xlsx_archive,
    pick_sheet,
    read_only_workbook,
    sheet_rows,
    xlsx_errors,
)

__all__ = [
    "STATE_COLUMNS",
    "STATE_SHEET",
    "OutputColumn",
    "WorkbookFeatureWarning",
    "WriteBackResult",
    "read_state",
    "write_back",
    "write_state",
]

STATE_SHEET = "_frame_batch_state"
STATE_COLUMNS = ("row_key", "status", "remote_id", "batch_id")
_STATE_MARK = "frame-batch state"
_STATE_FORMAT = 1

# The tags openpyxl turns into cell objects when it loads a sheet for editing: each cell, and
# every cell of a merged range, a hyperlink's range and a comment's range (it visits them all).
_CELL_TAG = f"{{{SHEET_MAIN_NS}}}c"
_RANGE_TAGS = frozenset(f"{{{SHEET_MAIN_NS}}}{tag}" for tag in ("mergeCell", "hyperlink", "comment"))
_EXCEL_MAX_COLS = 16_384
_MIN_WIDTH, _MAX_WIDTH = 10, 60
_HEADER_STYLE = ("font", "fill", "border", "alignment", "protection")

# Parts openpyxl does not carry over when it saves a workbook it loaded.
_LOST_PARTS = (
    ("xl/drawings/drawing", "drawn shapes and text boxes (charts and pictures are kept)"),
    ("xl/slicers/", "slicers"),
    ("xl/timelines/", "timelines"),
    ("xl/ctrlProps/", "form controls"),
    ("xl/activeX/", "ActiveX controls"),
    ("xl/threadedComments/", "threaded comments (their plain notes are kept)"),
    ("xl/model/", "the Power Pivot data model"),
    ("xl/vbaProject.bin", "macros"),
)


class WorkbookFeatureWarning(UserWarning):
    """The workbook holds something openpyxl cannot keep; the written copy will lack it."""


@dataclass(frozen=True)
class OutputColumn:
    """Where one output column went."""

    name: str
    letter: str
    """The worksheet column, e.g. ``"F"``."""
    added: bool
    """False when an earlier output column with this header was updated in place."""


@dataclass(frozen=True)
class WriteBackResult:
    """What :func:`write_back` wrote: the file, the sheet and the output columns."""

    path: Path
    sheet: str
    columns: tuple[OutputColumn, ...]


# --------------------------------------------------------------------------- loading


def _warn_lost_features(archive: XlsxArchive) -> None:
    lost = [what for prefix, what in _LOST_PARTS if any(n.startswith(prefix) for n in archive.names)]
    if importlib.util.find_spec("PIL") is None and any(n.startswith("xl/media/") for n in archive.names):
        lost.append("pictures (install Pillow to keep them)")
    if lost:
        warnings.warn(
            f"{archive.path} holds {', '.join(lost)}, which the written workbook will not have: "
            "openpyxl cannot keep them",
            WorkbookFeatureWarning,
            stacklevel=4,
        )


def _area(ref: str | None) -> int:
    """How many cells openpyxl visits for a range reference (a whole row or column: all of it)."""
    try:
        min_col, min_row, max_col, max_row = range_boundaries(ref or "")
    except (TypeError, ValueError):  # openpyxl reports a bad reference itself when it loads
        return 1
    cols = (max_col or _EXCEL_MAX_COLS) - (min_col or 1) + 1
    rows = (max_row or EXCEL_MAX_ROWS) - (min_row or 1) + 1
    return cols * rows


def _cells_to_build(source: IO[bytes], cap: int) -> int:
    """How many cell objects openpyxl would create for one part; stops counting past ``cap``."""
    cells = 0
    for _event, element in iterparse(source, events=("end",)):
        if element.tag == _CELL_TAG:
            cells += 1
        elif element.tag in _RANGE_TAGS:
            cells += _area(element.get("ref"))
        element.clear()  # keep memory flat, as openpyxl's own parser does
        if cells > cap:
            break
    return cells


def _check_cells_to_build(archive: XlsxArchive, limits: ReadLimits) -> None:
    # Every part, not only xl/worksheets/*: a sheet may live at any path the package names.
    with zipfile.ZipFile(archive.path) as zf, xlsx_errors(archive.path):
        for name in archive.names:
            with zf.open(name) as source:
                try:
                    cells = _cells_to_build(source, limits.max_cells)
                except SyntaxError:  # ParseError: not XML (a picture...), so never a sheet
                    continue
            if cells > limits.max_cells:
                raise InputError(
                    f"{archive.path}: the part {name!r} would make openpyxl build more than "
                    f"{limits.max_cells:,} cells (counting every cell of its merged, hyperlink "
                    "and comment ranges), over ReadLimits.max_cells. Refusing to load it for editing"
                )


def _load_for_edit(path: Path, limits: ReadLimits) -> Workbook:
    if path.suffix.lower() != ".xlsx":
        raise ConfigError(f"{path}: write-back works on .xlsx workbooks only")
    archive = check_xlsx_archive(path, limits)
    _warn_lost_features(archive)
    _check_cells_to_build(archive, limits)
    with xlsx_errors(path):
        return openpyxl.load_workbook(path, read_only=False, data_only=False, rich_text=True)


def _save(wb: Workbook, target: Path) -> None:
    # openpyxl writes formulas without their last values: have Excel compute them on open.
    wb.calculation.fullCalcOnLoad = True
    _atomic_save(wb, target)


def _target(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".xlsx":
        raise ConfigError(f"{target}: write-back writes .xlsx workbooks only")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: the folder {target.parent} does not exist")
    return target


# --------------------------------------------------------------------------- cells


def _put_text(cell: Cell, text: str) -> None:
    cell.value = text
    # openpyxl types "=..." as a formula and "#N/A" as an error value: pin it to text.
    cell.data_type = "s"


def _put(ws: Worksheet, row: int, column: int, value: _CellValue) -> None:
    existing = ws._cells.get((row, column))
    if value is None:
        if existing is not None:
            existing.value = None
        return  # never create an empty cell: openpyxl would save it
    cell = ws.cell(row=row, column=column)
    assert isinstance(cell, Cell)  # _check_writable refused merged cells
    if isinstance(value, str):
        _put_text(cell, value)
        return
    if not isinstance(value, (datetime, date, time, timedelta)) and is_date_format(cell.number_format):
        cell.number_format = "General"  # an earlier run's date format would show a number as a date
    cell.value = value


def _header_cells(ws: Worksheet, header_row: int) -> dict[int, Cell]:
    """Header cells that hold something, by column (read from the cell map: no cell is created)."""
    return {
        col: cell
        for (row, col), cell in ws._cells.items()
        if row == header_row and cell.value is not None and isinstance(cell, Cell)
    }


def _last_used_column(ws: Worksheet) -> int:
    used = [col for (_row, col), cell in ws._cells.items() if cell.value is not None]
    used += [r.max_col for r in ws.merged_cells.ranges]
    used += [range_boundaries(t.ref)[2] or 0 for t in ws.tables.values()]
    return max(used, default=0)


# --------------------------------------------------------------------------- columns


def _output_positions(frame: pd.DataFrame, columns: Sequence[str] | None) -> list[tuple[str, int]]:
    """(header text, position in frame) of each column to write."""
    labels = [str(c) for c in frame.columns]
    if columns is None:
        return list(zip(labels, range(len(labels)), strict=True))
    if isinstance(columns, str):
        raise ConfigError("columns= takes a list of column names, not one string")
    missing = [c for c in columns if c not in labels]
    if missing:
        raise ColumnError(f"columns not in the frame: {', '.join(map(repr, missing))}", available=labels)
    if len(set(columns)) != len(columns):
        raise ColumnError(f"columns= names a column twice: {list(columns)!r}")
    return [(c, labels.index(c)) for c in columns]


def _check_header_row(header_row: int) -> None:
    if not isinstance(header_row, int) or isinstance(header_row, bool) or header_row < 1:
        raise ConfigError(f"header_row must be a worksheet row number (1 or more), not {header_row!r}")


def _check_rows(ws: Worksheet, header_row: int, n_rows: int) -> None:
    below = max(ws.max_row - header_row, 0)
    if n_rows > below:
        raise InputError(
            f"the frame has {n_rows:,} rows but sheet {ws.title!r} has {below:,} below its header "
            f"(row {header_row}); write back the frame that was read from this sheet"
        )


def _place(ws: Worksheet, header_row: int, names: Sequence[str]) -> list[OutputColumn]:
    headers = _header_cells(ws, header_row)
    if not headers:
        raise InputError(f"row {header_row} of sheet {ws.title!r} holds no header to add columns to")
    by_text = {str(cell.value): col for col, cell in sorted(headers.items())}  # rightmost wins
    free = _last_used_column(ws) + 1
    placed = []
    for name in names:
        col = by_text.get(excel_safe_text(name))
        if col is None:
            col, free = free, free + 1
        placed.append(OutputColumn(name, get_column_letter(col), added=col not in headers))
    return placed


def _check_writable(ws: Worksheet, placed: Sequence[OutputColumn], header_row: int) -> None:
    for out in placed:
        col = column_index_from_string(out.letter)
        for merged in ws.merged_cells.ranges:
            if merged.min_col <= col <= merged.max_col and merged.max_row >= header_row:
                raise InputError(
                    f"cannot write output column {out.name!r} into column {out.letter} of sheet "
                    f"{ws.title!r}: it crosses the merged cells {merged.coord}. Unmerge them first"
                )
        if out.added:
            continue
        formulas = [
            c.coordinate
            for (r, k), c in ws._cells.items()
            if k == col and r > header_row and c.data_type == "f"
        ]
        if formulas:
            raise InputError(
                f"sheet {ws.title!r} already has a column headed {out.name!r} ({out.letter}) that "
                f"holds formulas (e.g. {formulas[0]}); frame-batch will not overwrite them. Rename "
                "that column or the output"
            )


def _style_header(cell: Cell, model: Cell) -> None:
    # getattr/setattr: openpyxl's stubs type a style read as its proxy, not as the style it copies to.
    for name in _HEADER_STYLE:
        setattr(cell, name, copy(getattr(model, name)))
    cell.number_format = model.number_format


def _write_headers(
    ws: Worksheet, header_row: int, placed: Sequence[OutputColumn], cuts: _Truncations
) -> None:
    headers = _header_cells(ws, header_row)
    model = headers[max(headers)]
    for out in placed:
        if not out.added:
            continue
        cell = ws[f"{out.letter}{header_row}"]
        assert isinstance(cell, Cell)
        _put_text(cell, cuts.fit(excel_safe_text(out.name), out.name))
        _style_header(cell, model)
        width = min(_MAX_WIDTH, max(_MIN_WIDTH, len(out.name) + 2))
        ws.column_dimensions[out.letter].width = width


def _write_values(
    ws: Worksheet,
    frame: pd.DataFrame,
    header_row: int,
    outputs: list[tuple[OutputColumn, int]],
    cuts: _Truncations,
) -> None:
    columns = [_Column(out.name, frame.iloc[:, j]) for out, j in outputs]
    indexes = [column_index_from_string(out.letter) for out, _j in outputs]
    row = header_row + 1
    for chunk in _chunks(columns, len(frame), cuts):  # a chunk: one list of values per column
        for col, values in zip(indexes, chunk, strict=True):
            for offset, value in enumerate(values):
                _put(ws, row + offset, col, value)
        row += len(chunk[0]) if chunk else 0
    for col, (out, _j) in zip(indexes, outputs, strict=True):
        if not out.added:  # an earlier, longer run's values below the frame are stale
            for stale in range(header_row + 1 + len(frame), ws.max_row + 1):
                _put(ws, stale, col, None)


# --------------------------------------------------------------------------- state


def _state_text(value: object) -> str | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value)
    if excel_safe_text(text) != text or len(text.encode("utf-16-le")) // 2 > EXCEL_MAX_CHARS:
        raise InputError(
            f"state value {text[:60]!r}... cannot be stored exactly in a workbook cell (too long, or "
            "holding control characters)"
        )
    return text or None


def _state_names(state: pd.DataFrame) -> list[str]:
    """STATE_COLUMNS first, then any other columns of ``state`` in their order."""
    labels = [str(c) for c in state.columns]
    missing = [c for c in STATE_COLUMNS if c not in labels]
    if missing:
        raise ColumnError(f"state lacks column(s) {', '.join(map(repr, missing))}", available=labels)
    return [*STATE_COLUMNS, *(c for c in labels if c not in STATE_COLUMNS)]


def _state_rows(state: pd.DataFrame) -> list[list[str | None]]:
    labels = [str(c) for c in state.columns]
    names = _state_names(state)
    columns = [state.iloc[:, labels.index(c)].tolist() for c in names]
    rows = [[_state_text(v) for v in row] for row in zip(*columns, strict=True)]
    return [list(names), *rows]


def _is_state_sheet(ws: Worksheet) -> bool:
    return bool(ws["A1"].value == _STATE_MARK)


def _put_state(wb: Workbook, rows: list[list[str | None]]) -> None:
    active = wb.active
    if STATE_SHEET in wb.sheetnames:
        old = wb[STATE_SHEET]
        if not isinstance(old, Worksheet) or not _is_state_sheet(old):
            raise InputError(
                f"the workbook already has a sheet named {STATE_SHEET!r} that frame-batch did not write"
            )
        wb.remove(old)
    ws = wb.create_sheet(STATE_SHEET)
    ws.sheet_state = "veryHidden"  # hidden from the Unhide menu too: only VBA can show it
    table: list[list[str | None]] = [[_STATE_MARK, "format", str(_STATE_FORMAT)], *rows]
    for r, values in enumerate(table, 1):
        for c, value in enumerate(values, 1):
            cell = ws.cell(row=r, column=c)
            if value is not None and isinstance(cell, Cell):  # a new sheet has no merged cells
                _put_text(cell, value)
    if active is not None:
        wb.active = wb.index(active)  # by position: a hidden sheet cannot be set active by object


def _state_frame(rows: list[tuple[object, ...]], path: Path) -> pd.DataFrame:
    meta = rows[0] if rows else ()
    if not meta or meta[0] != _STATE_MARK:
        raise InputError(f"{path}: the sheet {STATE_SHEET!r} was not written by frame-batch")
    version = str(meta[2]) if len(meta) > 2 else ""
    if version != str(_STATE_FORMAT):
        raise InputError(
            f"{path}: the checkpoint is in format {version!r}, and this frame-batch reads format "
            f"{_STATE_FORMAT}; use the frame-batch version that wrote it"
        )
    names = [str(v) for v in rows[1] if v is not None] if len(rows) > 1 else []
    if tuple(names[: len(STATE_COLUMNS)]) != STATE_COLUMNS:
        raise InputError(f"{path}: the sheet {STATE_SHEET!r} lacks its column names row")
    body = [[None if v is None else str(v) for v in r[: len(names)]] for r in rows[2:]]
    padded = [values + [None] * (len(names) - len(values)) for values in body]
    return pd.DataFrame(padded, columns=names, dtype=object)


# --------------------------------------------------------------------------- public


def write_back(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    frame: pd.DataFrame,
    sheet: str | int | None = None,
    columns: Sequence[str] | None = None,
    header_row: int = 1,
    state: pd.DataFrame | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> WriteBackResult:
    """Add ``frame``'s ``columns`` to ``sheet`` of the workbook ``source``, saved as ``target``.

    ``sheet`` is a name or 0-based position (default: the first visible worksheet, as
    :func:`~frame_batch.tables.read_table` picks it). ``columns`` are frame column names (default:
    all of them). Row ``i`` of ``frame`` goes to worksheet row ``header_row + 1 + i``; the index
    is ignored. Headers already present are updated in place, others are added on the right
    (module docstring, rule 3). With ``state``, the checkpoint sheet is written in the same
    save (see :func:`write_state`). ``target`` may equal ``source``; it is replaced atomically.

    Raises ``InputError`` for a file that is unsafe or unreadable, a frame longer than the sheet,
    an output column that would cross merged cells or overwrite formulas; ``ColumnError`` for
    unknown ``columns``; ``ConfigError`` for a non-``.xlsx`` path or a bad ``header_row``.
    """
    src, dst = Path(source), _target(target)
    _check_header_row(header_row)
    outputs = _output_positions(frame, columns)
    state_rows = None if state is None else _state_rows(state)
    wb = _load_for_edit(src, limits)
    ws = pick_sheet(wb.worksheets, sheet, src)
    if ws.title == STATE_SHEET:
        raise InputError(
            f"{STATE_SHEET!r} is frame-batch's checkpoint sheet; write results to a sheet of yours"
        )
    _check_rows(ws, header_row, len(frame))
    placed = _place(ws, header_row, [name for name, _j in outputs])
    _check_writable(ws, placed, header_row)
    cuts = _Truncations()
    _write_headers(ws, header_row, placed, cuts)
    _write_values(
        ws, frame, header_row, [(out, j) for out, (_n, j) in zip(placed, outputs, strict=True)], cuts
    )
    if state_rows is not None:
        _put_state(wb, state_rows)
    _save(wb, dst)
    cuts.warn(dst)
    return WriteBackResult(dst, ws.title, tuple(placed))


def write_state(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    state: pd.DataFrame,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> Path:
    """Store ``state`` on the hidden checkpoint sheet of ``source``, saved atomically as ``target``.

    ``state`` needs the columns ``row_key``, ``status``, ``remote_id`` and ``batch_id``; its
    other columns are stored after them. Values are stored as text; missing values as empty
    cells. An earlier checkpoint sheet is replaced. Raises ``ColumnError`` for a missing column
    and ``InputError`` for a value a cell cannot hold exactly or a foreign sheet already named
    ``_frame_batch_state``.
    """
    src, dst = Path(source), _target(target)
    rows = _state_rows(state)
    wb = _load_for_edit(src, limits)
    _put_state(wb, rows)
    _save(wb, dst)
    return dst


def read_state(path: str | os.PathLike[str], *, limits: ReadLimits = DEFAULT_LIMITS) -> pd.DataFrame | None:
    """The checkpoint stored in the workbook at ``path``, or None when it has none.

    Columns are :data:`STATE_COLUMNS` and then any others stored, values str or None (object
    dtype). The file goes through the same guards as :func:`~frame_batch.tables.read_table`.
    Raises ``InputError`` when the sheet was not written by frame-batch or is in a format this
    version does not read.
    """
    source = Path(path)
    with read_only_workbook(source, limits) as wb:
        if STATE_SHEET not in [ws.title for ws in wb.worksheets]:
            return None
        ws = pick_sheet(wb.worksheets, STATE_SHEET, source)
        rows = sheet_rows(ws, source, limits)
    return _state_frame(rows, source)
