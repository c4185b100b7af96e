"""Read and write the tables a user hands to frame-batch: ``.xlsx``, ``.csv`` and ``.parquet``.

Input files come from users and may be broken or hostile. :func:`read_table` and
:func:`write_table` follow these rules:

1. **Known formats only.** The format is chosen by the extension (any case): ``.xlsx``, ``.csv``
   or ``.parquet``. Another extension is an ``InputError`` when reading and a ``ConfigError``
   when writing, and the message lists the three that work.
2. **Every failure says what is wrong.** A missing file, text renamed to ``.xlsx``, an old
   ``.xls`` or password-protected workbook, a damaged zip, an XML bomb, a sheet that is too big or
   a CSV that is not UTF-8 raises an ``InputError`` whose message names the problem and the fix.
   Errors from openpyxl, zipfile, pandas or pyarrow never reach the caller unwrapped.
3. **Zip bombs are refused before openpyxl opens the file** (:func:`check_xlsx_archive`). The
   central directory is read with :mod:`zipfile`, which never yields more bytes of a member than
   its declared size (a larger stream fails its CRC check), so the declared sizes bound all later
   work. The defaults, all fields of :class:`ReadLimits`:

   - at most 10,000 members (a workbook has a few dozen);
   - at most 1 GiB unpacked in total;
   - a member over 10 MiB may unpack to at most 100 times its packed size. Sheets written by
     openpyxl and by :func:`~frame_batch.excel.write_xlsx` measured 9:1 to 18:1, even when every
     cell is the same, because each cell carries its own coordinate. Deflate tops out near
     1,032:1, which is where bombs sit. Members up to 10 MiB are not ratio-checked: their size is
     harmless, and small parts (styles, themes) can pack very tightly.
4. **XML bombs.** openpyxl parses through defusedxml (a dependency), which refuses any DTD entity
   declaration, so a "billion laughs" sheet fails at once. That becomes an ``InputError``.
5. **Size.** A sheet may hold at most 10 million cells (``ReadLimits.max_cells``). The sheet's
   ``<dimension>`` is checked before any row is read. The rows are also counted as they stream,
   so a sheet whose dimension lies is stopped as well, and so is one with row numbers past
   Excel's last row (1,048,576).
6. **xlsx values.** The first row is the header: a blank header becomes ``Unnamed: j`` and a
   repeated one ``name.1``, as pandas names them. Headers are str. Every later row becomes one
   frame row, blank rows included, so frame row ``i`` is worksheet row ``i + 2``. Write-back
   relies on that mapping. Trailing blank rows and columns are dropped. A formula cell gives the
   value Excel last saved for it, or nothing when the file was saved by a program that does not
   calculate. Dates come back as datetimes and numbers as numbers.
7. **CSV.** Text is read as UTF-8 by default, and a UTF-8 byte-order mark is accepted. Bytes
   that do not decode raise an ``InputError`` that gives the byte offset and line and says how to
   fix it. Types are inferred as ``pandas.read_csv`` infers them (so ``007`` reads as 7); Parquet
   keeps its stored types. CSV is written as UTF-8 with a byte-order mark, so that Excel detects
   UTF-8. Cells are escaped by :func:`~frame_batch.excel.csv_safe_frame`: text starting with
   ``= + - @ TAB CR`` gets a visible leading ``'``.
8. **Atomic writes.** xlsx, CSV and Parquet are each written to a temp file next to the target,
   fsynced, and moved over it with ``os.replace`` (see ``_fs.atomic_write``).
"""

from __future__ import annotations

import codecs
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from xml.etree.ElementTree import ParseError

import openpyxl
import pandas as pd
import pyarrow as pa
from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet._read_only import ReadOnlyWorksheet

from frame_batch._fs import atomic_write
from frame_batch.errors import ConfigError, FrameBatchError, InputError
from frame_batch.excel import csv_safe_frame, write_xlsx

__all__ = [
    "DEFAULT_LIMITS",
    "FORMATS",
    "ReadLimits",
    "XlsxArchive",
    "check_xlsx_archive",
    "existing_file",
    "pick_sheet",
    "read_only_workbook",
    "read_table",
    "sheet_rows",
    "write_table",
    "xlsx_errors",
]

FORMATS = (".xlsx", ".csv", ".parquet")
"""The file extensions :func:`read_table` and :func:`write_table` accept."""

EXCEL_MAX_ROWS = 1_048_576
"""The last row number of an Excel sheet."""
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls, and password-protected .xlsx
_SCAN_CHUNK = 1 << 20
_UTF8_NAMES = ("utf-8", "utf-8-sig")
_BOM_HINTS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class ReadLimits:
    """Caps applied to every workbook read (see the module docstring for why these values)."""

    max_unpacked_bytes: int = 1 << 30
    """The most bytes all zip members may unpack to together."""
    max_members: int = 10_000
    """The most members (files) the zip may hold."""
    max_ratio: float = 100.0
    """The most a member over ``ratio_min_bytes`` may unpack to, per packed byte."""
    ratio_min_bytes: int = 10 << 20
    """Members up to this unpacked size are not ratio-checked."""
    max_cells: int = 10_000_000
    """The most cells (rows × columns) a sheet may hold."""


DEFAULT_LIMITS = ReadLimits()


@dataclass(frozen=True)
class XlsxArchive:
    """What the zip guard saw in a workbook that passed it."""

    path: Path
    names: tuple[str, ...]
    unpacked_bytes: int


class _Sheet(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def sheet_state(self) -> str: ...


_S = TypeVar("_S", bound=_Sheet)


# --------------------------------------------------------------------------- files


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def existing_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or an ``InputError`` when it is missing or not a regular file."""
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source}: no such file")
    if not source.is_file():
        raise InputError(f"{source} is not a file (a folder?); give the path of a table file")
    return source


def _format(path: Path, error: type[InputError]) -> str:
    suffix = path.suffix.lower()
    if suffix in FORMATS:
        return suffix
    hint = " Save an old .xls workbook as .xlsx first." if suffix == ".xls" else ""
    raise error(
        f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
        f"use one of {', '.join(FORMATS)}.{hint}"
    )


# --------------------------------------------------------------------------- xlsx guards


def _not_a_zip(path: Path, exc: Exception) -> InputError:
    with open(path, "rb") as fh:
        head = fh.read(len(_OLE2_MAGIC))
    if head == _OLE2_MAGIC:
        return InputError(
            f"{path} is not an .xlsx workbook but an OLE2 file: an old .xls workbook or a "
            "password-protected .xlsx. Open it in Excel and save it as an unprotected .xlsx"
        )
    return InputError(
        f"{path} is not an .xlsx workbook: it is not a zip archive ({exc}). If it is a CSV or "
        "another format, give it its real extension; if it was cut short, copy it again"
    )


def _check_members(path: Path, infos: Sequence[zipfile.ZipInfo], limits: ReadLimits) -> int:
    if len(infos) > limits.max_members:
        raise InputError(
            f"{path} holds {len(infos):,} files inside; a workbook holds a few dozen and the limit "
            f"is {limits.max_members:,} (ReadLimits.max_members). Refusing a possible zip bomb"
        )
    total = sum(info.file_size for info in infos)
    if total > limits.max_unpacked_bytes:
        raise InputError(
            f"{path} unpacks to {_size(total)}, over the {_size(limits.max_unpacked_bytes)} limit "
            "(ReadLimits.max_unpacked_bytes). Refusing a possible zip bomb; if the workbook is "
            "really that big, save it as CSV or Parquet, or raise the limit"
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise InputError(
                f"{path}: the part {info.filename!r} unpacks to {_size(info.file_size)}, "
                f"{ratio:,.0f} times its packed size; real workbooks stay under "
                f"{limits.max_ratio:,.0f}:1 (ReadLimits.max_ratio). Refusing a possible zip bomb"
            )
    return total


def check_xlsx_archive(path: str | os.PathLike[str], limits: ReadLimits = DEFAULT_LIMITS) -> XlsxArchive:
    """Check an ``.xlsx`` file's zip structure against ``limits`` before anything parses it.

    Raises ``InputError`` when the file is missing, is not a zip (with a hint for ``.xls`` and
    encrypted workbooks), has too many members, unpacks to too much, or has a member whose
    compression ratio only a zip bomb reaches.
    """
    source = existing_file(path)
    try:
        with zipfile.ZipFile(source) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise _not_a_zip(source, exc) from exc
    except OSError as exc:
        raise InputError(f"{source} could not be opened: {exc.strerror or exc}") from exc
    total = _check_members(source, infos, limits)
    return XlsxArchive(source, tuple(info.filename for info in infos), total)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (openpyxl wraps the real cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _workbook_error(path: Path, exc: Exception) -> InputError:
    for cause in _causes(exc):
        if isinstance(cause, DefusedXmlException):
            return InputError(
                f"{path} contains an XML DTD or entity declaration ({type(cause).__name__}). "
                "Workbooks never need one, and it is how 'billion laughs' XML bombs work, so the "
                "file is refused"
            )
        if isinstance(cause, ParseError):
            return InputError(f"{path} holds malformed XML ({cause}); open it in Excel and save it again")
        if isinstance(cause, (zipfile.BadZipFile, zlib.error, EOFError)):
            return InputError(f"{path} is a damaged zip archive ({cause}); copy it again")
    # openpyxl reports a broken part as KeyError, TypeError, IndexError, ValueError...
    return InputError(
        f"{path} could not be read as an .xlsx workbook ({type(exc).__name__}: {exc}); "
        "open it in Excel and save it again"
    )


@contextmanager
def xlsx_errors(path: Path) -> Iterator[None]:
    """Turn what openpyxl, defusedxml and zipfile raise on a bad workbook into ``InputError``."""
    try:
        yield
    except (FrameBatchError, MemoryError):
        raise
    except Exception as exc:  # the boundary to parsers of untrusted files: each says it differently
        raise _workbook_error(path, exc) from exc


@contextmanager
def read_only_workbook(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Workbook]:
    """The workbook at ``path`` opened read-only with cached formula values, after the zip guard."""
    check_xlsx_archive(path, limits)
    with xlsx_errors(path):
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        yield wb
    finally:
        wb.close()  # read-only workbooks keep the zip open


def pick_sheet(sheets: Sequence[_S], sheet: str | int | None, path: Path) -> _S:
    """The worksheet named ``sheet``, at 0-based position ``sheet``, or the first visible one."""
    if sheet is None:
        visible = [ws for ws in sheets if ws.sheet_state == "visible"]
        if not visible:
            raise InputError(f"{path} has no visible worksheet; pass sheet= to choose one")
        return visible[0]
    names = [ws.title for ws in sheets]
    if isinstance(sheet, int) and not isinstance(sheet, bool):
        if 0 <= sheet < len(sheets):
            return sheets[sheet]
        raise InputError(f"{path} has {len(sheets)} worksheet(s) (counted from 0); sheet={sheet} is not one")
    if sheet in names:
        return sheets[names.index(sheet)]
    shown = ", ".join(repr(n) for n in names)
    raise InputError(f"{path} has no worksheet named {sheet!r}; its worksheets are: {shown}")


def _check_declared_size(ws: ReadOnlyWorksheet, path: Path, limits: ReadLimits) -> None:
    rows, cols = ws.max_row, ws.max_column
    if rows is None or cols is None:  # no <dimension>: the streaming count still applies
        return
    cells = (rows - ws.min_row + 1) * (cols - ws.min_column + 1)
    if cells > limits.max_cells:
        raise InputError(
            f"sheet {ws.title!r} in {path} declares its size as {ws.calculate_dimension()} "
            f"({cells:,} cells), over the {limits.max_cells:,}-cell limit (ReadLimits.max_cells). "
            "If it really holds less, open it in Excel and save it again; otherwise save it as "
            "CSV or Parquet"
        )


def _check_streamed(ws: ReadOnlyWorksheet, n_rows: int, width: int, path: Path, limits: ReadLimits) -> None:
    if n_rows > EXCEL_MAX_ROWS:
        raise InputError(
            f"sheet {ws.title!r} in {path} has rows past Excel's last row ({EXCEL_MAX_ROWS:,}); "
            "the file is damaged or was not written by a spreadsheet program"
        )
    if n_rows * max(width, 1) > limits.max_cells:
        raise InputError(
            f"sheet {ws.title!r} in {path} holds more than {limits.max_cells:,} cells (reached "
            f"{n_rows:,} rows × {width:,} columns; ReadLimits.max_cells). Save it as CSV or "
            "Parquet, or raise the limit"
        )


def _trimmed(values: tuple[object, ...]) -> tuple[object, ...]:
    end = len(values)
    while end and values[end - 1] is None:
        end -= 1
    return tuple(values[:end])  # openpyxl gives a missing row as an empty list


def sheet_rows(
    ws: ReadOnlyWorksheet, path: Path, limits: ReadLimits = DEFAULT_LIMITS
) -> list[tuple[object, ...]]:
    """Every row of a read-only sheet as values, trailing blanks dropped, within ``limits``.

    Blank rows in the middle stay (as empty tuples), so list position = worksheet row - 1.
    """
    _check_declared_size(ws, path, limits)
    # Read the rows as stored: a wrong <dimension> would otherwise pad or cut them.
    ws.reset_dimensions()
    rows: list[tuple[object, ...]] = []
    width = 0
    with xlsx_errors(path):
        for values in ws.values:
            row = _trimmed(values)
            width = max(width, len(row))
            rows.append(row)
            _check_streamed(ws, len(rows), width, path, limits)
    while rows and not rows[-1]:
        rows.pop()
    return rows


# --------------------------------------------------------------------------- xlsx frame


def _header_names(cells: tuple[object, ...], width: int) -> list[str]:
    """Header texts, named and de-duplicated the way pandas does it."""
    raw = [cells[j] if j < len(cells) else None for j in range(width)]
    names = [f"Unnamed: {j}" if v is None or v == "" else str(v) for j, v in enumerate(raw)]
    seen = set(names)
    counts: dict[str, int] = {}
    result: list[str] = []
    for name in names:
        if name in counts:
            counts[name] += 1
            candidate = f"{name}.{counts[name]}"
            while candidate in seen:
                counts[name] += 1
                candidate = f"{name}.{counts[name]}"
            seen.add(candidate)
            result.append(candidate)
        else:
            counts[name] = 0
            result.append(name)
    return result


def _frame_from_rows(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame()
    width = max(len(r) for r in rows)
    body = [r + (None,) * (width - len(r)) for r in rows[1:]]
    return pd.DataFrame(body, columns=_header_names(rows[0], width))


def _read_xlsx(path: Path, sheet: str | int | None, limits: ReadLimits) -> pd.DataFrame:
    with read_only_workbook(path, limits) as wb:
        ws = pick_sheet(wb.worksheets, sheet, path)
        rows = sheet_rows(ws, path, limits)
    return _frame_from_rows(rows)


# --------------------------------------------------------------------------- csv, parquet


def _first_bad_bytes(path: Path, codec: str) -> tuple[int, int, bytes] | None:
    """Offset, 1-based line and bytes of the first undecodable sequence, or None."""
    decoder = codecs.getincrementaldecoder(codec)()
    offset = newlines = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_SCAN_CHUNK)
            pending = decoder.getstate()[0]  # the tail of the last chunk, not yet decoded
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                in_chunk = max(0, exc.start - len(pending))
                line = newlines + chunk[:in_chunk].count(b"\n") + 1
                return offset - len(pending) + exc.start, line, exc.object[exc.start : exc.end]
            if not chunk:
                return None
            offset += len(chunk)
            newlines += chunk.count(b"\n")


def _bom_hint(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    for bom, name in _BOM_HINTS:
        if head.startswith(bom):
            return f"It starts with a {name.upper()} byte-order mark: pass encoding={name!r}. "
    return ""


def _decode_error(path: Path, codec: str, given: str | None) -> InputError:
    label = "UTF-8" if given is None else repr(given)
    found = _first_bad_bytes(path, codec)
    where = "some bytes"
    if found is not None:
        offset, line, bad = found
        shown = " ".join(f"0x{b:02x}" for b in bad[:4])
        # Counting b"\n" gives lines only for encodings that keep ASCII bytes.
        at_line = f", line {line:,}" if codecs.lookup(codec).name in _UTF8_NAMES else ""
        where = f"byte(s) {shown} at offset {offset:,}{at_line}"
    return InputError(
        f"{path} is not valid {label} text: {where} cannot be decoded. {_bom_hint(path)}"
        "Save the file as UTF-8 (Excel: Save As > 'CSV UTF-8'), or pass encoding= with its "
        "real encoding, e.g. encoding='cp1252'"
    )


def _read_csv(path: Path, encoding: str | None) -> pd.DataFrame:
    codec = encoding or "utf-8-sig"  # -sig: drops a UTF-8 byte-order mark, reads plain UTF-8 too
    try:
        codecs.lookup(codec)
    except LookupError as exc:
        raise ConfigError(f"encoding={encoding!r} is not a text encoding Python knows") from exc
    try:
        return pd.read_csv(path, encoding=codec)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, codec, encoding) from exc
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise InputError(f"{path} is not a well-formed CSV file: {str(exc).strip()}") from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{path} could not be read as a Parquet file: {exc}") from exc


# --------------------------------------------------------------------------- public


def read_table(
    path: str | os.PathLike[str],
    *,
    sheet: str | int | None = None,
    encoding: str | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> pd.DataFrame:
    """Read an ``.xlsx``, ``.csv`` or ``.parquet`` file into a DataFrame, safely.

    ``sheet`` (xlsx only) is a worksheet name or 0-based position; by default the first visible
    worksheet is read. ``encoding`` (CSV only) defaults to UTF-8 with an optional byte-order
    mark. ``limits`` caps what an xlsx file may unpack to and hold. See the module docstring for
    how values are read.

    Raises ``InputError`` for a missing, unreadable, hostile or oversized file (the message says
    which), and ``ConfigError`` for an option that does not fit the format.
    """
    source = Path(path)
    kind = _format(source, InputError)
    if sheet is not None and kind != ".xlsx":
        raise ConfigError(f"sheet= applies to .xlsx files only, not to {source.name}")
    if encoding is not None and kind != ".csv":
        raise ConfigError(f"encoding= applies to .csv files only, not to {source.name}")
    existing_file(source)
    if kind == ".xlsx":
        return _read_xlsx(source, sheet, limits)
    if kind == ".csv":
        return _read_csv(source, encoding)
    return _read_parquet(source)


def _write_csv(df: pd.DataFrame, target: Path, index: bool) -> None:
    with atomic_write(target) as fh:
        # utf-8-sig: the byte-order mark is how Excel knows the file is UTF-8.
        csv_safe_frame(df).to_csv(fh, index=index, encoding="utf-8-sig")


def _write_parquet(df: pd.DataFrame, target: Path, index: bool) -> None:
    try:
        with atomic_write(target) as fh:
            df.to_parquet(fh, engine="pyarrow", index=index)
    except (pa.ArrowException, ValueError) as exc:
        detail = "; ".join(str(arg) for arg in exc.args)  # pyarrow puts the column name in args[1]
        raise InputError(
            f"the frame cannot be written to Parquet ({detail}); give each column one type "
            "(e.g. df[col].astype(str)) and str column names"
        ) from exc


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    sheet_name: str = "results",
    index: bool = False,
) -> Path:
    """Write ``df`` to a new ``.xlsx``, ``.csv`` or ``.parquet`` file, atomically; return its path.

    xlsx goes through :func:`~frame_batch.excel.write_xlsx` (text stays text; ``sheet_name`` is
    used for xlsx only). CSV is UTF-8 with a byte-order mark, escaped by
    :func:`~frame_batch.excel.csv_safe_frame`. Parquet is written by pyarrow. ``df`` is not
    modified.

    Raises ``ConfigError`` for an unknown extension, a missing folder or a bad sheet name, and
    ``InputError`` when the frame does not fit the format.
    """
    target = Path(path)
    kind = _format(target, ConfigError)
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: the folder {target.parent} does not exist")
    if kind == ".xlsx":
        return write_xlsx(df, target, sheet_name=sheet_name, index=index)
    if kind == ".csv":
        _write_csv(df, target, index)
    else:
        _write_parquet(df, target, index)
    return target
