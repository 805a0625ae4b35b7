"""One instance on its way to disk: held until routable, then streamed to a temporary file.

The file is a DICOM Part 10 file: preamble, a file meta group
(:func:`pacsman.dicom.meta.file_meta`) from the C-STORE's SOP Class/Instance UIDs, the
presentation context's transfer syntax and the sender's AE title, then the dataset bytes
exactly as received.  The first bytes are held until the SOP, Study and Series UIDs are
found in them (:func:`~pacsman.dicom.header.dataset_head`); the owner then names the
directory, and the rest streams into ``.<name>.tmp-<random>`` there, renamed to ``<name>``
by :meth:`finish`.

The command set is not trusted (PS3.4 B.2.3 statuses; each refusal logged as
``store_refused`` with its reason, never with patient data):

* the dataset's SOPClassUID must be the command's Affected SOP Class UID (else 0xA900) and
  its SOPInstanceUID the Affected SOP Instance UID (else 0xC000), so that one dataset sent
  under several UIDs is stored, and counted, once;
* an empty dataset, or one that ends inside an element or sequence, is refused (0xC000):
  :class:`~pacsman.dicom.header.DatasetWalk` follows its element headers as it streams.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import threading
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

import structlog

from pacsman.dicom.header import DatasetHead, DatasetWalk, dataset_head, syntax_of
from pacsman.dicom.meta import file_meta
from pacsman.layout import open_private

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "NOT_AUTHORIZED",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SUCCESS",
    "TMP_MARK",
    "Claim",
    "PendingInstance",
]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: Failure, processing failure
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: Refused, not authorized (an instance nobody asked for)
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, data set does not match SOP class
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, cannot understand
TMP_MARK = ".tmp-"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_FIRST_PARSE = 4096
_MAX_HEADER = 8 << 20  # the most held in memory: no UIDs in the first 8 MiB is refused
_TMP_PREFIX = secrets.token_hex(4)  # unique per process; O_EXCL catches the rest
_TMP_SERIAL = itertools.count()
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

_log = structlog.get_logger("pacsman.dicom.scp")

Bytes = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Claim:
    """Where an instance goes: its file, whether it is a duplicate, or a refusal status.

    ``unrouted`` is True for an instance kept in the unrouted directory; ``drop`` acknowledges
    it without storing it (a series of a study we retrieved that no row selected); a
    ``status`` other than SUCCESS refuses the instance (the owner has logged why).
    """

    directory: str = ""
    path: str = ""
    duplicate: bool = False
    unrouted: bool = False
    drop: bool = False
    status: int = SUCCESS


class Owner(Protocol):
    """What a :class:`PendingInstance` needs from its writer."""

    def _claim(self, pending: PendingInstance) -> Claim: ...
    def _ensure_directory(self, directory: str) -> None: ...
    def _finished(self, pending: PendingInstance, duplicate: bool) -> int: ...
    def _release(self, pending: PendingInstance) -> None: ...


def _write_all(fd: int, *parts: Bytes) -> None:
    """Write every part, in order, with as few system calls as the kernel allows."""
    written = os.writev(fd, parts)
    for part in parts:
        view = memoryview(part)[written:]
        written = max(0, written - len(part))
        while view:
            view = view[os.write(fd, view) :]


class _State(Enum):
    BUFFERING = auto()  # holding the first bytes until the routing UIDs are known
    WRITING = auto()  # streaming into the temporary file
    SKIPPING = auto()  # a duplicate: bytes are dropped
    FAILED = auto()  # an error will be answered; bytes are dropped
    DONE = auto()


class PendingInstance:
    """One C-STORE being received: :meth:`write` its bytes, then :meth:`finish` it.

    Never raises on I/O: a failure is logged (``disk_full`` or ``store_failed``), the
    temporary file removed, and :meth:`finish` returns the failure status.  A refusal
    (see the module docstring) is logged as ``store_refused`` and answered the same way.
    """

    def __init__(
        self,
        owner: Owner,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        sender: str,
        solicited: bool = False,
    ) -> None:
        self._owner = owner
        self.solicited = solicited  # a sub-operation of a retrieve of ours
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.sender = sender
        self.study_uid = self.series_uid = ""
        self.path = ""  # the final file, once routed
        self.meta_size = self.dataset_size = 0
        self.status = SUCCESS
        self.unrouted = False  # kept in the unrouted directory
        self._state = _State.BUFFERING
        self._walk: DatasetWalk | None = None
        self._head = bytearray()
        self._next_parse = _FIRST_PARSE
        self._fd = -1
        self._tmp = ""
        self._lock = threading.Lock()

    @property
    def tmp(self) -> str:
        """The temporary file being written, or ``""``."""
        return self._tmp

    def write(self, chunk: Bytes) -> None:
        """Take the next bytes of the dataset (they may be reused once this returns)."""
        with self._lock:
            self.dataset_size += len(chunk)
            state = self._state
            if state is _State.WRITING:
                self._os_write(chunk)
            elif state is _State.BUFFERING:
                self._buffer(chunk)
                return
            if self._walk is not None and state is not _State.FAILED:
                self._walk.feed(chunk)

    def finish(self) -> int:
        """Rename the file into place and count it; return the DIMSE status to answer."""
        with self._lock:
            if self._state is _State.DONE:  # discarded meanwhile (association aborted)
                return self.status
            if self._state is _State.BUFFERING:
                self._route(self._head, final=True)
            walk = self._walk
            whole = walk is None or walk.whole
            if not whole and self._state in (_State.WRITING, _State.SKIPPING):
                self._refuse(CANNOT_UNDERSTAND, "the dataset ends inside an element (truncated)")
            if self._state is _State.WRITING:
                self._commit()
            duplicate = self._state is _State.SKIPPING
            self._state = _State.DONE
        return self._owner._finished(self, duplicate)

    def discard(self) -> None:
        """Abandon the instance (association released, aborted or closed mid-instance)."""
        with self._lock:
            if self._state is _State.DONE:
                return
            self._drop_tmp()
            self._state = _State.DONE
            self.status = PROCESSING_FAILURE
        self._owner._release(self)

    def _buffer(self, chunk: Bytes) -> None:
        data: Bytes = chunk
        if self._head:
            self._head += chunk
            data = self._head
        capped = len(data) >= _MAX_HEADER
        due = capped or len(data) >= self._next_parse
        if due and self._route(data, final=capped, capped=capped):
            return
        if data is chunk:
            self._head += chunk

    def _route(self, data: Bytes, *, final: bool, capped: bool = False) -> bool:
        """Find the UIDs in ``data``; if found and right, claim a path and write ``data``."""
        head = dataset_head(data, syntax_of(self.transfer_syntax_uid), final=final)
        if head is None:
            self._next_parse = 2 * len(data)
            return False
        self.study_uid, self.series_uid = head.study_instance_uid, head.series_instance_uid
        self._head = bytearray()
        refusal = self._refusal(head, empty=not data, capped=capped)
        if refusal is not None:
            self._refuse(*refusal)
            return True
        claim = self._owner._claim(self)
        if claim.status != SUCCESS:
            self.status, self._state = claim.status, _State.FAILED
            return True
        self.path, self.unrouted = claim.path, claim.unrouted
        if head.end is not None:
            self._walk = DatasetWalk(head.syntax, start=head.end)
            self._walk.feed(data)
        if claim.drop:
            self._state = _State.SKIPPING  # acknowledged, never written (no path)
            return True
        self._store(claim, data)
        return True

    def _refusal(self, head: DatasetHead, *, empty: bool, capped: bool) -> tuple[int, str] | None:
        """The status and reason to refuse this instance with, judged on its first bytes."""
        if empty:
            return CANNOT_UNDERSTAND, "the dataset is empty"
        if capped and not head.series_instance_uid:
            return CANNOT_UNDERSTAND, f"no SeriesInstanceUID in the first {_MAX_HEADER} bytes"
        if not head.whole:
            return CANNOT_UNDERSTAND, "the dataset is truncated or malformed"
        if head.sop_class_uid != self.sop_class_uid:
            return DATASET_MISMATCH, (
                "the dataset's SOPClassUID is not the command's Affected SOP Class UID"
            )
        if head.sop_instance_uid != self.sop_instance_uid:
            return CANNOT_UNDERSTAND, (
                "the dataset's SOPInstanceUID is not the command's Affected SOP Instance UID"
            )
        return None

    def _refuse(self, status: int, reason: str) -> None:
        self.status = status
        _log.warning(
            "store_refused",
            reason=reason,
            status=f"0x{status:04X}",
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            calling_ae_title=self.sender,
        )
        self._drop_tmp()
        self._state = _State.FAILED

    def _store(self, claim: Claim, data: Bytes) -> None:
        """Start the file (or skip a duplicate) with the file meta and the first bytes."""
        meta = file_meta(
            self.sop_class_uid,
            self.sop_instance_uid,
            self.transfer_syntax_uid,
            sending_ae_title=self.sender,
        )
        self.meta_size = len(meta)
        if claim.duplicate:
            self._state = _State.SKIPPING
        elif self._open_tmp(claim.directory):
            self._state = _State.WRITING
            self._os_write(meta, data)

    def _open_tmp(self, directory: str) -> bool:
        name = os.path.basename(self.path)
        try:
            self._owner._ensure_directory(directory)
            self._tmp = os.path.join(
                directory, f".{name}{TMP_MARK}{_TMP_PREFIX}{next(_TMP_SERIAL)}"
            )
            self._fd = open_private(self._tmp, _OPEN_FLAGS)  # 0600: it holds PHI
        except OSError as exc:
            self._tmp = ""
            self._fail(exc)
            return False
        return True

    def _os_write(self, *parts: Bytes) -> None:
        try:
            _write_all(self._fd, *parts)
        except OSError as exc:
            self._fail(exc)

    def _commit(self) -> None:
        try:
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self._fail(exc)
            return
        self._tmp = ""

    def _fail(self, exc: OSError) -> None:
        disk_full = exc.errno in _DISK_FULL
        self.status = OUT_OF_RESOURCES if disk_full else PROCESSING_FAILURE
        _log.error(
            "disk_full" if disk_full else "store_failed",
            error=errno.errorcode.get(exc.errno or 0, repr(exc)),
            sop_instance_uid=self.sop_instance_uid,
            series_uid=self.series_uid,
            status=f"0x{self.status:04X}",
        )
        self._drop_tmp()
        self._state = _State.FAILED

    def _drop_tmp(self) -> None:
        if self._fd >= 0:
            with suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if self._tmp:
            with suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = ""
