"""Frozen dataclasses passed between pipeline stages, and the job-store states.

Attribute names are DICOM keywords (``StudyInstanceUID`` -> ``study_instance_uid``) and
XNAT terms (subject, session/experiment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from pacsman.errors import Problem

__all__ = [
    "IMAGE_LEVEL_KEYS",
    "QUERY_COLUMNS",
    "RELABEL_COLUMNS",
    "SERIES_LEVEL_KEYS",
    "STUDY_LEVEL_KEYS",
    "ItemState",
    "QueryFile",
    "QueryRow",
    "RowResult",
    "SeriesMatch",
    "StudyMatch",
]

#: PACSMAN's query columns, named by their DICOM keyword, in the order PACSMAN documents them.
QUERY_COLUMNS: tuple[str, ...] = (
    "StudyDate",
    "StudyTime",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
    "AccessionNumber",
    "Modality",
    "StudyDescription",
    "SeriesNumber",
    "AcquisitionDate",
    "DeviceSerialNumber",
    "SequenceName",
)

#: XNAT relabel columns (as XNAT's own DQR CSV names them) and the optional PACS node column.
RELABEL_COLUMNS: tuple[str, ...] = ("Subject", "Session", "Pacs")

#: Keys matched by the PACS in the study-level C-FIND (Study Root, Patient/Study modules).
STUDY_LEVEL_KEYS: tuple[str, ...] = (
    "StudyDate",
    "StudyTime",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDescription",
)
#: Keys matched in the series-level C-FIND (and re-checked locally on the answers).
SERIES_LEVEL_KEYS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "SeriesDescription",
    "ProtocolName",
    "Modality",
    "SeriesNumber",
)
#: Keys that live on instances: matched with an image-level C-FIND inside each series.
IMAGE_LEVEL_KEYS: tuple[str, ...] = (
    "ImageType",
    "AcquisitionDate",
    "DeviceSerialNumber",
    "SequenceName",
)


class ItemState(StrEnum):
    """Explicit states of rows, studies and series in the job store."""

    PENDING = "PENDING"
    QUERIED = "QUERIED"
    NO_MATCH = "NO_MATCH"
    DUPLICATE = "DUPLICATE"
    RETRIEVING = "RETRIEVING"
    COMPLETE = "COMPLETE"
    INCOMPLETE = "INCOMPLETE"
    FAILED = "FAILED"
    ANONYMIZED = "ANONYMIZED"
    QUARANTINED = "QUARANTINED"
    DONE = "DONE"


@dataclass(frozen=True)
class QueryRow:
    """One validated data row of a query file.

    ``line`` is the 1-based physical line in the file (the header is line 1).
    ``keys`` maps DICOM keywords to cleaned matching values; empty cells are absent.
    """

    line: int
    keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    subject: str | None = None
    session: str | None = None
    pacs: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))


@dataclass(frozen=True)
class QueryFile:
    """A query file that passed validation, with its content hash for the job store."""

    path: Path
    sha256: str
    rows: tuple[QueryRow, ...]
    warnings: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class SeriesMatch:
    """One series the PACS holds, with the instance count it promises."""

    study_instance_uid: str
    series_instance_uid: str
    series_number: str = ""
    modality: str = ""
    series_description: str = ""
    expected_instances: int | None = None


@dataclass(frozen=True)
class StudyMatch:
    """One study the PACS holds, with its series."""

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    series: tuple[SeriesMatch, ...] = ()


@dataclass(frozen=True)
class RowResult:
    """What the query stage found for one query row on one PACS node.

    ``duplicate_of`` lists (line, StudyInstanceUID) for studies an earlier row already claimed;
    those studies are not in ``studies``.
    """

    row: QueryRow
    pacs: str
    studies: tuple[StudyMatch, ...] = ()
    duplicate_of: tuple[tuple[int, str], ...] = ()
