"""A fast receive path for C-STORE requests, inside pynetdicom's own DUL thread.

Profiling pynetdicom 3.0.4 receiving 3,000 MR instances showed the time going into
per-message machinery, not into the bytes: decoding and re-encoding each command set with
pydicom (the C-STORE-RSP alone was ~35 % of the CPU), the hand-over of every message from
the DUL thread to the association thread and back, both of which poll with 1 ms sleeps, and
several copies of each PDU (4 KiB ``recv`` calls, ``bytes()``, slicing, ``BytesIO``).

:func:`install` gives one accepted association a shortcut, leaving pynetdicom in charge of
everything else (negotiation, release, abort, timers, C-ECHO):

* While the association is established (state Sta6), the DUL thread waits for data with
  ``select`` instead of a 1 ms sleep, reads every P-DATA-TF PDU already waiting whole with
  ``recv_into`` into one reused buffer (peeking at the PDU type first; every other PDU goes
  the normal way), then ACKs at once (``TCP_QUICKACK``) so that a sender with Nagle's
  algorithm on does not stall ~40 ms per instance waiting for a delayed ACK.
* Command sets are parsed by hand.  A C-STORE-RQ on an accepted context is streamed
  fragment by fragment into a :class:`~pacsman.dicom._writer.PendingInstance` (straight
  from the receive buffer to the file), and its C-STORE-RSP is encoded by hand and sent by
  this same thread, the only one that writes to the socket while established.
* Any other message (C-ECHO, a C-STORE on an unknown context, anything odd) is handed to
  pynetdicom's DIMSE provider unchanged, as its own DT-2 action would have done.
* Nothing grows without bound: a command set longer than ``codec.MAX_COMMAND_SET``, a
  dataset handed to pynetdicom longer than ``codec.MAX_OTHER_DATASET`` or a PDU longer than
  our maximum PDU length aborts the association (``association_aborted``, with the reason
  and the peer; never patient data).  A C-STORE dataset holds at most its first 8 MiB in
  memory (:mod:`pacsman.dicom._pending`); the rest streams to disk.

Over DICOM TLS an ``ssl.SSLSocket`` cannot be peeked at, and ``select`` cannot see records
the TLS layer has already decrypted.  So the shortcut checks ``pending()`` before
``select``, reads each PDU header for real, and gives a header that is not a P-DATA-TF back
to pynetdicom's reader through the connection's :class:`~pacsman.dicom._guard.WireGuard`.
A connection without one (a C-GET requestor's own association) leaves TLS to pynetdicom.

Skipped for the shortcut messages: pynetdicom's PDU/DIMSE notification events.  Every
pynetdicom internal used here is a function of :mod:`pacsman.dicom.hooks`; on a pynetdicom
other than the checked one :func:`install` does nothing and pynetdicom receives as usual.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Callable

import structlog
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacsman.dicom import codec as dimse
from pacsman.dicom import hooks
from pacsman.dicom._guard import can_unread, refuse_further_input, unread
from pacsman.dicom._pending import PROCESSING_FAILURE, PendingInstance
from pacsman.dicom._writer import InstanceWriter

__all__ = ["install"]

_WAIT_SECONDS = 0.002  # idle wait for data; also the latency of a C-ECHO reply or release
#: How long the association's own thread may sleep between turns while the receiver has
#: nothing for it (pynetdicom's own turn is 1 ms): a timed-out connection is noticed this
#: much later.
_ASSOCIATION_TURN_SECONDS = 0.05
_MAX_PDUS_PER_WAKE = 64  # then give pynetdicom's loop (timers, aborts) a turn
_FIRST_BUFFER = 64 * 1024  # grown to the largest PDU the peer sends, within our maximum
_UNLIMITED_PDU = 64 << 20  # the bound when our maximum PDU length is 0 ("unlimited")

_log = structlog.get_logger("pacsman.dicom.scp")


def install(assoc: Association, writer: InstanceWriter) -> bool:
    """Give an association the C-STORE shortcut: before it starts, or once established.

    Returns False, leaving every message to pynetdicom, where the installed pynetdicom is
    not the one the shortcut was checked against (:func:`hooks.fast_paths_enabled`).
    Installing on an established association (e.g. a C-GET requestor's) is safe only while
    no DIMSE message is half-received, i.e. before its first request is sent.
    """
    if not hooks.fast_paths_enabled():
        return False
    if isinstance(hooks.raw_socket(assoc), ssl.SSLSocket) and not can_unread(assoc):
        return False  # TLS needs a place to give PDU headers back to pynetdicom
    receiver = _FastReceiver(assoc, writer)
    if assoc.is_acceptor and not assoc.is_alive():
        receiver.wake = hooks.throttle_association_reactor(assoc, _ASSOCIATION_TURN_SECONDS)
    hooks.set_input_check(assoc, receiver.is_transport_event)
    for event in (evt.EVT_ABORTED, evt.EVT_CONN_CLOSE, evt.EVT_RELEASED):
        assoc.bind(event, receiver.on_end)
    return True


def store_response(message_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """Return a C-STORE-RSP command set, encoded implicit VR little endian (PS3.7 9.3.1.2)."""
    return dimse.command_set(
        dimse.element(dimse.AFFECTED_SOP_CLASS, dimse.padded_uid(sop_class)),
        dimse.element(dimse.COMMAND_FIELD, dimse.ushort(dimse.C_STORE_RSP)),
        dimse.element(dimse.MESSAGE_ID_BEING_RESPONDED_TO, dimse.ushort(message_id)),
        dimse.element(dimse.DATASET_TYPE, dimse.ushort(dimse.NO_DATASET)),
        dimse.element(dimse.STATUS, dimse.ushort(status)),
        dimse.element(dimse.AFFECTED_SOP_INSTANCE, dimse.padded_uid(sop_instance)),
    )


class _Store:
    """The C-STORE request being received: what its response needs, and its file."""

    __slots__ = ("context_id", "message_id", "pending", "sop_class", "sop_instance")

    def __init__(self, context_id: int, message_id: int, pending: PendingInstance) -> None:
        self.context_id = context_id
        self.message_id = message_id
        self.pending = pending
        self.sop_class = pending.sop_class_uid
        self.sop_instance = pending.sop_instance_uid


def _nothing() -> None:
    pass


class _FastReceiver:
    """Per-association state of the shortcut; runs in the association's DUL thread."""

    def __init__(self, assoc: Association, writer: InstanceWriter) -> None:
        self.assoc = assoc
        self.writer = writer
        local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
        self.peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        self.limit = (local.maximum_length or _UNLIMITED_PDU) + 6
        self.buffer = bytearray(min(_FIRST_BUFFER, self.limit))
        self.command = bytearray()
        self.store: _Store | None = None
        self.forwarding = False  # the current message belongs to pynetdicom
        self.forwarded = 0  # dataset bytes of that message handed to pynetdicom so far
        self.normal_path: Callable[[], bool] = hooks.input_check(assoc)
        #: Wakes the association's own thread (throttled on accepted associations).
        self.wake: Callable[[], None] = _nothing

    # -- the DUL reactor's hook --------------------------------------------------------

    def is_transport_event(self) -> bool:
        """The reactor's input check (:func:`hooks.set_input_check`): True if handled.

        Wakes the association's own thread when the turn left it something to do.
        """
        handled = self._turn()
        if hooks.association_has_work(self.assoc) or not hooks.is_established_state(self.assoc):
            self.wake()
        return handled

    def _turn(self) -> bool:
        assoc = self.assoc
        raw = hooks.raw_socket(assoc)
        if raw is None or not hooks.is_established_state(assoc):
            self.discard()
            hooks.set_reactor_sleep(assoc, sleep=True)  # pynetdicom's own pace outside Sta6
            return bool(self.normal_path())
        hooks.set_reactor_sleep(assoc, sleep=False)  # we wait in select() instead
        tls = raw if isinstance(raw, ssl.SSLSocket) else None
        try:
            if not (tls and tls.pending()) and not select.select([raw], [], [], _WAIT_SECONDS)[0]:
                return False
            if not (self._drain_tls(tls) if tls else self._drain(raw)):
                hooks.read_pdu(assoc)  # not a P-DATA-TF: pynetdicom's own reader
        except (OSError, ValueError):
            return bool(self.normal_path())
        dimse.acknowledge_now(raw)
        return True

    def _drain(self, raw: socket.socket) -> bool:
        """Read the P-DATA-TF PDUs already waiting; False if the next PDU is another kind.

        Only whole PDU headers are judged: a header split across TCP segments is waited for,
        so that a P-DATA-TF never reaches pynetdicom's reader in the middle of a message.
        """
        flags = socket.MSG_PEEK
        for _ in range(_MAX_PDUS_PER_WAKE):
            try:
                header = raw.recv(6, flags)
            except BlockingIOError:
                return True
            if 0 < len(header) < 6:
                header = raw.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
            if len(header) < 6 or header[0] != dimse.P_DATA_TF:
                return flags != socket.MSG_PEEK  # some PDUs done: let the DUL loop come back
            self._read_p_data(raw, int.from_bytes(header[2:6], "big") + 6)
            if hooks.reactor_has_work(self.assoc):
                return True  # the DUL has something to send or do first
            if raw.gettimeout() is not None:
                return True  # a socket with a timeout would block in recv(): wait in select
            flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
        return True

    def _drain_tls(self, raw: ssl.SSLSocket) -> bool:
        """:meth:`_drain` over TLS: each header is read, and given back if not a P-DATA-TF."""
        for _ in range(_MAX_PDUS_PER_WAKE):
            header = bytearray(6)
            try:
                got = dimse.recv_full(raw, memoryview(header))
            except OSError:
                got = 0
            if got < 6:
                hooks.connection_closed(self.assoc)
                return True
            if header[0] != dimse.P_DATA_TF:
                return not unread(self.assoc, header)  # False: pynetdicom reads it now
            self._read_p_data(raw, int.from_bytes(header[2:6], "big") + 6, header)
            if hooks.reactor_has_work(self.assoc) or raw.pending() < 6:
                return True
        return True

    def on_end(self, event: Event) -> None:
        """Association aborted, released or closed: drop an unfinished instance and buffers.

        pynetdicom's dead associations wait for its periodic ``gc.collect()``; without this,
        30 short associations kept 30 receive buffers alive.
        """
        self.discard()
        self.buffer = bytearray()
        self.command = bytearray()
        self.wake()

    def discard(self) -> None:
        """Drop an unfinished instance (association released, aborted or closed)."""
        store, self.store = self.store, None
        if store is not None:
            store.pending.discard()

    # -- PDU and PDV level -------------------------------------------------------------

    def _read_p_data(self, raw: socket.socket, total: int, header: bytes | bytearray = b"") -> None:
        """Read one whole P-DATA-TF PDU (``header``: its first bytes, already read)."""
        if total > len(self.buffer):
            if total > self.limit:
                self._abort(f"PDU of {total} bytes, more than the {self.limit} we accept")
                hooks.abort_invalid_pdu(self.assoc)
                return
            self.buffer = bytearray(total)
        view = memoryview(self.buffer)[:total]
        view[: len(header)] = header
        try:
            got = len(header) + dimse.recv_full(raw, view[len(header) :])
        except OSError:
            got = 0
        if got < total:
            hooks.connection_closed(self.assoc)  # mid-PDU
            return
        if not self._items(view[6:]):
            hooks.abort_invalid_pdu(self.assoc)

    def _items(self, view: memoryview) -> bool:
        pos, end = 0, len(view)
        while pos < end:
            if pos + 6 > end:
                return self._abort("malformed presentation data value item")
            length = int.from_bytes(view[pos : pos + 4], "big")
            if length < 2 or pos + 4 + length > end:
                return self._abort("malformed presentation data value item")
            data = view[pos + 6 : pos + 4 + length]
            if not self._fragment(view[pos + 4], view[pos + 5], data):
                return False
            pos += 4 + length
        return True

    def _fragment(self, context_id: int, control: int, data: memoryview) -> bool:
        """Take one PDV; False (the association is to be aborted, logged) if it breaks a cap."""
        last = bool(control & 0x02)
        if control & 0x01:
            self.discard()
            if len(self.command) + len(data) > dimse.MAX_COMMAND_SET:
                return self._abort(f"command set longer than {dimse.MAX_COMMAND_SET} bytes")
            self.command += data
            if last:
                self._command_complete(context_id)
        elif self.store is not None and not self.forwarding:
            self.store.pending.write(data)
            if last:
                self._finish_store()
        else:
            self.forwarded += len(data)
            if self.forwarded > dimse.MAX_OTHER_DATASET:
                limit = dimse.MAX_OTHER_DATASET
                return self._abort(f"dataset of a message not stored longer than {limit} bytes")
            hooks.forward_to_dimse(self.assoc, context_id, bytes((control,)) + data)
            self.forwarding = not last
        return True

    def _abort(self, reason: str) -> bool:
        """Log why the association is aborted, drop what it was receiving; return False."""
        address = self.peer.address_info
        _log.warning(
            "association_aborted",
            reason=reason,
            calling_ae_title=str(self.peer.ae_title),
            peer=f"{address.address}:{address.port}" if address else "unknown",
        )
        self.discard()
        self.command = bytearray()
        refuse_further_input(self.assoc)
        return False

    # -- DIMSE level -------------------------------------------------------------------

    def _command_complete(self, context_id: int) -> None:
        raw = bytes(self.command)
        self.command.clear()
        fields = dimse.parse_command(raw)
        store = self._begin_store(context_id, fields) if fields is not None else None
        if store is None:  # not ours: pynetdicom decodes it, with any dataset that follows
            kind = dimse.us(fields, dimse.DATASET_TYPE) if fields is not None else None
            self.forwarding = kind != dimse.NO_DATASET  # unknown: assume a dataset follows
            self.forwarded = 0
            hooks.forward_to_dimse(self.assoc, context_id, b"\x03" + raw)
            return
        self.store, self.forwarding = store, False

    def _begin_store(self, context_id: int, fields: dimse.Fields) -> _Store | None:
        transfer_syntax = hooks.accepted_transfer_syntax(self.assoc, context_id)
        if transfer_syntax is None:
            return None
        if dimse.us(fields, dimse.COMMAND_FIELD) != dimse.C_STORE_RQ:
            return None
        if dimse.us(fields, dimse.DATASET_TYPE) in (None, dimse.NO_DATASET):
            return None
        pending = self.writer.begin(
            sop_class_uid=dimse.text(fields, dimse.AFFECTED_SOP_CLASS),
            sop_instance_uid=dimse.text(fields, dimse.AFFECTED_SOP_INSTANCE),
            transfer_syntax_uid=transfer_syntax,
            sender=str(self.peer.ae_title),
            solicited=self._solicited(fields),
        )
        return _Store(context_id, dimse.us(fields, dimse.MESSAGE_ID) or 0, pending)

    def _solicited(self, fields: dimse.Fields) -> bool:
        """True for a C-GET sub-operation (our own association) or a C-MOVE sub-operation
        whose Move Originator is our AE title (PS3.7 9.3.1.1)."""
        if not self.assoc.is_acceptor:
            return True
        originator = dimse.text(fields, dimse.MOVE_ORIGINATOR_AE_TITLE).strip()
        return bool(originator) and originator == str(self.assoc.acceptor.ae_title).strip()

    def _finish_store(self) -> None:
        store, self.store = self.store, None
        assert store is not None
        try:
            status = store.pending.finish()
        except Exception as exc:  # an on_stored callback failed: answer, as pynetdicom would
            _log.error("store_failed", error=repr(exc), sop_instance_uid=store.sop_instance)
            status = PROCESSING_FAILURE
        command = store_response(store.message_id, store.sop_class, store.sop_instance, status)
        hooks.send_pdu(self.assoc, dimse.p_data_tf(store.context_id, command))
