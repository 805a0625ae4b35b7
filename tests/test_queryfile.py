"""Tests for the query-file validator: every problem located, worded and reported at once."""

# The tables below pin whole user-facing messages, one case per line, so that a reviewer reads
# each message as the user sees it; wrapping them would hide exactly what is being checked.
# ruff: noqa: E501

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Collection
from pathlib import Path

import pytest

from pacsman.errors import Problem, QueryFileError, Severity
from pacsman.models import QueryRow
from pacsman.queryfile import KNOWN_COLUMNS, load_queryfile

EXAMPLE = Path(__file__).resolve().parents[1] / "queryfiles" / "example.csv"


def _write(tmp_path: Path, content: str | bytes, name: str = "q.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _csv(*rows: list[str], delimiter: str = ",") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _problems(path: Path, pacs_names: Collection[str] | None = None) -> list[str]:
    """Every problem as ``str(problem)`` with the tmp directory cut off, errors or not."""
    try:
        found = load_queryfile(path, pacs_names=pacs_names).warnings
    except QueryFileError as exc:
        found = tuple(exc.problems)
    return [str(p).removeprefix(str(path.parent) + "/") for p in found]


def _one_value(tmp_path: Path, column: str, value: str) -> list[str]:
    key = "AccessionNumber" if column != "AccessionNumber" else "PatientID"
    return _problems(_write(tmp_path, _csv([key, column], ["A1", value])))


# --- values --------------------------------------------------------------------------------

VALUE_ERRORS = [
    ("StudyDate", "2023-13-01", "'2023-13-01' is not a date; use YYYYMMDD or YYYYMMDD-YYYYMMDD"),
    ("StudyDate", "20230230", "'20230230' is not a real calendar date; use YYYYMMDD or YYYYMMDD-YYYYMMDD"),
    ("StudyDate", "20231231-20230101", "range '20231231-20230101' ends before it starts; write START-END, earliest first"),
    ("StudyDate", "2023*", "'2023*' has a wildcard; dates do not take '*' or '?': use a range such as 20230101-20231231"),
    ("StudyDate", "-", "a bare '-' matches every date; leave the cell empty or give a start or end"),
    ("PatientBirthDate", "1980", "the value is not a date; use YYYYMMDD or YYYYMMDD-YYYYMMDD"),
    ("StudyTime", "12:30:00", "'12:30:00' is not a DICOM time; write it without colons: 123000"),
    ("StudyTime", "2460", "'2460' is not a valid time: hours run 00-23, minutes and seconds 00-59"),
    ("StudyTime", "1200-0800", "'1200-0800' ends before it starts; write START-END, earliest first"),
    ("StudyTime", "123000.1234567", "'123000.1234567' is not a time; use HHMMSS (or HH, HHMM, HHMMSS.ffffff) or a range such as 080000-120000"),
    ("StudyTime", "12*", "'12*' has a wildcard; times do not take '*' or '?': use a range such as 080000-120000"),
    ("StudyInstanceUID", "1.2.03.4", "UID '1.2.03.4' has a component with a leading zero ('03'): write '3'"),
    ("StudyInstanceUID", "1..2", "UID '1..2' has an empty component ('..' or a dot at an end); UIDs are digits and dots, at most 64 characters"),
    ("StudyInstanceUID", "1.2.3a", "UID '1.2.3a' holds 'a'; UIDs are digits and dots, at most 64 characters"),
    ("StudyInstanceUID", "1." + "2" * 64, "UID '1.22222222222222222222222222222222222...' is 66 characters long; UIDs are digits and dots, at most 64 characters"),
    ("StudyInstanceUID", "12345678", "'12345678' is not a UID: UIDs start with 0., 1. or 2. and have several components, e.g. 1.2.840.10008...; is it in the right column?"),
    ("SeriesInstanceUID", "1.2\\", "'1.2\\' has an empty value; separate several UIDs with a single '\\'"),
    ("SeriesInstanceUID", "1.2.*", "'1.2.*' has a wildcard; UIDs match exactly: give whole UIDs, several separated by '\\' if needed"),
    ("SeriesNumber", "3.0", "'3.0' is not a whole number; use 3"),
    ("SeriesNumber", "3*", "'3*' has a wildcard; this column matches one whole number exactly, e.g. 3"),
    ("SeriesNumber", "three", "'three' is not a whole number; SeriesNumber matches one integer, e.g. 3"),
    ("SeriesNumber", "99999999999", "'99999999999' is out of range; SeriesNumber is a whole number up to 2147483647"),
    ("Modality", "mr", "'mr' is lower case; DICOM code strings are upper case: use 'MR'"),
    ("Modality", "MR\\CT", "'MR\\CT' contains '\\', which separates DICOM values; put one value per row"),
    ("Modality", "M-R", "'M-R' may only hold A-Z, 0-9, spaces, '_' and the wildcards '*' and '?'"),
    ("ImageType", "ORIGINAL\\primary", "'primary' is lower case; DICOM code strings are upper case: use 'PRIMARY'"),
    ("PatientName", "*", "a bare '*' matches everything; leave the cell empty or narrow it"),
    ("PatientID", "*?", "'*?' is only wildcards; leave the cell empty or narrow it"),
    ("PatientName", "DOE\\JANE", "the value contains '\\', which separates DICOM values; separate family and given names with '^' (e.g. DOE^JANE)"),
    ("PatientName", "A=B=C=D", "the value has more than 3 '='-separated groups; a name has at most 3"),
    ("StudyDescription", "Head\\Neck", "'Head\\Neck' contains '\\', which separates DICOM values; remove it"),
    ("AccessionNumber", "A" * 17, "the value is 17 characters long; AccessionNumber (VR SH) holds at most 16: shorten it, ending with '*' to match the rest"),
    ("SequenceName", "x" * 17, "'xxxxxxxxxxxxxxxxx' is 17 characters long; SequenceName (VR SH) holds at most 16: shorten it, ending with '*' to match the rest"),
    ("ProtocolName", "p" * 65, "'ppppppppppppppppppppppppppppppppppppp...' is 65 characters long; ProtocolName (VR LO) holds at most 64: shorten it, ending with '*' to match the rest"),
]  # fmt: skip


@pytest.mark.parametrize(("column", "value", "message"), VALUE_ERRORS)
def test_value_error_is_located_and_worded(
    tmp_path: Path, column: str, value: str, message: str
) -> None:
    """A bad value gives one error at line 2, field 2, naming column, value, rule and fix."""
    assert _one_value(tmp_path, column, value) == [f"q.csv:2:2: column '{column}': {message}"]


VALUES_ACCEPTED = [
    ("StudyDate", "20240105"),
    ("StudyDate", "20240101-20241231"),
    ("StudyDate", "-20240101"),
    ("StudyDate", "20240101-"),
    ("AcquisitionDate", "20240229"),
    ("StudyTime", "08"),
    ("StudyTime", "0830"),
    ("StudyTime", "083000.123456"),
    ("StudyTime", "080000-120000"),
    ("StudyTime", "-1200"),
    ("StudyInstanceUID", "1.2.840.10008.5.1.4.1.1.4"),
    ("StudyInstanceUID", "1.2.3.0.4\\1.2.3.0.5"),
    ("SeriesNumber", "12"),
    ("SeriesNumber", "-1"),
    ("Modality", "MR"),
    ("Modality", "M?"),
    ("ImageType", "ORIGINAL\\PRIMARY\\*"),
    ("PatientName", "DOE^JANE*"),
    ("PatientName", "Müller^Jürgen"),
    ("PatientID", "DEMO00?"),
    ("SeriesDescription", "T1 MPRAGE *"),
    ("DeviceSerialNumber", "SN-4711"),
]


@pytest.mark.parametrize(("column", "value"), VALUES_ACCEPTED)
def test_valid_value_is_kept_as_written(tmp_path: Path, column: str, value: str) -> None:
    """Valid DICOM matching values load without problems and reach the row unchanged."""
    key = "AccessionNumber" if column != "AccessionNumber" else "PatientID"
    query = load_queryfile(_write(tmp_path, _csv([key, column], ["A1", value])))
    assert query.warnings == ()
    assert query.rows[0].keys[column] == value


EXCEL_DATES = [
    ("2023-01-31", "20230131"),
    ("31/01/2023", "20230131"),
    ("1/31/2023", "20230131"),
    ("31.01.2023", "20230131"),
    ("01/02/2023", "20230102 or 20230201"),
    ("2023-01-31 00:00:00", "20230131"),
    ("44957", "20230131"),
    ("2023-01-01 - 2023-12-31", "20230101-20231231"),
]


@pytest.mark.parametrize(("value", "example"), EXCEL_DATES)
def test_excel_reformatted_date_is_recognised(tmp_path: Path, value: str, example: str) -> None:
    """Dates Excel displays its own way get the Excel advice with the YYYYMMDD spelling."""
    expected = (
        f"q.csv:2:2: column 'StudyDate': '{value}' is not a DICOM date; Excel may have "
        f"reformatted it; use YYYYMMDD (e.g. {example}) and format the column as Text"
    )
    assert _one_value(tmp_path, "StudyDate", value) == [expected]


@pytest.mark.parametrize("value", ["1.23457E+25", "1,23457E+25", "2.5e38"])
def test_excel_scientific_notation_uid(tmp_path: Path, value: str) -> None:
    """A UID Excel turned into a number is called out as such, with the Text-column fix."""
    expected = (
        f"q.csv:2:2: column 'StudyInstanceUID': '{value}' is a number, not a UID: Excel "
        "converted the UIDs and lost digits; format the column as Text and paste the UIDs again"
    )
    assert _one_value(tmp_path, "StudyInstanceUID", value) == [expected]


# --- header ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "guess"),
    [
        ("patientID", "PatientID"),
        ("Patient ID", "PatientID"),
        ("patient_id", "PatientID"),
        ("Study Instance UID", "StudyInstanceUID"),
        ("StudyDat", "StudyDate"),
        ("SeriesDescripton", "SeriesDescription"),
        ("StudyUID", "StudyInstanceUID"),
        ("DOB", "PatientBirthDate"),
        ("subject", "Subject"),
    ],
)
def test_unknown_header_suggests_the_near_miss(tmp_path: Path, name: str, guess: str) -> None:
    """Case, spacing, underscores, typos and common aliases get a 'did you mean'."""
    path = _write(tmp_path, _csv(["AccessionNumber", name], ["A1", "x"]))
    assert _problems(path) == [f"q.csv:1:2: unknown column '{name}'; did you mean '{guess}'?"]


def test_unknown_header_without_near_miss_points_to_reference(tmp_path: Path) -> None:
    """An unknown name with no near miss points to the column reference."""
    path = _write(tmp_path, _csv(["AccessionNumber", "Colour"], ["A1", "red"]))
    assert _problems(path) == [
        "q.csv:1:2: unknown column 'Colour'; use a DICOM keyword from queryfiles/README.md, "
        "or Subject, Session, Pacs"
    ]


def test_header_problems(tmp_path: Path) -> None:
    """Duplicate names, and values under an empty header cell, are errors located exactly."""
    path = _write(tmp_path, _csv(["PatientID", "", "PatientID"], ["P1", "x", "P1"], ["P2", "", ""]))
    assert _problems(path) == [
        "q.csv:1:3: column 'PatientID' appears twice (also column 1); keep one",
        "q.csv:2:2: column 2 has no header but holds 'x'; name the column in the header line "
        "or delete its values",
    ]


def test_empty_trailing_column_from_excel_is_fine(tmp_path: Path) -> None:
    """Excel's empty trailing column (header and cells empty) is accepted silently."""
    query = load_queryfile(_write(tmp_path, "PatientID;;\nDEMO001;;\nDEMO002\n"))
    assert [r.keys["PatientID"] for r in query.rows] == ["DEMO001", "DEMO002"]
    assert query.warnings == ()


def test_header_without_query_column(tmp_path: Path) -> None:
    """A header of only Subject/Session/Pacs has nothing to match on."""
    path = _write(tmp_path, _csv(["Subject", "Session"], ["S1", "E1"]))
    assert _problems(path) == [
        "q.csv:1: the header names no query column; add at least one DICOM key such as "
        "PatientID, StudyDate or StudyInstanceUID (see queryfiles/README.md)"
    ]


def test_header_spaces_are_cleaned_with_warning(tmp_path: Path) -> None:
    """Stray spaces around header names are removed, with a warning at line 1 and the field."""
    query = load_queryfile(_write(tmp_path, " PatientID , StudyDate\nDEMO001,20240105\n"))
    assert [str(w).split(": ", 1)[1] for w in query.warnings] == [
        "warning: header 'PatientID': removed leading/trailing spaces",
        "warning: header 'StudyDate': removed leading/trailing spaces",
    ]
    assert [(w.line, w.column) for w in query.warnings] == [(1, 1), (1, 2)]
    assert dict(query.rows[0].keys) == {"PatientID": "DEMO001", "StudyDate": "20240105"}


# --- encoding, delimiter, invisible characters -----------------------------------------------

CLEANING = [
    ("DEMO001\u00a0", "DEMO001", "removed a no-break space (U+00A0)"),
    ("DEMO\u00a0001", "DEMO 001", "replaced a no-break space (U+00A0) with a plain space"),
    ("DEMO\u202f001", "DEMO 001", "replaced a narrow no-break space (U+202F) with a plain space"),
    ("DEMO001\f", "DEMO001", "removed a form feed (U+000C)"),
    ("\vDEMO001", "DEMO001", "removed a vertical tab (U+000B)"),
    ("DEMO\u200b001", "DEMO001", "removed a zero-width space (U+200B)"),
    ("DEMO\u200c\u200d001", "DEMO001", "removed a zero-width non-joiner (U+200C) and a zero-width joiner (U+200D)"),
    ("DEMO\u2060001", "DEMO001", "removed a word joiner (U+2060)"),
    ("\ufeffDEMO001", "DEMO001", "removed a byte-order mark (U+FEFF)"),
    ("DEMO\u00ad001", "DEMO001", "removed a soft hyphen (U+00AD)"),
    ("  DEMO001 ", "DEMO001", "removed leading/trailing spaces"),
    ("DEMO\x00001", "DEMO001", "removed a NUL character (U+0000)"),
    ("\u200b\u200bDEMO001 ", "DEMO001", "removed 2 zero-width spaces (U+200B) and leading/trailing spaces"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "clean", "what"), CLEANING)
def test_invisible_characters_are_cleaned_with_warning(
    tmp_path: Path, raw: str, clean: str, what: str
) -> None:
    """Invisible and space-like characters are removed, and the warning says which ones."""
    text = f"PatientID,StudyDescription\nDEMO001,{raw}\n"
    query = load_queryfile(_write(tmp_path, text))
    assert query.rows[0].keys["StudyDescription"] == clean
    assert [str(w) for w in query.warnings] == [
        f"{tmp_path}/q.csv:2:2: warning: column 'StudyDescription': {what}; "
        f"the value is now '{clean}'"
    ]


@pytest.mark.parametrize("column", ["PatientID", "PatientName", "AccessionNumber"])
def test_patient_values_are_never_quoted(tmp_path: Path, column: str) -> None:
    """Messages about PHI columns locate the cell but never repeat the patient's value."""
    text = f"{column},Modality\n\u00a0SECRET{'X' * 70},MR\n"
    with pytest.raises(QueryFileError) as caught:
        load_queryfile(_write(tmp_path, text))
    messages = [str(p) for p in caught.value.problems]
    assert len(messages) == 2
    assert not [m for m in messages if "SECRET" in m]
    assert f"q.csv:2:1: column '{column}': the value is 76 characters long" in messages[1]


def test_leading_bom_is_the_utf8_signature(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: accepted silently, the header is intact."""
    query = load_queryfile(_write(tmp_path, b"\xef\xbb\xbfPatientID\r\nDEMO001\r\n"))
    assert (query.warnings, query.rows[0].keys["PatientID"]) == ((), "DEMO001")


def test_bom_in_the_middle_is_cleaned_with_warning(tmp_path: Path) -> None:
    """A BOM left over from concatenated files is removed where it is, with a warning."""
    data = "PatientID,Subject\nDEMO001,S1\n\ufeffDEMO002,S2\n".encode()
    query = load_queryfile(_write(tmp_path, b"\xef\xbb\xbf" + data))
    assert [(w.line, w.column, w.message) for w in query.warnings] == [
        (3, 1, "column 'PatientID': removed a byte-order mark (U+FEFF)")
    ]


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_line_endings(tmp_path: Path, ending: str) -> None:
    """LF, CRLF and CR files all load, with the same physical line numbers."""
    text = ending.join(["PatientID", "DEMO001", "DEMO002", ""])
    query = load_queryfile(_write(tmp_path, text))
    assert [(r.line, r.keys["PatientID"]) for r in query.rows] == [(2, "DEMO001"), (3, "DEMO002")]


@pytest.mark.parametrize(
    "text",
    [
        "PatientID;StudyDate;Subject\nDEMO001;20240105;S1\n",
        "PatientID\tStudyDate\tSubject\nDEMO001\t20240105\tS1\n",
        "sep=;\nPatientID;StudyDate;Subject\nDEMO001;20240105;S1\n",
        '"PatientID";"StudyDate";"Subject"\n"DEMO001";"20240105";"S1"\n',
        "\n\nPatientID;StudyDate;Subject\n\nDEMO001;20240105;S1\n",
    ],
)
def test_delimiter_is_detected(tmp_path: Path, text: str) -> None:
    """';' (Excel in many locales), TAB and Excel's sep= hint are detected from the header."""
    row = load_queryfile(_write(tmp_path, text)).rows[0]
    assert (dict(row.keys), row.subject) == (
        {"PatientID": "DEMO001", "StudyDate": "20240105"},
        "S1",
    )


def test_ambiguous_delimiter_prefers_known_headers(tmp_path: Path) -> None:
    """With ',' and ';' in the header, the delimiter that yields known names is used."""
    path = _write(tmp_path, "PatientID;SeriesDescription;Subject\nDEMO001;T1, sag;S1\n")
    query = load_queryfile(path)
    assert query.rows[0].keys["SeriesDescription"] == "T1, sag"
    path = _write(tmp_path, "PatientID,StudyDescription,Subject;x\nDEMO001,Head;Neck,S1\n")
    assert _problems(path) == [
        "q.csv:1:3: unknown column 'Subject;x'; did you mean 'Subject'?",
    ]


def test_windows_1252_with_control_characters_is_refused(tmp_path: Path) -> None:
    """Not UTF-8, and a control character in Windows-1252 too: not text; located there.

    (Windows-1252 text is read with a warning: tests/test_queryfile_xlsx.py.)"""
    data = "PatientID;PatientName\nDEMO001;M\u00fcller\nDEMO002;Sch\x01n\n".encode("cp1252")
    assert _problems(_write(tmp_path, data)) == [
        "q.csv:3:2: byte 0x01 is a control character: the file is neither UTF-8 nor "
        'Windows-1252 text; save it as "CSV UTF-8" in Excel and try again, or name its '
        "encoding with --encoding NAME (e.g. --encoding cp1250)"
    ]


def test_bytes_neither_utf8_nor_cp1252(tmp_path: Path) -> None:
    """Bytes undefined in Windows-1252 too get a plain re-save advice, or --encoding."""
    path = _write(tmp_path, b"PatientID\nDEMO\x81\n")
    assert _problems(path) == [
        "q.csv:2:1: byte 0x81 is not UTF-8 and the file is not Windows-1252 either; "
        'save it as "CSV UTF-8" in Excel and try again, or name its encoding with --encoding '
        "NAME (e.g. --encoding cp1250)"
    ]


@pytest.mark.parametrize(
    ("encoding", "iconv"),
    [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE")],
)
def test_utf16_is_refused_clearly(tmp_path: Path, encoding: str, iconv: str) -> None:
    """Excel's "Unicode Text" (UTF-16, with or without BOM) gets its own clear error; without
    a BOM the iconv line names the byte order (iconv reads BOM-less UTF-16 as big-endian)."""
    path = _write(tmp_path, "PatientID\nDEMO001\n".encode(encoding), name="list.txt")
    assert _problems(path) == [
        'list.txt: the file is UTF-16 (Excel "Unicode Text"), not UTF-8; save it as '
        f'"CSV UTF-8" in Excel, or: iconv -f {iconv} -t UTF-8 list.txt > list-utf8.txt'
    ]


def test_quoted_multi_line_cell_keeps_physical_line_numbers(tmp_path: Path) -> None:
    """A quoted cell spanning lines is an error at its start; later lines keep true numbers."""
    text = 'PatientID,SeriesDescription,Modality\nDEMO001,"T1\nsag",MR\nDEMO002,T2,mr\n'
    assert _problems(_write(tmp_path, text)) == [
        "q.csv:2:2: column 'SeriesDescription': the quoted value 'T1\\nsag' spans several "
        "lines; query values are one line: remove the line breaks (or close a quote left open)",
        "q.csv:4:3: column 'Modality': 'mr' is lower case; DICOM code strings are upper case: "
        "use 'MR'",
    ]


@pytest.mark.parametrize("cell", ['"DEMO001', ' "DEMO001"'])
def test_quote_that_opens_nothing(tmp_path: Path, cell: str) -> None:
    """A quote left open (or preceded by a space) would reach the PACS as a literal quote."""
    path = _write(tmp_path, f"PatientID,Modality\n{cell},MR\n")
    assert _problems(path) == [
        "q.csv:2:1: column 'PatientID': the value starts with a quote that opens no "
        "quoted value (it is never closed, or something precedes it); remove the quotes"
    ]


def test_quoted_cells_and_doubled_quotes(tmp_path: Path) -> None:
    """RFC 4180 quoting: delimiters and doubled quotes inside quotes are data."""
    path = _write(tmp_path, 'PatientID,StudyDescription\nDEMO001,"Head, ""neck"""\n')
    assert load_queryfile(path).rows[0].keys["StudyDescription"] == 'Head, "neck"'


# --- rows ------------------------------------------------------------------------------------


def test_rows_shape_and_emptiness(tmp_path: Path) -> None:
    """Empty rows inside are errors, trailing ones a warning; extra cells error, missing warn."""
    text = "PatientID,StudyDate,Subject\nDEMO001,20240105,S1\n,,\n\nDEMO002,20240212,S2,x\nDEMO003\n,,\n,,\n"
    assert _problems(_write(tmp_path, text)) == [
        "q.csv:3: row has no values; delete it",
        "q.csv:5:4: row has 4 cells but the header has 3; remove 'x' or name its column in the "
        "header",
        "q.csv:6: warning: row has 1 of the header's 3 cells; the missing cells count as empty",
        "q.csv:7: warning: 2 rows at the end (lines 7-8) hold no values; ignored them",
    ]


def test_blank_lines_are_skipped_silently(tmp_path: Path) -> None:
    """Lines with nothing on them (no delimiters) are skipped without a word."""
    query = load_queryfile(_write(tmp_path, "\nPatientID\n\nDEMO001\n  \n\nDEMO002\n\n"))
    assert [(r.line, r.keys["PatientID"]) for r in query.rows] == [(4, "DEMO001"), (7, "DEMO002")]
    assert query.warnings == ()


def test_row_without_query_value(tmp_path: Path) -> None:
    """A row with only Subject/Session/Pacs has nothing to match on."""
    path = _write(tmp_path, _csv(["PatientID", "Subject", "Session"], ["", "S1", "E1"]))
    assert _problems(path) == [
        "q.csv:2: row has no query value (only Subject/Session/Pacs); fill at least one query "
        "column such as PatientID"
    ]


def test_duplicate_rows_are_dropped_with_warning(tmp_path: Path) -> None:
    """Rows identical after cleaning are dropped, naming the earlier line; labels stay unique."""
    text = "PatientID,Subject,Session\nDEMO001,S1,E1\nDEMO002,S2,E2\nDEMO001 ,S1,E1\n"
    query = load_queryfile(_write(tmp_path, text))
    assert [r.line for r in query.rows] == [2, 3]
    assert [(w.line, w.message) for w in query.warnings] == [
        (4, "row repeats line 2; dropped this copy")
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("", "q.csv: the file is empty; write a header line, then one query per row"),
    ("\n\n", "q.csv: the file is empty; write a header line, then one query per row"),
    ("PatientID\n", "q.csv: the file has no data rows; add one query per row below the header"),
    ("PatientID;;\n;;\n", "q.csv: the file has no data rows; add one query per row below the header"),
])  # fmt: skip
def test_empty_file_and_header_only(tmp_path: Path, text: str, message: str) -> None:
    """A file without data rows is refused."""
    assert message in _problems(_write(tmp_path, text))


# --- XNAT labels -----------------------------------------------------------------------------


def _labels(tmp_path: Path, *rows: tuple[str, str, str]) -> list[str]:
    return _problems(_write(tmp_path, _csv(["PatientID", "Subject", "Session"], *map(list, rows))))


def test_session_is_unique(tmp_path: Path) -> None:
    """A Session label used twice is an error on the second use, naming the first line."""
    found = _labels(tmp_path, ("P1", "S1", "E1"), ("P2", "S1", "E1"), ("P3", "S2", "e1"))
    assert found == [
        "q.csv:3:3: column 'Session': 'E1' is already the Session of line 2; give each session "
        "its own label",
        "q.csv:4:3: column 'Session': 'e1' is already the Session of line 2 as 'E1' (XNAT "
        "ignores case), for Subject 'S1'; a session belongs to one subject; give each session "
        "its own label",
    ]


def test_session_needs_subject(tmp_path: Path) -> None:
    """A Session without a Subject on its row is an error."""
    assert _labels(tmp_path, ("P1", "", "E1")) == [
        "q.csv:2:3: column 'Session': 'E1' has no Subject; fill the Subject column on this row"
    ]


def test_subjects_differing_only_in_case(tmp_path: Path) -> None:
    """'sub01' and 'SUB01' clash: XNAT finds subjects case-insensitively."""
    found = _labels(tmp_path, ("P1", "sub01", "E1"), ("P2", "SUB01", "E2"), ("P3", "sub01", "E3"))
    assert found == [
        "q.csv:3:2: column 'Subject': 'SUB01' differs only in case from 'sub01' on line 2; XNAT "
        "matches subject labels case-insensitively: spell them the same"
    ]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("sub 01", "'sub 01' holds ' '; XNAT labels take only A-Z, a-z, 0-9, '_' and '-'"),
        ("sub.01/a", "'sub.01/a' holds '.', '/'; XNAT labels take only A-Z, a-z, 0-9, '_' and '-'"),
        ("S" * 65, "'SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS...' is 65 characters long; XNAT labels "
         "hold at most 64"),
    ],
)  # fmt: skip
def test_label_characters(tmp_path: Path, label: str, message: str) -> None:
    """Subject labels must be XNAT-safe; the message lists the offending characters."""
    assert _labels(tmp_path, ("P1", label, "E1")) == [f"q.csv:2:2: column 'Subject': {message}"]


@pytest.mark.parametrize(
    ("pacs", "names", "message"),
    [
        ("sectra", ["SECTRA", "ARIA"], "'sectra' is not a PACS node in the config; did you mean 'SECTRA'?"),
        ("pacs3", ["main", "research"], "'pacs3' is not a PACS node in the config; use one of: main, research"),
        ("x", [], "'x' names a PACS, but the config defines none; add it to the config"),
    ],
)  # fmt: skip
def test_pacs_must_be_configured(tmp_path: Path, pacs: str, names: list[str], message: str) -> None:
    """With pacs_names, a Pacs cell must name a configured node (nearest one suggested)."""
    path = _write(tmp_path, _csv(["PatientID", "Pacs"], ["P1", pacs]))
    assert _problems(path, pacs_names=names) == [f"q.csv:2:2: column 'Pacs': {message}"]


def test_pacs_unchecked_without_config(tmp_path: Path) -> None:
    """Without pacs_names, any Pacs value is taken as written."""
    path = _write(tmp_path, _csv(["PatientID", "Pacs"], ["P1", "anything"]))
    assert load_queryfile(path).rows[0].pacs == "anything"


# --- the whole file ---------------------------------------------------------------------------


def test_ten_mistakes_are_reported_at_once(tmp_path: Path) -> None:
    """Ten different mistakes give ten located errors, in file order, in one exception."""
    text = (
        "PatientID;StudyDate;patientName;Modality;StudyInstanceUID;SeriesNumber;Subject;Session\n"
        "DEMO001;2024-01-05;x;mr;1.2.3;1;S1;E1\n"  # Excel date, lower-case modality
        "DEMO002;20240230;x;MR;1.23457E+25;3.0;S2;E2\n"  # bad day, Excel UID, 3.0
        "*;20240105;x;MR;1.2.3;2;S 3;E1\n"  # bare '*', bad label, session reused
        ";;;;;;;\n"  # empty row in the middle
        "DEMO004;20240105;x;MR;1.2.3;4;S4;E4;extra\n"  # too many cells
        "DEMO005;20240105;x;MR;1.2.3;5;S5;E5\n"
    )
    with pytest.raises(QueryFileError, match=r"^11 problem\(s\) in the query file:\n") as caught:
        load_queryfile(_write(tmp_path, text))
    located = [(p.line, p.column) for p in caught.value.problems]
    assert located == [
        (1, 3), (2, 2), (2, 4), (3, 2), (3, 5), (3, 6), (4, 1), (4, 7), (4, 8), (5, None), (6, 9)
    ]  # fmt: skip
    assert all(p.severity is Severity.ERROR for p in caught.value.problems)
    assert "q.csv:2:2: column 'StudyDate': '2024-01-05' is not a DICOM date" in str(caught.value)


def test_warnings_and_errors_are_reported_together_in_file_order(tmp_path: Path) -> None:
    """When there is an error, the warnings ride along in the exception, in file order."""
    text = "PatientID,Modality\nDEMO001\u00a0,MR\nDEMO002,mr\nDEMO001,MR\n"
    with pytest.raises(QueryFileError) as caught:
        load_queryfile(_write(tmp_path, text))
    assert [(p.line, p.severity) for p in caught.value.problems] == [
        (2, Severity.WARNING),
        (3, Severity.ERROR),
        (4, Severity.WARNING),
    ]


def test_problem_source_is_the_path_as_given(tmp_path: Path) -> None:
    """``source`` is ``str(path)`` exactly as the caller passed it."""
    path = _write(tmp_path, "PatientID,Modality\nDEMO001,mr\n")
    with pytest.raises(QueryFileError) as caught:
        load_queryfile(path)
    assert caught.value.problems[0] == Problem(
        str(path),
        "column 'Modality': 'mr' is lower case; DICOM code strings are upper case: use 'MR'",
        2,
        2,
    )


def test_missing_file_is_a_query_file_error(tmp_path: Path) -> None:
    """A path that cannot be read is reported as a QueryFileError, not a traceback."""
    with pytest.raises(QueryFileError, match=r"nope\.csv: cannot read the query file \("):
        load_queryfile(tmp_path / "nope.csv")


def test_result_carries_rows_hash_and_labels(tmp_path: Path) -> None:
    """The QueryFile holds the path, the SHA-256 of the raw bytes and one QueryRow per row."""
    data = b"PatientID,StudyDate,Subject,Session,Pacs\r\nDEMO001,20240105,S1,E1,main\r\n"
    path = _write(tmp_path, data)
    query = load_queryfile(path, pacs_names={"main"})
    expected_row = QueryRow(
        2, {"PatientID": "DEMO001", "StudyDate": "20240105"}, "S1", "E1", "main"
    )
    assert (query.path, query.sha256, query.rows) == (
        path,
        hashlib.sha256(data).hexdigest(),
        (expected_row,),
    )


def test_example_loads_clean() -> None:
    """queryfiles/example.csv, the documented example, loads without a single warning."""
    query = load_queryfile(EXAMPLE)
    assert query.warnings == ()
    assert [(r.keys["PatientID"], r.subject, r.session) for r in query.rows] == [
        ("DEMO001", "SUBJ01", "SESS01"),
        ("DEMO002", "SUBJ02", "SESS02"),
        ("DEMO003", "SUBJ03", "SESS03"),
    ]


def test_readme_documents_every_column() -> None:
    """The column reference names every column the validator knows."""
    readme = (EXAMPLE.parent / "README.md").read_text(encoding="utf-8")
    assert [c for c in KNOWN_COLUMNS if f"`{c}`" not in readme] == []
