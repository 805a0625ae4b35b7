"""Unpack an import upload (zip, tar, tar.gz or one DICOM object) and read its DICOM headers.

Member names are never used as paths: each member is copied to a numbered staging file and,
once parsed, named ``<SOPInstanceUID>.dcm`` as it will be stored.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pydicom
from pydicom.dataset import Dataset

__all__ = [
    "StagedSeries",
    "StagedSession",
    "UploadFormatError",
    "archive_members",
    "is_archive",
    "stage_files",
    "stage_upload",
]

_HEADER_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "Modality",
    "AccessionNumber",
    "PatientName",
    "PatientID",
    "PatientComments",
    "StudyComments",
    "StudyDescription",
)


class UploadFormatError(Exception):
    """The upload is neither an archive nor a DICOM object ("Unable to identify upload format.")."""


@dataclass
class StagedSeries:
    """One series of the upload; ``files`` maps the stored name to the staged file."""

    uid: str
    number: str
    description: str
    modality: str
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class StagedSession:
    """Everything read from one upload.

    ``header`` holds the first parsed object's study-level values (DICOM keywords);
    ``error`` is XNAT's message for the first unparseable member, if any stopped the upload.
    """

    study_uids: set[str] = field(default_factory=set)
    header: dict[str, str] = field(default_factory=dict)
    series: dict[str, StagedSeries] = field(default_factory=dict)
    error: str | None = None

    @property
    def file_count(self) -> int:
        """Number of distinct instances parsed."""
        return sum(len(s.files) for s in self.series.values())


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    return "" if value is None else str(value).strip()


def is_archive(upload: Path) -> bool:
    """True for a zip or tar (optionally compressed) file."""
    return zipfile.is_zipfile(upload) or tarfile.is_tarfile(upload)


@contextmanager
def archive_members(upload: Path) -> Iterator[Iterator[tuple[str, IO[bytes]]]]:
    """Yield (name, stream) for every regular member of a zip or tar; else the file itself."""
    if zipfile.is_zipfile(upload):
        with zipfile.ZipFile(upload) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            yield ((i.filename, archive.open(i)) for i in infos)
    elif tarfile.is_tarfile(upload):
        with tarfile.open(upload) as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            yield ((m.name, _extract(archive, m)) for m in members)
    else:
        with upload.open("rb") as single:
            yield iter([("upload.dcm", single)])


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = archive.extractfile(member)
    if stream is None:  # pragma: no cover - regular members always have a stream
        raise UploadFormatError(f"cannot read tar member {member.name}")
    return stream


def _read(path: Path, name: str) -> Dataset | str:
    """Return the dataset, or XNAT's complaint about the member."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # any parser failure means "unparseable", as in XNAT
        return f"unable to read DICOM object {name}"
    if not _text(dataset, "SOPClassUID"):
        return f"object {name} contains no SOP Class UID"
    return dataset


def _add(session: StagedSession, dataset: Dataset, staged: Path) -> None:
    series_uid = _text(dataset, "SeriesInstanceUID")
    series = session.series.get(series_uid)
    if series is None:
        series = StagedSeries(
            series_uid,
            _text(dataset, "SeriesNumber"),
            _text(dataset, "SeriesDescription"),
            _text(dataset, "Modality"),
        )
        session.series[series_uid] = series
    if not session.header:
        session.header = {k: _text(dataset, k) for k in _HEADER_KEYWORDS}
    session.study_uids.add(_text(dataset, "StudyInstanceUID"))
    series.files[f"{_text(dataset, 'SOPInstanceUID')}.dcm"] = staged


def stage_upload(upload: Path, staging: Path, *, ignore_unparsable: bool) -> StagedSession:
    """Copy every member of ``upload`` into ``staging`` and group the DICOM ones by series.

    Stops at the first unparseable member unless ``ignore_unparsable`` (what already
    parsed is kept, as XNAT keeps it in the prearchive).

    Raises:
        UploadFormatError: the upload is empty.
    """
    if upload.stat().st_size == 0:
        raise UploadFormatError("Unable to identify upload format.")
    session = StagedSession()
    with archive_members(upload) as members:
        for index, (name, stream) in enumerate(members):
            staged = staging / f"{index:07d}"
            with stream, staged.open("wb") as out:
                shutil.copyfileobj(stream, out)
            parsed = _read(staged, name)
            if isinstance(parsed, Dataset):
                _add(session, parsed, staged)
            elif not ignore_unparsable:
                session.error = parsed
                break
    return session


def stage_files(paths: list[Path]) -> StagedSession:
    """Group DICOM files already on disk by series, as :func:`stage_upload` does (unparseable
    files are skipped)."""
    session = StagedSession()
    for path in paths:
        parsed = _read(path, path.name)
        if isinstance(parsed, Dataset):
            _add(session, parsed, path)
    return session
