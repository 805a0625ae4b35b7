"""What XNAT's DQR and archive answers must look like, and what pacsman takes from them
(private to the package).

* a PACS list with a duplicate id, an entry without id or aeTitle, or no list is
  :class:`FatalError`: an import must name one PACS for certain (:func:`pacs_entries`);
* an import is answered by one QUEUED request for the study asked for (a list of one, or the
  bare object); anything else is :class:`TransientError` (:func:`queued_answer`);
* a status pacsman does not know reads UNKNOWN, its text kept only when it looks like one
  (:func:`queued_request`);
* an archive answer is a listing (``ResultSet.Result``) or an item (``items``), else
  :class:`TransientError` (:func:`archive_answer`);
* a DicomEdit script's blank lines, comments and ``version`` line instruct nothing
  (:func:`instructions`).
* a DQR study answer's values are read per query-file column, dates as YYYYMMDD
  (:func:`study_value`).

QueuedPacsRequests carry the patient's name and ID: they are read, never put in a message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pacsman.dqr._answers import kind_of
from pacsman.dqr._model import DqrStudy, PacsEntry, QueuedRequest, RequestStatus
from pacsman.errors import FatalError, TransientError

__all__ = [
    "archive_answer",
    "instructions",
    "pacs_entries",
    "ping_outcome",
    "queued_answer",
    "queued_request",
    "study_entry",
    "study_value",
]

_LONG = 2**63
#: What a status XNAT reports looks like (enum names); other text is not repeated.
_STATUS_TEXT = re.compile(r"[A-Z][A-Z_]{0,39}")
_UID = re.compile(r"[0-9][0-9.]{0,63}")
#: Columns of an archive listing pacsman indexes directly: present and non-empty.
_REQUIRED_COLUMNS = ("ID", "label")
#: DicomEdit lines that instruct nothing: blank, comments, the version line.
_NO_INSTRUCTION = re.compile(r"\s*(?://.*|#.*|version\s+\"[^\"]*\"\s*)?")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def pacs_entries(answer: object, said: str) -> list[PacsEntry]:
    """The PACS list, if pacsman can trust it: a list of objects, each with a positive id
    and an aeTitle, no id twice.

    Raises:
        FatalError: naming each problem (at most five) and the fix.
    """
    if not isinstance(answer, list):
        raise FatalError(
            f"{said} with {kind_of(answer)}, not a list of PACS; is xnat.url the address of "
            "XNAT, with its DQR plugin?"
        )
    problems, entries = [], []
    for number, item in enumerate(answer, 1):
        if not isinstance(item, Mapping):
            problems.append(f"entry {number} is not a PACS ({kind_of(item)})")
            continue
        entry = _pacs_entry(item)
        if entry.id <= 0:
            problems.append(f"entry {number} has no id (a positive whole number)")
        if not entry.ae_title.strip():
            problems.append(f"entry {number} has no aeTitle")
        entries.append(entry)
    counts = Counter(e.id for e in entries if e.id > 0)
    problems += [f"id {i} {_times(n)}" for i, n in counts.items() if n > 1]
    if problems:
        raise FatalError(
            f"{said} with a PACS list pacsman cannot trust: {'; '.join(problems[:5])}; an "
            "import must name one PACS for certain, so nothing is imported; ask the XNAT "
            "administrator to check the DQR plugin's PACS settings"
        )
    return entries


def _times(count: int) -> str:
    return "twice" if count == 2 else f"{count} times"


def _pacs_entry(item: Mapping[str, Any]) -> PacsEntry:
    return PacsEntry(
        id=_int(item.get("id")),
        ae_title=_cell(item.get("aeTitle")),
        label=_cell(item.get("label")),
        host=_cell(item.get("host")),
        port=_int(item.get("queryRetrievePort")),
        queryable=item.get("queryable") is not False,
        default_query_retrieve=item.get("defaultQueryRetrievePacs") is True,
    )


def _int(value: object) -> int:
    """A whole number from XNAT (an int, or its digits as text) that a 64-bit integer
    column holds (XNAT's ids are Java longs); 0 for anything else."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if -_LONG < value < _LONG else 0
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if text.isdigit() and len(text) < 19 else 0


def _cell(value: object) -> str:
    """Text from XNAT (a string or a number); "" for anything else (lists, objects, null)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value).strip()
    return ""


def ping_outcome(answer: Mapping[str, Any]) -> tuple[bool, str]:
    if answer.get("enabled") is False:
        return False, "XNAT has this PACS disabled"
    if answer.get("successful") is not True:
        return False, "XNAT's C-ECHO of the PACS failed"
    ping = answer.get("pingTime")
    timed = f" in {ping} ms" if isinstance(ping, int | float) and not isinstance(ping, bool) else ""
    return True, f"XNAT's C-ECHO of the PACS succeeded{timed}"


def study_entry(study: DqrStudy) -> dict[str, Any]:
    return {
        "studyInstanceUid": study.study_instance_uid,
        "seriesInstanceUids": [],
        "seriesDescriptions": [],
        "relabelMap": {"Subject": study.subject, "Session": study.session},
    }


def queued_request(item: Mapping[str, Any]) -> QueuedRequest:
    raw = item.get("status")
    status = RequestStatus.parse(raw) if isinstance(raw, str) else RequestStatus.UNKNOWN
    text = raw.strip() if isinstance(raw, str) else ""
    known = status is not RequestStatus.UNKNOWN or not _STATUS_TEXT.fullmatch(text)
    uid = item.get("studyInstanceUid")
    return QueuedRequest(
        id=_int(item.get("id")),
        study_instance_uid=uid.strip() if isinstance(uid, str) else "",
        status=status,
        status_text="" if known else text,
    )


def queued_answer(answer: object, study: DqrStudy, what: str) -> QueuedRequest:
    """The one QUEUED request for ``study`` XNAT must answer an import with (a list of one,
    or the bare object).

    Raises:
        TransientError: anything else (counted as an attempt; the run asks again).
    """
    items = [answer] if isinstance(answer, Mapping) else answer
    if not isinstance(items, list):
        raise TransientError(
            f"{what}: XNAT answered {kind_of(answer)} where a list with one QueuedPacsRequest "
            "was expected; asking again later"
        )
    if len(items) == 1 and not isinstance(items[0], Mapping):
        raise TransientError(
            f"{what}: XNAT answered 1 entry that is not a QueuedPacsRequest "
            f"({kind_of(items[0])}); asking again later"
        )
    if len(items) != 1:
        ids = [_int(i.get("id")) for i in items if isinstance(i, Mapping)]
        shown = ", ".join(str(i) for i in ids[:5] if i > 0)
        raise TransientError(
            f"{what}: XNAT answered {len(items)} requests{f' (ids {shown})' if shown else ''} "
            "where one QueuedPacsRequest was expected; asking again later (an XNAT "
            "administrator may remove the extra ones from the DQR queue)"
        )
    return _checked(queued_request(items[0]), study, what)


def _checked(request: QueuedRequest, study: DqrStudy, what: str) -> QueuedRequest:
    if request.id <= 0:
        raise TransientError(
            f"{what}: XNAT's answer has no request id (a positive whole number), so pacsman "
            "cannot follow it; asking again later"
        )
    if request.status is not RequestStatus.QUEUED:
        shown = request.status_text or request.status.value
        raise TransientError(
            f"{what}: XNAT answered request {request.id} with status {shown!r} where QUEUED "
            "was expected; asking again later"
        )
    uid = request.study_instance_uid
    if uid and uid != study.study_instance_uid:
        shown = uid if _UID.fullmatch(uid) else "(not a UID)"
        raise TransientError(
            f"{what}: XNAT queued request {request.id} for StudyInstanceUID {shown}, not "
            f"{study.study_instance_uid}; asking again later"
        )
    return request


def archive_answer(answer: object, what: str, columns: Iterable[str]) -> Any:
    """An archive answer in the shape :mod:`pacsman.push._xnat_state` reads, or why not.

    Raises:
        TransientError: neither a ResultSet with a list of rows nor items; a row without a
            required column.
    """
    if isinstance(answer, Mapping) and isinstance(answer.get("items"), list):
        return answer
    result = answer.get("ResultSet") if isinstance(answer, Mapping) else None
    rows = result.get("Result") if isinstance(result, Mapping) else None
    if not isinstance(rows, list):
        raise TransientError(
            f"{what}: XNAT answered {kind_of(answer)} that is neither an archive listing "
            "(ResultSet.Result, a list) nor an item (items); asking again later"
        )
    cleaned = [
        {str(k): _cell(v) for k, v in row.items()} for row in rows if isinstance(row, Mapping)
    ]
    required = [c for c in _REQUIRED_COLUMNS if c in columns]
    for number, row in enumerate(cleaned, 1):
        missing = [c for c in required if not row.get(c)]
        if missing:
            raise TransientError(
                f"{what}: row {number} of XNAT's listing has no {', '.join(missing)}; asking "
                "again later"
            )
    return {"ResultSet": {"Result": cleaned}}


def instructions(script: str) -> int:
    """How many lines of a DicomEdit script instruct something."""
    text = _BLOCK_COMMENT.sub("\n", script)
    return sum(1 for line in text.splitlines() if not _NO_INSTRUCTION.fullmatch(line))


def study_value(answer: Mapping[str, Any], key: str) -> list[str]:
    """What one DQR Study answer (``POST /xapi/dqr/query/studies``) holds for a query-file
    column (several for Modality; a date as YYYYMMDD; text stripped)."""
    patient = answer.get("patient")
    patient = patient if isinstance(patient, Mapping) else {}
    if key == "Modality":
        modalities = answer.get("modalitiesInStudy")
        return [str(m) for m in modalities] if isinstance(modalities, list) else []
    value: object = {
        "StudyInstanceUID": answer.get("studyInstanceUid"),
        "AccessionNumber": answer.get("accessionNumber"),
        "StudyDate": answer.get("studyDate"),
        "StudyDescription": answer.get("studyDescription"),
        "PatientID": patient.get("id"),
        "PatientName": patient.get("name"),
        "PatientBirthDate": patient.get("birthDate"),
    }.get(key)
    return [_dicom_date(value) if key.endswith("Date") else _text(value)]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):  # a PersonName as an object: its alphabetic form
        return _text(value.get("alphabetic") or value.get("Alphabetic") or "")
    return str(value).strip()


def _dicom_date(value: object) -> str:
    """A DICOM date (YYYYMMDD) from DQR's date (``20230105``, ``2023-01-05`` or [y, m, d])."""
    if isinstance(value, list) and len(value) == 3 and all(isinstance(p, int) for p in value):
        return f"{value[0]:04d}{value[1]:02d}{value[2]:02d}"
    text = _text(value)
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return text.replace("-", "")
    return text
