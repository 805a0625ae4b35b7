"""DQR's side of the PACS conversation: C-ECHO, study-level C-FIND and C-MOVE (plain
pynetdicom, bounded timeouts).  The calling AE title is the emulated XNAT's receiver title.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association

from pacsman.testing.xnat_emulator._dqr_model import DqrPacs

__all__ = ["MOVE_SUCCESS", "SUCCESS", "PacsUnavailable", "echo", "find_studies", "move_study"]

# SOP Class UIDs (PS3.4); pynetdicom.sop_class builds these at import time, hidden from mypy
Verification = UID("1.2.840.10008.1.1")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")
_TIMEOUT = 10.0  # seconds: connect, association, network
_MOVE_DIMSE_TIMEOUT = 60.0  # seconds between two C-MOVE responses
SUCCESS = 0x0000
_PENDING = frozenset({0xFF00, 0xFF01})  # Pending (0xFF01: optional keys not supported)
_SUB_OPERATIONS_FAILED = 0xB000  # Warning: one or more sub-operations failed
#: C-MOVE final statuses DQR counts as issued: success, and the warning above.
MOVE_SUCCESS = frozenset({SUCCESS, _SUB_OPERATIONS_FAILED})

#: Study-level return keys (DICOM keywords) asked for in every C-FIND.
STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "ReferringPhysicianName",
)


class PacsUnavailable(Exception):
    """The PACS refused or dropped the association, or answered a failure; says which."""


def _ae(calling: str, model: str, dimse_timeout: float = _TIMEOUT) -> AE:
    ae = AE(ae_title=calling)
    for timeout in ("acse_timeout", "connection_timeout", "network_timeout"):
        setattr(ae, timeout, _TIMEOUT)
    ae.dimse_timeout = dimse_timeout
    ae.add_requested_context(model)
    return ae


@contextmanager
def _association(
    pacs: DqrPacs, calling: str, model: str, dimse_timeout: float = _TIMEOUT
) -> Iterator[Association]:
    assoc = _ae(calling, model, dimse_timeout).associate(
        pacs.host, pacs.port, ae_title=pacs.ae_title
    )
    if not assoc.is_established:
        raise PacsUnavailable(
            f"no association with {pacs.ae_title}@{pacs.host}:{pacs.port} (refused or unreachable)"
        )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def echo(pacs: DqrPacs, calling: str) -> float:
    """C-ECHO the PACS; return the round trip in milliseconds.

    Raises:
        PacsUnavailable: no association, or a non-success status.
    """
    started = time.monotonic()
    with _association(pacs, calling, Verification) as assoc:
        status = assoc.send_c_echo()
    if status is None or int(status.get("Status", -1)) != SUCCESS:
        raise PacsUnavailable(f"C-ECHO to {pacs.ae_title} failed")
    return (time.monotonic() - started) * 1000


def _identifier(criteria: Mapping[str, str]) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in STUDY_KEYS:
        setattr(query, keyword, criteria.get(keyword, ""))
    return query


def find_studies(pacs: DqrPacs, calling: str, criteria: Mapping[str, str]) -> list[Dataset]:
    """Study-level C-FIND with ``criteria`` (DICOM keyword -> matching value).

    Raises:
        PacsUnavailable: no association, or a failure status.
    """
    found = []
    model = StudyRootQueryRetrieveInformationModelFind
    with _association(pacs, calling, model) as assoc:
        for status, identifier in assoc.send_c_find(_identifier(criteria), model):
            code = int(status.get("Status", -1)) if status is not None else -1
            if code in _PENDING and identifier is not None:
                found.append(identifier)
            elif code != SUCCESS:
                raise PacsUnavailable(f"C-FIND at {pacs.ae_title} ended with status 0x{code:04X}")
    return found


def move_study(
    pacs: DqrPacs,
    calling: str,
    destination: str,
    study_uid: str,
    series_uids: Sequence[str] = (),
    *,
    abort: threading.Event | None = None,
) -> int:
    """C-MOVE one study (or only ``series_uids`` of it) to ``destination``; return the final
    status (0x0000 success; -1 when the association dropped or ``abort`` was set).

    Raises:
        PacsUnavailable: no association.
    """
    model = StudyRootQueryRetrieveInformationModelMove
    queries = [_move_query(study_uid, uid) for uid in series_uids] or [_move_query(study_uid)]
    final = -1
    with _association(pacs, calling, model, _MOVE_DIMSE_TIMEOUT) as assoc:
        for query in queries:
            final = _one_move(assoc, query, destination, abort)
            if final not in MOVE_SUCCESS:
                break
    return final


def _move_query(study_uid: str, series_uid: str = "") -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES" if series_uid else "STUDY"
    query.StudyInstanceUID = study_uid
    if series_uid:
        query.SeriesInstanceUID = series_uid
    return query


def _one_move(
    assoc: Association, query: Dataset, destination: str, abort: threading.Event | None
) -> int:
    final = -1
    model = StudyRootQueryRetrieveInformationModelMove
    for status, _ in assoc.send_c_move(query, destination, model):
        if (abort is not None and abort.is_set()) or status is None:
            assoc.abort()
            return -1
        code = int(status.get("Status", -1))
        if code not in _PENDING:
            final = code
    return final
