"""Caps on what pynetdicom reads from an admitted association's socket (PS3.8 9.3, E.2).

:class:`GuardedSocket` is pynetdicom's own socket wrapper for a connection that
:mod:`pacsman.dicom._admission` admitted: it first serves the A-ASSOCIATE-RQ read there,
then reads through a :class:`WireGuard`, which follows PDU and presentation data value
headers across reads of any size and refuses a PDU longer than our maximum PDU length
before reading it, a command set longer than ``codec.MAX_COMMAND_SET``, and a dataset held
in memory longer than :data:`MAX_STORE_IN_MEMORY` (a C-STORE's, where plain pynetdicom
receives it) or ``codec.MAX_OTHER_DATASET`` (any other message's).  It logs
``association_aborted`` with the reason (never patient data), sends an A-ABORT, and
pynetdicom reads nothing more: the connection closes.  The fast path reads most P-DATA-TF
PDUs itself, under the same caps (:mod:`pacsman.dicom._store_fast`).
"""

from __future__ import annotations

from contextlib import suppress

import structlog
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from pacsman.dicom import codec as dimse

__all__ = [
    "MAX_ASSOCIATE_RQ",
    "MAX_STORE_IN_MEMORY",
    "GuardedSocket",
    "WireGuard",
    "can_unread",
    "refuse_further_input",
    "unread",
]

#: The longest A-ASSOCIATE-RQ read.  128 presentation contexts of 40 transfer syntaxes each
#: take ~140 KB; DCMTK's storescu proposing every storage class, ~20 KB.
MAX_ASSOCIATE_RQ = 256 << 10
#: The longest C-STORE dataset plain pynetdicom may hold in memory (only where the fast path
#: is off: a pynetdicom other than the checked one).  The fast path streams any size to disk.
MAX_STORE_IN_MEMORY = 256 << 20
#: A-ABORT: service-provider, invalid-PDU-parameter-value (PS3.8 9.3.8).
_ABORT_INVALID = bytes.fromhex("07 00 00000004 00 00 02 06")

_log = structlog.get_logger("pacsman.dicom.scp")


class WireGuard:
    """Caps on the PDU stream pynetdicom reads from one association (PS3.8 9.3 and E.2).

    Holds the bytes read before the association (served first), and follows PDU and
    presentation data value headers across reads of any size; :meth:`check` names the
    first cap a read breaks.
    """

    def __init__(self, request: bytes, *, max_pdu: int) -> None:
        self._held = bytearray(request)
        self._max_pdu = max_pdu
        self._limit = MAX_ASSOCIATE_RQ  # for the request; then max_pdu
        self.refused = False
        self._header = bytearray()  # a PDU header, while incomplete
        self._left = 0  # bytes left of the current PDU
        self._p_data = False
        self._item = bytearray()  # a PDV item header, while incomplete
        self._item_left = 0
        self._control = 0
        self._command = bytearray()
        self._dataset = 0
        self._dataset_cap = dimse.MAX_OTHER_DATASET

    @property
    def holds_bytes(self) -> bool:
        """True while bytes read before the association remain to be served."""
        return bool(self._held)

    def take(self, size: int) -> bytearray:
        """Up to ``size`` of the bytes held."""
        data = self._held[:size]
        del self._held[:size]
        return data

    def give_back(self, data: bytes | bytearray) -> None:
        """Serve ``data`` (a PDU header the fast path read) before anything else."""
        self._held[:0] = data

    def check(self, data: bytes | bytearray) -> str | None:
        """Follow the next bytes read; return why to abort, or None."""
        view, pos, end = memoryview(data), 0, len(data)
        while pos < end:
            if self._left == 0:
                take = min(6 - len(self._header), end - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) == 6 and (reason := self._pdu_header()):
                    return reason
                continue
            take = min(self._left, end - pos)
            if self._p_data and (reason := self._items(view[pos : pos + take])):
                return reason
            self._left -= take
            pos += take
        return None

    def _pdu_header(self) -> str | None:
        length = int.from_bytes(self._header[2:6], "big")
        pdu_type = self._header[0]
        self._header.clear()
        if length > self._limit:
            return f"PDU of {length} bytes, more than the {self._limit} accepted"
        self._limit = self._max_pdu
        self._left, self._p_data = length, pdu_type == dimse.P_DATA_TF
        self._item.clear()
        self._item_left = 0
        return None

    def _items(self, data: memoryview) -> str | None:
        pos, end = 0, len(data)
        while pos < end:
            if len(self._item) < 6:
                take = min(6 - len(self._item), end - pos)
                self._item += data[pos : pos + take]
                pos += take
                if len(self._item) == 6 and (reason := self._item_header()):
                    return reason
                continue
            take = min(self._item_left, end - pos)
            if reason := self._fragment(take, data[pos : pos + take]):
                return reason
            self._item_left -= take
            pos += take
            if self._item_left == 0:
                self._item_done()
        return None

    def _item_header(self) -> str | None:
        length = int.from_bytes(self._item[:4], "big")
        if length < 2:
            return "malformed presentation data value item"
        self._control = self._item[5]
        self._item_left = length - 2
        if self._item_left == 0:
            self._item_done()
        return None

    def _fragment(self, size: int, data: memoryview) -> str | None:
        if self._control & dimse.COMMAND_FRAGMENT:
            if len(self._command) + size > dimse.MAX_COMMAND_SET:
                return f"command set longer than {dimse.MAX_COMMAND_SET} bytes"
            self._command += data
            return None
        self._dataset += size
        if self._dataset > self._dataset_cap:
            return f"dataset held in memory longer than {self._dataset_cap} bytes"
        return None

    def _item_done(self) -> None:
        self._item.clear()
        if not self._control & dimse.LAST_FRAGMENT:
            return
        if self._control & dimse.COMMAND_FRAGMENT:
            fields = dimse.parse_command(bytes(self._command))
            store = fields is not None and dimse.us(fields, dimse.COMMAND_FIELD) == dimse.C_STORE_RQ
            self._dataset_cap = MAX_STORE_IN_MEMORY if store else dimse.MAX_OTHER_DATASET
            self._command.clear()
        self._dataset = 0


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper for an admitted connection: reads pass a :class:`WireGuard`.

    Overrides only the public ``ready`` and ``recv`` of :class:`AssociationSocket`, which
    pynetdicom's DUL uses to read PDUs.
    """

    guard: WireGuard

    @property
    def ready(self) -> bool:
        """True if a PDU can be read: bytes held, or data on the socket."""
        return self.guard.holds_bytes or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (the held request first); nothing once a cap is broken."""
        guard = self.guard
        if guard.refused:
            return bytearray()
        data = guard.take(nr_bytes)
        if len(data) < nr_bytes:
            data += super().recv(nr_bytes - len(data))
        reason = guard.check(data)
        if reason is None:
            return data
        guard.refused = True
        self._abort(reason)
        return bytearray()  # pynetdicom: connection closed

    def _abort(self, reason: str) -> None:
        requestor = self.assoc.requestor
        address = requestor.address_info
        _log.warning(
            "association_aborted",
            reason=reason,
            calling_ae_title=str(requestor.ae_title or ""),
            peer=f"{address.address}:{address.port}" if address else "unknown",
        )
        raw = self.socket
        if raw is not None:
            with suppress(OSError):
                raw.sendall(_ABORT_INVALID)


def refuse_further_input(assoc: Association) -> None:
    """After an abort: pynetdicom reads nothing more, so the connection closes at once.

    Without it, an aborting association reads and drops whatever the peer keeps sending
    until pynetdicom's ARTIM timer (the ACSE timeout) closes it.  No-op on a connection
    that was not admitted here (a C-GET requestor's).
    """
    transport = assoc.dul.socket
    if isinstance(transport, GuardedSocket):
        transport.guard.refused = True


def unread(assoc: Association, data: bytes | bytearray) -> bool:
    """Give ``data`` back to pynetdicom's reader (it reads it first); False where the
    connection was not admitted here, so there is no :class:`WireGuard` to hold it."""
    transport = assoc.dul.socket
    if not isinstance(transport, GuardedSocket):
        return False
    transport.guard.give_back(data)
    return True


def can_unread(assoc: Association) -> bool:
    """True where :func:`unread` works: a connection admitted here."""
    return isinstance(assoc.dul.socket, GuardedSocket)
