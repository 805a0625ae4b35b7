"""``pacsman report``: a run's rows, failures included, as CSV or Excel, from the job store.

One line per query row: its query-file line, its own query values (the query file's
columns, as the job store holds them after cleaning), its PACS node, what it found, its
state per step and the reason it needs attention.  A row's state for a step is the worst of
its series (e.g. INCOMPLETE when one of three series is).

``--failed-only --format csv`` writes a query file instead: the same query columns, holding
exactly the rows that need attention, that ``pacsman validate`` accepts and that re-runs just
those rows.  Its values are written as the query file had them (a formula sign is not
quoted: the file is pacsman's input, not a report).

Reports are written atomically, mode 0600 (they hold patient identifiers).  In a CSV report
no cell can run as a spreadsheet formula (:func:`pacsman.layout.csv_cell`); in an xlsx report
every cell is text (type string, format ``@``), neutralized the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd

from pacsman.config.options import add_store_options, open_jobstore
from pacsman.dqr import resume_command as dqr_resume_command
from pacsman.errors import EXIT_OK, InputError
from pacsman.jobstore import RunRecord
from pacsman.jobstore.nifti import RowNifti, nifti_by_line
from pacsman.layout import csv_cell, open_private, private_directory, write_private_csv
from pacsman.pipeline._runstatus import RunStatus, run_status
from pacsman.pipeline._runview import RowView, options_of, resume_command
from pacsman.pipeline.dqrstatus import (
    DQR_REPORT_COLUMNS,
    DqrRunStatus,
    dqr_report_table,
    dqr_run_status,
    is_dqr_run,
)
from pacsman.pipeline.status import add_run_choice, check_run_choice, find_run
from pacsman.queryfile import KNOWN_COLUMNS, column_number

__all__ = ["NIFTI_REPORT_COLUMNS", "REPORT_COLUMNS", "query_columns", "report_main", "write_report"]

#: The columns after the row's own query values (the query columns come between ``row`` and
#: these).  Appended to, never re-ordered.
REPORT_COLUMNS: tuple[str, ...] = (
    "pacs_node",
    "query",
    "studies",
    "series",
    "expected_instances",
    "received_instances",
    "retrieve",
    "deidentify",
    "push",
    "xnat_uri",
    "attention",
    "reason",
)
#: Appended to :data:`REPORT_COLUMNS` for a run that converts to NIfTI (``--nifti``): the
#: worst outcome of the row's de-identified series (quarantined, failed, pending, converted,
#: skipped), their reasons, and the worst upload state to the scans' NIFTI resources.
NIFTI_REPORT_COLUMNS: tuple[str, ...] = ("nifti", "nifti_detail", "nifti_push")
_SHEET = "report"


def query_columns(rows: Sequence[RowView], original: Path | None = None) -> list[str]:
    """The query file's columns for ``rows``, in the order of ``original``'s header.

    When the run's query file is still there (a CSV holding every column the run uses), its
    columns, in its order.  Otherwise every column a row of the run uses, in pacsman's column
    order (Subject, Session and Pacs last): a column left empty in every row is then not
    known.
    """
    used: set[str] = set()
    for row in rows:
        used.update(row.query.keys)
        used.update(["Subject"] if row.query.subject else [])
        used.update(["Pacs"] if _pacs_cell(row) else [])
        used.update(["Session"] if row.query.session else [])
    found = _header(original) if original is not None else {}
    if used <= found.keys():
        return sorted(found, key=found.__getitem__)
    return [column for column in KNOWN_COLUMNS if column in used]


def _header(path: Path) -> dict[str, int]:
    """The known columns of the query file at ``path`` and their field numbers ({}: none)."""
    if not path.is_file():
        return {}
    numbers = {column: column_number(path, column) for column in KNOWN_COLUMNS}
    return {column: number for column, number in numbers.items() if number is not None}


def _original(status: RunStatus) -> Path:
    """The run's query file, where it was when the run started."""
    path = Path(status.record.queryfile)
    cwd = options_of(status.record).get("cwd")
    return Path(cwd) / path if cwd and not path.is_absolute() else path


def _pacs_cell(row: RowView) -> str:
    """The row's own Pacs cell; its node when recorded before the cell was kept."""
    cell = row.query.pacs_cell
    return row.query.pacs if cell is None else cell


def _query_values(row: RowView, columns: Sequence[str]) -> list[str]:
    query = row.query
    own = {**query.keys, "Subject": query.subject, "Session": query.session}
    own["Pacs"] = _pacs_cell(row)
    return [own.get(column, "") for column in columns]


def _report_cells(row: RowView, columns: Sequence[str]) -> list[str | int | None]:
    outcome = row.outcome
    uris = sorted({p.uri for p in outcome.pushes if p.uri})
    return [
        row.query.line,
        *_query_values(row, columns),
        row.query.pacs,
        row.query.state.value,
        outcome.studies,
        outcome.series,
        outcome.expected_instances,
        outcome.received_instances,
        row.retrieve,
        row.deidentify,
        row.push,
        " ".join(uris),
        "yes" if row.needs_attention else "",
        row.reason or (row.query.detail if row.query.state.value == "DUPLICATE" else ""),
    ]


def _table(
    status: RunStatus, failed_only: bool, nifti: Mapping[int, RowNifti] | None = None
) -> tuple[list[str], list[list[str | int | None]]]:
    columns = query_columns(status.rows, _original(status))
    rows = status.attention if failed_only else list(status.rows)
    header = ["row", *columns, *REPORT_COLUMNS]
    if nifti is None:
        return header, [_report_cells(r, columns) for r in rows]
    empty = RowNifti("", "", "")
    return [*header, *NIFTI_REPORT_COLUMNS], [
        [*_report_cells(r, columns), *_nifti_cells(nifti.get(r.query.line, empty))] for r in rows
    ]


def _nifti_cells(row: RowNifti) -> list[str | int | None]:
    return [row.outcome, row.detail, row.push]


def write_report(
    status: RunStatus,
    path: Path,
    *,
    fmt: str,
    failed_only: bool,
    nifti: Mapping[int, RowNifti] | None = None,
) -> int:
    """Write the report of ``status`` to ``path``; returns how many rows it holds (with
    ``nifti``, each row's NIfTI cells by query-file line: :data:`NIFTI_REPORT_COLUMNS`).

    Raises:
        OSError: the file cannot be written.
    """
    if failed_only and fmt == "csv":
        columns = query_columns(status.rows, _original(status))
        rows = [_query_values(row, columns) for row in status.attention]
        _write_private(path, lambda fh: fh.write(_query_file_text(columns, rows)))
        return len(rows)
    header, cells = _table(status, failed_only, nifti)
    if fmt == "csv":
        write_private_csv(path, header, cells)
    else:
        _write_private(path, lambda fh: _write_xlsx(fh, header, cells))
    return len(cells)


def _query_file_text(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """A query file: UTF-8, comma-separated, values as the query file gave them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _write_xlsx(
    fh: io.BufferedWriter, header: Sequence[str], rows: Sequence[Sequence[str | int | None]]
) -> None:
    """An xlsx workbook whose every cell is text, no formula (pandas with openpyxl)."""
    frame = pd.DataFrame(
        [[csv_cell(cell) for cell in row] for row in rows],
        columns=[csv_cell(name) for name in header],
        dtype=str,
    )
    with pd.ExcelWriter(fh, engine="openpyxl") as writer:
        frame.to_excel(writer, sheet_name=_SHEET, index=False)
        sheet = writer.sheets[_SHEET]
        for line in sheet.iter_rows():
            for cell in line:
                cell.data_type = "s"  # never "f" (formula) or "n" (number)
                cell.number_format = "@"
        sheet.freeze_panes = "A2"


def _write_private(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    """``write`` into ``path``: atomically (temporary file, then rename), mode 0600."""
    private_directory(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(open_private(tmp), "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_path(record: RunRecord, *, fmt: str, failed_only: bool) -> Path:
    """``./<query file stem>_run<N>_report.<fmt>`` (``_failed`` with --failed-only)."""
    stem = Path(record.queryfile).stem
    kind = "failed" if failed_only else "report"
    return Path(f"{stem}_run{record.id}_{kind}.{fmt}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman report",
        description="Export a run's rows, failures included: the query-file line, the row's "
        "own query values, the state per step and the reason; reads only the job store. "
        "--failed-only --format csv writes a query file of the rows that need attention, "
        "which re-runs just those.",
    )
    add_run_choice(parser)
    parser.add_argument(
        "--format",
        choices=("csv", "xlsx"),
        default="csv",
        dest="fmt",
        help="csv (the default) or xlsx (every cell text)",
    )
    parser.add_argument(
        "--failed-only", action="store_true", help="only the rows that need attention"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="the file to write (default: ./<query file name>_run<N>_report.<format>, "
        "or _failed with --failed-only)",
    )
    add_store_options(parser)
    return parser


def report_main(argv: Sequence[str]) -> int:
    """``pacsman report``; returns 0 once the file is written.

    Raises:
        InputError: no such run, no job store given, or --out names the run's query file.
        JobStoreError: the job store cannot be read.
        OSError: the report cannot be written.
    """
    args = _parser().parse_args(list(argv))
    check_run_choice(args)
    with open_jobstore(args.jobstore, args.config) as store:
        record = find_run(store, args.queryfile, args.run_id, job_id=args.job_id)
        if is_dqr_run(store, record):  # pacsman dqr: one line per row with its study's state
            return _dqr_report(dqr_run_status(store, record), args)
        status = run_status(store, record)
        uploads = status.stages.push == "xnat"
        nifti = nifti_by_line(store, record, uploads=uploads) if status.stages.nifti else None
    out = args.out or default_path(status.record, fmt=args.fmt, failed_only=args.failed_only)
    _check_out(out, status.record)
    if args.failed_only and not status.attention:
        print(f"run {status.record.id}: no row needs attention; nothing written")
        return EXIT_OK
    written = write_report(status, out, fmt=args.fmt, failed_only=args.failed_only, nifti=nifti)
    for line in _notes(status, out, written, failed_only=args.failed_only, fmt=args.fmt):
        print(line)
    return EXIT_OK


def _dqr_report(dqr: DqrRunStatus, args: argparse.Namespace) -> int:
    """``pacsman report`` of a ``pacsman dqr`` run: its rows with their study's state, XNAT
    request, attempts, files and reason (``--failed-only --format csv``: a query file of the
    rows that need attention, as for the pipeline's runs)."""
    status = dqr.as_run_status()
    out = args.out or default_path(status.record, fmt=args.fmt, failed_only=args.failed_only)
    _check_out(out, status.record)
    if args.failed_only and not dqr.attention:
        print(f"run {status.record.id}: no row needs attention; nothing written")
        return EXIT_OK
    if args.failed_only and args.fmt == "csv":
        written = write_report(status, out, fmt="csv", failed_only=True)
    else:
        columns = query_columns(status.rows, _original(status))
        header = ["row", *columns, *DQR_REPORT_COLUMNS]
        cells = dqr_report_table(dqr, columns, failed_only=args.failed_only)
        if args.fmt == "csv":
            write_private_csv(out, header, cells)
        else:
            _write_private(out, lambda fh: _write_xlsx(fh, header, cells))
        written = len(cells)
    print(f"run {status.record.id}: {written} row(s) written to {out}")
    if args.failed_only and args.fmt == "csv":
        options = {**options_of(status.record), "queryfile": str(out.resolve())}
        print(f"check it: pacsman validate {out}")
        print(f"re-run just those rows: {dqr_resume_command(options)}")
    return EXIT_OK


def _check_out(out: Path, record: RunRecord) -> None:
    """Raises: InputError: ``out`` is the run's own query file."""
    original = Path(record.queryfile)
    if out.exists() and original.exists() and out.resolve() == original.resolve():
        raise InputError(
            f"--out {out} is the query file of run {record.id}; give another file name"
        )


def _notes(
    status: RunStatus, out: Path, written: int, *, failed_only: bool, fmt: str
) -> Iterator[str]:
    record = status.record
    yield f"run {record.id}: {written} row(s) written to {out}"
    if status.activity.running:
        yield (
            f"run {record.id} is still running: this is how it stands now (rows still being "
            "worked on count only once they fail)"
        )
    if failed_only and fmt == "csv":
        options = options_of(record)
        again = resume_command({**options, "queryfile": str(out.resolve())}) if options else ""
        yield f"check it: pacsman validate {out}"
        yield f"re-run just those rows: {again or f'pacsman --queryfile {out} ...'}"
