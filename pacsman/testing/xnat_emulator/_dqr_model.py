"""What the emulator's DQR plugin keeps: the PACS it knows, its requests and their statuses,
and the projects' anonymization scripts (contract §14).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "AnonymizationScripts",
    "DqrPacs",
    "DqrRequest",
    "DqrStatus",
    "epoch_ms",
    "remapping_script",
]


def epoch_ms() -> int:
    """Now, in milliseconds since the epoch (XNAT's timestamps)."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class DqrPacs:
    """A PACS configured in the emulated XNAT: DQR C-ECHOes, C-FINDs and C-MOVEs there."""

    ae_title: str
    host: str
    port: int
    label: str = ""


class DqrStatus(StrEnum):
    """``QueuedPacsRequest.status`` as the emulator produces it."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    ISSUED = "ISSUED"
    FAILED = "FAILED"
    RECEIVED = "RECEIVED"

    @property
    def queued(self) -> bool:
        """True while the request is in the queue (else it is in the history)."""
        return self in (DqrStatus.QUEUED, DqrStatus.PROCESSING)


def remapping_script(relabel: dict[str, str]) -> str | None:
    """The DicomEdit 6.1 script DQR generates from a relabelMap (None when it is empty)."""
    lines = []
    for key, tags in (
        ("Subject", ("0010,0010", "0010,0020")),
        ("Session", ("0020,0010", "0008,0050")),
    ):
        if key in relabel:
            lines += [f'({tag}) := "{relabel[key]}"' for tag in tags]
    return "\n".join(['version "6.1"', *lines]) if lines else None


@dataclass
class DqrRequest:
    """One ``QueuedPacsRequest``: what was asked, where it stands, and its status timeline.

    ``detail`` says why it FAILED (or which fault held it); ``issued_at`` is the monotonic
    time its C-MOVE finished (the receiver's idle timer starts there).
    """

    id: int
    username: str
    pacs_id: int
    project: str
    study_instance_uid: str
    series_ids: tuple[str, ...]
    relabel: dict[str, str]
    destination: str
    queued_time: int
    study: dict[str, str] = field(default_factory=dict)
    status: DqrStatus = DqrStatus.QUEUED
    executed_time: int | None = None
    timeline: list[tuple[str, int]] = field(default_factory=list)
    detail: str = ""
    fault: str = "none"
    issued_at: float = 0.0

    def set_status(self, status: DqrStatus, detail: str = "") -> None:
        """Move to ``status`` (recorded in the timeline); leaving the queue sets executedTime."""
        self.status = status
        now = epoch_ms()
        self.timeline.append((status.value, now))
        if detail:
            self.detail = detail
        if not status.queued and self.executed_time is None:
            self.executed_time = now

    def as_json(self) -> dict[str, Any]:
        """XNAT's ``QueuedPacsRequest`` (with ``executedTime`` once it left the queue)."""
        payload: dict[str, Any] = {
            "id": self.id,
            "username": self.username,
            "userDefinedId": None,
            "pacsId": self.pacs_id,
            "xnatProject": self.project,
            "studyInstanceUid": self.study_instance_uid,
            "seriesIds": list(self.series_ids),
            "remappingScript": remapping_script(self.relabel),
            "destinationAeTitle": self.destination,
            "status": self.status.value,
            "priority": 10,
            "queuedTime": self.queued_time,
            "created": self.queued_time,
            "studyDate": self.study.get("StudyDate", ""),
            "studyId": self.study.get("StudyID", ""),
            "accessionNumber": self.study.get("AccessionNumber", ""),
            "patientId": self.study.get("PatientID", ""),
            "patientName": self.study.get("PatientName", ""),
        }
        if self.executed_time is not None:
            payload["executedTime"] = self.executed_time
        return payload

    def record(self) -> dict[str, Any]:
        """Everything about the request, for test assertions."""
        return {
            **self.as_json(),
            "relabelMap": dict(self.relabel),
            "timeline": [{"status": s, "time": t} for s, t in self.timeline],
            "statuses": [s for s, _ in self.timeline],
            "detail": self.detail,
            "fault": self.fault,
        }


class AnonymizationScripts:
    """Project anonymization scripts (XNAT's ``anon`` tool config): script text + enabled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, tuple[str, bool]] = {}

    def set(self, project: str, script: str, *, enabled: bool = True) -> None:
        """Store the project's script and whether it is enabled."""
        with self._lock:
            self._scripts[project] = (script, enabled)

    def set_script(self, project: str, script: str) -> None:
        """Store the script text; a first script is enabled, a replaced one keeps its flag."""
        with self._lock:
            _, enabled = self._scripts.get(project, ("", True))
            self._scripts[project] = (script, enabled)

    def set_enabled(self, project: str, enabled: bool) -> None:
        """Enable or disable the project's script (an empty one if none was set)."""
        with self._lock:
            script, _ = self._scripts.get(project, ("", enabled))
            self._scripts[project] = (script, enabled)

    def get(self, project: str) -> tuple[str, bool]:
        """(script, enabled); ("", False) when the project has none."""
        with self._lock:
            return self._scripts.get(project, ("", False))
