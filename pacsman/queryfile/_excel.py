"""Excel workbooks (.xlsx) -> located records: pandas reads the sheet, openpyxl underneath.

Every cell is read as Excel shows it (``3``, not ``3.0``), located as its row and column, and
keeps its kind: once the header says which column a cell is in, :func:`kind_problem` refuses
what Excel may have changed there (a number in an ID column has lost its leading zeros).
"""

from __future__ import annotations

import difflib
import io
import math
import numbers
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from pacsman.queryfile._text import Cell, CellKind, Record, show
from pacsman.queryfile._values import VR_BY_COLUMN

if TYPE_CHECKING:  # imported where a workbook is read: a CSV run never loads pandas
    import pandas as pd

__all__ = ["WORKBOOK_SUFFIXES", "WorkbookRefused", "is_workbook", "kind_problem", "read_sheet"]

#: File names read as workbooks (whatever the bytes); other names are read as CSV text.
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")
#: The most a workbook may unpack to: a zip bomb is refused before any XML is parsed.
MAX_UNPACKED = 256 * 2**20
_ZIP = b"PK\x03\x04"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls, and password-protected .xlsx
_FORMULA = re.compile(rb"<(?:\w+:)?f[\s>/]")
_SAVE_XLSX = 'in Excel, save it as "Excel Workbook (*.xlsx)" or as "CSV UTF-8"'
_AS_TEXT = "format the column as text (select it, Format Cells → Text), then retype the values"
#: Columns of identifiers: a number there has lost its leading zeros (00123 -> 123).
_ID_COLUMNS = frozenset(
    {"PatientID", "AccessionNumber", "DeviceSerialNumber", "Subject", "Session"}
)


class WorkbookRefused(Exception):
    """The workbook cannot be read; ``message`` says why and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_workbook(name: str, raw: bytes) -> bool:
    """True for an Excel file: by its name, or by the bytes a CSV file never starts with."""
    return name.lower().endswith(WORKBOOK_SUFFIXES) or raw.startswith((_ZIP, _OLE))


def read_sheet(raw: bytes, sheet: str | None) -> tuple[str, list[Record]]:
    """The sheet ``sheet`` (default: the first) of the workbook ``raw``, row by row.

    Rows keep their Excel row number as ``line``; rows with nothing in them are left out.

    Raises:
        WorkbookRefused: not an .xlsx workbook, too large unpacked, damaged, or no such sheet.
    """
    import pandas as pd

    has_formulas = _check_container(raw)
    with warnings.catch_warnings():  # openpyxl warns about styles and extensions it skips
        warnings.simplefilter("ignore")
        try:
            with pd.ExcelFile(io.BytesIO(raw), engine="openpyxl") as book:
                chosen = _choose([str(s) for s in book.sheet_names], sheet)
                values = _read(book, chosen)
            formulas = _read(io.BytesIO(raw), chosen, data_only=False) if has_formulas else None
        except WorkbookRefused:
            raise
        except Exception as exc:  # openpyxl raises anything on damaged XML: name it, and stop
            raise WorkbookRefused(
                f"the file cannot be read as an Excel workbook ({type(exc).__name__}: "
                f"{show(str(exc), 80)}); it may be damaged: {_SAVE_XLSX}"
            ) from None
    return chosen, _records(values, formulas)


def _check_container(raw: bytes) -> bool:
    """Refuse what is no .xlsx before pandas opens it; True if a sheet holds a formula."""
    if raw.startswith(_OLE):
        raise WorkbookRefused(
            "the file is an Excel 97-2003 workbook (.xls) or a password-protected one, which "
            f"pacsman cannot read; {_SAVE_XLSX}, without a password"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            entries = archive.infolist()
            if "[Content_Types].xml" not in archive.namelist() or not any(
                e.filename.startswith("xl/") for e in entries
            ):
                raise WorkbookRefused(
                    f"the file is a zip archive but no Excel workbook (no xl/ folder); {_SAVE_XLSX}"
                )
            if sum(e.file_size for e in entries) > MAX_UNPACKED:
                raise WorkbookRefused(
                    f"the workbook unpacks to more than {MAX_UNPACKED // 2**20} MiB; keep only the "
                    "query sheet, or split it into several files"
                )
            sheets = [e for e in entries if e.filename.startswith("xl/worksheets/")]
            return any(_holds_formula(archive, e) for e in sheets)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError):
        raise WorkbookRefused(  # RuntimeError: an encrypted entry; NotImplementedError: its method
            "the file is not an Excel workbook (an .xlsx file is a zip archive; this is not one, "
            f"or it is damaged or cut short); {_SAVE_XLSX}, or give a CSV file a .csv name"
        ) from None


def _holds_formula(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bool:
    """True if the sheet's XML has a formula element, read 1 MiB at a time."""
    tail = b""
    with archive.open(entry) as part:
        while chunk := part.read(2**20):
            if _FORMULA.search(tail + chunk):
                return True
            tail = chunk[-16:]
    return False


def _choose(sheets: Sequence[str], wanted: str | None) -> str:
    if not sheets:
        raise WorkbookRefused(f"the workbook has no worksheet; {_SAVE_XLSX}")
    if wanted is None:
        return sheets[0]
    same = [s for s in sheets if s.casefold() == wanted.casefold()]  # as Excel compares
    if same:
        return same[0]
    close = difflib.get_close_matches(wanted, sheets, n=1, cutoff=0.6)
    guess = f"did you mean '{close[0]}'? " if close else ""
    listed = ", ".join(show(s) for s in sheets)
    raise WorkbookRefused(f"the workbook has no sheet {show(wanted)}; {guess}its sheets: {listed}")


def _read(source: pd.ExcelFile | io.BytesIO, sheet: str, *, data_only: bool = True) -> pd.DataFrame:
    """Every cell of ``sheet`` as a Python object, empty ones as '' (nothing is NaN but errors).

    ``data_only=False`` reads formulas as written instead of their saved results.
    """
    import pandas as pd

    return pd.read_excel(
        source,
        sheet_name=sheet,
        header=None,
        dtype=object,
        na_filter=False,
        engine="openpyxl",
        engine_kwargs={"data_only": data_only},
    )


def _records(values: pd.DataFrame, formulas: pd.DataFrame | None) -> list[Record]:
    """Located records; a formula whose saved result is empty becomes a FORMULA cell."""
    unsaved = None
    if formulas is not None:  # the two reads may differ in size: align them on the larger
        index = range(max(len(values.index), len(formulas.index)))
        columns = range(max(len(values.columns), len(formulas.columns)))
        values = values.reindex(index=index, columns=columns, fill_value="")
        written = formulas.reindex(index=index, columns=columns, fill_value="")
        unsaved = ((values == "") & (written != "")).to_numpy(dtype=bool)
    records = []
    for row, shown in enumerate(values.to_numpy(dtype=object), 1):
        cells = tuple(
            _cell(value, row, n, unsaved is not None and bool(unsaved[row - 1, n - 1]))
            for n, value in enumerate(shown, 1)
        )
        record = Record(row, cells)
        if not record.is_blank_line:
            records.append(record)
    return records


def _cell(value: object, line: int, column: int, unsaved: bool) -> Cell:
    if unsaved:
        return Cell("=", line, column, kind=CellKind.FORMULA)
    kind, text = _shown(value)
    return Cell(text, line, column, kind=kind)


def _shown(value: object) -> tuple[CellKind, str]:
    """The cell as Excel shows it, and its kind; dates as YYYYMMDD, times as HHMMSS."""
    if isinstance(value, str):
        return CellKind.TEXT, value
    if isinstance(value, bool):
        return CellKind.TEXT, str(value).upper()
    if isinstance(value, float) and math.isnan(value):
        return CellKind.ERROR, "#ERROR"  # pandas reads #N/A, #REF!, ... as NaN
    if isinstance(value, numbers.Real):
        return CellKind.NUMBER, _number(value)
    if isinstance(value, date):  # datetime too: a date with a time of day is still that date
        return CellKind.DATE, value.strftime("%Y%m%d")
    if isinstance(value, timedelta) and timedelta(0) <= value < timedelta(days=1):
        value = (datetime.min + value).time()
    if isinstance(value, time):
        fraction = f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
        return CellKind.TIME, value.strftime("%H%M%S") + fraction
    return CellKind.TEXT, str(value)


def _number(value: numbers.Real) -> str:
    """``3`` for 3 and 3.0; otherwise the 15 significant digits Excel keeps."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return format(number, ".15g").upper()


def kind_problem(column: str, cell: Cell) -> str | None:
    """Why ``cell``'s Excel type does not fit ``column``; ``None`` if it does (or is CSV).

    Dates fit date columns, times time columns, numbers any column but identifiers and UIDs
    (and a time with an odd number of digits, which lost its leading zero).
    """
    vr = VR_BY_COLUMN.get(column)
    if cell.kind is CellKind.TEXT and ("\n" in cell.text or "\r" in cell.text):
        return "the cell holds a line break (Alt+Enter); query values are one line: remove it"
    if cell.kind is CellKind.ERROR:
        return "the cell shows an Excel error (such as #N/A or #REF!); correct it or type the value"
    if cell.kind is CellKind.FORMULA:
        return (
            "the cell holds a formula whose saved result is empty (or was never calculated: "
            "the workbook was written by a program); type the value, or in Excel copy the "
            "column and Paste Special → Values"
        )
    if cell.kind is CellKind.DATE and vr != "DA":
        return f"the cell is an Excel date (Excel turns entries such as 1-2 into dates); {_AS_TEXT}"
    if cell.kind is CellKind.TIME and vr != "TM":
        return f"the cell is an Excel time (Excel turns entries such as 1:2 into times); {_AS_TEXT}"
    if cell.kind is CellKind.NUMBER:
        return _number_problem(column, vr, cell.text)
    return None


def _number_problem(column: str, vr: str | None, text: str) -> str | None:
    if vr == "UI":
        return (
            "the cell is a number, not a UID: Excel converted the UIDs and lost digits; format "
            "the column as text (Format Cells → Text) and paste the UIDs again"
        )
    if column in _ID_COLUMNS:
        return (
            "the cell is a number, so Excel dropped any leading zeros (00123 became 123); "
            + _AS_TEXT
        )
    if vr == "TM" and len(text.split(".")[0].lstrip("-")) % 2:
        return (
            f"the cell is the number {text}: Excel dropped its leading zero (write 0{text}); "
            + _AS_TEXT
        )
    return None
