"""The prearchive: ``/data/prearchive/projects/...`` listings, files and zips, DELETE, and the
``/data/services/prearchive/(delete|move|rebuild)`` services (contract §11).
"""

from __future__ import annotations

import shutil

from pacsman.testing.xnat_emulator._archive_read import zip_response
from pacsman.testing.xnat_emulator._context import Context
from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._http import Request, Response
from pacsman.testing.xnat_emulator._importer import poll_prearchive
from pacsman.testing.xnat_emulator._model import PrearchiveEntry, PrearchiveStatus
from pacsman.testing.xnat_emulator._render import Row, result_set
from pacsman.testing.xnat_emulator._store import Holder, Store, list_files

__all__ = ["prearchive", "prearchive_service"]


def _row(entry: PrearchiveEntry) -> Row:
    return {
        "project": entry.project,
        "timestamp": entry.timestamp,
        "lastmod": entry.uploaded,
        "uploaded": entry.uploaded,
        "scan_date": entry.scan_date,
        "scan_time": entry.scan_time,
        "subject": entry.subject,
        "folderName": entry.name,
        "name": entry.name,
        "tag": entry.tag,
        "status": entry.status,
        "url": entry.url,
        "autoarchive": "Manual",
        "prevent_anon": "false",
        "prevent_auto_commit": "false",
        "SOURCE": "",
        "VISIT": "",
        "PROTOCOL": "",
        "TIMEZONE": "",
    }


def _entry(store: Store, parts: tuple[str, ...]) -> PrearchiveEntry:
    entry = store.prearchive.get("/prearchive/projects/" + "/".join(parts[:3]))
    if entry is None:
        raise XnatHttpError(404, "Unable to find the specified prearchive session.")
    return entry


def _listing(store: Store, project: str | None) -> Response:
    entries = [e for e in store.prearchive.values() if project in (None, e.project)]
    poll_prearchive(store, entries)
    return result_set([_row(e) for e in entries], "Prearchive sessions")


def _holder(store: Store, entry: PrearchiveEntry, scan_id: str) -> Holder:
    scan = entry.scans.get(scan_id)
    if scan is None:
        raise XnatHttpError(404, "Unable to find the specified scan.")
    return store.prearchive_scan_holder(entry, scan)


def _zip(store: Store, holders: list[Holder]) -> Response:
    entries = [
        (f"{h.zip_prefix}/resources/{r.label}/files/{name}", path)
        for h in holders
        for r in h.resources.values()
        for name, path in list_files(h.files_dir(r))
    ]
    return zip_response(entries)


def _resource_rows(holder: Holder) -> list[Row]:
    rows = []
    for resource in holder.resources.values():
        files = list_files(holder.files_dir(resource))
        size = sum(p.stat().st_size for _, p in files)
        rows.append(
            {"label": resource.label, "file_count": str(len(files)), "file_size": str(size)}
        )
    return rows


def _resource_files(holder: Holder, rest: tuple[str, ...]) -> Response:
    """``<r>/files`` (listing) or ``<r>/files/<name>`` (download); ``rest`` starts at ``<r>``."""
    resource = holder.resource(rest[0])
    if resource is None:
        raise XnatHttpError(404, "Unable to find the specified resource.")
    files = dict(list_files(holder.files_dir(resource)))
    if len(rest) <= 2:
        base = f"{holder.uri}/resources/{resource.label}/files"
        rows = [
            {"Name": n, "Size": str(p.stat().st_size), "URI": f"{base}/{n}"}
            for n, p in files.items()
        ]
        return result_set(rows, "Files")
    name = "/".join(rest[2:])
    if name not in files:
        raise XnatHttpError(404, "Unable to find file.")
    stream, length = files[name].open("rb"), files[name].stat().st_size
    return Response(200, b"", "application/octet-stream", stream=stream, length=length)


def _scan_level(
    store: Store, entry: PrearchiveEntry, rest: tuple[str, ...], zip_: bool
) -> Response:
    """``scans``, ``scans/<id>``, ``.../resources``, ``.../resources/<r>/files[/<name>]``."""
    if not rest:
        scans = entry.scans.values()
        rows = [{"ID": s.id, "series_description": s.series_description} for s in scans]
        return result_set(rows, "Scans")
    holder = _holder(store, entry, rest[0])
    if len(rest) == 1 or (zip_ and len(rest) < 5):
        return _zip(store, [holder])
    if len(rest) == 2:
        return result_set(_resource_rows(holder), "Resources")
    return _resource_files(holder, rest[2:])


def _read(store: Store, request: Request, parts: tuple[str, ...]) -> Response:
    if len(parts) <= 1:
        return _listing(store, parts[0] if parts else None)
    entry = _entry(store, parts)
    zip_ = request.query.get("format") == "zip"
    if len(parts) == 3 and zip_:
        return _zip(store, [store.prearchive_scan_holder(entry, s) for s in entry.scans.values()])
    if len(parts) == 3:
        poll_prearchive(store, [entry])
        return result_set([_row(entry)], "Prearchive session")
    if parts[3] != "scans":
        raise XnatHttpError(404, "Unknown prearchive path.")
    return _scan_level(store, entry, parts[4:], zip_)


def prearchive(request: Request, context: Context) -> Response:
    """GET (or DELETE a session under) ``/data/prearchive/projects[/<P>[/<ts>/<name>...]]``.

    Raises:
        XnatHttpError: 404 for unknown entries, scans, resources and files.
    """
    parts = request.segments[3:]
    store = context.store
    if request.method == "DELETE" and len(parts) == 3:
        with store.transaction():
            store.delete_prearchive(_entry(store, parts))
        return Response(200, b"")
    if request.method not in ("GET", "HEAD"):
        raise XnatHttpError(405, "The method specified in the request is not allowed.")
    with store.transaction():  # listing advances RECEIVING -> READY, which is saved
        return _read(store, request, parts)


def _move(store: Store, entry: PrearchiveEntry, project: str) -> None:
    if project not in store.projects:
        raise XnatHttpError(400, f"Invalid project {project!r}.")
    old_dir, old_url = store.prearchive_dir(entry), entry.url
    entry.project = project
    store.prearchive_dir(entry).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(old_dir, store.prearchive_dir(entry))
    store.prearchive[entry.url] = store.prearchive.pop(old_url)


def prearchive_service(request: Request, context: Context) -> Response:
    """``POST /data/services/prearchive/(delete|move|rebuild)?src=<url>``.

    Raises:
        XnatHttpError: 404 unknown entry, 400 unknown target project.
    """
    action, store = request.segments[-1], context.store
    src = request.query.get("src", "").removeprefix("/data")
    with store.transaction():
        entry = store.prearchive.get(src)
        if entry is None:
            raise XnatHttpError(404, f"Unable to find the prearchive session {src}.")
        if action == "delete":
            store.delete_prearchive(entry)
        elif action == "move":
            _move(store, entry, request.query.get("newProject", ""))
        elif entry.status in (PrearchiveStatus.CONFLICT, PrearchiveStatus.ERROR):
            entry.status, entry.message = PrearchiveStatus.READY, ""
    return Response(200, f"{src}\r\n".encode())
