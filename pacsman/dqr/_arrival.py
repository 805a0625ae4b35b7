"""What XNAT's archive holds for a study ``pacsman dqr`` asked for: the session labelled
``study.session`` in the project, read through the archive API (contract §14.1: the DQR
status alone is too thin to trust).

The session must belong to ``study.subject`` and hold ``study.study_instance_uid`` (else
OTHER_STUDY, never DONE; the other subject's label is not repeated: it may be a patient's
name).  An archive answer of another shape is a TransientError
(:meth:`pacsman.dqr._xapi.DqrApi.get_json`).

With counts from pacsman's C-FIND, every expected series must be a scan
with exactly its expected files (scans matched by SeriesInstanceUID when XNAT gives it,
else by scan ID = SeriesNumber); fewer is PARTIAL, 0 files EMPTY.  Without counts, a
session with files is UNVERIFIED.  A series with more files than the C-FIND promised is
UNVERIFIED too: pacsman cannot say it is right, and it is not short.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from xnat import exceptions as xnat_errors

from pacsman.dqr._model import ArrivalVerdict, DqrStudy, ExpectedSeries, SessionArrival
from pacsman.dqr._xapi import DqrApi
from pacsman.errors import FatalError
from pacsman.push.xnat_rest import ArchivedSession, find_archived, project_sessions

__all__ = ["check_arrival", "labels_taken"]

_XNAT_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


def check_arrival(api: DqrApi, study: DqrStudy) -> SessionArrival:
    """The archive's verdict on ``study``'s session (label ``study.session`` in the project).

    Raises:
        TransientError: XNAT did not answer, or answered 5xx.
        FatalError: the login was refused, or the project cannot be read.
    """
    try:
        found = find_archived(api, api.project, study.session)
        if found is None:
            return SessionArrival(ArrivalVerdict.MISSING, detail=_missing(api, study))
        scans = tuple(found.scans.items())
        clash = _clash(found, study)
        if clash:
            return SessionArrival(ArrivalVerdict.OTHER_STUDY, found.files, scans, clash)
        if found.files == 0:
            detail = f"session {study.session!r} exists with 0 files"
            return SessionArrival(ArrivalVerdict.EMPTY, 0, scans, detail)
        if not study.counts_verified:
            detail = f"{found.files} file(s) in {len(scans)} scan(s); counts unverified"
            return SessionArrival(ArrivalVerdict.UNVERIFIED, found.files, scans, detail)
        uids = _scan_uids(api, found) if any(s.series_instance_uid for s in study.expected) else {}
        return _compare(study, found, uids)
    except xnat_errors.XNATResponseError as exc:
        raise FatalError(
            f"reading session {study.session!r} of project {api.project!r}: {exc}; check that "
            "the project exists and the XNAT user may read it"
        ) from None


def labels_taken(api: DqrApi, studies: Sequence[DqrStudy]) -> list[tuple[DqrStudy, SessionArrival]]:
    """The studies whose session label the project already holds, with what it holds.

    One listing of the project's sessions; only the labels found are read in full.  A
    subject label that differs from one of the project's only in case is OTHER_STUDY too
    (XNAT would merge the two subjects).

    Raises:
        TransientError, FatalError: as :func:`check_arrival`.
    """
    try:
        sessions = project_sessions(api, api.project)
    except xnat_errors.XNATResponseError as exc:
        raise FatalError(f"listing the sessions of project {api.project!r}: {exc}") from None
    subjects = {s.subject for s in sessions.values()}
    taken = []
    for study in studies:
        if study.session in sessions:
            taken.append((study, check_arrival(api, study)))
            continue
        spelling = _other_spelling(study.subject, subjects)
        if spelling is not None:
            detail = (
                f"subject label {study.subject!r} differs from the project's {spelling!r} only "
                "in case; XNAT would merge them into one subject: use one spelling"
            )
            taken.append((study, SessionArrival(ArrivalVerdict.OTHER_STUDY, detail=detail)))
    return taken


def _other_spelling(subject: str, known: set[str]) -> str | None:
    folded = subject.casefold()
    return next((k for k in sorted(known) if k != subject and k.casefold() == folded), None)


def _missing(api: DqrApi, study: DqrStudy) -> str:
    return f"no session {study.session!r} in project {api.project!r} yet"


def _clash(found: ArchivedSession, study: DqrStudy) -> str:
    where = f"session {study.session!r}"
    if found.subject != study.subject:
        # The other subject's label is not repeated: XNAT labels a subject it was given
        # without relabelling by the patient's name.  Its experiment ID finds it.
        experiment = f" (XNAT experiment {found.id})" if _XNAT_ID.fullmatch(found.id) else ""
        return (
            f"{where} belongs to another subject{experiment}, not {study.subject!r}; choose "
            "another session label"
        )
    if found.study_instance_uid != study.study_instance_uid:
        return (
            f"{where} holds StudyInstanceUID {found.study_instance_uid or '(none)'}, not "
            f"{study.study_instance_uid}; choose another session label"
        )
    return ""


def _scan_uids(api: DqrApi, found: ArchivedSession) -> dict[str, str]:
    """SeriesInstanceUID -> scan ID, from the session's own JSON (its ``scans/scan``)."""
    answer = api.get_json(f"/data/experiments/{found.id}")
    uids: dict[str, str] = {}
    for scan in _children(answer, "scans/scan"):
        fields = scan.get("data_fields") if isinstance(scan, Mapping) else None
        if isinstance(fields, Mapping) and fields.get("UID") and fields.get("ID"):
            uids[str(fields["UID"])] = str(fields["ID"])
    return uids


def _children(answer: Any, field: str) -> list[Any]:
    items = answer.get("items") if isinstance(answer, Mapping) else None
    if not isinstance(items, list) or not items or not isinstance(items[0], Mapping):
        return []
    for child in items[0].get("children") or []:
        if isinstance(child, Mapping) and child.get("field") == field:
            found = child.get("items")
            return found if isinstance(found, list) else []
    return []


def _scan_of(series: ExpectedSeries, uids: Mapping[str, str]) -> str:
    """The scan ID holding ``series``: by its UID when XNAT gives it, else its number."""
    by_uid = uids.get(series.series_instance_uid)
    return by_uid if by_uid is not None else series.series_number.strip()


def _compare(study: DqrStudy, found: ArchivedSession, uids: Mapping[str, str]) -> SessionArrival:
    scans = tuple(found.scans.items())
    by_id = {scan_id.lstrip("0") or scan_id: files for scan_id, files in found.scans.items()}
    short, over = [], []
    for series in study.expected:
        scan = _scan_of(series, uids)
        have = by_id.get(scan.lstrip("0") or scan, 0) if scan else 0
        name = f"series {series.series_number or series.series_instance_uid}"
        if have < series.instances:
            short.append(f"{name}: {have} of {series.instances} file(s)")
        elif have > series.instances:
            over.append(f"{name}: {have} file(s), {series.instances} expected")
    expected = sum(s.instances for s in study.expected)
    if short:
        detail = f"{found.files} of {expected} file(s): " + "; ".join(short)
        return SessionArrival(ArrivalVerdict.PARTIAL, found.files, scans, detail)
    if over:
        detail = "more files than the C-FIND promised: " + "; ".join(over)
        return SessionArrival(ArrivalVerdict.UNVERIFIED, found.files, scans, detail)
    detail = f"all {expected} file(s) in {len(study.expected)} series"
    return SessionArrival(ArrivalVerdict.COMPLETE, found.files, scans, detail)
