"""The DQR plugin's REST API (contract §14): the PACS list and ping, the study query, the
import, the queue and the history.  Errors answer plain text, as XNAT's XAPI does.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsman.testing.xnat_emulator._context import Context
from pacsman.testing.xnat_emulator._dqr_model import DqrPacs
from pacsman.testing.xnat_emulator._dqr_pacs import PacsUnavailable, echo, find_studies
from pacsman.testing.xnat_emulator._dqr_queue import DqrService, StudyOrder
from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._http import Request, Response
from pacsman.testing.xnat_emulator._render import json_response

__all__ = [
    "dqr_history",
    "dqr_import",
    "dqr_query_studies",
    "dqr_queue",
    "pacs_list",
    "pacs_one",
    "pacs_status",
    "xapi",
]

#: PacsSearchCriteria field -> the DICOM keyword it matches
_CRITERIA = {
    "studyInstanceUid": "StudyInstanceUID",
    "accessionNumber": "AccessionNumber",
    "patientId": "PatientID",
    "patientName": "PatientName",
    "modality": "ModalitiesInStudy",
}
_INVALID_RECEIVER = "Invalid DICOM SCP Receiver ID."
Handler = Callable[[Request, Context], Response]


def _text(status: int, message: str) -> Response:
    return Response(status, message.encode(), "text/plain;charset=UTF-8")


def xapi(handler: Handler) -> Handler:
    """Wrap an XAPI route: an :class:`XnatHttpError` answers plain text, as XNAT's XAPI does."""

    @functools.wraps(handler)
    def answer(request: Request, context: Context) -> Response:
        try:
            return handler(request, context)
        except XnatHttpError as problem:
            return _text(problem.status, problem.message)

    return answer


def _service(context: Context) -> DqrService:
    if context.dqr is None:
        raise XnatHttpError(404, "The DQR plugin is not installed.")
    return context.dqr


def _pacs_json(pacs_id: int, pacs: DqrPacs) -> dict[str, Any]:
    return {
        "id": pacs_id,
        "aeTitle": pacs.ae_title,
        "host": pacs.host,
        "queryRetrievePort": pacs.port,
        "label": pacs.label or pacs.ae_title,
        "queryable": True,
        "storable": False,
        "defaultQueryRetrievePacs": pacs_id == 1,
        "ormStrategySpringBeanId": "dicomOrmStrategy",
    }


def _pacs_id(request: Request) -> int:
    text = request.segments[2]
    if not text.isdigit():
        raise XnatHttpError(400, f"The PACS id {text!r} is not a number.")
    return int(text)


@xapi
def pacs_list(request: Request, context: Context) -> Response:
    """``GET /xapi/pacs[?queryable=&storable=]``: the configured PACS, ids from 1."""
    entries = [_pacs_json(i, p) for i, p in enumerate(_service(context).pacs, start=1)]
    for flag in ("queryable", "storable"):
        wanted = request.query.get(flag, "").lower()
        if wanted in ("true", "false"):
            entries = [e for e in entries if e[flag] is (wanted == "true")]
    return json_response(entries)


@xapi
def pacs_one(request: Request, context: Context) -> Response:
    """``GET /xapi/pacs/{id}``: one PACS, or 404."""
    pacs_id = _pacs_id(request)
    pacs = _service(context).pacs_by_id(pacs_id)
    if pacs is None:
        return _text(404, f"No PACS with id {pacs_id}.")
    return json_response(_pacs_json(pacs_id, pacs))


@xapi
def pacs_status(request: Request, context: Context) -> Response:
    """``GET /xapi/pacs/{id}/status``: a real C-ECHO to the PACS."""
    service = _service(context)
    pacs_id = _pacs_id(request)
    pacs = service.pacs_by_id(pacs_id)
    if pacs is None:
        return _text(404, f"No PACS with id {pacs_id}.")
    try:
        ping = round(echo(pacs, service.receiver.ae_title))
    except PacsUnavailable:
        return json_response({"pacsId": pacs_id, "successful": False, "enabled": True})
    return json_response({"pacsId": pacs_id, "successful": True, "enabled": True, "pingTime": ping})


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body_bytes() or b"null")
    except ValueError as problem:
        raise XnatHttpError(400, f"The request body is not JSON: {problem}") from problem
    if not isinstance(body, dict):
        raise XnatHttpError(400, "The request body must be a JSON object.")
    return body


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise XnatHttpError(400, f"Field {name!r}: {value!r} is not an integer.")
    return value


def _str_field(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise XnatHttpError(400, f"Field {name!r}: {value!r} is not a non-empty string.")
    return value


def _criteria(body: dict[str, Any]) -> dict[str, str]:
    criteria = {}
    for field, keyword in _CRITERIA.items():
        value = _str_field(body, field, required=False)
        if value:
            criteria[keyword] = value
    start = _str_field(body, "studyDateStart", required=False)
    end = _str_field(body, "studyDateEnd", required=False)
    if start or end:
        criteria["StudyDate"] = start if start == end else f"{start}-{end}"
    return criteria


def _text_of(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    return "" if value is None else str(value)


def _study_json(dataset: Dataset) -> dict[str, Any]:
    modalities = dataset.get("ModalitiesInStudy", "")
    if isinstance(modalities, MultiValue):
        listed = [str(m) for m in modalities if m]
    else:
        listed = [str(modalities)] if modalities else []
    return {
        "studyInstanceUid": _text_of(dataset, "StudyInstanceUID"),
        "studyDate": _text_of(dataset, "StudyDate"),
        "studyId": _text_of(dataset, "StudyID"),
        "accessionNumber": _text_of(dataset, "AccessionNumber"),
        "studyDescription": _text_of(dataset, "StudyDescription"),
        "modalitiesInStudy": listed,
        "patient": {
            "id": _text_of(dataset, "PatientID"),
            "name": _text_of(dataset, "PatientName"),
            "birthDate": _text_of(dataset, "PatientBirthDate"),
            "sex": _text_of(dataset, "PatientSex"),
        },
        "referringPhysicianName": _text_of(dataset, "ReferringPhysicianName"),
    }


@xapi
def dqr_query_studies(request: Request, context: Context) -> Response:
    """``POST /xapi/dqr/query/studies``: a real study-level C-FIND; 204 when nothing matches."""
    service = _service(context)
    body = _json_body(request)
    pacs_id = _int_field(body, "pacsId")
    pacs = service.pacs_by_id(pacs_id)
    if pacs is None:
        return _text(404, f"No PACS with id {pacs_id}.")
    try:
        found = find_studies(pacs, service.receiver.ae_title, _criteria(body))
    except PacsUnavailable as problem:
        return _text(500, f"The query failed: {problem}")
    if not found:
        return Response(204, b"", "application/json")
    return json_response([_study_json(d) for d in found])


def _string_list(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise XnatHttpError(400, f"Field {name!r}: {value!r} is not a list of strings.")
    return tuple(value)


def _order(index: int, raw: Any) -> StudyOrder:
    where = f"studies[{index}]"
    if not isinstance(raw, dict):
        raise XnatHttpError(400, f"Field {where!r}: {raw!r} is not an object.")
    uid = raw.get("studyInstanceUid")
    if not isinstance(uid, str) or not uid:
        raise XnatHttpError(400, f"Field '{where}.studyInstanceUid': {uid!r} is not a UID.")
    relabel = raw.get("relabelMap") or {}
    if not isinstance(relabel, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in relabel.items()
    ):
        raise XnatHttpError(400, f"Field '{where}.relabelMap': {relabel!r} is not a string map.")
    _string_list(raw.get("seriesDescriptions"), f"{where}.seriesDescriptions")
    series = _string_list(raw.get("seriesInstanceUids"), f"{where}.seriesInstanceUids")
    return StudyOrder(uid, series, relabel)


def _orders(body: dict[str, Any]) -> list[StudyOrder]:
    studies = body.get("studies")
    if not isinstance(studies, list) or not studies:
        raise XnatHttpError(400, f"Field 'studies': {studies!r} is not a non-empty list.")
    if not isinstance(body.get("forceImport", False), bool):
        raise XnatHttpError(400, f"Field 'forceImport': {body['forceImport']!r} is not a boolean.")
    return [_order(i, raw) for i, raw in enumerate(studies)]


@xapi
def dqr_import(request: Request, context: Context) -> Response:
    """``POST /xapi/dqr/import``: queue one request per study; 200 ``[QueuedPacsRequest]``."""
    service = _service(context)
    forced = context.faults.take_dqr_import_status()
    if forced is not None:
        return _text(forced, f"The emulator answers {forced} (dqr_import_status fault).")
    body = _json_body(request)
    pacs_id, project = _int_field(body, "pacsId"), _str_field(body, "projectId")
    ae_title, port = _str_field(body, "aeTitle"), _int_field(body, "port")
    orders = _orders(body)
    with context.store.lock:
        known = project in context.store.projects
    if not known or not service.project_enabled(project):
        return _text(403, f"User {request.user} may not use DQR to import into project {project}.")
    if service.pacs_by_id(pacs_id) is None:
        return _text(404, f"No PACS with id {pacs_id}.")
    receiver = service.receiver
    if (ae_title, port) != (receiver.ae_title, receiver.port) or receiver.port == 0:
        return _text(500, _INVALID_RECEIVER)
    return json_response(service.enqueue(request.user or "", pacs_id, project, orders))


@xapi
def dqr_queue(request: Request, context: Context) -> Response:
    """``GET /xapi/dqr/import/queue?all=false``: requests still QUEUED or PROCESSING."""
    everyone = request.query.get("all", "false").lower() == "true"
    return json_response(_service(context).queue(None if everyone else request.user))


@xapi
def dqr_history(request: Request, context: Context) -> Response:
    """``GET /xapi/dqr/query/history/user``: the user's requests that left the queue."""
    return json_response(_service(context).history(request.user or ""))
