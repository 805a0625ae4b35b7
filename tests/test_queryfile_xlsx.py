"""Excel query files (.xlsx, read through pandas) and CSV encodings (Windows-1252, --encoding).

Workbooks are generated with openpyxl, as a data manager's Excel would save them: dates as date
cells, IDs typed as numbers, several sheets, formulas, error cells.
"""

# The tables below pin whole user-facing messages, one case per line.
# ruff: noqa: E501

from __future__ import annotations

import csv
import io
import re
import zipfile
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from pacsman.cli import main
from pacsman.errors import QueryFileError, Severity
from pacsman.queryfile import load_queryfile
from pacsman.testing.fakepacs import FakePacs
from tests.helpers import write_config

HEADER = ["PatientID", "StudyDate", "StudyTime", "SeriesNumber", "Modality", "Subject", "Session"]
AS_TEXT = "format the column as text (select it, Format Cells → Text), then retype the values"


def _workbook(
    path: Path, *rows: list[Any], sheets: dict[str, list[list[Any]]] | None = None
) -> Path:
    """Save ``rows`` as the first sheet ('Sheet1') of ``path``, then any further ``sheets``."""
    book = openpyxl.Workbook()
    first = book.active
    first.title = "Sheet1"
    for row in rows:
        first.append(row)
    for title, more in (sheets or {}).items():
        sheet = book.create_sheet(title)
        for row in more:
            sheet.append(row)
    book.save(path)
    return path


def _problems(path: Path, **how: Any) -> list[str]:
    """Every problem as ``str(problem)`` with the tmp directory cut off, errors or not."""
    try:
        found = load_queryfile(path, **how).warnings
    except QueryFileError as exc:
        found = tuple(exc.problems)
    return [str(p).removeprefix(str(path.parent) + "/") for p in found]


def _one_cell(tmp_path: Path, column: str, value: Any) -> list[str]:
    """The problems of a workbook whose row 2 holds ``value`` under ``column`` (cell B2)."""
    key = "StudyDescription" if column != "StudyDescription" else "Modality"
    return _problems(_workbook(tmp_path / "q.xlsx", [key, column], ["MR", value]))


# --- what the user sees ------------------------------------------------------------------------


def test_round_trip_dates_numbers_and_text_ids(tmp_path: Path) -> None:
    """Date and time cells become YYYYMMDD and HHMMSS, 3.0 is 3, IDs typed as text keep their
    leading zeros, ranges are text as in CSV; empty rows are skipped, rows keep their number."""
    path = _workbook(
        tmp_path / "q.xlsx",
        HEADER,
        ["00123", date(2024, 1, 5), time(14, 30), 3, "MR", "007", "E1"],
        [],  # an empty row, as Excel users leave them: skipped silently
        ["00124", datetime(2024, 2, 12, 9, 15), "0830", 3.0, "CT", "008", "E2"],
        ["00125", "20240301-20240331", "080000-120000", None, None, "009", "E3"],
        ["00126", 20240105, 143000, "4", None, "010", "E4"],
    )
    query = load_queryfile(path)
    assert query.warnings == ()
    assert [(r.line, dict(r.keys), r.subject, r.session) for r in query.rows] == [
        (2, {"PatientID": "00123", "StudyDate": "20240105", "StudyTime": "143000", "SeriesNumber": "3", "Modality": "MR"}, "007", "E1"),
        (4, {"PatientID": "00124", "StudyDate": "20240212", "StudyTime": "0830", "SeriesNumber": "3", "Modality": "CT"}, "008", "E2"),
        (5, {"PatientID": "00125", "StudyDate": "20240301-20240331", "StudyTime": "080000-120000"}, "009", "E3"),
        (6, {"PatientID": "00126", "StudyDate": "20240105", "StudyTime": "143000", "SeriesNumber": "4"}, "010", "E4"),
    ]  # fmt: skip


NUMERIC_IDS = [
    ("PatientID", 98765),
    ("AccessionNumber", 98765),
    ("DeviceSerialNumber", 98765),
    ("Subject", 98765),
    ("Session", 98765.0),
]


@pytest.mark.parametrize(("column", "number"), NUMERIC_IDS)
def test_number_in_an_id_column_is_a_located_error(
    tmp_path: Path, column: str, number: float
) -> None:
    """Excel stores 00123 typed into a General cell as the number 123: refused, never converted,
    with the fix; the number itself is never quoted (IDs are patient data)."""
    found = _one_cell(tmp_path, column, number)
    assert found == [
        f"q.xlsx:Sheet1:B2: column '{column}': the cell is a number, so Excel dropped any "
        f"leading zeros (00123 became 123); {AS_TEXT}"
    ]
    assert "98765" not in found[0]


CELL_ERRORS = [
    ("StudyInstanceUID", 1.23457e25, "the cell is a number, not a UID: Excel converted the UIDs and lost digits; format the column as text (Format Cells → Text) and paste the UIDs again"),
    ("StudyTime", 83000, f"the cell is the number 83000: Excel dropped its leading zero (write 083000); {AS_TEXT}"),
    ("PatientID", date(2024, 1, 2), f"the cell is an Excel date (Excel turns entries such as 1-2 into dates); {AS_TEXT}"),
    ("StudyDescription", time(1, 2), f"the cell is an Excel time (Excel turns entries such as 1:2 into times); {AS_TEXT}"),
    ("StudyDate", time(1, 2), f"the cell is an Excel time (Excel turns entries such as 1:2 into times); {AS_TEXT}"),
    ("SeriesDescription", "T1\nsag", "the cell holds a line break (Alt+Enter); query values are one line: remove it"),
    ("StudyDate", "#N/A", "the cell shows an Excel error (such as #N/A or #REF!); correct it or type the value"),
    ("StudyDate", "2024-01-05", "'2024-01-05' is not a DICOM date; Excel may have reformatted it; use YYYYMMDD (e.g. 20240105) and format the column as Text"),
    ("StudyDate", 45296, "'45296' is not a DICOM date; Excel may have reformatted it; use YYYYMMDD (e.g. 20240105) and format the column as Text"),
    ("SeriesNumber", 2.5, "'2.5' is not a whole number; SeriesNumber matches one integer, e.g. 3"),
    ("Modality", "mr", "'mr' is lower case; DICOM code strings are upper case: use 'MR'"),
]  # fmt: skip


@pytest.mark.parametrize(("column", "value", "message"), CELL_ERRORS)
def test_cell_errors_are_located_as_sheet_and_cell(
    tmp_path: Path, column: str, value: Any, message: str
) -> None:
    """What Excel changed, and the CSV rules, give one error located as q.xlsx:Sheet1:B2."""
    assert _one_cell(tmp_path, column, value) == [f"q.xlsx:Sheet1:B2: column '{column}': {message}"]


def test_numbers_where_numbers_are_meant(tmp_path: Path) -> None:
    """Numbers in text columns read as shown: 3 (not 3.0), 2.5, and 0.1 + 0.2 as Excel's 0.3."""
    path = _workbook(
        tmp_path / "q.xlsx",
        ["Modality", "StudyDescription", "ProtocolName", "SequenceName"],
        ["MR", 3.0, 2.5, 0.1 + 0.2],
    )
    assert dict(load_queryfile(path).rows[0].keys) == {
        "Modality": "MR",
        "StudyDescription": "3",
        "ProtocolName": "2.5",
        "SequenceName": "0.3",
    }


def test_whole_file_is_reported_at_once_with_cell_names(tmp_path: Path) -> None:
    """Header, row and cell problems of a sheet are all located the Excel way, in row order."""
    path = _workbook(
        tmp_path / "q.xlsx",
        ["PatientID", "patientName", "Modality", None, "PatientID"],
        ["P1", "x", "MR", "stray", "P1"],
        [None, "x", None, None, None],
        ["P2", None, "MR"],
        ["P2", None, "MR"],
        [None, None, "mr"],
    )
    assert _problems(path) == [
        "q.xlsx:Sheet1:B1: unknown column 'patientName'; did you mean 'PatientName'?",
        "q.xlsx:Sheet1:E1: column 'PatientID' appears twice (also column A); keep one",
        "q.xlsx:Sheet1:D2: column D has no header but holds 'stray'; name the column in the header line or delete its values",
        "q.xlsx:Sheet1:3: row has no query value (only Subject/Session/Pacs); fill at least one query column such as PatientID",
        "q.xlsx:Sheet1:5: warning: row repeats line 4; dropped this copy",
        "q.xlsx:Sheet1:C6: column 'Modality': 'mr' is lower case; DICOM code strings are upper case: use 'MR'",
    ]


def test_empty_sheet_and_header_only(tmp_path: Path) -> None:
    """A sheet with nothing, or only a header, is refused like such a CSV file, naming the sheet."""
    assert _problems(_workbook(tmp_path / "q.xlsx")) == [
        "q.xlsx:Sheet1: the sheet is empty; write a header line, then one query per row"
    ]
    assert _problems(_workbook(tmp_path / "q.xlsx", ["PatientID"], [], [None])) == [
        "q.xlsx:Sheet1: the sheet has no data rows; add one query per row below the header"
    ]


# --- sheets --------------------------------------------------------------------------------------


def _two_sheets(tmp_path: Path) -> Path:
    return _workbook(
        tmp_path / "q.xlsx",
        ["Notes"],
        ["this sheet explains the list"],
        sheets={"Cohort": [["PatientID", "Modality"], [], ["DEMO002", "mr"]]},
    )


def test_first_sheet_by_default_and_another_with_sheet(tmp_path: Path) -> None:
    """The first sheet is read unless --sheet names another; Excel compares names ignoring case."""
    path = _two_sheets(tmp_path)
    assert _problems(path) == [
        "q.xlsx:Sheet1:1: the header names no query column; add at least one DICOM key such as PatientID, StudyDate or StudyInstanceUID (see queryfiles/README.md)",
        "q.xlsx:Sheet1:A1: unknown column 'Notes'; use a DICOM keyword from queryfiles/README.md, or Subject, Session, Pacs",
    ]
    message = "q.xlsx:Cohort:B3: column 'Modality': 'mr' is lower case; DICOM code strings are upper case: use 'MR'"
    assert _problems(path, sheet="Cohort") == [message]
    assert _problems(path, sheet="COHORT") == [message]


def test_unknown_sheet_names_the_sheets(tmp_path: Path) -> None:
    """A --sheet the workbook does not have: the nearest name, and every sheet's name."""
    path = _two_sheets(tmp_path)
    assert _problems(path, sheet="Cohrt") == [
        "q.xlsx: the workbook has no sheet 'Cohrt'; did you mean 'Cohort'? its sheets: 'Sheet1', 'Cohort'"
    ]


def test_sheet_and_encoding_are_for_their_kind_of_file(tmp_path: Path) -> None:
    """--sheet on a CSV file and --encoding on a workbook are mistakes, said as such."""
    csv_path = tmp_path / "q.csv"
    csv_path.write_text("PatientID\nP1\n", encoding="utf-8")
    assert _problems(csv_path, sheet="Cohort") == [
        "q.csv: --sheet is for Excel workbooks (.xlsx), but q.csv is a CSV file; drop it"
    ]
    book = _workbook(tmp_path / "q.xlsx", ["PatientID"], ["P1"])
    assert _problems(book, encoding="cp1252") == [
        "q.xlsx: --encoding is for CSV files, but q.xlsx is an Excel workbook; drop it"
    ]


# --- formulas --------------------------------------------------------------------------------


def _with_saved_results(path: Path, results: dict[str, str]) -> Path:
    """Write each formula cell's saved result into the sheet XML, as Excel does on save."""
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode()
    for cell, value in results.items():
        xml = re.sub(
            rf'<c r="{cell}"><f>(.*?)</f><v\s*/>',
            rf'<c r="{cell}" t="str"><f>\1</f><v>{value}</v>',
            xml,
        )
    parts["xl/worksheets/sheet1.xml"] = xml.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return path


def test_formulas_give_their_saved_result_or_are_refused(tmp_path: Path) -> None:
    """A formula's saved result is read as shown; one never calculated (written by a program)
    is refused, since reading it as empty would widen the query."""
    path = _workbook(
        tmp_path / "q.xlsx",
        ["PatientID", "StudyDate"],
        ['="00"&"123"', '=TEXT(TODAY(),"YYYYMMDD")'],
        ["P2", "=TODAY()"],
    )
    _with_saved_results(path, {"A2": "00123", "B2": "20240105"})
    assert _problems(path) == [
        "q.xlsx:Sheet1:B3: column 'StudyDate': the cell holds a formula whose saved result is empty (or was never calculated: the workbook was written by a program); type the value, or in Excel copy the column and Paste Special → Values"
    ]
    _with_saved_results(path, {"B3": "20240212"})
    assert [dict(r.keys) for r in load_queryfile(path).rows] == [
        {"PatientID": "00123", "StudyDate": "20240105"},
        {"PatientID": "P2", "StudyDate": "20240212"},
    ]


# --- not a workbook -------------------------------------------------------------------------------

NOT_XLSX = 'the file is not an Excel workbook (an .xlsx file is a zip archive; this is not one, or it is damaged or cut short); in Excel, save it as "Excel Workbook (*.xlsx)" or as "CSV UTF-8", or give a CSV file a .csv name'


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def _damaged_sheet(tmp_path: Path) -> bytes:
    good = _workbook(tmp_path / "good.xlsx", ["PatientID"], ["P1"])
    with zipfile.ZipFile(good) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    parts["xl/worksheets/sheet1.xml"] = b"<worksheet><sheetData><row><c r="
    return _zip(parts)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PatientID\nP1\n", NOT_XLSX),
        (b"PK\x03\x04 truncated", NOT_XLSX),
        (_zip({"notes.txt": b"PatientID\nP1\n"}), 'the file is a zip archive but no Excel workbook (no xl/ folder); in Excel, save it as "Excel Workbook (*.xlsx)" or as "CSV UTF-8"'),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), 'the file is an Excel 97-2003 workbook (.xls) or a password-protected one, which pacsman cannot read; in Excel, save it as "Excel Workbook (*.xlsx)" or as "CSV UTF-8", without a password'),
    ],
    ids=["csv-named-xlsx", "cut-short", "zip-of-text", "xls"],
)  # fmt: skip
def test_what_is_no_workbook_is_refused_clearly(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """A CSV named .xlsx, a cut-short or foreign zip, an old .xls: one message, no traceback."""
    path = tmp_path / "q.xlsx"
    path.write_bytes(content)
    assert _problems(path) == [f"q.xlsx: {message}"]


def test_damaged_workbook_is_refused_with_the_reason(tmp_path: Path) -> None:
    """A workbook whose sheet XML is broken: named, with the parser's reason and the fix."""
    path = tmp_path / "q.xlsx"
    path.write_bytes(_damaged_sheet(tmp_path))
    [message] = _problems(path)
    assert message.startswith("q.xlsx: the file cannot be read as an Excel workbook (")
    assert message.endswith(
        '); it may be damaged: in Excel, save it as "Excel Workbook (*.xlsx)" or as "CSV UTF-8"'
    )


def test_zip_bomb_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workbook that unpacks beyond the limit is refused from the zip directory alone."""
    monkeypatch.setattr("pacsman.queryfile._excel.MAX_UNPACKED", 2**20)
    path = tmp_path / "q.xlsx"
    path.write_bytes(_zip({"[Content_Types].xml": b"", "xl/worksheets/sheet1.xml": bytes(2**21)}))
    assert _problems(path) == [
        "q.xlsx: the workbook unpacks to more than 1 MiB; keep only the query sheet, or split it into several files"
    ]


# --- CSV encodings --------------------------------------------------------------------------------

CP1252_WARNING = (
    "warning: the file is not UTF-8 (byte 0xFC here); read it as Windows-1252 (cp1252), which "
    'Excel\'s "CSV (Comma delimited)" writes on Windows; if accented letters come out wrong, '
    "name the encoding with --encoding NAME; to avoid this warning, save the file in Excel as "
    '"CSV UTF-8 (Comma delimited)"'
)


def test_windows_1252_csv_is_read_with_a_warning(tmp_path: Path) -> None:
    """Excel's default "CSV (Comma delimited)" on Windows: read as cp1252, one located warning."""
    path = tmp_path / "q.csv"
    text = "PatientID;StudyDescription;Subject\nDEMO001;Kopf \u00fcber alles;S1\nDEMO002;Sch\u00e4del \u20ac;S2\n"
    path.write_bytes(text.encode("cp1252"))
    query = load_queryfile(path)
    assert [r.keys["StudyDescription"] for r in query.rows] == ["Kopf über alles", "Schädel €"]
    assert [(str(w).removeprefix(f"{tmp_path}/"), w.severity) for w in query.warnings] == [
        (f"q.csv:2:2: {CP1252_WARNING}", Severity.WARNING)
    ]


def test_encoding_overrides_detection(tmp_path: Path) -> None:
    """--encoding reads the file in the named codec, without a warning; a BOM is dropped."""
    path = tmp_path / "q.csv"
    path.write_bytes("PatientID,StudyDescription\nP1,Dvořák\n".encode("cp1250"))
    assert load_queryfile(path).rows[0].keys["StudyDescription"] == "Dvoøák"  # as cp1252
    query = load_queryfile(path, encoding="cp1250")
    assert (query.rows[0].keys["StudyDescription"], query.warnings) == ("Dvořák", ())
    path.write_bytes("PatientID,StudyDescription\nP1,Dvořák\n".encode("utf-16"))
    assert load_queryfile(path, encoding="utf-16").rows[0].keys["StudyDescription"] == "Dvořák"


def test_encoding_that_does_not_fit_or_does_not_exist(tmp_path: Path) -> None:
    """A wrong --encoding is located at the first byte it cannot read; an unknown one named."""
    path = tmp_path / "q.csv"
    path.write_bytes("PatientID;StudyDescription\nP1;M\u00fcller\n".encode("cp1252"))
    assert _problems(path, encoding="utf-8") == [
        "q.csv:2:2: byte 0xFC is not utf-8 (--encoding utf-8); give the file's real encoding, or leave --encoding out to let pacsman detect it"
    ]
    assert _problems(path, encoding="klingon") == [
        "q.csv: --encoding 'klingon' is not a text encoding pacsman knows; use a name such as utf-8, cp1252, cp1250, latin-1 or utf-16, or leave --encoding out"
    ]


# --- the command line -------------------------------------------------------------------------


def test_validate_reads_the_sheet_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pacsman validate Q.xlsx --sheet NAME` checks that sheet, located messages on stderr."""
    path = _two_sheets(tmp_path)
    config = write_config(tmp_path, port=1, called_ae_title="ANY")
    assert main(["validate", str(path), "--sheet", "Cohort", "--config", str(config)]) == 2
    assert f"{path}:Cohort:B3: column 'Modality'" in capsys.readouterr().err
    cohort = _workbook(tmp_path / "c.xlsx", ["Notes"], sheets={"Cohort": [["PatientID"], ["P1"]]})
    assert main(["validate", str(cohort), "--sheet", "Cohort", "--config", str(config)]) == 0
    assert "1 row(s) OK" in capsys.readouterr().out


def test_run_reads_the_sheet_given(fake_pacs: Any, tmp_path: Path) -> None:
    """`pacsman --queryfile Q.xlsx --sheet NAME --info` queries that sheet's rows; the info CSV
    gives each its Excel row number."""
    pacs: FakePacs = fake_pacs()
    config = write_config(tmp_path, port=pacs.port, called_ae_title=pacs.ae_title)
    path = _workbook(
        tmp_path / "q.xlsx",
        ["PatientID"],
        ["DEMO001"],
        sheets={"Cohort": [["PatientID", "Subject"], [], ["DEMO002", "S2"]]},
    )
    argv = ["--queryfile", str(path), "--sheet", "Cohort", "--info", "--config", str(config)]
    assert main(argv) == 0
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {(r["row"], r["PatientID"], r["subject"]) for r in rows} == {("3", "DEMO002", "S2")}
