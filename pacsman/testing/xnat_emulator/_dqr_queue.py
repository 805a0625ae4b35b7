"""The emulated DQR plugin: its request queue, the one worker thread that C-MOVEs each request
from the real PACS into the receiver, and the session build after the receiver's idle time.

One request at a time, like XNAT: QUEUED -> PROCESSING -> C-MOVE -> ISSUED | FAILED; once the
receiver has been idle for ``session_idle`` after the C-MOVE, the study's instances get the
relabelMap and are archived through the import service's code -> RECEIVED (or FAILED when the
archive refuses them, e.g. "Session already exists").
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from pacsman.testing.xnat_emulator._dicomzip import StagedSession, stage_files
from pacsman.testing.xnat_emulator._dqr_model import DqrPacs, DqrRequest, DqrStatus, epoch_ms
from pacsman.testing.xnat_emulator._dqr_pacs import (
    MOVE_SUCCESS,
    PacsUnavailable,
    find_studies,
    move_study,
)
from pacsman.testing.xnat_emulator._dqr_receiver import Receiver
from pacsman.testing.xnat_emulator._errors import ArchiveConflict, XnatHttpError
from pacsman.testing.xnat_emulator._faults import DqrFault, DqrFaultKind, Faults
from pacsman.testing.xnat_emulator._importer import (
    ArchiveTarget,
    Labels,
    archive_entry,
    check_label,
    dicom_labels,
    to_prearchive,
)
from pacsman.testing.xnat_emulator._store import Store

__all__ = ["DqrService", "StudyOrder"]

_JOIN_SECONDS = 15.0
#: relabelMap key -> the DICOM keywords DQR's generated DicomEdit script sets (contract §14)
_RELABEL = {"Subject": ("PatientName", "PatientID"), "Session": ("StudyID", "AccessionNumber")}


@dataclass(frozen=True)
class StudyOrder:
    """One ``studies[]`` entry of a ``PacsImportRequest``."""

    study_instance_uid: str
    series_instance_uids: tuple[str, ...] = ()
    relabel: Mapping[str, str] | None = None


@dataclass
class _Pending:
    """An ISSUED request waiting for the receiver to go idle."""

    request: DqrRequest
    zero_files: bool


class DqrService:
    """The queue, the worker and the receiver of one emulator (``pacs`` ids are 1-based)."""

    def __init__(
        self,
        store: Store,
        faults: Faults,
        pacs: Sequence[DqrPacs],
        *,
        receiver_ae_title: str = "XNAT",
        receiver_port: int = 0,
        session_idle: float = 0.5,
        step: float = 0.05,
        projects: Iterable[str] | None = None,
        strict_labels: bool = True,
    ) -> None:
        self.store = store
        self.faults = faults
        self.pacs = tuple(pacs)
        self.receiver = Receiver(store.data_dir / ".dqr", receiver_ae_title, receiver_port)
        self.session_idle = session_idle
        self.step = step
        self.projects = None if projects is None else frozenset(projects)
        self.strict_labels = strict_labels
        self._lock = threading.Lock()
        self._requests: dict[int, DqrRequest] = {}
        self._pending: list[_Pending] = []
        self._current: tuple[DqrRequest, DqrFault] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the receiver and the queue worker (only when a PACS is configured: without
        one, every import is refused before anything is queued)."""
        if self._thread is not None or not self.pacs:
            return
        self.receiver.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="xnat-emulator-dqr", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (aborting a C-MOVE in progress), then the receiver."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=_JOIN_SECONDS)
        self.receiver.stop()

    @property
    def receiver_port(self) -> int:
        """The receiver's port (0 while it is not running)."""
        return self.receiver.port

    # -- what routes ask --------------------------------------------------------------------

    def pacs_by_id(self, pacs_id: int) -> DqrPacs | None:
        """The PACS with this 1-based id, if configured."""
        return self.pacs[pacs_id - 1] if 1 <= pacs_id <= len(self.pacs) else None

    def project_enabled(self, project: str) -> bool:
        """Whether DQR may import into ``project`` (configured and not switched off by a fault)."""
        allowed = self.projects is None or project in self.projects
        return allowed and project not in self.faults.dqr_disabled_projects

    def enqueue(
        self, user: str, pacs_id: int, project: str, studies: Sequence[StudyOrder]
    ) -> list[dict[str, Any]]:
        """Queue one request per study; return their ``QueuedPacsRequest`` JSON."""
        pacs = self.pacs_by_id(pacs_id)
        assert pacs is not None  # the route checked the id
        destination = f"{self.receiver.ae_title}:{self.receiver.port}"
        created = []
        for order in studies:
            study = self._study_fields(pacs, order.study_instance_uid)
            with self._lock:
                request = DqrRequest(
                    id=len(self._requests) + 1,
                    username=user,
                    pacs_id=pacs_id,
                    project=project,
                    study_instance_uid=order.study_instance_uid,
                    series_ids=order.series_instance_uids,
                    relabel=dict(order.relabel or {}),
                    destination=destination,
                    queued_time=epoch_ms(),
                    study=study,
                )
                request.set_status(DqrStatus.QUEUED)
                self._requests[request.id] = request
                created.append(request.as_json())
        return created

    def _study_fields(self, pacs: DqrPacs, study_uid: str) -> dict[str, str]:
        """What the PACS says about the study (empty when it does not know it or is down)."""
        try:
            found = find_studies(pacs, self.receiver.ae_title, {"StudyInstanceUID": study_uid})
        except PacsUnavailable:
            return {}
        if not found:
            return {}
        keys = ("StudyDate", "StudyID", "AccessionNumber", "PatientID", "PatientName")
        return {k: str(found[0].get(k, "") or "") for k in keys}

    def queue(self, user: str | None) -> list[dict[str, Any]]:
        """Requests still QUEUED or PROCESSING (of ``user``, or everyone's for None)."""
        with self._lock:
            return [
                r.as_json()
                for r in self._requests.values()
                if r.status.queued and user in (None, r.username)
            ]

    def history(self, user: str) -> list[dict[str, Any]]:
        """The user's requests that left the queue (ISSUED, FAILED, RECEIVED), with executedTime."""
        with self._lock:
            return [
                r.as_json()
                for r in self._requests.values()
                if not r.status.queued and r.username == user
            ]

    def records(self) -> list[dict[str, Any]]:
        """Every request ever queued, with its status timeline, detail and fault."""
        with self._lock:
            return [r.record() for r in self._requests.values()]

    # -- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.step):
            try:
                self._build_ready()
                self._advance()
            except Exception:  # an emulator bug: report it, keep the queue alive
                traceback.print_exc(file=sys.stderr)

    def _set(self, request: DqrRequest, status: DqrStatus, detail: str = "") -> None:
        with self._lock:
            request.set_status(status, detail)

    def _advance(self) -> None:
        """One step: carry out the request taken last step, or take the next QUEUED one."""
        if self._current is not None:
            request, fault = self._current
            self._current = None
            self._process(request, fault)
            return
        with self._lock:
            waiting = [r for r in self._requests.values() if r.status is DqrStatus.QUEUED]
        if not waiting or not self.faults.take_dqr_queue_slot():
            return
        request, fault = waiting[0], self.faults.take_dqr_fault()
        with self._lock:
            request.fault = fault.kind.value
        self._set(request, DqrStatus.PROCESSING)
        if fault.kind is DqrFaultKind.STUCK_PROCESSING:
            return  # never moves again; the worker goes on with the next one
        self._current = (request, fault)

    def _session_taken(self, request: DqrRequest) -> str:
        label = request.relabel.get("Session", "")
        with self.store.lock:
            existing = self.store.experiment(request.project, label) if label else None
        if existing is None:
            return ""
        return f"Session {label} already exists in project {request.project}."

    def _process(self, request: DqrRequest, fault: DqrFault) -> None:
        if fault.kind is DqrFaultKind.FAILED:
            self._set(request, DqrStatus.FAILED, "failed by the emulator's dqr_failed fault")
            return
        taken = self._session_taken(request)
        if taken:
            self._set(request, DqrStatus.FAILED, taken)
            return
        if fault.kind is DqrFaultKind.STUCK_ISSUED:
            self._set(request, DqrStatus.ISSUED, "held in ISSUED by the dqr_stuck_issued fault")
            return
        if fault.kind is DqrFaultKind.PARTIAL:
            self.receiver.drop(request.study_instance_uid, fault.drop)
        self._move(request, zero_files=fault.kind is DqrFaultKind.ZERO_FILES)

    def _move(self, request: DqrRequest, *, zero_files: bool) -> None:
        pacs = self.pacs_by_id(request.pacs_id)
        assert pacs is not None  # checked when it was queued
        try:
            status = move_study(
                pacs,
                self.receiver.ae_title,
                self.receiver.ae_title,
                request.study_instance_uid,
                request.series_ids,
                abort=self._stop,
            )
        except PacsUnavailable as problem:
            self._set(request, DqrStatus.FAILED, f"C-MOVE not sent: {problem}")
            return
        if status not in MOVE_SUCCESS:
            shown = "no final status" if status < 0 else f"status 0x{status:04X}"
            self._set(request, DqrStatus.FAILED, f"C-MOVE from {pacs.ae_title} ended with {shown}")
            return
        request.issued_at = time.monotonic()
        self._set(request, DqrStatus.ISSUED)
        self._pending.append(_Pending(request, zero_files))

    def _build_ready(self) -> None:
        now = time.monotonic()
        for pending in list(self._pending):
            study = pending.request.study_instance_uid
            idle_since = max(pending.request.issued_at, self.receiver.last_arrival(study))
            if now - idle_since < self.session_idle:
                continue
            self._pending.remove(pending)
            try:
                self._build(pending.request, zero_files=pending.zero_files)
            except (ArchiveConflict, XnatHttpError) as problem:
                self._set(pending.request, DqrStatus.FAILED, getattr(problem, "message", ""))
            else:
                self._set(pending.request, DqrStatus.RECEIVED)

    # -- the session build ------------------------------------------------------------------

    def _build(self, request: DqrRequest, *, zero_files: bool) -> None:
        """Relabel the study's received instances and archive them as one session.

        Raises:
            ArchiveConflict: nothing arrived, or the archive refuses the session.
            XnatHttpError: a relabelled label XNAT would not accept (strict labels).
        """
        received = sorted(self.receiver.study_dir(request.study_instance_uid).glob("*.dcm"))
        if not received:
            raise ArchiveConflict("No DICOM instances were received for the study.")
        with self.store.lock:
            staging = self.store.staging_dir()
        try:
            moved = [path.replace(staging / path.name) for path in received]
            for path in moved:
                _relabel(path, request.relabel)
            staged = stage_files(moved)
            if zero_files:
                for series in staged.series.values():
                    series.files.clear()
            self._archive(request, staged)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _archive(self, request: DqrRequest, staged: StagedSession) -> None:
        with self.store.transaction():
            derived = dicom_labels(staged.header, self.store)
            subject = request.relabel.get("Subject") or derived.subject or ""
            session = request.relabel.get("Session") or derived.session or ""
            subject = check_label(subject, "subject", strict=self.strict_labels)
            session = check_label(session, "experiment", strict=self.strict_labels)
            labels = Labels(request.project, subject, session)
            entry = to_prearchive(self.store, staged, labels, polls=0, seconds=0.0)
            archive_entry(self.store, entry, ArchiveTarget(None, request.project, subject, session))


def _relabel(path: Path, relabel: Mapping[str, str]) -> None:
    """Apply DQR's generated DicomEdit script to one file (``""`` clears the element)."""
    edits = {
        kw: relabel[key] for key, keywords in _RELABEL.items() if key in relabel for kw in keywords
    }
    if not edits:
        return
    dataset = pydicom.dcmread(path)
    for keyword, value in edits.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
