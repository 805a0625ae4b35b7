"""What XNAT already holds for a session: read before every attempt and after every import.

Everything goes through the ``xnat`` client's JSON calls on explicit URLs (contract §5-§11),
not through its cached listings, so every answer is fresh and worker threads share nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from xnat import exceptions as xnat_errors

from pacsman.push._xnat_connection import http_status
from pacsman.push.labels import ExistingSession

__all__ = [
    "ArchivedSession",
    "PrearchiveEntry",
    "archived_counts",
    "delete_prearchive",
    "exists",
    "find_archived",
    "find_prearchived",
    "project_exists",
    "project_sessions",
    "project_subjects",
    "scan_counts",
]

_DICOM = "DICOM"
_SCAN_OF_FILE = re.compile(r"/scans/([^/]+)/resources/")
_BUSY = frozenset({"RECEIVING", "BUILDING", "ARCHIVING", "MOVING", "DELETING"})


@dataclass(frozen=True)
class ArchivedSession:
    """An archived session: ID, subject label, StudyInstanceUID and DICOM files per scan."""

    id: str
    subject: str
    study_instance_uid: str
    scans: Mapping[str, int]
    uri: str

    @property
    def files(self) -> int:
        """DICOM files in all scans."""
        return sum(self.scans.values())


@dataclass(frozen=True)
class PrearchiveEntry:
    """A prearchive session: its URL (``/prearchive/projects/...``), status and study."""

    url: str
    status: str
    tag: str
    name: str

    @property
    def busy(self) -> bool:
        """XNAT is still working on it (receiving, building, archiving...)."""
        return self.status.upper().startswith(tuple(_BUSY)) or self.status.startswith("QUEUED")


def _rows(connection: Any, path: str, **query: str) -> list[dict[str, str]]:
    answer = connection.get_json(path, query=query or None)
    rows: list[dict[str, str]] = answer["ResultSet"]["Result"]
    return rows


def exists(connection: Any, path: str) -> bool:
    """True if ``GET path`` answers 200; False for 403/404 (XNAT hides what one may not see).

    Raises:
        XNATResponseError: any other answer.
    """
    try:
        connection.get(path, format="json")
    except xnat_errors.XNATResponseError as exc:
        if http_status(exc) in (403, 404):
            return False
        raise
    return True


def project_exists(connection: Any, project: str) -> bool:
    """True if the user can see ``project``."""
    return exists(connection, f"/data/projects/{project}")


def project_sessions(connection: Any, project: str) -> dict[str, ExistingSession]:
    """Every archived session of ``project`` by label."""
    rows = _rows(
        connection, f"/data/projects/{project}/experiments", columns="ID,label,subject_label,UID"
    )
    return {r["label"]: ExistingSession(r.get("subject_label", ""), r.get("UID", "")) for r in rows}


def project_subjects(connection: Any, project: str) -> list[str]:
    """Every subject label of ``project``."""
    return [
        r["label"]
        for r in _rows(connection, f"/data/projects/{project}/subjects", columns="ID,label")
    ]


def scan_counts(connection: Any, base: str) -> dict[str, int]:
    """DICOM files per scan ID below ``base`` (an experiment or a prearchive session path)."""
    counts = {}
    for scan in _rows(connection, f"{base}/scans", columns="ID"):
        resources = _rows(connection, f"{base}/scans/{scan['ID']}/resources")
        dicom = [r for r in resources if r.get("label", "").upper() == _DICOM]
        counts[scan["ID"]] = sum(int(r.get("file_count") or 0) for r in dicom)
    return counts


def archived_counts(connection: Any, experiment_id: str) -> dict[str, int]:
    """DICOM files per scan ID of an archived session, from one listing of all its files.

    Each file's URI names its scan (``.../scans/<id>/resources/<r>/files/...``, contract
    §8.4); only files of ``DICOM`` resources count.  Scans without such files are absent.
    """
    counts: dict[str, int] = {}
    try:
        rows = _rows(connection, f"/data/experiments/{experiment_id}/scans/ALL/files")
    except xnat_errors.XNATResponseError as exc:
        if http_status(exc) != 404:  # a session without scans may answer 404
            raise
        rows = []
    for row in rows:
        match = _SCAN_OF_FILE.search(row.get("URI", ""))
        if match and row.get("collection", "").upper() == _DICOM:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def find_archived(connection: Any, project: str, label: str) -> ArchivedSession | None:
    """The archived session labelled ``label`` in ``project``, with its file counts."""
    rows = _rows(
        connection,
        f"/data/projects/{project}/experiments",
        columns="ID,label,subject_label,UID",
        label=label,
    )
    row = next((r for r in rows if r.get("label") == label), None)
    if row is None:
        return None
    experiment_id = row["ID"]
    return ArchivedSession(
        id=experiment_id,
        subject=row.get("subject_label", ""),
        study_instance_uid=row.get("UID", ""),
        scans=MappingProxyType(archived_counts(connection, experiment_id)),
        uri=f"/data/projects/{project}/subjects/{row.get('subject_label', '')}/experiments/{label}",
    )


def find_prearchived(connection: Any, project: str, uid: str) -> list[PrearchiveEntry]:
    """Prearchive entries of ``project`` holding the study ``uid`` (their ``tag``)."""
    rows = _rows(connection, f"/data/prearchive/projects/{project}")
    return [
        PrearchiveEntry(r["url"], r.get("status", ""), r.get("tag", ""), r.get("name", ""))
        for r in rows
        if r.get("tag") == uid
    ]


def delete_prearchive(connection: Any, entry: PrearchiveEntry) -> None:
    """Delete a prearchive entry (e.g. a CONFLICT left by a clashing import)."""
    connection.post(
        "/data/services/prearchive/delete",
        query={"src": f"/data{entry.url}", "async": "false"},
        accepted_status=[200],
    )
