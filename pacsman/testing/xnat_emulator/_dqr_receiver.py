"""The emulated XNAT's DICOM SCP receiver: a pynetdicom Storage SCP on 127.0.0.1 that the PACS
C-MOVEs into.  Each instance is kept as ``<dir>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
(folders 0700, files 0600) until the DQR worker builds the study's session.
"""

from __future__ import annotations

import os
import socketserver
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["Receiver"]

Verification = UID("1.2.840.10008.1.1")  # pynetdicom.sop_class hides it from mypy
_TIMEOUT = 30.0
_POLL = 0.05  # seconds between the acceptor's checks for shutdown
_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700  # the instance could not be stored


def _safe(uid: str) -> str:
    """A UID as a file name (UIDs are digits and dots; anything else is replaced)."""
    return "".join(c if c.isdigit() or c == "." else "_" for c in uid) or "unknown"


class Receiver:
    """Storage SCP for DQR's C-MOVEs; ``drop(study, n)`` makes it silently lose n instances."""

    def __init__(self, directory: Path, ae_title: str, port: int = 0) -> None:
        self.directory = directory
        self.ae_title = ae_title
        self._wanted_port = port
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._drop: dict[str, int] = {}
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self.port = 0

    def start(self) -> None:
        """Listen on 127.0.0.1 (OS-chosen port unless one was given)."""
        if self._ae is not None:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = _TIMEOUT
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store)]
        server = ae.make_server(
            ("127.0.0.1", self._wanted_port),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
        )
        assert isinstance(server, ThreadedAssociationServer)
        # our own thread, with a short poll, so stop() returns at once (AE.start_server's
        # thread polls every 0.5 s)
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL},
            name="xnat-emulator-dqr-receiver",
            daemon=True,
        ).start()
        self.port = int(server.server_address[1])
        self._ae, self._server = ae, server

    def stop(self) -> None:
        """Stop listening, then abort the associations still open."""
        server, self._server = self._server, None
        if server is not None:
            # socketserver's own shutdown: pynetdicom's override also drops the server from
            # the AE's list of start_server() servers, where make_server() never put it
            socketserver.BaseServer.shutdown(server)
            server.server_close()
        ae, self._ae = self._ae, None
        if ae is not None:
            for assoc in ae.active_associations:
                assoc.abort()
        self.port = 0

    def drop(self, study_uid: str, count: int) -> None:
        """Answer success to the next ``count`` instances of the study, but keep none of them."""
        with self._lock:
            self._drop[study_uid] = count

    def last_arrival(self, study_uid: str) -> float:
        """Monotonic time of the study's last instance (0.0 if none came)."""
        with self._lock:
            return self._last.get(study_uid, 0.0)

    def study_dir(self, study_uid: str) -> Path:
        """Where the study's received instances are."""
        return self.directory / _safe(study_uid)

    def _dropped(self, study_uid: str) -> bool:
        with self._lock:
            self._last[study_uid] = time.monotonic()
            left = self._drop.get(study_uid, 0)
            if left > 0:
                self._drop[study_uid] = left - 1
            return left > 0

    def _on_store(self, event: Event) -> int:
        try:
            dataset = event.dataset
            study_uid = str(dataset.StudyInstanceUID)
            sop_uid = str(dataset.SOPInstanceUID)
        except Exception:  # an unparseable or incomplete instance: refuse it
            return _OUT_OF_RESOURCES
        if self._dropped(study_uid):
            return _SUCCESS
        folder = self.study_dir(study_uid)
        folder.mkdir(mode=0o700, exist_ok=True)
        temporary = folder / f".{uuid.uuid4().hex}.part"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(event.encoded_dataset())
        os.replace(temporary, folder / f"{_safe(sop_uid)}.dcm")
        with self._lock:
            self._last[study_uid] = time.monotonic()
        return _SUCCESS
