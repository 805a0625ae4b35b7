"""The ``--info`` CSV: one line per series (or per row that selected none), stable columns.

The column list is part of pacsman's interface (documented in README); new columns are only
ever appended.  The file is UTF-8 without a BOM, comma-separated, written atomically with mode
0600 (it holds PatientIDs), and no cell can run as a spreadsheet formula
(:func:`pacsman.layout.csv_cell`: text starting with ``= + - @``, a tab or a CR gets a leading
``'``; pacsman's own counts stay numbers).

``detail`` says why a line needs attention, for every step: the retrieve verdict (or the
row's, when it selected no series), then ``de-identification: ...`` (what was quarantined or
left out) and ``push to <target>: ...`` (why the push failed), joined with ``; ``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pacsman.jobstore import InfoRecord
from pacsman.layout import write_private_csv

if TYPE_CHECKING:
    from pacsman.jobstore.nifti import SeriesNifti

__all__ = ["INFO_COLUMNS", "NIFTI_INFO_COLUMNS", "info_path", "write_info_csv"]

INFO_COLUMNS: tuple[str, ...] = (
    "row",
    "pacs",
    "subject",
    "session",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "expected_instances",
    "received_instances",
    "state",
    "detail",
    "anonymized_instances",
    "anonymization",
    "push",
    "xnat_uri",
    "query",
)
#: Appended to :data:`INFO_COLUMNS` when the run converts to NIfTI (``--nifti``): the
#: series' outcome (converted, skipped, failed, quarantined; "" when not tried), why (also
#: why its upload failed), and its upload to the scan's NIFTI resource (DONE, FAILED, "").
NIFTI_INFO_COLUMNS: tuple[str, ...] = ("nifti", "nifti_detail", "nifti_push")


def info_path(out_directory: Path, queryfile: Path) -> Path:
    """``<out_directory>/<query file stem>_info.csv``."""
    return out_directory / f"{queryfile.stem}_info.csv"


def _cells(record: InfoRecord) -> list[str | int | None]:
    study = record.study
    state = record.series_state or record.row_state
    return [
        record.line,
        record.pacs,
        record.subject,
        record.session,
        study.patient_id if study else "",
        study.study_date if study else "",
        study.study_time if study else "",
        study.accession_number if study else "",
        study.study_instance_uid if study else "",
        study.study_description if study else "",
        record.series_instance_uid,
        record.series_number,
        record.modality,
        record.series_description,
        record.expected_instances,
        record.received_instances,
        state.value,
        _detail(record),
        record.anonymized_instances,
        record.anonymization.value if record.anonymization else "",
        record.push.value if record.push else "",
        record.push_uri,
        "; ".join(f"{key}={value}" for key, value in record.query),
    ]


def _detail(record: InfoRecord) -> str:
    """Why this line needs attention, per step (empty parts are left out)."""
    if record.series_state is None:
        return record.row_detail
    parts = [record.series_detail]
    if record.anonymization_detail:
        parts.append(f"de-identification: {record.anonymization_detail}")
    if record.push_detail and record.push is not None and record.push.value != "DONE":
        parts.append(f"push to {record.push_target}: {record.push_detail}")
    return "; ".join(part for part in parts if part)


def write_info_csv(
    path: Path,
    records: Sequence[InfoRecord],
    *,
    nifti: Mapping[tuple[str, str], SeriesNifti] | None = None,
) -> Path:
    """Write ``records`` to ``path``: atomically, mode 0600, formulas neutralized; with
    ``nifti`` (each series' NIfTI state by PACS node and SeriesInstanceUID, ``--nifti``)
    :data:`NIFTI_INFO_COLUMNS` too.

    Raises:
        OSError: the file cannot be written.
    """
    if nifti is None:
        return write_private_csv(path, INFO_COLUMNS, (_cells(r) for r in records))
    header = (*INFO_COLUMNS, *NIFTI_INFO_COLUMNS)
    return write_private_csv(path, header, (_cells(r) + _nifti_cells(r, nifti) for r in records))


def _nifti_cells(
    record: InfoRecord, nifti: Mapping[tuple[str, str], SeriesNifti]
) -> list[str | int | None]:
    series = nifti.get((record.pacs, record.series_instance_uid))
    if series is None:  # a row that selected no series
        return ["", "", ""]
    return [series.outcome, series.reason, series.push]
