"""The DICOM target: C-STORE every file of a session to a Storage SCP (``push.dicom``).

Files are sent as they are on disk (no decode, no transcoding), on one association per
attempt.  Each file the SCP acknowledged is remembered for the run, so a retry after an
abort sends only the rest; C-STORE of an instance the SCP already holds is harmless anyway.
A session is DONE once the SCP acknowledged every file (success or a 0xBxxx warning).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import structlog
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from pacsman.closing import Closing
from pacsman.config import PacsNode
from pacsman.config.push import DicomTarget
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer
from pacsman.errors import ItemFailed
from pacsman.push.labels import local_problems
from pacsman.push.models import LabelProblem, PushOutcome, SessionUpload, dicom_files

__all__ = ["DicomStoreTarget"]

_log = structlog.get_logger("pacsman.push.dicom")
_MAX_SOP_CLASSES = 128  # presentation contexts in one association (PS3.8)


class DicomStoreTarget(Closing):
    """Pushes sessions to one Storage SCP by C-STORE."""

    name = "dicom"

    def __init__(self, target: DicomTarget, *, calling_ae_title: str) -> None:
        node = PacsNode(
            name="push.dicom",
            host=target.host,
            port=target.port,
            called_ae_title=target.called_ae_title,
            tls=target.tls,
        )
        self.peer = DicomPeer(node, calling_ae_title)
        self._stored: dict[tuple[str, str, str], set[Path]] = {}
        self._lock = threading.Lock()

    def check_labels(self, uploads: Sequence[SessionUpload]) -> list[LabelProblem]:
        """The label rules (the SCP itself has no notion of labels)."""
        return local_problems(uploads)

    def push(self, upload: SessionUpload) -> PushOutcome:
        """One attempt: C-STORE the files not yet acknowledged.

        Raises:
            TransientError, AssociationRejected: the SCP did not answer or is busy.
            ItemFailed: wrong number of files, or the SCP refused a file.
            FatalError: the SCP rejected our AE titles.
        """
        files = dicom_files(upload.directory)
        if len(files) != upload.expected_files:
            raise ItemFailed(
                f"{upload.directory} holds {len(files)} *.dcm file(s) but "
                f"{upload.expected_files} are expected; de-identify the session again"
            )
        with self._lock:
            done = self._stored.setdefault(upload.key, set())
        pending = [f for f in files if f not in done]
        if pending:
            self._send(upload, pending, done)
        uri = (
            f"dicom://{self.peer.node.called_ae_title}@{self.peer.node.host}:{self.peer.node.port}"
        )
        detail = f"C-STORE acknowledged for all {len(files)} file(s)"
        return PushOutcome(upload, "DONE", uri, len(done), detail)

    def _send(self, upload: SessionUpload, pending: list[Path], done: set[Path]) -> None:
        sop_classes = sorted({_sop_class(f) for f in pending})
        if len(sop_classes) > _MAX_SOP_CLASSES:
            raise ItemFailed(
                f"{upload.describe()} holds {len(sop_classes)} SOP classes; one association "
                f"carries at most {_MAX_SOP_CLASSES}"
            )
        _log.info("dicom_store", session=upload.describe(), files=len(pending))
        with client.associate(self.peer, sop_classes) as assoc:
            for path in pending:
                client.store(self.peer, assoc, path)
                done.add(path)

    def close(self) -> None:
        """Nothing stays open between attempts."""


def _sop_class(path: Path) -> str:
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ItemFailed(f"{path}: not a DICOM Part 10 file ({type(exc).__name__})") from exc
    uid = meta.get("MediaStorageSOPClassUID")
    if not uid:
        raise ItemFailed(f"{path}: no MediaStorageSOPClassUID in its file meta")
    return str(uid)
