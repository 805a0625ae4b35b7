"""The ``--info`` CSV: one line per series (or per row that selected none), stable columns.

The column list is part of pacsman's interface (documented in README); new columns are only
ever appended.  The file is UTF-8 without a BOM, comma-separated, written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from pacsman.jobstore import InfoRecord

__all__ = ["INFO_COLUMNS", "info_path", "write_info_csv"]

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
)


def info_path(out_directory: Path, queryfile: Path) -> Path:
    """``<out_directory>/<query file stem>_info.csv``."""
    return out_directory / f"{queryfile.stem}_info.csv"


def _cells(record: InfoRecord) -> list[str]:
    study = record.study
    state = record.series_state or record.row_state

    def number(value: int | None) -> str:
        return "" if value is None else str(value)

    return [
        str(record.line),
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
        number(record.expected_instances),
        number(record.received_instances),
        state.value,
        record.row_detail if record.series_state is None else record.series_detail,
        number(record.anonymized_instances),
        record.anonymization.value if record.anonymization else "",
        record.push.value if record.push else "",
        record.push_uri,
    ]


def write_info_csv(path: Path, records: Sequence[InfoRecord]) -> Path:
    """Write ``records`` to ``path`` atomically (temporary file, then rename)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INFO_COLUMNS)
    writer.writerows(_cells(r) for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path
