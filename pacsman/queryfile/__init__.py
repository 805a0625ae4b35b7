"""The query file: a CSV or an Excel workbook of C-FIND keys (and XNAT labels) -> validated
:class:`QueryFile`.

Everything is checked before any network traffic, and every problem is reported at once,
located as ``file:line:column`` (physical line, 1-based field number), or in a workbook as
``file:sheet:B7``.  The column reference is ``queryfiles/README.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pacsman.errors import QueryFileError, Severity
from pacsman.models import QUERY_COLUMNS, RELABEL_COLUMNS, QueryFile, QueryRow
from pacsman.queryfile._encoding import DecodeFailure, decode
from pacsman.queryfile._excel import (
    WORKBOOK_SUFFIXES,
    WorkbookRefused,
    is_workbook,
    kind_problem,
    read_sheet,
)
from pacsman.queryfile._labels import Labels, label_problem
from pacsman.queryfile._send import Targets, encoding_problem, header_column, sendable_problem
from pacsman.queryfile._text import (
    Cell,
    CellKind,
    FileRefused,
    Record,
    Report,
    clean,
    read_bytes,
    read_records,
    show,
)
from pacsman.queryfile._values import PHI_COLUMNS, check_value, value_warning

__all__ = ["KNOWN_COLUMNS", "MAX_BYTES", "column_number", "load_queryfile", "sendable_problem"]

#: The largest query file read: about a million rows.
MAX_BYTES = 64 * 2**20

#: Every column a query file may have: the DICOM query keys, then Subject, Session and Pacs.
KNOWN_COLUMNS: tuple[str, ...] = QUERY_COLUMNS + RELABEL_COLUMNS

#: Header spellings seen in the wild that normalisation and difflib alone do not catch.
_ALIASES = {
    "studyuid": "StudyInstanceUID",
    "seriesuid": "SeriesInstanceUID",
    "accession": "AccessionNumber",
    "accessionno": "AccessionNumber",
    "mrn": "PatientID",
    "dob": "PatientBirthDate",
    "birthdate": "PatientBirthDate",
    "dateofbirth": "PatientBirthDate",
    "experiment": "Session",
}
_LINE_BREAK = re.compile(r"[\r\n]")


def load_queryfile(
    path: Path,
    *,
    pacs_names: Collection[str] | None = None,
    character_sets: Mapping[str, str] | None = None,
    default_pacs: str | None = None,
    sheet: str | None = None,
    encoding: str | None = None,
) -> QueryFile:
    """Read and validate a query file completely, before any network traffic.

    Args:
        path: the CSV file (UTF-8, with or without BOM, else Windows-1252 with a warning;
            ``,``, ``;`` or TAB delimited), or an Excel workbook (``.xlsx``).
        pacs_names: the configured PACS nodes a ``Pacs`` cell may name; ``None`` skips that
            check (and takes the names of ``character_sets`` when that is given).
        character_sets: each PACS node's ``character_set``: every value must be sendable to
            the node its row goes to (its ``Pacs`` cell, else ``default_pacs``, else the
            first node).  ``None`` checks only what no character set can send.
        default_pacs: the node of rows without a ``Pacs`` cell.
        sheet: the workbook's sheet to read (default: the first); an error for a CSV file.
        encoding: the CSV file's encoding, instead of detecting it (``--encoding``).

    Returns:
        The rows (duplicates dropped), the SHA-256 of the file's bytes and the warnings.

    Raises:
        QueryFileError: the file cannot be read or has at least one error; it carries every
            problem found, errors and warnings, in file order.
    """
    report = Report(str(path))
    try:
        raw = read_bytes(path, MAX_BYTES)
    except OSError as exc:
        report.error(None, None, f"cannot read the query file ({exc.strerror}); check the path")
        raise QueryFileError(report.problems) from exc
    except FileRefused as exc:
        report.error(None, None, exc.message)
        raise QueryFileError(report.problems) from None
    if pacs_names is None and character_sets is not None:
        pacs_names = tuple(character_sets)
    targets = Targets(character_sets or {}, default_pacs)
    records = _read_records(raw, path.name, report, sheet=sheet, encoding=encoding)
    rows = [] if records is None else _validate(records, report, pacs_names, targets)
    problems = report.in_file_order()
    if any(p.severity is Severity.ERROR for p in problems):
        raise QueryFileError(problems)
    return QueryFile(path, hashlib.sha256(raw).hexdigest(), tuple(rows), problems)


def _read_records(
    raw: bytes, name: str, report: Report, *, sheet: str | None, encoding: str | None
) -> list[Record] | None:
    """The non-blank records of a CSV file, or of a workbook's sheet; ``None`` if unreadable."""
    if is_workbook(name, raw):
        if encoding is not None:
            report.error(
                None, None, f"--encoding is for CSV files, but {name} is an Excel workbook; drop it"
            )
        try:
            report.sheet, records = read_sheet(raw, sheet)
        except WorkbookRefused as exc:
            report.error(None, None, exc.message)
            return None
        return records
    if sheet is not None:
        report.error(
            None, None, f"--sheet is for Excel workbooks (.xlsx), but {name} is a CSV file; drop it"
        )
    try:
        decoded = decode(raw, name, KNOWN_COLUMNS, encoding=encoding)
    except DecodeFailure as exc:
        report.error(exc.line, exc.column, exc.message)
        return None
    if decoded.warning:
        report.warn(decoded.line, decoded.column, decoded.warning)
    return [r for r in read_records(decoded.text, KNOWN_COLUMNS) if not r.is_blank_line]


def _validate(
    records: list[Record],
    report: Report,
    pacs_names: Collection[str] | None,
    targets: Targets,
) -> list[QueryRow]:
    what = "file" if report.sheet is None else "sheet"
    if not records:
        report.error(
            None, None, f"the {what} is empty; write a header line, then one query per row"
        )
        return []
    header = _read_header(records[0], report)
    state = _State(report, header, pacs_names, Labels(report), targets)
    rows = _non_empty_rows(records[1:], report)
    if not rows:
        report.error(
            None, None, f"the {what} has no data rows; add one query per row below the header"
        )
    return [_check_row(state, row) for row in rows]


# --- header -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    """The header line: per field, the known column it names (``None``: blank or unusable)."""

    names: tuple[str | None, ...]
    blank: frozenset[int]

    @property
    def has_query_column(self) -> bool:
        """True when at least one DICOM query column is named."""
        return any(n in QUERY_COLUMNS for n in self.names)

    @property
    def named_width(self) -> int:
        """Fields up to the last non-blank header cell (Excel may add empty ones after)."""
        return max((i + 1 for i in range(len(self.names)) if i + 1 not in self.blank), default=0)

    def name_at(self, column: int) -> str | None:
        """The known column at 1-based field ``column``, if any."""
        return self.names[column - 1] if column <= len(self.names) else None


def _read_header(record: Record, report: Report) -> _Header:
    names: list[str | None] = []
    blank: set[int] = set()
    first_seen: dict[str, int] = {}
    for cell in record.cells:
        text, note = clean(cell.text)
        if note:
            report.warn(cell.line, cell.column, f"header {show(text)}: {note}")
        if not text:
            blank.add(cell.column)
        names.append(_header_name(text, cell, first_seen, report) if text else None)
    header = _Header(tuple(names), frozenset(blank))
    if not header.has_query_column:
        report.error(
            record.line,
            None,
            "the header names no query column; add at least one DICOM key such as PatientID, "
            "StudyDate or StudyInstanceUID (see queryfiles/README.md)",
        )
    return header


def _header_name(text: str, cell: Cell, first_seen: dict[str, int], report: Report) -> str | None:
    if text in first_seen:
        report.error(
            cell.line,
            cell.column,
            f"column {show(text)} appears twice (also column "
            f"{report.column_name(first_seen[text])}); keep one",
        )
        return None
    if text in KNOWN_COLUMNS:
        first_seen[text] = cell.column
        return text
    guess = _suggest(text, KNOWN_COLUMNS, cutoff=0.8) or _ALIASES.get(_normalize(text))
    fix = (
        f"did you mean '{guess}'?"
        if guess
        else "use a DICOM keyword from queryfiles/README.md, or Subject, Session, Pacs"
    )
    report.error(cell.line, cell.column, f"unknown column {show(text)}; {fix}")
    return None


def _normalize(name: str) -> str:
    return re.sub(r"[\s_.'’-]", "", name).casefold()


def _suggest(text: str, choices: Collection[str], *, cutoff: float) -> str | None:
    """The choice ``text`` most likely meant: same after normalising, else closest by difflib."""
    by_key = {_normalize(c): c for c in choices}
    key = _normalize(text)
    if key in by_key:
        return by_key[key]
    close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=cutoff)
    return by_key[close[0]] if close else None


# --- rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """A data record with its cleaned values (aligned with ``record.cells``)."""

    record: Record
    values: tuple[str, ...]
    notes: tuple[str | None, ...]

    @property
    def key(self) -> tuple[str, ...]:
        """What makes two rows duplicates: the cleaned values, trailing empties ignored."""
        values = list(self.values)
        while values and not values[-1]:
            values.pop()
        return tuple(values)


def _clean_row(record: Record) -> _Row:
    cleaned = [clean(cell.text) for cell in record.cells]
    return _Row(record, tuple(v for v, _ in cleaned), tuple(n for _, n in cleaned))


def _non_empty_rows(records: Sequence[Record], report: Report) -> list[_Row]:
    """Rows with values, duplicates dropped; empty rows are errors unless trailing (Excel)."""
    rows = [_clean_row(r) for r in records]
    last = max((i for i, row in enumerate(rows) if row.key), default=-1)
    _note_trailing_empty(rows[last + 1 :], report)
    kept: list[_Row] = []
    seen: dict[tuple[str, ...], int] = {}
    for row in rows[: last + 1]:
        line = row.record.line
        if not row.key:
            report.error(line, None, "row has no values; delete it")
        elif row.key in seen:
            report.warn(line, None, f"row repeats line {seen[row.key]}; dropped this copy")
        else:
            seen[row.key] = line
            kept.append(row)
    return kept


def _note_trailing_empty(rows: Sequence[_Row], report: Report) -> None:
    if not rows:
        return
    first, last = rows[0].record.line, rows[-1].record.line
    where = f"line {first}" if first == last else f"lines {first}-{last}"
    if len(rows) == 1:
        report.warn(first, None, f"1 row at the end ({where}) holds no values; ignored it")
    else:
        report.warn(
            first, None, f"{len(rows)} rows at the end ({where}) hold no values; ignored them"
        )


@dataclass
class _State:
    """What checking one row needs to know about the file and the rows before it."""

    report: Report
    header: _Header
    pacs_names: Collection[str] | None
    labels: Labels
    targets: Targets
    reported_blank: set[int] = field(default_factory=set)

    def target(self, row: _Row) -> tuple[str, str] | None:
        """``(node, character_set)`` the row goes to, when known."""
        pacs = next(
            (
                value
                for cell, value in zip(row.record.cells, row.values, strict=True)
                if self.header.name_at(cell.column) == "Pacs"
            ),
            None,
        )
        return self.targets.of(pacs or None)


def _check_row(state: _State, row: _Row) -> QueryRow:
    """Check one row's shape, cells and labels, and build its :class:`QueryRow`."""
    _check_shape(state, row)
    filled, good = _check_cells(state, row)
    if state.header.has_query_column and not filled.keys() & set(QUERY_COLUMNS):
        state.report.error(
            row.record.line,
            None,
            "row has no query value (only Subject/Session/Pacs); fill at least one query "
            "column such as PatientID",
        )
    state.labels.check(good, filled.get("Subject"))
    keys = {name: value for name, (_, value) in good.items() if name in QUERY_COLUMNS}
    subject, session, pacs = (good[n][1] if n in good else None for n in RELABEL_COLUMNS)
    return QueryRow(row.record.line, keys, subject=subject, session=session, pacs=pacs)


def _check_shape(state: _State, row: _Row) -> None:
    header, cells = state.header, row.record.cells
    extra = [
        c for c, v in zip(cells, row.values, strict=True) if c.column > len(header.names) and v
    ]
    if extra:
        state.report.error(
            extra[0].line,
            extra[0].column,
            f"row has {len(cells)} cells but the header has {len(header.names)}; remove "
            f"{show(row.values[extra[0].column - 1])} or name its column in the header",
        )
    elif len(cells) < header.named_width:
        state.report.warn(
            row.record.line,
            None,
            f"row has {len(cells)} of the header's {header.named_width} cells; "
            "the missing cells count as empty",
        )
    for cell, value in zip(cells, row.values, strict=True):
        if value and cell.column in header.blank - state.reported_blank:
            state.reported_blank.add(cell.column)
            state.report.error(
                cell.line,
                cell.column,
                f"column {state.report.column_name(cell.column)} has no header but holds "
                f"{show(value)}; name the column "
                "in the header line or delete its values",
            )


def _check_cells(state: _State, row: _Row) -> tuple[dict[str, str], dict[str, tuple[Cell, str]]]:
    """Report cleaning and value problems; returns all non-empty values and the good cells."""
    filled: dict[str, str] = {}
    good: dict[str, tuple[Cell, str]] = {}
    target = state.target(row)
    for cell, value, note in zip(row.record.cells, row.values, row.notes, strict=True):
        name = state.header.name_at(cell.column)
        if name is None:
            continue
        broken = _quoting_problem(cell, value) or kind_problem(name, cell)
        problem = broken or _cell_problem(state, name, value) or _send_problem(name, value, target)
        if not problem and value and (warning := value_warning(name, value)):
            state.report.warn(cell.line, cell.column, f"column '{name}': {warning}")
        if problem and name in PHI_COLUMNS:
            problem = _mask_phi(name, problem, value)
        if note and not broken:
            now = "" if name in PHI_COLUMNS else f"; the value is now {show(value)}"
            state.report.warn(cell.line, cell.column, f"column '{name}': {note}{now}")
        if value:
            filled[name] = value
        if problem:
            state.report.error(cell.line, cell.column, f"column '{name}': {problem}")
        elif value:
            good[name] = (cell, value)
    return filled, good


def _mask_phi(column: str, message: str, value: str) -> str:
    """Replace every quotation of ``value`` (or a part of it) in ``message``."""
    parts = {p for p in {value, *re.split(r"[\\=^]", value)} if any(c.isalnum() for c in p)}
    for part in sorted(parts, key=len, reverse=True):
        message = message.replace(show(part), "the value")
    if column == "PatientBirthDate":
        message = re.sub(r" \(e\.g\. \d{8}\)", "", message)
    return message


def _send_problem(name: str, value: str, target: tuple[str, str] | None) -> str | None:
    """Why ``value`` cannot be sent in the row's node's character set; None if it can."""
    if not value or target is None or name not in QUERY_COLUMNS:
        return None
    node, character_set = target
    return encoding_problem(name, value, character_set, node=node, private=name in PHI_COLUMNS)


def column_number(path: Path, column: str) -> int | None:
    """The 1-based field number of ``column`` in the header of the query file at ``path``.

    For messages that locate a value after validation; ``None`` if it cannot be found (or the
    file is a workbook, whose sheet this call does not know).
    """
    if path.suffix.lower() in WORKBOOK_SUFFIXES:
        return None
    return header_column(path, column, limit=MAX_BYTES, known=KNOWN_COLUMNS)


def _quoting_problem(cell: Cell, value: str) -> str | None:
    if cell.kind is not CellKind.FIELD:  # an Excel cell: no CSV quoting
        return None
    if cell.quoted and _LINE_BREAK.search(cell.text):
        return (
            f"the quoted value {show(cell.text)} spans several lines; query values are one "
            "line: remove the line breaks (or close a quote left open)"
        )
    if not cell.quoted and value.startswith('"'):
        return (
            f"{show(value)} starts with a quote that opens no quoted value (it is never closed, "
            "or something precedes it); remove the quotes"
        )
    return None


def _cell_problem(state: _State, name: str, value: str) -> str | None:
    if not value:
        return None
    if name in ("Subject", "Session"):
        return label_problem(value)
    if name == "Pacs":
        return _pacs_problem(value, state.pacs_names)
    return check_value(name, value)


def _pacs_problem(value: str, pacs_names: Collection[str] | None) -> str | None:
    if pacs_names is None or value in pacs_names:
        return None
    if not pacs_names:
        return f"{show(value)} names a PACS, but the config defines none; add it to the config"
    guess = _suggest(value, pacs_names, cutoff=0.6)
    fix = f"did you mean '{guess}'?" if guess else "use one of: " + ", ".join(sorted(pacs_names))
    return f"{show(value)} is not a PACS node in the config; {fix}"
