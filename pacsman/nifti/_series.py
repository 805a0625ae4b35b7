"""What pacsman knows about one series folder before dcm2niix runs: its instances (a
multi-frame instance counts its frames), SOP classes and de-identification flag."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from pacsman.dicom.header import part10_values
from pacsman.nifti._check import PHI_KEYS
from pacsman.nifti._sop import convertible

#: The identifying attributes a sidecar may repeat (see :mod:`._check`).
PHI_KEYWORDS: tuple[str, ...] = tuple(PHI_KEYS)

__all__ = [
    "HEADER_TAGS",
    "Instance",
    "SeriesHeaders",
    "folder_instances",
    "read_instance",
    "series_headers",
]

#: What is read of each file (never the pixel data).
HEADER_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfFrames",
    "PatientIdentityRemoved",
    "PatientID",
    "StudyID",
    "StudyInstanceUID",
    *PHI_KEYWORDS,
)


@dataclass(frozen=True)
class Instance:
    """One DICOM file's header values pacsman needs (all text, ``""`` when absent)."""

    path: Path
    sop_class_uid: str
    series_instance_uid: str
    series_number: str
    series_description: str
    frames: int
    identity_removed: str
    patient_id: str
    study_id: str
    study_instance_uid: str
    phi: tuple[tuple[str, str], ...] = ()  # (keyword, value) of PHI_KEYWORDS present


@dataclass(frozen=True)
class SeriesHeaders:
    """The instances of one series folder, split into images and what dcm2niix cannot take."""

    images: tuple[Instance, ...] = ()
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> instances
    identified: int = 0  # instances whose PatientIdentityRemoved is not YES

    @property
    def frames(self) -> int:
        """Frames of the image instances: the slices (x volumes) the NIfTI must hold."""
        return sum(i.frames for i in self.images)

    @property
    def instances(self) -> int:
        """Every DICOM instance of the folder, images or not."""
        return len(self.images) + sum(self.skipped.values())


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


#: keyword -> tag of every value read; (0028,0008) NumberOfFrames is the last of them.
_TAGS: dict[str, int] = {keyword: _tag(keyword) for keyword in HEADER_TAGS}
_HEAD_BYTES = 64 * 1024
#: A value the fast walk cannot give as text: not ASCII, or an ISO 2022 escape.
_NOT_PLAIN = re.compile("[\ufffd\x1b]")


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def read_instance(path: Path) -> Instance | None:
    """The header values of the DICOM file at ``path``; ``None`` if it is not a DICOM
    instance (not DICOM, unreadable, or without a SOPClassUID, e.g. a DICOMDIR).

    The first 64 KiB are walked with :func:`pacsman.dicom.header.part10_values` (about ten
    times faster than pydicom); pydicom reads the file when that walk is not certain or a
    value is not plain ASCII (a name in another script must be decoded in its character set).
    """
    try:
        with path.open("rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError:
        return None
    values = part10_values(head, _TAGS.values())
    if values is None or any(_NOT_PLAIN.search(value) for value in values.values()):
        return _read_parsed(path)
    return _instance(path, lambda keyword: values[_TAGS[keyword]].strip())


def _read_parsed(path: Path) -> Instance | None:
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return _instance(path, lambda keyword: _text(ds.get(keyword)))


def _instance(path: Path, get: Callable[[str], str]) -> Instance | None:
    sop_class = get("SOPClassUID")
    if not sop_class:
        return None
    try:
        frames = max(1, int(get("NumberOfFrames") or 1))
    except ValueError:
        frames = 1
    return Instance(
        path=path,
        sop_class_uid=sop_class,
        series_instance_uid=get("SeriesInstanceUID"),
        series_number=get("SeriesNumber"),
        series_description=get("SeriesDescription"),
        frames=frames,
        identity_removed=get("PatientIdentityRemoved").upper(),
        patient_id=get("PatientID"),
        study_id=get("StudyID"),
        study_instance_uid=get("StudyInstanceUID"),
        phi=tuple((k, get(k)) for k in PHI_KEYWORDS if get(k)),
    )


def series_headers(instances: Iterable[Instance]) -> SeriesHeaders:
    """Split ``instances`` by whether dcm2niix may convert their SOP class."""
    images: list[Instance] = []
    skipped: Counter[str] = Counter()
    identified = 0
    for instance in instances:
        identified += instance.identity_removed != "YES"
        reason = convertible(instance.sop_class_uid)
        if reason is None:
            images.append(instance)
        else:
            skipped[reason] += 1
    return SeriesHeaders(tuple(images), skipped, identified)


def folder_instances(series_dir: Path) -> list[Instance]:
    """The DICOM instances directly in ``series_dir`` (what dcm2niix ``-d 0`` reads)."""
    found = []
    for path in sorted(series_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            instance = read_instance(path)
            if instance is not None:
                found.append(instance)
    return found
