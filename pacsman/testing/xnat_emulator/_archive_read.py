"""GET/HEAD on the archive tree: listings, single objects, catalogs, files and zips."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._http import Request, Response
from pacsman.testing.xnat_emulator._render import (
    catalog_xml,
    experiment_item,
    experiment_row,
    file_rows,
    json_response,
    project_item,
    project_row,
    resource_row,
    result_set,
    scan_item,
    scan_row,
    select_rows,
    subject_item,
    subject_row,
)
from pacsman.testing.xnat_emulator._store import Holder, list_files
from pacsman.testing.xnat_emulator._tree import Target, Tree

__all__ = ["read_archive", "zip_response"]


def _projects(tree: Tree, request: Request) -> Response:
    project = tree.project()
    if project is not None:
        return json_response(project_item(project))
    rows = [project_row(p) for p in tree.store.projects.values()]
    return result_set(select_rows(rows, request.query), "Projects")


def _subjects(tree: Tree, request: Request) -> Response:
    subject = tree.subject()
    if subject is not None:
        return json_response(subject_item(subject))
    project = tree.project()
    found = tree.store.subjects.values()
    rows = [subject_row(s) for s in found if project is None or s.project == project.id]
    return result_set(select_rows(rows, request.query), "Subjects")


def _experiments(tree: Tree, request: Request) -> Response:
    experiment = tree.experiment()
    if experiment is not None:
        return json_response(experiment_item(tree.store, experiment))
    project, subject = tree.project(), tree.subject()
    found = [
        e
        for e in tree.store.experiments.values()
        if (project is None or e.project == project.id)
        and (subject is None or e.subject_id == subject.id)
    ]
    rows = [experiment_row(tree.store, e) for e in found]
    return result_set(select_rows(rows, request.query), "Experiments")


def _scans(tree: Tree, request: Request) -> Response:
    scans = tree.scans()
    experiment = tree.experiment()
    assert experiment is not None  # tree.scans() raised otherwise
    if tree.target.leaf and len(scans) == 1 and "," not in (tree.target.scan or ""):
        return json_response({"items": [scan_item(experiment, scans[0])]})
    rows = [scan_row(experiment, s) for s in scans]
    return result_set(select_rows(rows, request.query), "Scans")


def _resources(tree: Tree, request: Request) -> Response:
    if tree.target.leaf:
        holder = tree.holder()
        resource = tree.resources(holder)[0]
        xml = catalog_xml(resource, holder).encode()
        return Response(200, xml, "text/xml;charset=UTF-8")
    rows = [resource_row(h, r) for h in tree.holders() for r in h.resources.values()]
    return result_set(rows, "Resources")


def zip_response(entries: list[tuple[str, Path]]) -> Response:
    """Answer a zip of ``(name in zip, file)`` pairs; nothing to send is XNAT's 404."""
    if not entries:
        raise XnatHttpError(404, "No matching files found.")
    stream = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the server after sending
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
        for name, path in entries:
            archive.write(path, name)
    length = stream.seek(0, 2)
    stream.seek(0)
    return Response(200, b"", "application/zip", stream=stream, length=length)


def _zip_entries(holder: Holder, resources: list[str] | None) -> list[tuple[str, Path]]:
    entries = []
    for resource in holder.resources.values():
        if resources is not None and resource.label not in resources:
            continue
        prefix = f"{holder.zip_prefix}/resources/{resource.label}/files"
        entries += [(f"{prefix}/{n}", p) for n, p in list_files(holder.files_dir(resource))]
    return entries


def _file(tree: Tree, holder: Holder, name: str) -> Response:
    resource = tree.resources(holder)[0]
    base = holder.files_dir(resource).resolve()
    path = (base / name).resolve()
    if not path.is_file() or base not in path.parents:
        raise XnatHttpError(404, "Unable to find file.")
    stream = path.open("rb")
    length = path.stat().st_size
    return Response(200, b"", "application/octet-stream", stream=stream, length=length)


def _files(tree: Tree, request: Request) -> Response:
    if tree.target.file is not None:
        return _file(tree, tree.holder(), tree.target.file)
    holders = tree.holders()
    if request.query.get("format") == "zip":
        labels = [r.label for h in holders for r in tree.resources(h, missing_ok=True)]
        wanted = labels if tree.target.resource is not None else None
        return zip_response([e for h in holders for e in _zip_entries(h, wanted)])
    # XNAT ignores ``columns`` here, and so must we: an "ID" column would break xnatpy.
    rows = [
        row for h in holders for r in tree.resources(h, missing_ok=True) for row in file_rows(h, r)
    ]
    return result_set(rows, "Files")


_READERS: MappingProxyType[str, Callable[[Tree, Request], Response]] = MappingProxyType(
    {
        "projects": _projects,
        "subjects": _subjects,
        "experiments": _experiments,
        "scans": _scans,
        "resources": _resources,
        "files": _files,
    }
)


def read_archive(tree: Tree, request: Request, target: Target) -> Response:
    """Answer a GET/HEAD on the archive tree (the caller holds the store lock).

    Raises:
        XnatHttpError: 404 for anything that does not exist.
    """
    return _READERS[target.collection](tree, request)
