"""``pacsman nifti``'s input: every DICOM file under IN_DIR, grouped by series, each with the
subject and session it belongs to, and the originals of an optional raw folder.

Subject and session come from the de-identified headers: PatientID is the subject label
pacsman anonymize wrote, StudyID the session label (its default profile writes it).  When
StudyID is empty, the folder layout gives it: ``.../<subject>/<session>/<SeriesNumber>/``
(``pacsman --anonymize`` writes ``<out>/anonymized/<subject>/<session>/<SeriesNumber>/``);
else each study becomes ``<subject>_study<N>``.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from pacsman.anonymize import Originals
from pacsman.errors import InputError
from pacsman.layout import private_directory
from pacsman.nifti._series import Instance, read_instance

__all__ = ["Series", "find_series", "raw_originals", "stage"]


@dataclass(frozen=True)
class Series:
    """One series found under IN_DIR, with the labels and number it is converted under."""

    subject: str
    session: str
    series_number: str  # unique within its session (a repeated number gets "-2", "-3"...)
    series_description: str
    instances: tuple[Instance, ...]


def _files(root: Path, excluded: Sequence[Path]) -> Iterator[Path]:
    for folder, folders, names in os.walk(root):
        here = Path(folder)
        folders[:] = sorted(
            d for d in folders if not d.startswith(".") and here / d not in excluded
        )
        for name in sorted(names):
            if not name.startswith("."):
                yield here / name


def _instances(in_dir: Path, excluded: Sequence[Path]) -> list[Instance]:
    found = [i for i in map(read_instance, _files(in_dir, excluded)) if i is not None]
    if not found:
        raise InputError(
            f"IN_DIR {in_dir}: holds no DICOM instance; give the folder of de-identified DICOM"
        )
    identified = sum(i.identity_removed != "YES" for i in found)
    if identified:
        raise InputError(
            f"IN_DIR {in_dir}: {identified} of {len(found)} DICOM file(s) are not de-identified "
            "(PatientIdentityRemoved is not YES); run pacsman anonymize first"
        )
    return found


def _layout_session(instance: Instance) -> str:
    """The session folder of ``.../<session>/<SeriesNumber>/<file>``, else ``""``."""
    parent = instance.path.parent
    if instance.series_number and parent.name == instance.series_number:
        return parent.parent.name
    return ""


def find_series(in_dir: Path, *, excluded: Sequence[Path] = ()) -> list[Series]:
    """Every series under ``in_dir`` (leaving out ``excluded`` folders), in a stable order.

    Raises:
        InputError: there is no DICOM instance, or some are not de-identified.
    """
    by_series: dict[str, list[Instance]] = defaultdict(list)
    for instance in _instances(in_dir, excluded):
        by_series[instance.series_instance_uid or str(instance.path.parent)].append(instance)
    studies: dict[str, int] = {}
    numbers: dict[tuple[str, str, str], int] = defaultdict(int)
    found = []
    for members in sorted(by_series.values(), key=_order):
        first = members[0]
        subject = first.patient_id or "unknown_subject"
        study = studies.setdefault(first.study_instance_uid, len(studies) + 1)
        session = first.study_id or _layout_session(first) or f"{subject}_study{study}"
        number = first.series_number or "0"
        numbers[(subject, session, number)] += 1
        count = numbers[(subject, session, number)]
        unique = number if count == 1 else f"{number}-{count}"
        found.append(Series(subject, session, unique, first.series_description, tuple(members)))
    return found


def _order(members: list[Instance]) -> tuple[str, str, int, str]:
    first = members[0]
    number = int(first.series_number) if first.series_number.isdigit() else 1 << 30
    return (first.patient_id, first.study_instance_uid, number, first.series_instance_uid)


def stage(series: Series, parent: Path) -> Path:
    """A new 0700 folder under ``parent`` holding a symbolic link to each file of
    ``series`` (dcm2niix reads one series from one folder)."""
    folder = Path(tempfile.mkdtemp(prefix=".stage-", dir=private_directory(parent)))
    for index, instance in enumerate(series.instances):
        os.symlink(instance.path.resolve(), folder / f"{index:06d}.dcm")
    return folder


_SOURCE_TAGS = (
    "SpecificCharacterSet",
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ResponsiblePerson",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "AccessionNumber",
    "MedicalRecordLocator",
    "AdmissionID",
    "PatientTelephoneNumbers",
    "PatientBirthDate",
    "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar",
    "PatientAddress",
    "InstitutionName",
    "InstitutionAddress",
    "Manufacturer",
    "ManufacturerModelName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
)


def raw_originals(raw_dir: Path) -> Originals:
    """The originals of every DICOM file under ``raw_dir`` (identified data), merged: the
    sidecars of every series are checked against all of them.

    Raises:
        InputError: ``raw_dir`` is not a folder or holds no DICOM file.
    """
    if not raw_dir.is_dir():
        raise InputError(f"--originals {raw_dir}: not a folder; give the raw (identified) DICOM")
    merged: Originals | None = None
    for path in _files(raw_dir, ()):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=list(_SOURCE_TAGS))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        uids = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID")]
        one = Originals.from_dataset(ds, uids=[*uids, str(ds.get("FrameOfReferenceUID", ""))])
        merged = one if merged is None else _merge(merged, one)
    if merged is None:
        raise InputError(f"--originals {raw_dir}: holds no DICOM file; give the raw DICOM folder")
    return merged


def _merge(a: Originals, b: Originals) -> Originals:
    """The originals of both ``a`` and ``b``."""
    values = {f.name: getattr(a, f.name) | getattr(b, f.name) for f in fields(Originals)}
    return Originals(**values)
