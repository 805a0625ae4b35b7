"""PUT/POST/DELETE on the archive tree: creation PUTs, file uploads, deletes (contract §4-§8)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from pacsman.testing.xnat_emulator._context import Context
from pacsman.testing.xnat_emulator._dicomzip import archive_members, is_archive
from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._http import Request, Response
from pacsman.testing.xnat_emulator._model import Project, Resource
from pacsman.testing.xnat_emulator._render import json_response
from pacsman.testing.xnat_emulator._schema import SCAN_TYPES, SESSION_TYPES
from pacsman.testing.xnat_emulator._store import Holder
from pacsman.testing.xnat_emulator._tree import Target, Tree

__all__ = ["delete_archive", "write_archive"]

_VALID = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTROL = {"xsiType", "req_format", "format", "overwrite", "event_reason", "removeFiles"}


def _label(value: str, kind: str, context: Context) -> str:
    """REST labels: strict mode allows only [A-Za-z0-9_-]; unsafe paths are always refused."""
    unsafe = not value or value.startswith(".") or "/" in value or "\\" in value
    if unsafe or (context.strict_labels and not _VALID.match(value)):
        raise XnatHttpError(417, f"Invalid character in {kind}.")
    return value


def _fields(request: Request) -> tuple[str | None, dict[str, str]]:
    """The xsiType and the lower-cased field values of a ``req_format=qs`` creation PUT."""
    xsi_type = request.query.get("xsiType")
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if "/" in key:
            prefix, _, name = key.rpartition("/")
            xsi_type = xsi_type or prefix
            values[name.lower()] = value
        elif key not in _CONTROL:
            values[key.lower()] = value
    return xsi_type, values


def _text(status: int, body: str = "") -> Response:
    return Response(status, body.encode())


def _need_project(tree: Tree) -> Project:
    project = tree.project()
    if project is None:
        raise XnatHttpError(422, "Submitted record must include the project attribute.")
    return project


def _put_project(tree: Tree, request: Request, context: Context) -> Response:
    project_id = tree.target.project or ""
    if project_id in context.store.projects:
        return _text(200, project_id)
    if not _VALID.match(project_id):
        raise XnatHttpError(417, "Invalid character in project ID.")
    _, values = _fields(request)
    context.store.add_project(project_id, name=values.get("name", ""))
    return _text(201, project_id)


def _put_subject(tree: Tree, request: Request, context: Context) -> Response:
    project, key = _need_project(tree), tree.target.subject or ""
    if (existing := context.store.subject(project.id, key)) is not None:
        return _text(200, existing.id)
    label = _label(_fields(request)[1].get("label", key), "subject label", context)
    if (existing := context.store.subject(project.id, label)) is not None:
        return _text(200, existing.id)
    return _text(201, context.store.new_subject(project.id, label).id)


def _put_experiment(tree: Tree, request: Request, context: Context) -> Response:
    project, key = _need_project(tree), tree.target.experiment or ""
    existing = context.store.experiment(project.id, key)
    if existing is not None:
        return _text(200, existing.id)
    xsi_type, values = _fields(request)
    if xsi_type not in SESSION_TYPES:
        raise XnatHttpError(400, f"Invalid or missing xsiType {xsi_type!r} for an experiment.")
    label = _label(values.get("label", key), "experiment label", context)
    if (existing := context.store.experiment(project.id, label)) is not None:
        return _text(200, existing.id)
    store, subject_key = context.store, tree.target.subject
    if subject_key is None:
        raise XnatHttpError(422, "Submitted experiment record must include the subject.")
    subject = store.subject(project.id, subject_key)
    if subject is None:
        subject = store.new_subject(project.id, _label(subject_key, "subject label", context))
    experiment = store.new_experiment(subject, label, xsi_type)
    experiment.date, experiment.time = values.get("date", ""), values.get("time", "")
    experiment.uid, experiment.modality = values.get("uid", ""), values.get("modality", "")
    return _text(201, experiment.id)


def _put_scan(tree: Tree, request: Request, context: Context) -> Response:
    experiment = tree.experiment()
    if experiment is None:
        raise XnatHttpError(404, "Unable to find the specified experiment.")
    xsi_type, values = _fields(request)
    scan_id = _label(tree.target.scan or "", "scan ID", context)
    scan = experiment.scans.get(scan_id)
    if scan is not None and xsi_type is not None and xsi_type != scan.xsi_type:
        raise XnatHttpError(409, "Specified xsiType differs from existing xsiType")
    if scan is None:
        default = experiment.xsi_type.replace("SessionData", "ScanData")
        xsi_type = xsi_type or default
        if xsi_type not in SCAN_TYPES:
            raise XnatHttpError(400, f"Invalid xsiType {xsi_type!r} for a scan.")
        scan = experiment.scans[scan_id] = context.store.new_scan(scan_id, xsi_type)
    scan.type = values.get("type", scan.type)
    scan.series_description = values.get("series_description", scan.series_description)
    scan.uid, scan.modality = values.get("uid", scan.uid), values.get("modality", scan.modality)
    return _text(200)


def _put_resource(tree: Tree, request: Request, context: Context) -> Response:
    holder, label = tree.holder(), tree.target.resource or ""
    if holder.resource(label) is not None:
        raise XnatHttpError(409, "Specified resource already exists.")
    _add_resource(holder, _label(label, "resource label", context), request, context)
    return _text(200)


def _add_resource(holder: Holder, label: str, request: Request, context: Context) -> Resource:
    query = request.query
    resource = context.store.new_resource(
        label, format=query.get("format", ""), content=query.get("content", "")
    )
    holder.resources[label] = resource
    holder.files_dir(resource).mkdir(parents=True, exist_ok=True)
    return resource


def _safe_name(name: str) -> str:
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("..", ".") for p in parts):
        raise XnatHttpError(400, f"Invalid file path {name!r}.")
    return "/".join(parts)


def _unpack(upload: Path) -> list[tuple[str, Path]]:
    """Extract an uploaded zip/tar next to ``upload``; return (name, extracted file) pairs."""
    if not is_archive(upload):
        raise XnatHttpError(400, "Unable to extract the uploaded file: not a zip or tar archive.")
    pairs = []
    with archive_members(upload) as members:
        for index, (name, stream) in enumerate(members):
            extracted = upload.parent / f"member-{index:07d}"
            with stream, extracted.open("wb") as out:
                shutil.copyfileobj(stream, out)
            pairs.append((_safe_name(name), extracted))
    return pairs


def _upload(tree: Tree, request: Request, context: Context) -> Response:
    holder, name = tree.holder(), _safe_name(tree.target.file or "")
    key = tree.target.resource or ""
    resource = holder.resource(key) or _add_resource(
        holder, _label(key, "resource label", context), request, context
    )
    staging = context.store.staging_dir()
    try:
        upload = staging / "upload"
        if request.save_body(upload) == 0:
            raise XnatHttpError(
                400,
                "You tried to PUT to this service, but didn't provide any data (found 0 bytes)."
                " Please verify that this is the request you're trying to perform.",
            )
        base = (holder.files_dir(resource) / name).parent
        extract = request.query.get("extract", "").lower() == "true"
        pairs = _unpack(upload) if extract else [(PurePosixPath(name).name, upload)]
        return _store_files(pairs, base, request, context)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _store_files(
    pairs: list[tuple[str, Path]], base: Path, request: Request, context: Context
) -> Response:
    overwrite = request.query.get("overwrite", "").lower() == "true"
    duplicates = [n for n, _ in pairs if (base / n).exists()]
    if duplicates and not overwrite and context.faults.upload_conflict_409:
        raise XnatHttpError(409, f"File already exists: {', '.join(duplicates)}")
    for name, path in pairs:
        if overwrite or name not in duplicates:
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, base / name)
    if duplicates and not overwrite:
        response = json_response({"duplicates": duplicates})
        response.content_type = "text/html;charset=UTF-8"
        return response
    return _text(200)


_WRITERS: MappingProxyType[str, Callable[[Tree, Request, Context], Response]] = MappingProxyType(
    {
        "projects": _put_project,
        "subjects": _put_subject,
        "experiments": _put_experiment,
        "scans": _put_scan,
        "resources": _put_resource,
        "files": _upload,
    }
)


def write_archive(tree: Tree, request: Request, context: Context) -> Response:
    """Answer a PUT/POST that creates or uploads (the caller holds a store transaction).

    Raises:
        XnatHttpError: XNAT's status and message for anything refused.
    """
    if not tree.target.leaf:
        raise XnatHttpError(405, "The method specified in the request is not allowed.")
    return _WRITERS[tree.target.collection](tree, request, context)


def _delete_resource_or_file(tree: Tree, target: Target) -> None:
    holder = tree.holder()
    resource = tree.resources(holder)[0]
    files_dir = holder.files_dir(resource)
    if target.file is None:
        shutil.rmtree(files_dir.parent, ignore_errors=True)
        del holder.resources[resource.label]
        return
    path = files_dir / _safe_name(target.file)
    if not path.is_file():
        raise XnatHttpError(404, "Unable to find file.")
    path.unlink()


def delete_archive(tree: Tree, context: Context) -> Response:
    """Answer a DELETE (always 200 on success, as xnatpy requires).

    Raises:
        XnatHttpError: 404 for what does not exist, 405 for what cannot be deleted.
    """
    target, store = tree.target, context.store
    if target.collection in ("resources", "files") and target.leaf:
        _delete_resource_or_file(tree, target)
    elif target.collection == "scans" and target.leaf:
        experiment, scans = tree.experiment(), tree.scans()
        assert experiment is not None  # tree.scans() raised otherwise
        for scan in scans:
            shutil.rmtree(store.scan_holder(experiment, scan, "").base, ignore_errors=True)
            del experiment.scans[scan.id]
    elif target.collection == "experiments" and (experiment := tree.experiment()):
        store.delete_experiment(experiment)
    elif target.collection == "subjects" and (subject := tree.subject()):
        store.delete_subject(subject)
    else:
        raise XnatHttpError(405, "The method specified in the request is not allowed.")
    return _text(200)
