"""One instance on its way to disk: held until routable, then streamed to a temporary file.

The file is a DICOM Part 10 file: preamble, a file meta group
(:func:`pacsman.dicom.meta.file_meta`) from the C-STORE's SOP Class/Instance UIDs, the
presentation context's transfer syntax and the sender's AE title, then the dataset bytes
exactly as received.  The first bytes are held until the Study/Series UIDs are found in them
(:func:`~pacsman.dicom.header.routing_uids`); the owner then names the directory, and the
rest streams into ``.<name>.tmp-<random>`` there, renamed to ``<name>`` by :meth:`finish`.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import threading
from contextlib import suppress
from enum import Enum, auto
from typing import Protocol

import structlog

from pacsman.dicom.header import routing_uids, syntax_of
from pacsman.dicom.meta import file_meta

__all__ = [
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SUCCESS",
    "TMP_MARK",
    "PendingInstance",
]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: Failure, processing failure
TMP_MARK = ".tmp-"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_FIRST_PARSE = 4096
_MAX_HEADER = 8 << 20  # no UIDs in the first 8 MiB: store it unrouted
_TMP_PREFIX = secrets.token_hex(4)  # unique per process; O_EXCL catches the rest
_TMP_SERIAL = itertools.count()
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

_log = structlog.get_logger("pacsman.dicom.scp")

Bytes = bytes | bytearray | memoryview


class Owner(Protocol):
    """What a :class:`PendingInstance` needs from its writer."""

    def _claim(self, pending: PendingInstance) -> tuple[str, str, bool]: ...
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
    temporary file removed, and :meth:`finish` returns the failure status.
    """

    def __init__(
        self,
        owner: Owner,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        sender: str,
    ) -> None:
        self._owner = owner
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.sender = sender
        self.study_uid = self.series_uid = ""
        self.path = ""  # the final file, once routed
        self.meta_size = self.dataset_size = 0
        self.status = SUCCESS
        self._state = _State.BUFFERING
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
            if self._state is _State.WRITING:
                self._os_write(chunk)
            elif self._state is _State.BUFFERING:
                self._buffer(chunk)

    def finish(self) -> int:
        """Rename the file into place and count it; return the DIMSE status to answer."""
        with self._lock:
            if self._state is _State.DONE:  # discarded meanwhile (association aborted)
                return self.status
            if self._state is _State.BUFFERING:
                self._route(self._head, final=True)
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
        if len(data) >= self._next_parse and self._route(data, final=len(data) >= _MAX_HEADER):
            return
        if data is chunk:
            self._head += chunk

    def _route(self, data: Bytes, *, final: bool) -> bool:
        """Find the UIDs in ``data``; if found, claim a path and write ``data`` there."""
        found = routing_uids(data, syntax_of(self.transfer_syntax_uid), final=final)
        if found is None:
            self._next_parse = 2 * len(data)
            return False
        self.study_uid, self.series_uid = found
        self._head = bytearray()
        directory, self.path, duplicate = self._owner._claim(self)
        meta = file_meta(
            self.sop_class_uid,
            self.sop_instance_uid,
            self.transfer_syntax_uid,
            sending_ae_title=self.sender,
        )
        self.meta_size = len(meta)
        if duplicate:
            self._state = _State.SKIPPING
        elif self._open_tmp(directory):
            self._state = _State.WRITING
            self._os_write(meta, data)
        return True

    def _open_tmp(self, directory: str) -> bool:
        name = os.path.basename(self.path)
        try:
            self._owner._ensure_directory(directory)
            self._tmp = os.path.join(
                directory, f".{name}{TMP_MARK}{_TMP_PREFIX}{next(_TMP_SERIAL)}"
            )
            self._fd = os.open(self._tmp, _OPEN_FLAGS, 0o644)
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
