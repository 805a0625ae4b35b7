"""Write received instances to disk: raw bytes, temporary name, atomic rename, counted once.

:class:`InstanceWriter` is the thread-safe core of the Storage SCP.  A receiver calls
:meth:`InstanceWriter.begin` when a C-STORE request arrives and feeds the dataset bytes, as
they come off the network, to the returned
:class:`~pacsman.dicom._pending.PendingInstance`; its ``finish()`` returns the status.

* Routed series (:meth:`InstanceWriter.route`) land in their directory.  An instance of any
  other series is unsolicited: no pending request asked for it.  It is refused (0x0124,
  logged once per series as ``unsolicited_series_refused``) unless the writer keeps them
  (``unsolicited="keep"``), in ``<unrouted>/<StudyInstanceUID>/<SeriesInstanceUID>/``,
  logged once as ``unrouted_series``, until that directory holds ``unsolicited_quota``
  bytes; then 0xA700 (out of resources, ``unsolicited_quota_full``).
* The exception: a sub-operation of a retrieve of ours (C-GET, or C-MOVE with our AE title
  as Move Originator) for a series no row selected, which a study-level retrieve brings
  along.  Refusing it would fail the whole retrieve at some PACSes (Orthanc answers
  0xC000), so it is acknowledged (0x0000) and dropped, never written nor counted (logged
  once per series as ``unselected_series_dropped``); kept instead where the writer keeps
  unsolicited instances and the quota allows.
* The dataset is checked against the command set (:mod:`pacsman.dicom._pending`), so the
  file name, the count and the dataset all carry the same SOPInstanceUID.
* Duplicates: the same SOPInstanceUID for the same directory, already on disk or being
  written, is acknowledged with success and reported with ``duplicate=True``; the first copy
  is kept untouched and the new bytes are dropped.  (Re-requesting an incomplete series makes
  the PACS send it all again: keeping the first copy writes each instance once.)
* Durability: the rename is atomic against a killed process; there is no fsync per file
  (a power cut can leave an empty file, which :meth:`~InstanceWriter.route` does not count).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Literal, cast

import structlog
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacsman.dicom import hooks
from pacsman.dicom._pending import (
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    TMP_MARK,
    Claim,
    PendingInstance,
)
from pacsman.layout import instance_filename, private_directory, safe_component

__all__ = ["InstanceWriter", "StoredInstance"]

_MIN_COMPLETE = 132 + 12  # preamble, DICM and a group length: anything shorter is a stub
_MAX_CACHED = 10_000  # directories remembered (and unrouted warnings) before a reset
#: What the unrouted directory may hold by default (``local.unsolicited_quota_mb``).
DEFAULT_UNSOLICITED_QUOTA = 1024 << 20

Unsolicited = Literal["refuse", "keep"]

_log = structlog.get_logger("pacsman.dicom.scp")


@dataclass(frozen=True)
class StoredInstance:
    """One instance acknowledged by the SCP: where it is, and whether it was new.

    ``calling_ae_title`` is the AE title of the peer that sent it (the calling AE of a
    C-STORE association; the PACS itself for C-GET).  ``size`` is the file's size in bytes.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_ae_title: str
    duplicate: bool


class InstanceWriter:
    """Writes C-STORE'd instances to disk atomically, without decode/re-encode. Thread-safe.

    Route a series with :meth:`route` before its move starts.  ``on_stored`` is called in the
    receiving thread for every acknowledged instance (duplicates included, failures not),
    after its file is in place; it must be quick and must not raise.  Instances of series
    not routed are refused, or with ``unsolicited="keep"`` kept in ``unrouted_directory``
    up to ``unsolicited_quota`` bytes (counting what is there already).
    """

    def __init__(
        self,
        *,
        unrouted_directory: Path,
        on_stored: Callable[[StoredInstance], None] | None = None,
        unsolicited: Unsolicited = "refuse",
        unsolicited_quota: int = DEFAULT_UNSOLICITED_QUOTA,
    ) -> None:
        self.unrouted_directory = unrouted_directory
        self.unsolicited = unsolicited
        self.unsolicited_quota = unsolicited_quota
        self._unrouted_bytes: int | None = None  # measured on the first unrouted instance
        self._refused_series: set[tuple[str, str]] = set()  # (event, series) logged once
        self._on_stored = on_stored
        self._lock = threading.Lock()
        self._routes: dict[str, str] = {}
        self._received: dict[str, set[str]] = {}
        self._unrouted: dict[str, str] = {}
        self._in_flight: dict[str, PendingInstance] = {}
        self._directories: set[str] = set()

    def route(self, series_instance_uid: str, directory: Path) -> None:
        """Send the instances of a series to ``directory`` (created if missing).

        Complete ``*.dcm`` files already there (e.g. from a killed run) count as received;
        stale temporary files left by a killed run are removed.

        Raises:
            OSError: if ``directory`` cannot be created or listed.
        """
        private_directory(directory)  # 0700: named after the patient, holds PHI
        with self._lock:
            busy = {pending.tmp for pending in self._in_flight.values()}
        on_disk = set(_complete_files(directory, busy))
        with self._lock:
            self._routes[series_instance_uid] = str(directory)
            self._received[series_instance_uid] = on_disk
            self._directories.add(str(directory))

    def unroute(self, series_instance_uid: str) -> None:
        """Forget a series (and its :meth:`received` set): later instances go unrouted."""
        with self._lock:
            self._routes.pop(series_instance_uid, None)
            self._received.pop(series_instance_uid, None)

    def received(self, series_instance_uid: str) -> frozenset[str]:
        """Return the unique SOPInstanceUIDs of a routed series on disk (complete files).

        Empty for a series that is not routed.  The UIDs are read back from file names, so a
        malformed UID that needed sanitizing is reported sanitized.
        """
        with self._lock:
            return frozenset(self._received.get(series_instance_uid, ()))

    def begin(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        sender: str,
        solicited: bool = False,
    ) -> PendingInstance:
        """Start receiving one instance; ``sender`` is the peer's AE title.

        ``solicited``: it answers a retrieve of ours (a C-GET sub-operation, or a C-MOVE
        sub-operation whose Move Originator is our AE title).
        """
        return PendingInstance(
            self,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            sender=sender,
            solicited=solicited,
        )

    def handle_store(self, event: Event) -> int:
        """Store one C-STORE request: an ``EVT_C_STORE`` handler returning the DIMSE status.

        Usable by any pynetdicom association (the :class:`StorageSCP`'s, or a C-GET
        association's).  Works with pynetdicom's in-memory dataset (the default) and with
        pynetdicom's ``STORE_RECV_CHUNKED_DATASET``; the dataset is never decoded.
        """
        request = cast(C_STORE, event.request)
        assoc = event.assoc
        peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        originator = str(request.MoveOriginatorApplicationEntityTitle or "").strip()
        local = str(assoc.acceptor.ae_title).strip()
        pending = self.begin(
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            sender=str(peer.ae_title),
            solicited=not assoc.is_acceptor or (bool(originator) and originator == local),
        )
        try:
            for chunk in _dataset_chunks(request):
                pending.write(chunk)
        except OSError as exc:  # pynetdicom's own temporary file could not be read
            pending.discard()
            _log.error("store_failed", error=repr(exc), sop_instance_uid=pending.sop_instance_uid)
            return PROCESSING_FAILURE
        return pending.finish()

    # -- the PendingInstance owner protocol ----------------------------------------------

    def _claim(self, pending: PendingInstance) -> Claim:
        """Choose directory and path, and whether this is a duplicate; or refuse it."""
        series = pending.series_uid
        name = instance_filename(pending.sop_instance_uid)
        with self._lock:
            directory = self._routes.get(series)
            unrouted = directory is None
            if directory is not None:
                duplicate = name[:-4] in self._received[series]
                path = os.path.join(directory, name)
            else:
                refusal = self._unsolicited_refusal(pending)
                if refusal != SUCCESS and pending.solicited:
                    self._log_refused(pending, "unselected_series_dropped", SUCCESS)
                    return Claim(drop=True)
                if refusal != SUCCESS:
                    return Claim(status=refusal)
                directory = self._unrouted_directory(pending)
                path = os.path.join(directory, name)
                duplicate = os.path.exists(path)
            duplicate = duplicate or path in self._in_flight
            if not duplicate:
                self._in_flight[path] = pending
        return Claim(directory, path, duplicate, unrouted=unrouted)

    def _unsolicited_refusal(self, pending: PendingInstance) -> int:
        """SUCCESS if an instance of a series nobody routed may be kept; else the status."""
        if self.unsolicited == "refuse":
            if not pending.solicited:
                self._log_refused(pending, "unsolicited_series_refused", NOT_AUTHORIZED)
            return NOT_AUTHORIZED
        if self._unrouted_bytes is None:
            self._unrouted_bytes = _tree_size(self.unrouted_directory)
        if self._unrouted_bytes >= self.unsolicited_quota:
            if not pending.solicited:
                self._log_refused(pending, "unsolicited_quota_full", OUT_OF_RESOURCES)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _log_refused(self, pending: PendingInstance, event: str, status: int) -> None:
        key = (event, pending.series_uid)
        if key in self._refused_series:
            return
        if len(self._refused_series) >= _MAX_CACHED:
            self._refused_series.clear()
        self._refused_series.add(key)
        _log.warning(
            event,
            status=f"0x{status:04X}",
            study_uid=pending.study_uid,
            series_uid=pending.series_uid,
            calling_ae_title=pending.sender,
            unrouted_directory=str(self.unrouted_directory),
            quota_bytes=self.unsolicited_quota,
            fix="route the series first (a pending retrieve), or set local.unsolicited: keep "
            "and local.unsolicited_quota_mb",
        )

    def _unrouted_directory(self, pending: PendingInstance) -> str:
        directory = self._unrouted.get(pending.series_uid)
        if directory is None:
            if len(self._unrouted) >= _MAX_CACHED:
                self._unrouted.clear()
            _log.warning(
                "unrouted_series", study_uid=pending.study_uid, series_uid=pending.series_uid
            )
            directory = self._unrouted[pending.series_uid] = os.path.join(
                self.unrouted_directory,
                safe_component(pending.study_uid, fallback="unknown_study"),
                safe_component(pending.series_uid, fallback="unknown_series"),
            )
        return directory

    def _ensure_directory(self, directory: str) -> None:
        if directory not in self._directories:
            private_directory(directory)
            if len(self._directories) >= _MAX_CACHED:  # a long-running daemon: stay bounded
                self._directories.clear()
            self._directories.add(directory)

    def _finished(self, pending: PendingInstance, duplicate: bool) -> int:
        path = pending.path
        ok = pending.status == SUCCESS
        with self._lock:
            if self._in_flight.get(path) is pending:
                del self._in_flight[path]
                received = self._received.get(pending.series_uid)
                same = self._routes.get(pending.series_uid) == os.path.dirname(path)
                if ok and received is not None and same:
                    received.add(os.path.basename(path)[:-4])
                if ok and pending.unrouted and self._unrouted_bytes is not None:
                    self._unrouted_bytes += pending.meta_size + pending.dataset_size
        if ok and path and self._on_stored is not None:  # no path: dropped, never stored
            self._on_stored(_stored(pending, duplicate))
        return pending.status

    def _release(self, pending: PendingInstance) -> None:
        with self._lock:
            if self._in_flight.get(pending.path) is pending:
                del self._in_flight[pending.path]


def _stored(pending: PendingInstance, duplicate: bool) -> StoredInstance:
    return StoredInstance(
        sop_instance_uid=pending.sop_instance_uid,
        sop_class_uid=pending.sop_class_uid,
        study_instance_uid=pending.study_uid,
        series_instance_uid=pending.series_uid,
        transfer_syntax_uid=pending.transfer_syntax_uid,
        path=Path(pending.path),
        size=pending.meta_size + pending.dataset_size,
        calling_ae_title=pending.sender,
        duplicate=duplicate,
    )


def _dataset_chunks(request: C_STORE) -> Iterator[bytes | memoryview]:
    """Yield a C-STORE request's dataset bytes, in memory or from pynetdicom's chunk file."""
    path = hooks.chunked_dataset_path(request)
    if path is not None:  # STORE_RECV_CHUNKED_DATASET: a Part 10 file, meta first
        with path.open("rb") as stream:
            stream.seek(132 + 8)  # preamble, DICM, (0002,0000) UL 4, then the group length
            stream.seek(132 + 12 + int.from_bytes(stream.read(4), "little"))
            while chunk := stream.read(1 << 20):
                yield chunk
        return
    data = request.DataSet
    if isinstance(data, BytesIO):
        with data.getbuffer() as view:
            yield view


def _tree_size(directory: Path) -> int:
    """The bytes of the files under ``directory`` (0 if it does not exist)."""
    total = 0
    for folder, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _complete_files(directory: Path, busy: set[str]) -> Iterator[str]:
    """Yield the stems of complete ``*.dcm`` files; delete stale temporary files."""
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                if TMP_MARK in name and entry.path not in busy:
                    Path(entry.path).unlink(missing_ok=True)
            elif name.endswith(".dcm") and entry.stat().st_size >= _MIN_COMPLETE:
                yield name[:-4]
