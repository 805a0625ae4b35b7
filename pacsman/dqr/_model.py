"""What ``pacsman dqr`` knows about a study XNAT's DICOM Query-Retrieve (DQR) pulls: the
states it records, the PACS XNAT names, the requests XNAT queues and what arrived.

``DqrState`` is pacsman's own verdict on a study and is what the job store holds;
``RequestStatus`` is the status XNAT reports for its ``QueuedPacsRequest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ArrivalVerdict",
    "DqrState",
    "DqrStudy",
    "ExpectedSeries",
    "PacsEntry",
    "QueuedRequest",
    "RequestStatus",
    "RowProblem",
    "RowProblemKind",
    "SessionArrival",
]


class DqrState(StrEnum):
    """pacsman's state for one study of a dqr run (the job store's ``dqr_studies.state``)."""

    PENDING = "pending"  # resolved; no request at XNAT yet (or the last one was given up)
    QUEUED = "queued"  # XNAT holds our QueuedPacsRequest in its queue
    PROCESSING = "processing"  # XNAT is working on it
    ISSUED = "issued"  # XNAT's C-MOVE was issued; waiting for the session to be built
    RECEIVED = "received"  # XNAT reports the study received; waiting for / checking the session
    DONE = "done"  # the session holds every expected series and instance (verified)
    UNVERIFIED = "unverified"  # the session is there; counts unverified (no C-FIND access)
    PARTIAL = "partial"  # the session holds fewer files than expected; needs attention
    FAILED = "failed"  # given up, with the reason

    @property
    def settled(self) -> bool:
        """True for a state that needs no more XNAT traffic in this run."""
        return self in _SETTLED


_SETTLED = frozenset({DqrState.DONE, DqrState.UNVERIFIED, DqrState.PARTIAL, DqrState.FAILED})


class RequestStatus(StrEnum):
    """``QueuedPacsRequest.status`` as XNAT's DQR reports it (QUEUED -> PROCESSING -> ISSUED |
    FAILED, then RECEIVED).  Production XNATs also show RECEIVING, BUILDING and ERROR;
    anything else reads as UNKNOWN (and is followed by its staleness timer)."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    ISSUED = "ISSUED"
    RECEIVING = "RECEIVING"
    BUILDING = "BUILDING"
    RECEIVED = "RECEIVED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: object) -> RequestStatus:
        """The status for XNAT's text (case-insensitive); UNKNOWN for anything else."""
        try:
            return cls(str(text).strip().upper())
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True)
class PacsEntry:
    """One PACS configured in XNAT (``GET /xapi/pacs``)."""

    id: int
    ae_title: str
    label: str = ""
    host: str = ""
    port: int = 0
    queryable: bool = True
    default_query_retrieve: bool = False  # XNAT's defaultQueryRetrievePacs


@dataclass(frozen=True)
class ExpectedSeries:
    """One series the study should bring, from pacsman's own C-FIND."""

    series_instance_uid: str
    series_number: str
    modality: str
    instances: int


@dataclass(frozen=True)
class DqrStudy:
    """One study to import: where it came from, its labels, and what it should hold.

    ``expected`` is empty and ``counts_verified`` False when the study was resolved through
    DQR's own query, which returns no counts."""

    line: int
    study_instance_uid: str
    subject: str
    session: str
    accession_number: str = ""
    study_date: str = ""
    expected: tuple[ExpectedSeries, ...] = ()
    counts_verified: bool = False

    @property
    def expected_instances(self) -> int | None:
        """Total instances expected, or None when the counts are unverified."""
        if not self.counts_verified:
            return None
        return sum(series.instances for series in self.expected)


@dataclass(frozen=True)
class QueuedRequest:
    """One ``QueuedPacsRequest`` (from the import answer, the queue or the history)."""

    id: int
    study_instance_uid: str
    status: RequestStatus
    status_text: str = ""  # XNAT's own text, kept when it is not one we know


class ArrivalVerdict(StrEnum):
    """What the archive holds for one study's session."""

    MISSING = "missing"  # no session with that label (yet)
    EMPTY = "empty"  # the session exists with 0 files
    PARTIAL = "partial"  # fewer scans or files than expected
    COMPLETE = "complete"  # every expected series with its expected file count
    UNVERIFIED = "unverified"  # the session holds files; nothing to compare them with
    OTHER_STUDY = "other_study"  # the label holds another StudyInstanceUID or subject


@dataclass(frozen=True)
class SessionArrival:
    """The archive's answer for one study: the verdict, files per scan, and why."""

    verdict: ArrivalVerdict
    files: int = 0
    scans: tuple[tuple[str, int], ...] = ()  # (scan ID, files), in XNAT's order
    detail: str = ""


class RowProblemKind(StrEnum):
    """Why a query-file row gave no study to import (or gave one another row already gave):
    it decides the row's state in the job store."""

    NO_MATCH = "no_match"  # nothing at the PACS matches the row exactly -> NO_MATCH
    DUPLICATE = "duplicate"  # the study is already selected by an earlier line -> DUPLICATE
    REFUSED = "refused"  # the row cannot be asked for, or its labels break a rule -> FAILED


@dataclass(frozen=True)
class RowProblem:
    """One problem of one query-file row: its line, its kind, and the reason (the row's
    detail in the job store; no patient identifiers)."""

    line: int
    kind: RowProblemKind
    reason: str
