"""``pacsman xnat download``: fetch the sessions of a project that match the filters.

Filters (all optional, combined): subject labels (any of them), a date range, modalities
(any of them).  Each session becomes ``OUT/<subject>/<session>.zip`` or, with ``extract``,
the folder ``OUT/<subject>/<session>/``; both appear only once complete (written under a
temporary name, then renamed).  ``OUT/manifest.csv`` lists every session handled; a re-run
skips the ones it lists as DONE whose file or folder is still there, so it resumes.  A zip or
folder that is there but not in the manifest (lost or deleted) is complete, since it only
appears once complete: it is counted and recorded as DONE, not fetched again.  Files are
written 0600 in 0700 folders, and the manifest's cells never run as spreadsheet formulas.
"""

from __future__ import annotations

import csv
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from pacsman.errors import ItemFailed, PacsmanError, TransientError
from pacsman.layout import (
    open_private,
    private_directory,
    private_tree,
    safe_component,
    uncsv_cell,
    write_private_csv,
)
from pacsman.push._xnat_connection import classify
from pacsman.throttle import RetryPolicy

__all__ = ["MANIFEST", "DownloadRequest", "DownloadSummary", "download_sessions", "select"]

MANIFEST = "manifest.csv"
_COLUMNS = (
    "project",
    "subject",
    "session",
    "experiment_id",
    "date",
    "modality",
    "files",
    "bytes",
    "path",
    "state",
    "detail",
)
_MODALITY_OF_TYPE = {"mr": "MR", "ct": "CT", "pet": "PT", "cr": "CR", "us": "US", "xa": "XA"}
_log = structlog.get_logger("pacsman.push.download")
Row = dict[str, str]


def _safe_name(label: str) -> str:
    """A label from XNAT as one file name (the one rule: :func:`pacsman.layout.safe_component`)."""
    return safe_component(label, fallback="_")


@dataclass(frozen=True)
class DownloadRequest:
    """Which sessions, and where they go."""

    project: str
    out: Path
    subjects: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    modalities: tuple[str, ...] = ()
    extract: bool = False


@dataclass(frozen=True)
class DownloadSummary:
    """How many sessions matched, were fetched now, were already there, or failed."""

    matched: int
    downloaded: int
    skipped: int
    failed: int
    manifest: Path


def _modality(row: Row) -> str:
    if row.get("modality"):
        return row["modality"].upper()
    kind = row.get("xsiType", "").removeprefix("xnat:").removesuffix("SessionData")
    return _MODALITY_OF_TYPE.get(kind.lower(), kind.upper())


def _matches(row: Row, request: DownloadRequest) -> bool:
    if request.subjects and row.get("subject_label") not in request.subjects:
        return False
    if request.modalities and _modality(row) not in {m.upper() for m in request.modalities}:
        return False
    if request.date_from is None and request.date_to is None:
        return True
    try:
        when = date.fromisoformat(row.get("date", ""))
    except ValueError:
        return False  # undated sessions never match a date range
    return (request.date_from is None or when >= request.date_from) and (
        request.date_to is None or when <= request.date_to
    )


def select(connection: Any, request: DownloadRequest) -> list[Row]:
    """The project's sessions that match the request's filters, sorted by subject, label."""
    columns = "ID,label,subject_label,date,modality,xsiType"
    answer = connection.get_json(
        f"/data/projects/{request.project}/experiments", query={"columns": columns}
    )
    rows: list[Row] = answer["ResultSet"]["Result"]
    chosen = [r for r in rows if _matches(r, request)]
    return sorted(chosen, key=lambda r: (r.get("subject_label", ""), r.get("label", "")))


def _read_manifest(path: Path) -> dict[tuple[str, str], Row]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as stream:
        rows = [{k: uncsv_cell(v or "") for k, v in r.items()} for r in csv.DictReader(stream)]
    return {(r["subject"], r["session"]): r for r in rows}


def _write_manifest(path: Path, rows: dict[tuple[str, str], Row]) -> None:
    lines = ([rows[key].get(c, "") for c in _COLUMNS] for key in sorted(rows))
    write_private_csv(path, _COLUMNS, lines)


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = [m for m in archive.infolist() if not m.is_dir()]
    for member in members:
        parts = PurePosixPath(member.filename).parts
        if member.filename.startswith("/") or ".." in parts or "\\" in member.filename:
            raise ItemFailed(f"XNAT's zip holds an unsafe entry name {member.filename!r}")
    return members


def _fetch(connection: Any, row: Row, request: DownloadRequest, final: Path) -> tuple[int, int]:
    """Download one session zip to ``final`` (a zip or a folder); return (files, bytes)."""
    private_directory(final.parent)
    part = final.with_name(f".{final.name}.partial")
    zip_path = part.with_suffix(".zip") if request.extract else part
    uri = f"/data/experiments/{row['ID']}/scans/ALL/files"
    try:
        with os.fdopen(open_private(zip_path), "wb") as stream:
            connection.download_stream(uri, stream, format="zip")
        size = zip_path.stat().st_size
        with zipfile.ZipFile(zip_path) as archive:
            members = _safe_members(archive)
            if request.extract:
                shutil.rmtree(part, ignore_errors=True)
                archive.extractall(part, members)
                private_tree(part)
    except zipfile.BadZipFile as exc:
        raise TransientError(f"XNAT's zip of {row.get('label')} is truncated ({exc})") from exc
    finally:
        if request.extract:
            zip_path.unlink(missing_ok=True)
    os.replace(part, final)
    return len(members), size


def _record(row: Row, request: DownloadRequest, final: Path) -> Row:
    return {
        "project": request.project,
        "subject": row.get("subject_label", ""),
        "session": row.get("label", ""),
        "experiment_id": row.get("ID", ""),
        "date": row.get("date", ""),
        "modality": _modality(row),
        "path": final.relative_to(request.out).as_posix(),
    }


def download_sessions(
    connection: Any,
    request: DownloadRequest,
    *,
    retry: RetryPolicy,
    on_row: Callable[[Row], None] | None = None,
) -> DownloadSummary:
    """Download every matching session not already DONE in the manifest.

    Raises:
        TransientError: the session listing kept failing.
        FatalError: XNAT refused the login or permission.
    """
    private_directory(request.out)
    manifest_path = request.out / MANIFEST
    manifest = _read_manifest(manifest_path)
    rows = _listed(connection, request, retry)
    counts = {"downloaded": 0, "skipped": 0, "failed": 0}
    for row in rows:
        result = _one(connection, row, request, retry, manifest)
        counts[result["outcome"]] += 1
        manifest[(result["subject"], result["session"])] = result
        _write_manifest(manifest_path, manifest)
        if on_row is not None:
            on_row(result)
    return DownloadSummary(len(rows), manifest=manifest_path, **counts)


def _listed(connection: Any, request: DownloadRequest, retry: RetryPolicy) -> list[Row]:
    def attempt() -> list[Row]:
        try:
            return select(connection, request)
        except PacsmanError:
            raise
        except Exception as exc:  # xnat/requests errors: sorted by classify
            raise classify(exc, f"listing the sessions of project {request.project!r}") from exc

    return retry.call(attempt, operation="xnat_download_list")


def _one(
    connection: Any,
    row: Row,
    request: DownloadRequest,
    retry: RetryPolicy,
    manifest: dict[tuple[str, str], Row],
) -> Row:
    suffix = "" if request.extract else ".zip"
    subject, label = _safe_name(row.get("subject_label", "")), _safe_name(row.get("label", ""))
    final = request.out / subject / f"{label}{suffix}"
    record = _record(row, request, final)
    previous = manifest.get((record["subject"], record["session"]))
    if previous is not None and previous.get("state") == "DONE" and final.exists():
        return {**previous, "outcome": "skipped"}
    found = _complete_on_disk(final, extract=request.extract)
    if found is not None:
        files, size = found
        detail = "found complete on disk, not in the manifest: recorded, not fetched again"
        _log.info("xnat_download_found", session=record["session"], files=files)
        done = {"files": str(files), "bytes": str(size), "state": "DONE", "detail": detail}
        return {**record, **done, "outcome": "skipped"}

    def attempt() -> tuple[int, int]:
        try:
            return _fetch(connection, row, request, final)
        except PacsmanError:
            raise
        except Exception as exc:  # xnat/requests errors: sorted by classify
            raise classify(exc, f"downloading session {record['session']!r}") from exc

    try:
        files, size = retry.call(attempt, operation="xnat_download", session=record["session"])
    except (ItemFailed, TransientError) as exc:
        _log.warning("xnat_download_failed", session=record["session"], reason=str(exc))
        return {**record, "state": "FAILED", "detail": str(exc), "outcome": "failed"}
    _log.info("xnat_downloaded", session=record["session"], files=files)
    done = {"files": str(files), "bytes": str(size), "state": "DONE", "detail": ""}
    return {**record, **done, "outcome": "downloaded"}


def _complete_on_disk(final: Path, *, extract: bool) -> tuple[int, int] | None:
    """(files, bytes) of a session zip or folder already in place, or ``None`` to fetch it.

    Both appear only once complete (renamed from a temporary name), so one found there was
    finished by an earlier run whose manifest line is lost.  A zip that cannot be read is
    fetched again (and replaced); for a folder, ``bytes`` is the size of its files.
    """
    if extract:
        if not final.is_dir():
            return None
        files = [p for p in final.rglob("*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)
    if not final.is_file():
        return None
    try:
        with zipfile.ZipFile(final) as archive:
            return len(_safe_members(archive)), final.stat().st_size
    except (zipfile.BadZipFile, ItemFailed):
        return None
