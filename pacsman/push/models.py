"""What the push stage takes and returns: one session to push, its outcome, label problems,
and the :class:`Target` protocol every destination (XNAT, a DICOM SCP, a folder) follows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal, Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from pacsman.dicom.header import part10_values
from pacsman.errors import InputError

__all__ = [
    "LabelProblem",
    "PushOutcome",
    "PushState",
    "SessionUpload",
    "Target",
    "describe_counts",
    "dicom_files",
]

PushState = Literal["DONE", "FAILED"]
_HEADER_TAGS = ["StudyInstanceUID", "SeriesNumber"]
_STUDY_UID, _SERIES_NUMBER = 0x0020000D, 0x00200011
_HEAD_BYTES = 16 << 10  # what comes before (0020,0011) is smaller; else pydicom reads it
_PLAIN_UID = re.compile(r"(?:[0-9][0-9.]*)?")
_PLAIN_NUMBER = re.compile(r"(?:[+-]?[0-9]+)?")


def dicom_files(directory: Path) -> list[Path]:
    """Every ``*.dcm`` file below ``directory``, sorted (what a push sends)."""
    return sorted(p for p in directory.rglob("*.dcm") if p.is_file())


@dataclass(frozen=True)
class SessionUpload:
    """One XNAT session = one study, already de-identified on disk under ``directory``.

    ``expected_scans`` maps each scan ID (the SeriesNumber, as XNAT names scans) to its
    number of files; ``expected_files`` is their sum.
    """

    project: str
    subject: str
    session: str
    directory: Path
    study_instance_uid: str
    expected_files: int
    expected_scans: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expected_scans", MappingProxyType(dict(self.expected_scans)))
        if self.expected_scans and sum(self.expected_scans.values()) != self.expected_files:
            total = sum(self.expected_scans.values())
            raise ValueError(
                f"session {self.session!r}: expected_scans add up to {total} file(s), "
                f"expected_files says {self.expected_files}"
            )

    @property
    def key(self) -> tuple[str, str, str]:
        """``(project, subject, session)``: what identifies the upload."""
        return (self.project, self.subject, self.session)

    def describe(self) -> str:
        """``P1/SUBJ01/SESS01``: safe to log (labels are pseudonyms)."""
        return "/".join(self.key)

    @classmethod
    def from_directory(
        cls, directory: Path, *, project: str, subject: str, session: str
    ) -> SessionUpload:
        """Read the headers of every ``*.dcm`` below ``directory`` and describe the session.

        Raises:
            InputError: no DICOM file, an unreadable file, or more than one study.
        """
        files = dicom_files(directory)
        if not files:
            raise InputError(f"{directory}: no *.dcm files; give the folder of one study")
        studies: set[str] = set()
        scans: Counter[str] = Counter()
        for path in files:
            study, scan = _header(path)
            studies.add(study)
            scans[scan] += 1
        if len(studies) != 1:
            raise InputError(
                f"{directory}: holds {len(studies)} studies (StudyInstanceUID); "
                "an XNAT session is one study: give one folder per study"
            )
        return cls(project, subject, session, directory, studies.pop(), len(files), scans)


def _header(path: Path) -> tuple[str, str]:
    """``(StudyInstanceUID, scan ID)`` of one file: its SeriesNumber, ``"0"`` without one."""
    try:
        with path.open("rb") as stream:
            fast = _fast_header(stream.read(_HEAD_BYTES))
        if fast is not None:
            return fast
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
    number = ds.get("SeriesNumber")
    return str(ds.get("StudyInstanceUID", "")), str(number) if number not in (None, "") else "0"


def _fast_header(head: bytes) -> tuple[str, str] | None:
    """The same answer as pydicom's, from the raw header; ``None`` when unsure (pydicom then).

    Only plain values are taken: a UID of digits and dots (or none), and an integer
    SeriesNumber as pydicom prints it (the text itself, without the padding).
    """
    found = part10_values(head, (_STUDY_UID, _SERIES_NUMBER))
    if found is None:
        return None
    study, number = found[_STUDY_UID].strip("\0 "), found[_SERIES_NUMBER].strip("\0 ")
    if not _PLAIN_UID.fullmatch(study) or not _PLAIN_NUMBER.fullmatch(number):
        return None
    return study, number or "0"


@dataclass(frozen=True)
class PushOutcome:
    """How one session ended: DONE only once the target holds every file."""

    upload: SessionUpload
    state: PushState
    uri: str | None
    files_on_target: int
    detail: str
    attempts: int = 0
    #: Seconds from the push's start (its courtesy waits and retries included) to this end.
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class LabelProblem:
    """A label that must be fixed before ``upload`` may be pushed."""

    upload: SessionUpload
    message: str

    def __str__(self) -> str:
        return f"{self.upload.describe()}: {self.message}"


class Target(Protocol):
    """A push destination; one instance serves a whole run and is closed at the end.

    ``push`` makes one attempt: it returns a DONE outcome, or raises
    :class:`~pacsman.errors.TransientError` (retry), :class:`~pacsman.errors.ItemFailed`
    (this session failed) or :class:`~pacsman.errors.FatalError` (stop the run).
    """

    name: str

    def check_labels(self, uploads: Sequence[SessionUpload]) -> list[LabelProblem]:
        """Every label problem, found before anything is transferred."""
        ...

    def push(self, upload: SessionUpload) -> PushOutcome:
        """One attempt to put ``upload`` on the target and prove it arrived."""
        ...

    def close(self) -> None:
        """Release connections (safe to call twice)."""
        ...

    def __enter__(self) -> Target:
        """Return the target itself."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the target."""
        ...


def describe_counts(expected: Mapping[str, int], found: Mapping[str, int]) -> str:
    """``scan 2: 3 of 5 file(s)`` for each scan that differs (for messages)."""
    parts = []
    for scan in sorted(set(expected) | set(found), key=_scan_order):
        have, want = found.get(scan, 0), expected.get(scan, 0)
        if have != want:
            parts.append(f"scan {scan}: {have} of {want} file(s)")
    return ", ".join(parts)


def _scan_order(scan: str) -> tuple[int, str]:
    return (int(scan), scan) if scan.isdigit() else (1 << 30, scan)
