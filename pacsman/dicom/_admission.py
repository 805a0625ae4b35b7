"""Admission to the Storage SCP: who gets an association thread, and what it may read.

pynetdicom 3.0.4 gives each accepted connection an association thread at once.  That thread
counts against the association limit while it waits for an A-ASSOCIATE-RQ, reads a PDU of
any claimed length into memory, and blocks in ``recv`` past every timeout when a peer sends
half a header: eleven idle sockets locked the SCP out for good.  Here, per connection:

1. **At accept** (:meth:`Admission.accept`): at most ``max_connections_per_address``
   connections, waiting or associated, from one peer address (an IPv6 /64 counts as one
   address); more are closed at once.  At most :data:`MAX_WAITING` connections wait for
   their A-ASSOCIATE-RQ; a new one closes the one waiting longest, so that a flood from many
   addresses cannot keep the PACS's fresh connection out.
2. **Before the association** (:meth:`Admission.read_request`), in the connection's own
   thread, which is not an association and never takes an association slot: the whole
   A-ASSOCIATE-RQ (after a TLS handshake, if any) must arrive within
   ``association_request_timeout`` seconds of the connect, and be at most
   :data:`MAX_ASSOCIATE_RQ` bytes.  A longer claim is rejected (A-ASSOCIATE-RJ) before a
   byte of it is read; any other first PDU gets an A-ABORT.
3. **During the association**: pynetdicom reads the request from the bytes already read,
   then from the socket through :class:`~pacsman.dicom._guard.GuardedSocket`, which caps
   PDUs, command sets and datasets held in memory.  A peer that stops in the middle of a
   PDU is cut off after the network timeout (``SO_RCVTIMEO``).

Every refusal is logged (``connection_refused``, ``association_request_refused``,
``association_aborted``) with the peer address and the reason, never with patient data.
Memory before association is bounded by ``MAX_WAITING * MAX_ASSOCIATE_RQ`` (16 MiB).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

import structlog
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from pacsman.dicom import hooks
from pacsman.dicom._guard import MAX_ASSOCIATE_RQ, GuardedSocket, WireGuard

__all__ = ["MAX_WAITING", "Admission", "AdmissionHandler", "AdmissionServer", "address_key"]

#: Connections that may wait for their A-ASSOCIATE-RQ at once (the oldest gives way).
MAX_WAITING = 64
_UNLIMITED_PDU = 64 << 20  # the bound when our maximum PDU length is 0 ("unlimited")
_A_ASSOCIATE_RQ = 0x01
#: A-ASSOCIATE-RJ: rejected-permanent, service-provider (ACSE), no-reason-given (PS3.8 9.3.4).
_REJECT = bytes.fromhex("03 00 00000004 00 01 02 01")
#: A-ABORT: service-provider, unexpected-PDU (PS3.8 9.3.8).
_ABORT_UNEXPECTED = bytes.fromhex("07 00 00000004 00 00 02 02")
_REPLY_SECONDS = 1.0  # for the last word to a refused peer
_LOG_EVERY = 10.0  # seconds between two connection_refused events for one address
_MAX_REMEMBERED = 10_000  # addresses whose refusals are counted, before a reset

_log = structlog.get_logger("pacsman.dicom.scp")


def address_key(host: str) -> str:
    """The address a connection counts against: the IP, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _peer(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


class _Refused(Exception):
    """A connection that gets no association; ``reply`` is the PDU to send first, if any."""

    def __init__(self, reason: str, *, reply: bytes = b"", quiet: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.quiet = quiet  # the peer left without a word (a port probe): debug only


@dataclass
class _Waiting:
    key: str
    since: float
    evicted: bool = False


class Admission:
    """The admission rules of one Storage SCP (see the module docstring).  Thread-safe."""

    def __init__(
        self,
        ae: ApplicationEntity,
        *,
        request_timeout: float,
        max_per_address: int,
        network_timeout: float | None,
    ) -> None:
        self._ae = ae
        self.request_timeout = request_timeout
        self.max_per_address = max_per_address
        self.network_timeout = network_timeout
        self._lock = threading.Lock()
        self._waiting: dict[socket.socket, _Waiting] = {}
        self._refusals: dict[str, tuple[float, int]] = {}  # address: (last logged, since)

    def accept(self, sock: socket.socket, address: Any) -> bool:
        """At accept: True to let the connection wait for its A-ASSOCIATE-RQ."""
        key = address_key(str(address[0]))
        with self._lock:
            waiting = sum(1 for w in self._waiting.values() if w.key == key)
            open_ = waiting + self._associated(key)
            if open_ < self.max_per_address:
                if len(self._waiting) >= MAX_WAITING:
                    self._evict_oldest()
                self._waiting[sock] = _Waiting(key, time.monotonic())
                return True
            unlogged = self._count_refusal(key)
        if unlogged is not None:
            _log.warning(
                "connection_refused",
                reason=f"{open_} connections from this address already (the most allowed)",
                peer=_peer(address),
                refused_before=unlogged,
                fix="raise local.max_connections_per_address if this is a PACS sending in parallel",
            )
        return False

    def _count_refusal(self, key: str) -> int | None:
        """Refusals since the last one logged, if this one is to be logged (one per address
        every :data:`_LOG_EVERY` seconds), else None: a flood must not flood the log."""
        now = time.monotonic()
        logged, since = self._refusals.get(key, (now - _LOG_EVERY, 0))
        if now - logged < _LOG_EVERY:
            self._refusals[key] = (logged, since + 1)
            return None
        if len(self._refusals) >= _MAX_REMEMBERED:
            self._refusals.clear()
        self._refusals[key] = (now, 0)
        return since

    def read_request(self, sock: socket.socket, address: Any) -> bytes | None:
        """Read the whole A-ASSOCIATE-RQ within the deadline; None if refused (closed)."""
        with self._lock:
            waiting = self._waiting.get(sock) or _Waiting("", time.monotonic())
        try:
            return self._read(sock, waiting.since + self.request_timeout)
        except _Refused as exc:
            evicted = _Refused(f"{MAX_WAITING} newer connections were waiting too")
            self._refuse(sock, address, evicted if waiting.evicted else exc, waiting.since)
            return None
        finally:
            with self._lock:
                self._waiting.pop(sock, None)

    def prepare(self, assoc: Association, request: bytes) -> None:
        """Give the admitted association its request bytes and its :class:`WireGuard`."""
        guarded = cast(GuardedSocket, hooks.adopt_socket(assoc, GuardedSocket))
        maximum = assoc.acceptor.maximum_length or _UNLIMITED_PDU
        guarded.guard = WireGuard(request, max_pdu=maximum)
        raw = guarded.socket
        if raw is not None and not isinstance(raw, ssl.SSLSocket) and self.network_timeout:
            seconds = max(self.network_timeout, 1.0)
            timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)

    def close_all(self) -> None:
        """Close every connection still waiting (the SCP is stopping)."""
        with self._lock:
            waiting = list(self._waiting)
        for sock in waiting:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _associated(self, key: str) -> int:
        count = 0
        for assoc in self._ae.active_associations:
            info = assoc.requestor.address_info if assoc.is_acceptor else None
            if info is not None and address_key(info.address) == key:
                count += 1
        return count

    def _evict_oldest(self) -> None:
        sock, oldest = min(self._waiting.items(), key=lambda item: item[1].since)
        oldest.evicted = True
        del self._waiting[sock]
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # its reader wakes up with nothing

    def _read(self, sock: socket.socket, deadline: float) -> bytes:
        seconds = self.request_timeout
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.do_handshake()
            header = _read_exactly(sock, 6, deadline)
            if header is None:
                raise _Refused("the peer closed the connection without a word", quiet=True)
            pdu_type, length = header[0], int.from_bytes(header[2:6], "big")
            if pdu_type == _TLS_HANDSHAKE and not isinstance(sock, ssl.SSLSocket):
                raise _Refused(_TLS_UNEXPECTED)
            if pdu_type != _A_ASSOCIATE_RQ:
                what = f"the first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ"
                raise _Refused(what, reply=_ABORT_UNEXPECTED)
            if length + 6 > MAX_ASSOCIATE_RQ:
                what = f"an A-ASSOCIATE-RQ of {length + 6} bytes, more than {MAX_ASSOCIATE_RQ}"
                raise _Refused(what, reply=_REJECT)
            body = _read_exactly(sock, length, deadline)
        except TimeoutError:
            raise _Refused(f"no whole A-ASSOCIATE-RQ within {seconds:g} s") from None
        except ssl.SSLError as exc:
            what = f"TLS handshake failed ({exc.reason or exc})"
            raise _Refused(f"{what}; {_TLS_FIX}") from None
        except OSError as exc:
            raise _Refused(f"connection lost ({exc.strerror or exc})", quiet=True) from None
        if body is None:
            raise _Refused("the peer closed the connection in the middle of its request")
        sock.settimeout(None)
        return bytes(header + body)

    def _refuse(self, sock: socket.socket, address: Any, refused: _Refused, since: float) -> None:
        log = _log.debug if refused.quiet else _log.warning
        log(
            "association_request_refused",
            reason=refused.reason,
            peer=_peer(address),
            waited_seconds=round(time.monotonic() - since, 3),
        )
        with suppress(OSError):
            if refused.reply:
                sock.settimeout(_REPLY_SECONDS)
                sock.sendall(refused.reply)
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


_TLS_HANDSHAKE = 0x16  # a TLS record holding a ClientHello
_TLS_UNEXPECTED = (
    "the peer opened a TLS handshake, but this Storage SCP takes plain DICOM; set local.tls "
    "to accept DICOM TLS, or have the peer connect without TLS"
)
_TLS_FIX = (
    "the peer must use DICOM TLS with a certificate signed by local.tls.ca, and trust "
    "local.tls.cert's CA"
)


def _read_exactly(sock: socket.socket, size: int, deadline: float) -> bytearray | None:
    """``size`` bytes, or None if the peer closes first.

    Raises:
        TimeoutError: the deadline passes first.
        OSError: as ``recv_into``.
    """
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


class AdmissionServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, admitting connections through an :class:`Admission`."""

    daemon_threads = True  # a connection's thread never holds up shutdown
    #: The listen backlog (pynetdicom's: 5): a burst of connections waiting to be accepted
    #: would otherwise make the PACS's connect wait for a SYN retransmission (1 s, 3 s, ...).
    request_queue_size = 128
    admission: Admission

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """At accept (socketserver): the per-address cap and the waiting room."""
        return self.admission.accept(cast(socket.socket, request), client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection's thread failed: one error event (the traceback at debug level),
        not socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        _log.error("connection_failed", peer=_peer(client_address), error=repr(error))
        _log.debug("connection_failed_traceback", exc_info=True)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept; a TLS handshake, if any, is left to the connection's own thread."""
        listener = cast(socket.socket, self.socket)
        sock, address = listener.accept()
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def shutdown(self) -> None:
        """Stop serving now, not at the accept loop's next poll: shutting the listening
        socket's read side wakes the loop at once (Linux; elsewhere the poll, every
        :data:`~pacsman.dicom.hooks.ACCEPT_POLL` s, ends it).  Then close, as pynetdicom does."""
        with suppress(OSError):
            cast(socket.socket, self.socket).shutdown(socket.SHUT_RD)
        super().shutdown()


class AdmissionHandler(hooks.AdmittingRequestHandler):
    """Reads the A-ASSOCIATE-RQ under the admission rules before pynetdicom sees the peer."""

    server: AdmissionServer
    _request_bytes: bytes = b""

    def admit(self) -> bool:
        """True once the whole A-ASSOCIATE-RQ has arrived in time (else it is closed)."""
        sock = cast(socket.socket, self.request)
        request = self.server.admission.read_request(sock, self.client_address)
        if request is None:
            return False
        self._request_bytes = request
        return True

    def prepare(self, assoc: Association) -> None:
        """Serve the request bytes to pynetdicom, through the association's guard."""
        self.server.admission.prepare(assoc, self._request_bytes)
