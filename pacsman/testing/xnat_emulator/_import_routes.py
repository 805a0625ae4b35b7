"""``POST /data/services/import`` and ``POST /data/services/archive`` (contract §10, §11.2),
with the import fault switches applied around them.
"""

from __future__ import annotations

import shutil
from http import HTTPStatus
from pathlib import Path

from pacsman.testing.xnat_emulator._context import Context
from pacsman.testing.xnat_emulator._dicomzip import StagedSession, UploadFormatError, stage_upload
from pacsman.testing.xnat_emulator._errors import ArchiveConflict, XnatHttpError
from pacsman.testing.xnat_emulator._faults import ImportFault, ImportFaultKind
from pacsman.testing.xnat_emulator._http import Request, Response
from pacsman.testing.xnat_emulator._importer import (
    UNASSIGNED,
    ArchiveTarget,
    Labels,
    archive_entry,
    check_label,
    dicom_labels,
    to_prearchive,
)
from pacsman.testing.xnat_emulator._tree import parse_target

__all__ = ["archive_service", "import_service"]

_HANDLERS = ("SI", "DICOM-zip", "gradual-DICOM")
_URI_LIST = "text/uri-list"


def _gateway_page(status: int) -> Response:
    """What a reverse proxy answers on its own (nginx-like HTML)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = f"<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    body += f"<center><h1>{status} {phrase}</h1></center>\r\n</body>\r\n</html>\r\n"
    return Response(status, body.encode(), "text/html")


def _dest_labels(dest: str) -> Labels:
    """Labels encoded in ``dest=/archive/projects/P/subjects/S/experiments/E`` (or prearchive)."""
    segments = tuple(s for s in dest.split("/") if s)[1:]
    target = parse_target(segments) if segments else None
    if target is None:
        return Labels(None, None, None)
    return Labels(target.project, target.subject, target.experiment)


def _labels(request: Request, context: Context, staged: StagedSession) -> Labels:
    query = request.query
    dest = _dest_labels(query.get("dest", ""))
    with context.store.lock:
        derived = dicom_labels(staged.header, context.store)
    project = query.get("project") or dest.project or derived.project
    subject = query.get("subject") or dest.subject or derived.subject
    session = query.get("session") or dest.session or derived.session
    strict = context.strict_labels
    return Labels(
        project,
        check_label(subject, "subject", strict=strict) if subject else None,
        check_label(session, "experiment", strict=strict) if session else None,
    )


def _stage(request: Request, staging: Path) -> StagedSession:
    upload = staging / "upload"
    request.save_body(upload)
    ignore = request.query.get("Ignore-Unparsable", "").lower() == "true"
    try:
        staged = stage_upload(upload, staging, ignore_unparsable=ignore)
    except UploadFormatError as problem:
        raise XnatHttpError(400, str(problem)) from problem
    if staged.file_count == 0:
        raise XnatHttpError(400, "Upload did not include parseable files for session generation.")
    if len(staged.study_uids) > 1:
        raise XnatHttpError(400, "Upload included files for multiple imaging sessions.")
    return staged


def _apply(request: Request, context: Context, staged: StagedSession, handler: str) -> str:
    """Store the staged upload (prearchive, then archive if asked); return the session URI."""
    labels = _labels(request, context, staged)
    to_archive = request.query.get("dest", "").startswith("/archive")
    faults = context.faults
    polls, seconds = (
        (0, 0.0)
        if to_archive
        else (
            faults.prearchive_receiving_polls,
            faults.prearchive_receiving_seconds,
        )
    )
    with context.store.transaction():
        entry = to_prearchive(context.store, staged, labels, polls=polls, seconds=seconds)
        if staged.error is not None:
            raise XnatHttpError(400, staged.error)
        if not to_archive or entry.project == UNASSIGNED:
            return f"/data{entry.url}"
        try:
            return archive_entry(
                context.store, entry, ArchiveTarget(request.query.get("overwrite"))
            )
        except ArchiveConflict as conflict:
            if handler == "DICOM-zip":
                raise XnatHttpError(400, "Failed to archive 1 of 1 session(s)") from conflict
            raise XnatHttpError(409, conflict.message) from conflict


def _run(request: Request, context: Context, handler: str, fault: ImportFault) -> str:
    staging = context.store.staging_dir()
    try:
        staged = _stage(request, staging)
        if fault.kind is ImportFaultKind.ZERO_FILES:
            for series in staged.series.values():
                series.files.clear()
        return _apply(request, context, staged, handler)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_service(request: Request, context: Context) -> Response:
    """``POST /data/services/import``: one study per upload; answers its URI.

    Raises:
        XnatHttpError: 405 for other methods, 404 unknown handler, 400/409/417 as XNAT does.
    """
    if request.method != "POST":
        raise XnatHttpError(405, "The method specified in the request is not allowed.")
    handler = request.query.get("import-handler") or "SI"
    if handler not in _HANDLERS:
        raise XnatHttpError(404, f"No import handler is registered for {handler!r}.")
    fault = context.faults.take_import_fault()
    if fault.kind is ImportFaultKind.STATUS:
        return _gateway_page(fault.status)
    uri = _run(request, context, handler, fault)
    if fault.kind is ImportFaultKind.ACCEPT_THEN_FAIL:
        return _gateway_page(fault.status)
    if fault.kind is ImportFaultKind.RESET:
        return Response(drop=True)
    return Response(200, f"{uri}\r\n".encode(), _URI_LIST)


def archive_service(request: Request, context: Context) -> Response:
    """``POST /data/services/archive?src=<prearchive url>``: archive one prearchive entry.

    Raises:
        XnatHttpError: 404 unknown entry, 403 while RECEIVING, 500 "FAILED: ..." on conflicts.
    """
    query, store = request.query, context.store
    src = query.get("src", "").removeprefix("/data")
    strict = context.strict_labels
    subject, session = query.get("subject"), query.get("session")
    target = ArchiveTarget(
        query.get("overwrite"),
        query.get("project"),
        check_label(subject, "subject", strict=strict) if subject else None,
        check_label(session, "experiment", strict=strict) if session else None,
    )
    with store.transaction():
        entry = store.prearchive.get(src)
        if entry is None:
            raise XnatHttpError(404, f"Unable to find the prearchive session {src}.")
        if entry.status == "RECEIVING":
            raise XnatHttpError(403, "Operation already in progress on this prearchive entry.")
        try:
            uri = archive_entry(store, entry, target)
        except ArchiveConflict as conflict:
            raise XnatHttpError(500, f"FAILED: {conflict.message}") from conflict
    return Response(200, f"{uri}\r\n".encode(), _URI_LIST)
