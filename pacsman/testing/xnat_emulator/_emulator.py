"""The Python face of the emulator: start/stop it, set faults, and look at what it holds."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

from pacsman.closing import Started
from pacsman.testing.xnat_emulator._app import App
from pacsman.testing.xnat_emulator._context import Context, LoggedRequest
from pacsman.testing.xnat_emulator._dqr_model import DqrPacs
from pacsman.testing.xnat_emulator._dqr_queue import DqrService
from pacsman.testing.xnat_emulator._faults import Faults
from pacsman.testing.xnat_emulator._http import HttpServer
from pacsman.testing.xnat_emulator._model import Experiment
from pacsman.testing.xnat_emulator._store import Store, list_files

__all__ = ["PrearchiveSummary", "SessionSummary", "XnatEmulator"]


@dataclass(frozen=True)
class SessionSummary:
    """An archived session: labels, IDs, StudyInstanceUID and files per scan."""

    project: str
    subject: str
    label: str
    id: str
    xsi_type: str
    uid: str
    scan_file_counts: Mapping[str, int]
    #: Files in each scan's DICOM resource only (not NIFTI or other derived resources).
    dicom_file_counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def file_count(self) -> int:
        """Files in all the session's scans."""
        return sum(self.scan_file_counts.values())

    @property
    def dicom_file_count(self) -> int:
        """Files in the DICOM resources of the session's scans."""
        return sum(self.dicom_file_counts.values())


@dataclass(frozen=True)
class PrearchiveSummary:
    """A prearchive entry: where it is, its status and its StudyInstanceUID (``tag``)."""

    project: str
    timestamp: str
    name: str
    subject: str
    status: str
    tag: str
    message: str


class XnatEmulator(Started):
    """An XNAT 1.8.9.1 look-alike HTTP server on 127.0.0.1 for the real ``xnat`` client.

    Use as a context manager (``with XnatEmulator(tmp_path) as xnat: ...``) or call
    :meth:`start` and :meth:`stop`. State lives in ``data_dir`` and survives restarts;
    login sessions do not. ``strict_labels`` answers 417 for labels outside
    ``[A-Za-z0-9_-]`` instead of rewriting them as XNAT's importer does.

    DQR (contract §14): ``dqr_pacs`` are the PACS XNAT knows (ids from 1); with any, start()
    also starts the receiver (a Storage SCP on 127.0.0.1, called AE ``dqr_receiver_ae_title``,
    port ``dqr_receiver_port``, 0 = OS-chosen: see :attr:`dqr_receiver_port`).  One worker
    moves each queued request through a real C-MOVE and builds its session once the
    receiver has been idle ``dqr_session_idle`` seconds; it looks at the queue every
    ``dqr_step`` seconds.  ``dqr_projects``: the DQR-enabled projects (None = all).
    ``anonymization_scripts``: project -> enabled anonymization script.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        users: Mapping[str, str] | None = None,
        projects: Iterable[str] = (),
        strict_labels: bool = True,
        port: int = 0,
        dqr_pacs: Sequence[DqrPacs] = (),
        dqr_receiver_ae_title: str = "XNAT",
        dqr_receiver_port: int = 0,
        dqr_session_idle: float = 0.5,
        dqr_step: float = 0.05,
        dqr_projects: Iterable[str] | None = None,
        anonymization_scripts: Mapping[str, str] | None = None,
    ) -> None:
        self._store = Store(Path(data_dir))
        faults = Faults()
        dqr = DqrService(
            self._store,
            faults,
            dqr_pacs,
            receiver_ae_title=dqr_receiver_ae_title,
            receiver_port=dqr_receiver_port,
            session_idle=dqr_session_idle,
            step=dqr_step,
            projects=dqr_projects,
            strict_labels=strict_labels,
        )
        self._context = Context(
            self._store, faults, dict(users or {"admin": "secret"}), strict_labels, dqr
        )
        for project, script in (anonymization_scripts or {}).items():
            self._context.anonymization.set(project, script)
        self._port = port
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None
        for project in projects:
            self.add_project(project)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1 (port 0 = OS-chosen) and serve in a background thread."""
        if self._server is None:
            self._server = HttpServer(("127.0.0.1", self._port), App(self._context))
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="xnat-emulator",
                daemon=True,
            )
            self._thread.start()
            self._dqr.start()
        return self

    def stop(self) -> None:
        """Stop the DQR worker and receiver, stop accepting requests, then close the socket
        (the index is always saved)."""
        self._dqr.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- addresses and switches -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: the emulator is not running.
        """
        if self._server is None:
            raise RuntimeError("the XNAT emulator is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give ``xnat.connect``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> Faults:
        """The live fault switches."""
        return self._context.faults

    @property
    def data_dir(self) -> Path:
        """Where the index and files live."""
        return self._store.data_dir

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every answered request so far, oldest first (bounded)."""
        return list(self._context.log)

    @property
    def _dqr(self) -> DqrService:
        dqr = self._context.dqr
        assert dqr is not None  # always set by __init__
        return dqr

    @property
    def dqr_receiver_port(self) -> int:
        """The port of the DQR receiver (register it at the PACS as the C-MOVE destination).

        Raises:
            RuntimeError: the receiver is not running (not started, or no ``dqr_pacs``).
        """
        port = self._dqr.receiver_port
        if port == 0:
            raise RuntimeError(
                "the DQR receiver is not running; give dqr_pacs and call start() first"
            )
        return port

    def dqr_requests(self) -> list[dict[str, Any]]:
        """Every DQR request ever queued: its ``QueuedPacsRequest`` fields plus ``relabelMap``,
        ``timeline`` (``[{"status", "time"}]``), ``statuses``, ``detail`` and ``fault``."""
        return self._dqr.records()

    def set_anonymization_script(self, project: str, script: str, enabled: bool = True) -> None:
        """Give a project its anonymization script (what ``/xapi/anonymize`` answers)."""
        self._context.anonymization.set(project, script, enabled=enabled)

    def add_project(self, project_id: str, *, name: str = "", description: str = "") -> None:
        """Create a project (admin-side in real XNAT); existing ones are left alone."""
        with self._store.transaction():
            self._store.add_project(project_id, name=name, description=description)

    def add_user(self, user: str, password: str) -> None:
        """Allow another login."""
        self._context.users[user] = password

    # -- inspection -------------------------------------------------------------------------

    def _summary(self, experiment: Experiment) -> SessionSummary:
        counts, dicom = {}, {}
        for scan in experiment.scans.values():
            holder = self._store.scan_holder(experiment, scan, "")
            files = {
                label: len(list_files(holder.files_dir(r))) for label, r in scan.resources.items()
            }
            counts[scan.id] = sum(files.values())
            dicom[scan.id] = sum(n for label, n in files.items() if label.upper() == "DICOM")
        subject = self._store.subjects[experiment.subject_id]
        return SessionSummary(
            experiment.project,
            subject.label,
            experiment.label,
            experiment.id,
            experiment.xsi_type,
            experiment.uid,
            MappingProxyType(counts),
            MappingProxyType(dicom),
        )

    def sessions(self, project: str | None = None) -> list[SessionSummary]:
        """Archived sessions (optionally of one project), in creation order."""
        with self._store.lock:
            found = self._store.experiments.values()
            return [self._summary(e) for e in found if project in (None, e.project)]

    def session(self, project: str, label: str) -> SessionSummary | None:
        """One archived session by project and label (or ID)."""
        with self._store.lock:
            experiment = self._store.experiment(project, label)
            return None if experiment is None else self._summary(experiment)

    def file_count(self, project: str, session: str) -> int:
        """Files in all scans of a session; 0 if it does not exist."""
        found = self.session(project, session)
        return 0 if found is None else found.file_count

    def scan_file_counts(self, project: str, session: str) -> dict[str, int]:
        """Files per scan ID of a session; empty if it does not exist."""
        found = self.session(project, session)
        return {} if found is None else dict(found.scan_file_counts)

    def session_dir(self, project: str, session: str) -> Path | None:
        """The directory holding a session's files (``.../scans/<id>/resources/...``)."""
        with self._store.lock:
            experiment = self._store.experiment(project, session)
            return None if experiment is None else self._store.experiment_dir(experiment)

    def dicom_files(self, project: str, session: str) -> list[Path]:
        """Every stored file of a session's scans, sorted (read them with pydicom)."""
        directory = self.session_dir(project, session)
        if directory is None:
            return []
        return sorted(p for p in (directory / "scans").rglob("*") if p.is_file())

    def prearchive(self) -> list[PrearchiveSummary]:
        """Prearchive entries, without counting as a poll."""
        with self._store.lock:
            return [
                PrearchiveSummary(
                    e.project, e.timestamp, e.name, e.subject, e.status, e.tag, e.message
                )
                for e in self._store.prearchive.values()
            ]
