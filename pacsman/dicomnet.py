"""DICOM association handling: the only module that speaks pynetdicom as a client.

Three things here are deliberate, each backed by a measurement in DESIGN.md:

* Every association socket sets ``TCP_NODELAY`` (500 C-FINDs: 24 s with Nagle, 2.2 s without).
* The association's reactor thread may only take *requests* off the DIMSE queue.  In
  pynetdicom 3.0.4 the reactor can win a race with ``send_c_find`` and swallow a response
  ("Received unexpected C-FIND service message", pynetdicom #875): a pending response vanishes
  (a silently short answer) or the final one does (a 30 s stall).  :func:`_guard_reactor`
  closes that race at its root.
* A DIMSE exchange that ends without a final status raises :class:`TransientError`; a short
  answer is never trusted.
"""

from __future__ import annotations

import queue
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket

from pacsman.config import PacsNode
from pacsman.errors import AssociationRejected, FatalError, ItemFailed, TransientError

__all__ = [
    "FIND_MODELS",
    "STATUS_NAMES",
    "VERIFICATION",
    "DicomPeer",
    "associate",
    "echo",
    "find",
    "status_name",
]

# Identifiers carry patient names and IDs: pynetdicom must never format them for its log.
# (Formatting them also costs ~0.4 ms per C-FIND.)
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

#: Verification SOP Class (C-ECHO).
VERIFICATION = "1.2.840.10008.1.1"

#: C-FIND information models (PS3.4 C.6) by ``query_model`` config value.
FIND_MODELS: dict[str, str] = {
    "study": "1.2.840.10008.5.1.4.1.2.2.1",
    "patient": "1.2.840.10008.5.1.4.1.2.1.1",
}

#: Named DIMSE statuses (PS3.4 Annex C and PS3.7 Annex C) that pacsman decides on.
STATUS_NAMES: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes not supported",
    0x0110: "Failure: processing failure",
    0x0122: "Failure: SOP class not supported",
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources, unable to calculate number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xA900: "Error: identifier does not match SOP class",
    0xB000: "Warning: sub-operations complete, one or more failures",
    0xFE00: "Cancel: sub-operations terminated",
    0xFF00: "Pending",
    0xFF01: "Pending: optional keys not supported",
}

#: Statuses that mean "the PACS is busy": back off and retry.
_CONGESTION = frozenset({0xA700, 0xA701, 0xA702})

#: A-ASSOCIATE-RJ (result source, reason) -> what the user should do (PS3.8 9.3.4).
_REJECT_ADVICE: dict[tuple[int, int], str] = {
    (1, 2): "the PACS does not support the DICOM application context",
    (1, 3): (
        "the PACS does not know calling AE title {calling!r}: ask its administrator to add "
        "{calling!r} (this host, port {local_port}) to its known nodes, or set local.ae_title "
        "to the AE title it knows"
    ),
    (1, 7): (
        "the PACS does not answer to called AE title {called!r}: check "
        "pacs.{node}.called_ae_title against the PACS's own AE title"
    ),
    (3, 1): "the PACS is congested (temporary); pacsman backs off and retries",
    (3, 2): "the PACS refused a new association (local limit exceeded); lower "
    "pacs.{node}.max_associations or wait",
}


def status_name(status: int) -> str:
    """Return ``0xA702 (Refused: out of resources, ...)`` for a DIMSE status code."""
    name = STATUS_NAMES.get(status)
    if name is None:
        if 0xC000 <= status <= 0xCFFF:
            name = "Failure: unable to process"
        elif 0xA000 <= status <= 0xAFFF:
            name = "Failure"
        else:
            name = "unknown status"
    return f"0x{status:04X} ({name})"


@dataclass(frozen=True)
class DicomPeer:
    """Who we talk to and as whom: a configured PACS node plus our calling AE title."""

    node: PacsNode
    calling_ae_title: str
    local_port: int = 0

    def describe(self) -> str:
        """``'orthanc' (ORTHANC@127.0.0.1:4242)`` -- safe to log, no patient data."""
        node = self.node
        return f"{node.name!r} ({node.called_ae_title}@{node.host}:{node.port})"


class _NoDelayAE(AE):
    """An AE whose association sockets disable Nagle's algorithm."""

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: Any,
    ) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        if sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _guard_reactor(assoc: Association) -> None:
    """Let the association's reactor thread take only service *requests* off the queue.

    The reactor polls with ``get_msg(block=False)``; callers waiting for responses use
    ``block=True``.  Popping under the queue's own mutex makes peek-and-take atomic.
    """
    dimse = assoc.dimse
    original = dimse.get_msg
    msg_queue: queue.Queue[Any] = dimse.msg_queue

    def get_msg(block: bool = False) -> Any:
        if block:
            return original(block=True)
        with msg_queue.mutex:
            if msg_queue.queue and getattr(msg_queue.queue[0][1], "is_valid_request", False):
                item = msg_queue.queue.popleft()
                msg_queue.not_full.notify()
                return item
        return None, None

    setattr(dimse, "get_msg", get_msg)  # noqa: B010 -- shadow the bound method on this instance


def _make_ae(peer: DicomPeer, abstract_syntaxes: Sequence[str]) -> AE:
    timeouts = peer.node.timeouts
    ae = _NoDelayAE(ae_title=peer.calling_ae_title)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    for uid in abstract_syntaxes:
        ae.add_requested_context(uid)
    return ae


def _rejection(peer: DicomPeer, assoc: Association) -> Exception:
    node = peer.node
    rsp = assoc.acceptor.primitive
    result, source, reason = (
        getattr(rsp, "result", None),
        getattr(rsp, "result_source", None),
        getattr(rsp, "diagnostic", None),
    )
    advice = _REJECT_ADVICE.get((source or 0, reason or 0), "no reason given")
    advice = advice.format(
        calling=peer.calling_ae_title,
        called=node.called_ae_title,
        node=node.name,
        local_port=peer.local_port,
    )
    kind = "permanently" if result == 1 else "for now"
    message = (
        f"PACS {peer.describe()} rejected the association from calling AE "
        f"{peer.calling_ae_title!r} {kind} (source {source}, reason {reason}): {advice}"
    )
    return FatalError(message) if result == 1 else AssociationRejected(message)


@contextmanager
def associate(
    peer: DicomPeer, abstract_syntaxes: Sequence[str], *, poll_interval: float | None = None
) -> Iterator[Association]:
    """Open one association to ``peer`` proposing ``abstract_syntaxes``; release on exit.

    ``poll_interval`` shortens pynetdicom's idle poll of the socket (1 ms by default) for
    chatty associations such as a C-FIND session: less latency, a little more idle CPU.

    Raises:
        AssociationRejected: transient reject, refused connection, abort or timeout.
        FatalError: permanent reject (unknown AE titles) or no accepted context.
    """
    node = peer.node
    ae = _make_ae(peer, abstract_syntaxes)
    assoc = ae.associate(node.host, node.port, ae_title=node.called_ae_title)
    if assoc.is_rejected:
        raise _rejection(peer, assoc)
    if not assoc.is_established:
        raise AssociationRejected(
            f"could not open an association to PACS {peer.describe()}: connection refused, "
            f"aborted, or no answer within {node.timeouts.acse:g} s; check that the PACS is "
            f"running and that pacs.{node.name}.host/port are right"
        )
    _guard_reactor(assoc)
    if poll_interval is not None:
        assoc.dul._run_loop_delay = poll_interval
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _require_context(peer: DicomPeer, assoc: Association, uid: str, what: str) -> None:
    if not any(cx.abstract_syntax == uid for cx in assoc.accepted_contexts):
        raise FatalError(
            f"PACS {peer.describe()} does not accept {what} (SOP class {uid}); "
            f"check pacs.{peer.node.name}.query_model or ask the PACS administrator"
        )


def echo(peer: DicomPeer) -> None:
    """C-ECHO pre-flight: prove the PACS knows both AE titles before the night's run.

    Raises:
        AssociationRejected, FatalError: as :func:`associate`.
        TransientError: the C-ECHO got no answer or a failure status.
    """
    with associate(peer, [VERIFICATION]) as assoc:
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code is None:
            raise TransientError(f"PACS {peer.describe()} did not answer the C-ECHO")
        if code != 0x0000:
            raise TransientError(f"PACS {peer.describe()} answered C-ECHO with {status_name(code)}")


def find(peer: DicomPeer, assoc: Association, identifier: Dataset, *, model: str) -> list[Dataset]:
    """Run one C-FIND on an open association and return every matching identifier.

    Raises:
        TransientError: congestion (0xA7xx), cancel, abort, or no final status.
        ItemFailed: the PACS refused this query (0xA900, 0xCxxx, other failures).
        FatalError: the PACS does not accept the query model.
    """
    _require_context(peer, assoc, model, "this C-FIND query model")
    matches: list[Dataset] = []
    final: int | None = None
    for status, match in assoc.send_c_find(identifier, model):
        code = getattr(status, "Status", None)
        if code is None:
            break
        if code in (0xFF00, 0xFF01):
            if match is None:
                raise TransientError(f"PACS {peer.describe()} sent an undecodable C-FIND match")
            matches.append(match)
            continue
        final = code
    return _check_find_final(peer, final, matches)


def _check_find_final(peer: DicomPeer, final: int | None, matches: list[Dataset]) -> list[Dataset]:
    if final is None:
        raise TransientError(
            f"C-FIND to PACS {peer.describe()} ended without a final status after "
            f"{len(matches)} match(es) (association aborted or timed out); retrying"
        )
    if final in (0x0000, 0x0001, 0xB000):
        return matches
    if final in _CONGESTION or final == 0xFE00:
        raise TransientError(f"PACS {peer.describe()} answered C-FIND with {status_name(final)}")
    raise ItemFailed(f"PACS {peer.describe()} refused the C-FIND: {status_name(final)}")
