"""Excel-safe export: a frame written to ``.xlsx`` reads back as the data it held.

pandas' ``to_excel`` turns any text that starts with ``=`` into a live formula, with both
engines (reliability notes §2.2), and openpyxl itself cuts long text and refuses control
characters. :func:`write_xlsx` applies these rules to every cell instead:

1. **Text stays text.** Every string cell is stored with an explicit string type
   (``inlineStr``), so ``=1+1``, ``{=1+1}``, ``=HYPERLINK(...)`` or ``#N/A`` come back as the same
   characters: never a formula, never an error value, and no visible quote is added.
2. **Illegal XML characters are removed**: the C0 controls other than TAB, LF and CR
   (``\\x00-\\x08``, ``\\x0b``, ``\\x0c``, ``\\x0e-\\x1f``, what openpyxl rejects) and the
   non-characters U+FFFE and U+FFFF. Lone surrogates (bytes decoded with ``surrogateescape``)
   become U+FFFD. See :func:`excel_safe_text`.
3. **Nothing is cut silently.** A cell holds at most 32,767 characters, counted in UTF-16 units
   as Excel counts them. A longer text keeps its first 32,700 and ends with
   ``…[truncated: N chars; full value in the Parquet output]``, where N is the original length.
   Each call that truncates emits one :class:`ExcelTruncationWarning` giving the number of
   cells and the columns.
4. **Types.** Missing values (None, NaN, ``pd.NA``, ``NaT``) become empty cells, and so does the
   empty string. Numbers stay numbers and bools stay bools. Excel cannot hold ±inf, or an integer
   with more than 15 digits without losing digits, so those are written as text. Naive datetimes
   become Excel dates with a date number format. Excel has no time zones, so tz-aware datetimes
   are converted to UTC and written naive. Dates before 1900 (which Excel cannot show) are
   written as ISO text. Dicts and lists become compact JSON text, and anything else becomes
   ``str(value)``.
5. **Atomic.** The workbook is written to a ``.``-prefixed temp file in the target's directory,
   fsynced, then moved over the target with ``os.replace``. An interrupted write therefore never
   leaves a half-written workbook under the final name.

CSV has no cell types, so there the only defence is OWASP's: :func:`csv_safe_frame` prefixes
``'`` to text that starts with ``= + - @ TAB CR``. The quote is visible in the CSV.
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeAlias

import numpy as np
import orjson
import pandas as pd
from openpyxl import Workbook
from openpyxl.cell.cell import Cell, WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from openpyxl.writer.excel import ExcelWriter

from frame_batch._fs import atomic_write
from frame_batch.errors import ConfigError, InputError

__all__ = [
    "EXCEL_MAX_CHARS",
    "ExcelTruncationWarning",
    "csv_safe_frame",
    "excel_safe_text",
    "write_xlsx",
]

EXCEL_MAX_CHARS = 32_767
"""The most characters (UTF-16 units) an Excel cell holds."""

_KEEP_CHARS = 32_700  # leaves room for the marker, whatever N is
_MAX_ROWS = 1_048_576  # header included
_MAX_COLS = 16_384
_MAX_WIDTH = 60
_CHUNK_ROWS = 10_000  # rows converted at a time: memory stays flat on big frames
_EXACT_INT_LIMIT = 10**15  # Excel keeps 15 significant digits
_FIRST_EXCEL_DAY = date(1900, 1, 1)
_FIRST_EXCEL_DATETIME = datetime(1900, 1, 1)

_ILLEGAL_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_ANY_BAD_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SHEET_NAME_RE = re.compile(r"[^\[\]:*?/\\]{1,31}")
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_BOLD = Font(bold=True)

_CellValue: TypeAlias = str | bool | int | float | datetime | date | time | timedelta | None


class ExcelTruncationWarning(UserWarning):
    """Some text was longer than an Excel cell holds and was truncated with a marker."""


# --------------------------------------------------------------------------- text


def excel_safe_text(value: str) -> str:
    """Return ``value`` without the characters an xlsx file cannot hold.

    Removes the C0 controls other than TAB, LF and CR (openpyxl's ``ILLEGAL_CHARACTERS_RE``)
    and U+FFFE/U+FFFF, and replaces lone surrogates with U+FFFD. Clean text is returned as is.
    """
    if _ANY_BAD_RE.search(value) is None:
        return value
    return _SURROGATE_RE.sub("\ufffd", _ILLEGAL_XML_RE.sub("", value))


def _utf16_len(text: str) -> int:
    # Each code point is 1 or 2 UTF-16 units, so short text cannot be over the limit.
    if len(text) <= EXCEL_MAX_CHARS // 2:
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def _truncated(text: str) -> str:
    """The first 32,700 UTF-16 units of ``text`` plus the marker that says so."""
    # "ignore" drops half of a surrogate pair that the cut splits.
    head = text.encode("utf-16-le")[: 2 * _KEEP_CHARS].decode("utf-16-le", "ignore")
    return f"{head}…[truncated: {len(text)} chars; full value in the Parquet output]"


@dataclass
class _Truncations:
    """Counts the cells cut in one write, for the single warning at the end."""

    cells: int = 0
    columns: list[str] = field(default_factory=list)

    def fit(self, text: str, column: str) -> str:
        if _utf16_len(text) <= EXCEL_MAX_CHARS:
            return text
        self.cells += 1
        if column not in self.columns:
            self.columns.append(column)
        return _truncated(text)

    def warn(self, path: Path) -> None:
        if not self.cells:
            return
        names = ", ".join(repr(c) for c in self.columns)
        warnings.warn(
            f"{self.cells} cell(s) in column(s) {names} were longer than Excel's "
            f"{EXCEL_MAX_CHARS:,}-character limit and were truncated with a marker in {path}; "
            "keep the Parquet output for the full values",
            ExcelTruncationWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- values


def _to_cell(value: object) -> _CellValue:
    """One frame value as something an Excel cell holds (text not yet cleaned)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.timedelta64):  # before integers: numpy makes it one
        return _timedelta_cell(value)
    if isinstance(value, (int, np.integer)):
        return _int_cell(int(value))
    if isinstance(value, (float, np.floating)):
        return _float_cell(float(value))
    if isinstance(value, Decimal):
        return None if value.is_nan() else _float_cell(float(value))
    return _to_other_cell(value)


def _to_other_cell(value: object) -> _CellValue:
    # datetime before date: a datetime is a date.
    if isinstance(value, (datetime, np.datetime64)):
        return _datetime_cell(value)
    if isinstance(value, date):
        return value if value >= _FIRST_EXCEL_DAY else value.isoformat()
    if isinstance(value, (timedelta, np.timedelta64)):
        return _timedelta_cell(value)
    if isinstance(value, time):
        return value if value.tzinfo is None else value.isoformat()
    if isinstance(value, (dict, list, tuple, set, frozenset, np.ndarray)):
        return _json_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int_cell(value: int) -> int | str:
    # Excel stores doubles and shows 15 digits: a 19-digit id would come back changed.
    return value if -_EXACT_INT_LIMIT < value < _EXACT_INT_LIMIT else str(value)


def _float_cell(value: float) -> float | str | None:
    if value != value:  # NaN
        return None
    # openpyxl would write "inf" into the XML, which Excel reports as a corrupt file.
    return value if abs(value) != float("inf") else str(value)


def _datetime_cell(value: datetime | np.datetime64) -> datetime | str | None:
    # pd.NaT itself never gets here (see _to_cell); numpy's NaT does.
    if isinstance(value, np.datetime64) and np.isnat(value):
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    naive: datetime = stamp.to_pydatetime(warn=False)  # Excel keeps milliseconds at best
    return naive if naive >= _FIRST_EXCEL_DATETIME else naive.isoformat()


def _timedelta_cell(value: timedelta | np.timedelta64) -> timedelta | None:
    if isinstance(value, np.timedelta64) and np.isnat(value):
        return None
    delta: timedelta = pd.Timedelta(value).to_pytimedelta()
    return delta


def _json_default(value: object) -> object:
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)  # a stable order from run to run
    if isinstance(value, datetime):  # orjson refuses datetime subclasses (pd.Timestamp)
        return value.isoformat()
    return str(value)


def _json_text(value: object) -> str:
    try:
        return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError:  # e.g. tuple keys: still show the data
        return str(value)


def _text_cell(value: _CellValue, column: str, cuts: _Truncations) -> _CellValue:
    if not isinstance(value, str):
        return value
    if not value:
        return None
    return cuts.fit(excel_safe_text(value), column)


# --------------------------------------------------------------------------- frame


@dataclass(frozen=True)
class _Column:
    """One output column: its header and its values (read by position)."""

    label: str
    values: pd.Series


def _label(name: object) -> str:
    return name if isinstance(name, str) else str(name)


def _index_columns(index: pd.Index) -> list[_Column]:
    # The names reset_index would give unnamed levels.
    default = ["index"] if index.nlevels == 1 else [f"level_{i}" for i in range(index.nlevels)]
    return [
        _Column(default[i] if name is None else _label(name), index.get_level_values(i).to_series())
        for i, name in enumerate(index.names)
    ]


def _frame_columns(df: pd.DataFrame, index: bool) -> list[_Column]:
    # By position, so duplicate column names are all written.
    columns = [_Column(_label(name), df.iloc[:, j]) for j, name in enumerate(df.columns)]
    return [*_index_columns(df.index), *columns] if index else columns


def _prepared(values: pd.Series) -> pd.Series:
    # Vectorised UTC conversion for tz-aware columns; the per-value path covers object columns.
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        utc: pd.Series = values.dt.tz_convert("UTC").dt.tz_localize(None)
        return utc
    return values


def _chunks(columns: Sequence[_Column], n_rows: int, cuts: _Truncations) -> Iterator[list[list[_CellValue]]]:
    """Cell values column by column, ``_CHUNK_ROWS`` rows at a time (memory stays flat)."""
    prepared = [(c.label, _prepared(c.values)) for c in columns]
    for start in range(0, n_rows, _CHUNK_ROWS):
        yield [
            [_text_cell(_to_cell(v), label, cuts) for v in values.iloc[start : start + _CHUNK_ROWS].tolist()]
            for label, values in prepared
        ]


def _check_fits(n_rows: int, n_cols: int, sheet_name: str) -> None:
    if not _SHEET_NAME_RE.fullmatch(sheet_name) or sheet_name.startswith("'") or sheet_name.endswith("'"):
        raise ConfigError(
            f"sheet_name {sheet_name!r} is not a valid Excel sheet name: use 1 to 31 "
            "characters, none of [ ] : * ? / \\, not starting or ending with an apostrophe"
        )
    if n_rows + 1 > _MAX_ROWS or n_cols > _MAX_COLS:
        raise InputError(
            f"the frame has {n_rows:,} rows and {n_cols:,} columns to write; an Excel sheet "
            f"holds at most {_MAX_ROWS - 1:,} rows below the header and {_MAX_COLS:,} columns. "
            "Write Parquet or CSV instead, or split the frame"
        )


# --------------------------------------------------------------------------- sheet


def _shown_len(value: _CellValue) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value)
    if isinstance(value, datetime):
        return 19  # yyyy-mm-dd h:mm:ss
    if isinstance(value, date):
        return 10
    return len(str(value))


def _set_widths(ws: WriteOnlyWorksheet, labels: Sequence[str], first: Sequence[list[_CellValue]]) -> None:
    """Widths from the header and the first chunk of rows, capped at ``_MAX_WIDTH``."""
    # Write-only sheets have column_dimensions (from Worksheet._setup); the stubs miss it.
    dims = ws.column_dimensions  # type: ignore[attr-defined]
    for j, label in enumerate(labels):
        values = first[j] if first else []
        longest = max(itertools.chain([len(label)], map(_shown_len, values)))
        dims[get_column_letter(j + 1)].width = min(_MAX_WIDTH, max(8, longest + 2))


def _string_cell(ws: WriteOnlyWorksheet, text: str) -> Cell:
    cell = WriteOnlyCell(ws, text)
    # openpyxl types "=..." as a formula and "#N/A" as an error value: pin it to text.
    cell.data_type = "s"
    return cell


def _header(ws: WriteOnlyWorksheet, labels: Sequence[str], cuts: _Truncations) -> list[Cell]:
    cells = [_string_cell(ws, cuts.fit(excel_safe_text(label), label)) for label in labels]
    for cell in cells:
        cell.font = _BOLD
    return cells


def _row(ws: WriteOnlyWorksheet, values: Sequence[_CellValue]) -> list[Cell | _CellValue]:
    return [_string_cell(ws, v) if isinstance(v, str) else v for v in values]


def _atomic_save(wb: Workbook, target: Path) -> None:
    # What Workbook.save does, but with the zip closed even when a write fails: an
    # unclosed ZipFile would try to finish itself later, on a closed file.
    with (
        atomic_write(target) as fh,
        zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
    ):
        ExcelWriter(wb, archive).write_data()


# --------------------------------------------------------------------------- public


def write_xlsx(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    sheet_name: str = "results",
    index: bool = False,
) -> Path:
    """Write ``df`` to a new ``.xlsx`` workbook at ``path`` under the module's safety rules.

    Every string cell is stored as text (never a formula), illegal XML characters are removed,
    text over 32,767 characters is truncated with a marker and an
    :class:`ExcelTruncationWarning`, and tz-aware datetimes are written in UTC. The header row
    is bold and frozen, and column widths follow the header and the first rows (at most 60).
    With ``index=True`` the index level(s) come first, named as ``reset_index`` would name them.
    Non-string column names are written with ``str()``. ``df`` is not modified. The file is
    replaced atomically, and the function returns its path.

    Raises ``ConfigError`` for an invalid sheet name, and ``InputError`` when the frame does not
    fit on one Excel sheet.
    """
    target = Path(path)
    columns = _frame_columns(df, index)
    _check_fits(len(df), len(columns), sheet_name)
    cuts = _Truncations()
    wb = Workbook(write_only=True)
    ws: WriteOnlyWorksheet = wb.create_sheet(sheet_name)
    ws.freeze_panes = "A2"
    labels = [c.label for c in columns]
    chunks = _chunks(columns, len(df), cuts)
    first = next(chunks, [])
    _set_widths(ws, labels, first)  # must precede the first row in write-only mode
    ws.append(_header(ws, labels, cuts))
    for chunk in itertools.chain([first], chunks):
        for values in zip(*chunk, strict=True):
            ws.append(_row(ws, values))
    _atomic_save(wb, target)
    cuts.warn(target)
    return target


def _csv_escape(value: object) -> object:
    if isinstance(value, str) and value.startswith(_CSV_TRIGGERS):
        return "'" + value
    return value


def _csv_safe_labels(labels: pd.Index) -> pd.Index:
    # Header and index cells are cells too once the CSV is opened in a spreadsheet.
    if not any(_csv_escape(v) is not v for v in labels):
        return labels
    if isinstance(labels, pd.MultiIndex):
        return labels.map(lambda key: tuple(_csv_escape(v) for v in key))
    return labels.map(_csv_escape)


def _csv_safe_column(values: pd.Series) -> pd.Series | None:
    """The escaped column, or None when nothing in it needs escaping."""
    if isinstance(values.dtype, pd.StringDtype):
        hits = values.str.startswith(_CSV_TRIGGERS, na=False)
        return values.mask(hits, "'" + values) if hits.any() else None
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        originals = values.tolist()
        escaped = [_csv_escape(v) for v in originals]
        if all(e is v for e, v in zip(escaped, originals, strict=True)):
            return None
        return pd.Series(escaped, index=values.index, name=values.name, dtype=object)
    return None  # numbers, dates, bools: a negative number is not an attack


def csv_safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` that is safe to write with ``to_csv`` and open in a spreadsheet.

    Text cells (and str column or index labels) that start with ``= + - @``, TAB or CR get a
    leading ``'`` (OWASP CSV injection), which stays visible in the CSV. Only str values are
    touched: numbers, including negative ones, and other types are left as they are.
    Escaped categorical columns become object columns. ``df`` is not modified.
    """
    out: pd.DataFrame = df.copy(deep=False)
    for j in range(df.shape[1]):
        escaped = _csv_safe_column(df.iloc[:, j])
        if escaped is not None:
            out.isetitem(j, escaped.array)
    out.columns = _csv_safe_labels(df.columns)
    out.index = _csv_safe_labels(df.index)
    return out
