"""pacsman's own Storage SCP: receives C-MOVE/C-GET results straight to disk.

* **Who may store.**  Only the calling AE titles it is given, calling it by its own AE
  title (unless ``accept_any_called_ae_title``); anyone else gets an A-ASSOCIATE-RJ
  (permanent, calling AE title not recognised, or called AE title not recognised), logged
  as ``association_rejected`` with the AE titles and peer address.  It listens on one
  address.
* **Hostile peers.**  A connection becomes an association only once its whole
  A-ASSOCIATE-RQ has arrived, in time and within size, and no address holds more than its
  share of connections (:mod:`pacsman.dicom._admission`); command sets, PDUs and datasets
  held in memory are capped; a dataset must be whole and carry the SOP Class/Instance UIDs
  of its command, and unsolicited instances are refused or kept under a quota
  (:class:`InstanceWriter`).  See README "Security".
* **How.**  Each instance goes to disk as received -- no decode, no re-encode, compressed
  pixel data stays compressed -- under a temporary name, then renamed atomically
  (:class:`InstanceWriter`).  A full disk answers 0xA700 and leaves no partial file.
* **Where.**  ``<out>/<subject>/<session>/<SeriesNumber>-<SeriesDescription>/<UID>.dcm``
  for routed series (:func:`series_directory`), ``<unrouted>/<study>/<series>/`` otherwise.
* **Speed.**  pynetdicom negotiates, releases and times out; a C-STORE shortcut in its
  receive thread does the per-instance work (see :mod:`pacsman.dicom._store_fast`).  C-MOVE of
  3,000 MR instances from Orthanc (``benchmarks/retrieve_throughput.py``): about 7x
  pynetdicom's own storescp app and on a par with DCMTK's storescp, ~63 MB peak RSS; against
  a sender with Nagle's algorithm on, ~20x DCMTK's storescp (it ACKs at once).  On a
  pynetdicom other than the checked one (:mod:`pacsman.dicom.hooks`), pynetdicom does it all.
"""

from __future__ import annotations

import copy
import socket
import ssl
from collections.abc import Collection
from typing import Any, Self

import structlog
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from pacsman.closing import Started
from pacsman.dicom import hooks
from pacsman.dicom._admission import Admission, AdmissionHandler, AdmissionServer
from pacsman.dicom._store_fast import install
from pacsman.dicom._writer import InstanceWriter, StoredInstance
from pacsman.dicom.contexts import TRANSFER_SYNTAXES, StorageRole
from pacsman.errors import FatalError
from pacsman.layout import default_labels, safe_component, series_directory

__all__ = [
    "DEFAULT_ASSOCIATION_REQUEST_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS_PER_ADDRESS",
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "InstanceWriter",
    "StorageSCP",
    "StoredInstance",
    "accelerate",
    "default_labels",
    "safe_component",
    "series_directory",
    "storage_role",
]

#: Every standard storage SOP class pynetdicom knows (PS3.4 B.5): all accepted.
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
)

#: Largest P-DATA-TF PDU we offer to receive.  DCMTK-based senders (Orthanc, most PACSes'
#: toolkits) send at most 128 KiB whatever we offer; bigger only costs buffer memory.
DEFAULT_MAXIMUM_PDU = 256 * 1024
VERIFICATION = "1.2.840.10008.1.1"
_REJECTED_PERMANENT = 0x01
_SOURCE_SERVICE_USER = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03
_CALLED_AE_NOT_RECOGNISED = 0x07
#: Seconds a new connection has to deliver its whole A-ASSOCIATE-RQ.
DEFAULT_ASSOCIATION_REQUEST_TIMEOUT = 5.0
#: Connections (waiting or associated) one peer address may hold at once.
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 8

_log = structlog.get_logger("pacsman.dicom.scp")


class StorageSCP(Started):
    """A Storage SCP (plus C-ECHO) writing through an :class:`InstanceWriter`.

    ``port=0`` lets the OS choose; :attr:`port` holds the real port once started.
    ``allowed_calling_ae_titles`` is enforced as given: an empty collection rejects everyone
    (the caller passes the PACS nodes' AE titles when the config lists none); the called AE
    title must be ``ae_title`` unless ``accept_any_called_ae_title``.  Timeouts are in
    seconds; ``network_timeout`` is how long an association may sit idle, which must outlast
    the pauses of a slow PACS mid-move; ``association_request_timeout`` is how long a new
    connection has to send its A-ASSOCIATE-RQ.  ``max_connections_per_address`` caps the
    connections of one peer address.  ``fast_path=False`` leaves every message to pynetdicom
    (with :meth:`InstanceWriter.handle_store`), for comparison and debugging.
    """

    def __init__(
        self,
        writer: InstanceWriter,
        *,
        ae_title: str,
        bind_host: str,
        port: int,
        allowed_calling_ae_titles: Collection[str],
        acse_timeout: float = 30.0,
        dimse_timeout: float = 600.0,
        network_timeout: float = 600.0,
        maximum_pdu_size: int = DEFAULT_MAXIMUM_PDU,
        maximum_associations: int = 10,
        association_request_timeout: float = DEFAULT_ASSOCIATION_REQUEST_TIMEOUT,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        accept_any_called_ae_title: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        fast_path: bool = True,
    ) -> None:
        self.writer = writer
        self.ae_title = ae_title
        self.bind_host = bind_host
        self.port = port
        self.allowed_calling_ae_titles = frozenset(t.strip() for t in allowed_calling_ae_titles)
        self._ae = AE(ae_title=ae_title)
        self._ae.acse_timeout = acse_timeout
        self._ae.dimse_timeout = dimse_timeout
        self._ae.network_timeout = network_timeout
        self._ae.maximum_pdu_size = maximum_pdu_size
        self._ae.maximum_associations = maximum_associations
        self.accept_any_called_ae_title = accept_any_called_ae_title
        self.ssl_context = ssl_context
        self._admission = Admission(
            self._ae,
            request_timeout=association_request_timeout,
            max_per_address=max_connections_per_address,
            network_timeout=network_timeout,
        )
        self._fast_path = fast_path
        self._server: ThreadedAssociationServer | None = None
        self._contexts = _contexts()

    def start(self) -> Self:
        """Start listening on ``bind_host:port`` (a background thread per association).

        Raises:
            FatalError: if the address cannot be bound (e.g. the port is in use).
        """
        if self._server is not None:
            return self
        try:
            server = self._listen()
        except OSError as exc:
            raise FatalError(
                f"the Storage SCP cannot listen on {self.bind_host}:{self.port} "
                f"(AE {self.ae_title}): {exc.strerror or exc}; stop whatever uses that port "
                "or set local.port / local.bind_host in the config"
            ) from exc
        self._server = server
        self.port = int(server.server_address[1])
        _log.info("scp_started", ae_title=self.ae_title, host=self.bind_host, port=self.port)
        return self

    def stop(self) -> None:
        """Stop listening and abort associations still open (their partial files go)."""
        server, self._server = self._server, None
        if server is not None:
            self._admission.close_all()
            # Aborts open associations, then stops the server: at once with pacsman's
            # admission (AdmissionServer.shutdown), else at its accept loop's next poll (0.5 s).
            self._ae.shutdown()
            _log.info("scp_stopped", ae_title=self.ae_title, port=self.port)

    def _listen(self) -> ThreadedAssociationServer:
        """A running server: pacsman's admission where pynetdicom allows it, else its own."""
        address = (self.bind_host, self.port)
        if not hooks.admission_supported():
            server = self._ae.start_server(
                address,
                block=False,
                ssl_context=self.ssl_context,
                evt_handlers=self._handlers(),
                contexts=self._contexts,
            )
            assert server is not None  # block=False returns the running server
            return server
        server = hooks.make_server(
            self._ae,
            address,
            server_class=AdmissionServer,
            request_handler=AdmissionHandler,
            contexts=self._contexts,
            evt_handlers=self._handlers(),
            ssl_context=self.ssl_context,
        )
        assert isinstance(server, AdmissionServer)
        server.admission = self._admission
        hooks.serve_in_background(self._ae, server)
        return server

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, _on_echo),
            (evt.EVT_C_STORE, self.writer.handle_store),
        ]

    def _on_connection(self, event: Event) -> None:
        """Runs before the association's threads start: Nagle off, shortcut in (where the
        installed pynetdicom is the checked one; else ``handle_store`` receives)."""
        raw = hooks.raw_socket(event.assoc)
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._fast_path:
            install(event.assoc, self.writer)

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(getattr(request, "calling_ae_title", "")).strip()
        called = str(getattr(request, "called_ae_title", "")).strip()
        if calling not in self.allowed_calling_ae_titles:
            reason, diagnostic = "calling AE title not allowed", _CALLING_AE_NOT_RECOGNISED
            fix = "add it to local.allowed_calling_ae_titles if it is a PACS of yours"
        elif called != self.ae_title.strip() and not self.accept_any_called_ae_title:
            reason, diagnostic = "called AE title is not ours", _CALLED_AE_NOT_RECOGNISED
            fix = f"the peer must call {self.ae_title!r} (local.ae_title)"
        else:
            return
        address = assoc.requestor.address_info
        _log.warning(
            "association_rejected",
            reason=reason,
            calling_ae_title=calling,
            called_ae_title=called,
            peer=f"{address.address}:{address.port}" if address else "unknown",
            allowed=sorted(self.allowed_calling_ae_titles),
            fix=fix,
        )
        assoc.acse.send_reject(_REJECTED_PERMANENT, _SOURCE_SERVICE_USER, diagnostic)
        assoc.kill()  # as pynetdicom does: returns once the A-ASSOCIATE-RJ is on the wire


def accelerate(assoc: Association, writer: InstanceWriter) -> None:
    """Give an established association pacsman's fast C-STORE path into ``writer``.

    For a C-GET requestor's association: call it once the association is established and
    before the first C-GET is sent; its C-STORE sub-operations then go straight to
    ``writer`` (as with :class:`StorageSCP`) instead of through an ``EVT_C_STORE`` handler.
    Every other message is left to pynetdicom, and every message is where the installed
    pynetdicom is not the checked one: the association's ``EVT_C_STORE`` handler (e.g.
    :meth:`InstanceWriter.handle_store`) then stores them.

    Raises:
        ValueError: if the association is not established.
    """
    if not assoc.is_established:
        raise ValueError("accelerate() needs an established association; associate first")
    install(assoc, writer)


def _on_echo(event: Event) -> int:
    return 0x0000


def _contexts() -> list[PresentationContext]:
    """Every storage SOP class and Verification, as contexts pynetdicom copies cheaply.

    The storage contexts are copies of one: pynetdicom validates each transfer syntax UID it
    is given (170 classes x 32 syntaxes took 0.12 s of every start), a copy keeps them.
    """
    storage = hooks.cheaply_copied_context(STORAGE_SOP_CLASSES[0], TRANSFER_SYNTAXES)
    return [
        *(_with_abstract_syntax(storage, uid) for uid in STORAGE_SOP_CLASSES),
        hooks.cheaply_copied_context(VERIFICATION, ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")),
    ]


def _with_abstract_syntax(context: PresentationContext, uid: str) -> PresentationContext:
    """A copy of ``context`` for the abstract syntax ``uid``, with the same transfer syntaxes."""
    copied = copy.deepcopy(context)
    copied.abstract_syntax = uid
    return copied


def storage_role(writer: InstanceWriter) -> StorageRole:
    """The SCP role a C-GET association proposes: every storage class, written by ``writer``
    through the same fast path as the Storage SCP."""
    return StorageRole(
        STORAGE_SOP_CLASSES,
        TRANSFER_SYNTAXES,
        writer.handle_store,
        on_established=lambda association: accelerate(association, writer),
    )
