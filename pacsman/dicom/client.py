"""DICOM associations as a client: associate, C-ECHO, C-FIND, C-MOVE/C-GET, C-STORE.

pynetdicom's internals are touched only through :mod:`pacsman.dicom.hooks`.  Four things here
are deliberate, each backed by a measurement in DESIGN.md:

* Every association socket sets ``TCP_NODELAY`` (500 C-FINDs: 24 s with Nagle, 2.2 s without;
  :class:`~pacsman.dicom.hooks.NoDelayAE`).
* The association's reactor thread may only take *requests* off the DIMSE queue.  In
  pynetdicom 3.0.4 the reactor can win a race with ``send_c_find`` and swallow a response
  ("Received unexpected C-FIND service message", pynetdicom #875): a pending response vanishes
  (a silently short answer) or the final one does (a 30 s stall).  :func:`guard_reactor`
  closes that race at its root.
* C-FIND and C-MOVE run in the caller's thread on the association's socket
  (:mod:`pacsman.dicom._dimse_fast`), not through pynetdicom's DIMSE queues: 2.6 ms -> 1.3 ms
  a query against Orthanc, where DCMTK ``findscu`` takes 1.1 ms, and no pydicom decoding of
  each pending C-MOVE-RSP.  On a pynetdicom other than the checked one (or over TLS),
  pynetdicom's ``send_c_find`` and ``send_c_move`` are used instead.
* A DIMSE exchange that ends without a final status raises :class:`TransientError`; a short
  answer is never trusted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from pacsman.config import PacsNode
from pacsman.dicom._dimse_fast import DimseChannel, Interrupted, RetrieveResponse, TimedOut
from pacsman.dicom.contexts import StoragePlan, StorageRole, accepted_storage
from pacsman.dicom.hooks import NoDelayAE, guard_reactor
from pacsman.dicom.statuses import CONGESTION, REJECT_ADVICE, STATUS_NAMES, status_name
from pacsman.dicom.tls import handshake_problem, tls_args
from pacsman.errors import AssociationRejected, FatalError, ItemFailed, TransientError
from pacsman.throttle import AssociationSlots, current_ticket

__all__ = [
    "FIND_MODELS",
    "GET_MODELS",
    "MAX_CONTEXTS",
    "MOVE_MODELS",
    "STATUS_NAMES",
    "VERIFICATION",
    "DicomPeer",
    "RetrieveProgress",
    "RetrieveResult",
    "ReusedAssociation",
    "StorageRole",
    "SubOperationsFailed",
    "accepted_storage",
    "associate",
    "echo",
    "find",
    "retrieve",
    "status_name",
    "store",
]

#: Verification SOP Class (C-ECHO).
VERIFICATION = "1.2.840.10008.1.1"

#: C-FIND information models (PS3.4 C.6) by ``query_model`` config value.
FIND_MODELS: dict[str, str] = {
    "study": "1.2.840.10008.5.1.4.1.2.2.1",
    "patient": "1.2.840.10008.5.1.4.1.2.1.1",
}

#: C-MOVE and C-GET information models (PS3.4 C.6) by ``query_model`` config value.
MOVE_MODELS: dict[str, str] = {
    "study": "1.2.840.10008.5.1.4.1.2.2.2",
    "patient": "1.2.840.10008.5.1.4.1.2.1.2",
}
GET_MODELS: dict[str, str] = {
    "study": "1.2.840.10008.5.1.4.1.2.2.3",
    "patient": "1.2.840.10008.5.1.4.1.2.1.3",
}


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

    @property
    def config_key(self) -> str:
        """Where the node is configured: ``pacs.<name>``, or ``push.dicom``."""
        name = self.node.name
        return name if name.startswith("push.") else f"pacs.{name}"


#: PS3.8: at most 128 presentation contexts per association.
MAX_CONTEXTS = 128

_log = structlog.get_logger("pacsman.dicom.client")
#: While a PACS does not answer an association request: the first notice after this many
#: seconds, then one every _NOTICE_EVERY, until the ACSE timeout ends the wait.
_FIRST_NOTICE = 5.0
_NOTICE_EVERY = 10.0


@dataclass(frozen=True)
class RetrieveProgress:
    """Sub-operation counts from a pending C-MOVE/C-GET response (any may be absent)."""

    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None


@dataclass(frozen=True)
class RetrieveResult:
    """The final C-MOVE/C-GET response: status, counts and the UIDs the PACS says failed."""

    status: int
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    failed_sop_instance_uids: tuple[str, ...] = ()
    #: The response's Error Comment (0000,0902), if the PACS sent one.
    error_comment: str = ""


class SubOperationsFailed(ItemFailed):
    """The PACS could not send instances of *this* C-GET to pacsman: no presentation context
    fits them (their SOP class or syntax was not negotiated), or pacsman's Storage SCP refused
    them.  Not congestion: retrying the same request on the same association cannot help.
    ``result`` holds the counts and the Failed SOP Instance UID List."""

    def __init__(self, message: str, result: RetrieveResult) -> None:
        super().__init__(message)
        self.result = result


def _make_ae(peer: DicomPeer, abstract_syntaxes: Sequence[str]) -> AE:
    timeouts = peer.node.timeouts
    ae = NoDelayAE(ae_title=peer.calling_ae_title)
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
    advice = REJECT_ADVICE.get((source or 0, reason or 0), "no reason given")
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
    peer: DicomPeer,
    abstract_syntaxes: Sequence[str],
    *,
    storage: StorageRole | None = None,
    plan: StoragePlan | None = None,
) -> Iterator[Association]:
    """Open one association to ``peer`` proposing ``abstract_syntaxes``; release on exit.

    ``storage`` also proposes storage contexts with the SCP role, for C-GET: those of
    ``plan``, or the first rung of :meth:`StorageRole.ladder`.

    Raises:
        AssociationRejected: transient reject, refused connection, abort or timeout.
        FatalError: permanent reject (unknown AE titles) or no accepted context.
    """
    ae = _make_ae(peer, abstract_syntaxes)
    proposed = list(ae.requested_contexts)
    roles: list[Any] = []
    handlers: list[Any] = []
    if storage is not None:
        room = MAX_CONTEXTS - len(abstract_syntaxes)
        storage_contexts, roles = storage.propose(plan or storage.ladder(room=room)[0])
        proposed += storage_contexts
        handlers = [(evt.EVT_C_STORE, storage.handle_store)]
    slots = _slots(peer)
    if slots is None:
        yield from _associate(peer, ae, proposed, roles, handlers, storage)
        return
    slots.acquire()  # the service's global max_associations, shared fairly between jobs
    try:
        yield from _associate(peer, ae, proposed, roles, handlers, storage, slots=slots)
    finally:
        slots.release()


def _slots(peer: DicomPeer) -> AssociationSlots | None:
    """The service's slots towards this PACS node; None for the one-shot command and for
    push targets (the push queue paces those)."""
    shared = current_ticket().shared
    if shared is None or peer.config_key.startswith("push."):
        return None
    return shared.slots(peer.node.name, peer.node.head_node_associations)


def _associate(
    peer: DicomPeer,
    ae: AE,
    proposed: list[Any],
    roles: list[Any],
    handlers: list[Any],
    storage: StorageRole | None,
    *,
    slots: AssociationSlots | None = None,
) -> Iterator[Association]:
    node = peer.node
    connected = threading.Event()
    handlers.append((evt.EVT_CONN_OPEN, lambda _event: connected.set()))
    started = time.monotonic()
    with _announce_wait(peer, connected):
        assoc = ae.associate(
            node.host,
            node.port,
            contexts=proposed,
            ae_title=node.called_ae_title,
            ext_neg=roles,
            evt_handlers=handlers,
            tls_args=tls_args(node.tls, node.host, f"{peer.config_key}.tls"),
        )
    if assoc.is_rejected:
        raise _rejection(peer, assoc)
    if not assoc.is_established and not assoc.accepted_contexts and assoc.rejected_contexts:
        raise _all_contexts_refused(peer, assoc)
    if not assoc.is_established:
        silent = connected.is_set() and time.monotonic() - started >= node.timeouts.acse
        raise _not_established(peer, silent=silent)
    guard_reactor(assoc)
    if storage is not None and storage.on_established is not None:
        storage.on_established(assoc)
    if slots is not None:
        slots.opened(assoc)
    try:
        yield assoc
    finally:
        if slots is not None:
            slots.closed(assoc)
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@contextmanager
def _announce_wait(peer: DicomPeer, connected: threading.Event) -> Iterator[None]:
    """Warn (``association_not_answered``) after 5 s, then every 10 s, while a PACS that
    took the TCP connection has not answered the association request."""
    done, started = threading.Event(), time.monotonic()
    timeouts = peer.node.timeouts
    limit = timeouts.connect + timeouts.acse

    def announce() -> None:
        delay = _FIRST_NOTICE
        while not done.wait(delay) and (waited := time.monotonic() - started) < limit:
            if connected.is_set():
                _log.warning(
                    "association_not_answered",
                    pacs=peer.node.name,
                    waited_s=round(waited),
                    timeout_s=timeouts.acse,
                    message=f"PACS {peer.describe()} took the connection but has not answered "
                    f"the association request after {waited:.0f} s; waiting up to "
                    f"{timeouts.acse:g} s ({peer.config_key}.timeouts.acse)",
                )
            delay = _NOTICE_EVERY

    thread = threading.Thread(target=announce, name="association-wait", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _not_established(peer: DicomPeer, *, silent: bool) -> Exception:
    """A TLS mismatch is a config matter (fatal, with its fix); anything else may pass.

    ``silent``: the PACS took the connection and never answered.  A TLS peer would have
    answered a plain request at once (and a plain one a TLS handshake), so no probe is made.
    """
    node, key = peer.node, peer.config_key
    if silent:
        return AssociationRejected(
            f"PACS {peer.describe()} took the connection but did not answer the association "
            f"request within {node.timeouts.acse:g} s ({key}.timeouts.acse); check that "
            f"{key}.host/port is the PACS's DICOM port, not another service, and that the "
            "PACS is not overloaded"
        )
    problem = handshake_problem(
        node.tls, node.host, node.port, timeout=node.timeouts.connect, where=f"{key}.tls"
    )
    if problem is not None:
        over = "over DICOM TLS" if node.tls is not None else "over plain TCP"
        return FatalError(
            f"could not open an association to PACS {peer.describe()} {over}: {problem}"
        )
    return AssociationRejected(
        f"could not open an association to PACS {peer.describe()}: connection refused, "
        f"aborted, or no answer within {node.timeouts.acse:g} s; check that the PACS is "
        f"running and that {key}.host/port are right"
    )


_CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


def _all_contexts_refused(peer: DicomPeer, assoc: Association) -> FatalError:
    """The PACS accepted the association but none of its presentation contexts: a config
    matter on one side or the other, never cured by retrying."""
    refused = ", ".join(
        f"{cx.abstract_syntax} ({_CONTEXT_RESULTS.get(cx.result or 0, f'result {cx.result}')})"
        for cx in assoc.rejected_contexts
    )
    return FatalError(
        f"PACS {peer.describe()} refused every presentation context pacsman proposed: "
        f"{refused}; ask the PACS administrator to allow these SOP classes for calling AE "
        f"{peer.calling_ae_title!r}, or check pacs.{peer.node.name}.query_model and "
        f"retrieve_method"
    )


class ReusedAssociation:
    """One association kept open across many operations, and opened again after a fault.

    With a :class:`StorageRole`, :meth:`get` may ask for another :class:`StoragePlan`: the
    open association is then released and one proposing that plan is opened.
    """

    def __init__(
        self,
        peer: DicomPeer,
        abstract_syntaxes: Sequence[str],
        *,
        storage: StorageRole | None = None,
    ) -> None:
        self.peer = peer
        self.abstract_syntaxes = tuple(abstract_syntaxes)
        self.storage = storage
        self.plan: StoragePlan | None = None
        self._context: Any = None
        self._assoc: Association | None = None

    @property
    def room(self) -> int:
        """How many storage contexts an association can propose beside its own."""
        return MAX_CONTEXTS - len(self.abstract_syntaxes)

    def get(self, plan: StoragePlan | None = None) -> Association:
        """The open association (opening it if needed), proposing ``plan`` if one is given.

        Raises:
            AssociationRejected, FatalError: as :func:`associate`.
        """
        stale = plan is not None and plan != self.plan
        if stale or self._assoc is None or not self._assoc.is_established:
            self.close()
            if plan is None and self.storage is not None:
                plan = self.plan or self.storage.ladder(room=self.room)[0]
            context = associate(self.peer, self.abstract_syntaxes, storage=self.storage, plan=plan)
            self._assoc = context.__enter__()
            self._context, self.plan = context, plan
        return self._assoc

    def close(self) -> None:
        """Release the association, if one is open."""
        context, self._context, self._assoc = self._context, None, None
        if context is not None:
            context.__exit__(None, None, None)


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
    for code, match in _find_responses(peer, assoc, identifier, model):
        if code is None:
            break
        if code in (0xFF00, 0xFF01):
            if match is None:
                raise TransientError(f"PACS {peer.describe()} sent an undecodable C-FIND match")
            matches.append(match)
            continue
        final = code
    _log.debug("dimse_status", pacs=peer.node.name, operation="c_find", status=final)
    return _check_find_final(peer, final, matches)


def _find_responses(
    peer: DicomPeer, assoc: Association, identifier: Dataset, model: str
) -> Iterable[tuple[int | None, Dataset | None]]:
    """``(status, identifier)`` per C-FIND response: by the fast channel where it works."""
    channel = DimseChannel.of(assoc)
    if channel is None:
        return ((getattr(s, "Status", None), m) for s, m in assoc.send_c_find(identifier, model))
    try:
        return channel.c_find(identifier, model, timeout=peer.node.timeouts.dimse)
    except Interrupted as exc:
        raise _interrupted(peer, "C-FIND", exc) from exc


def _interrupted(peer: DicomPeer, what: str, exc: Interrupted) -> TransientError:
    hint = ""
    if isinstance(exc, TimedOut):
        hint = f" (a slow PACS needs a longer pacs.{peer.node.name}.timeouts.dimse)"
    return TransientError(f"{what} to PACS {peer.describe()}: {exc}{hint}; retrying")


def _check_find_final(peer: DicomPeer, final: int | None, matches: list[Dataset]) -> list[Dataset]:
    if final is None:
        raise TransientError(
            f"C-FIND to PACS {peer.describe()} ended without a final status after "
            f"{len(matches)} match(es) (association aborted or timed out); retrying"
        )
    if final in (0x0000, 0x0001, 0xB000):
        return matches
    if final in CONGESTION or final == 0xFE00:
        raise TransientError(f"PACS {peer.describe()} answered C-FIND with {status_name(final)}")
    raise ItemFailed(f"PACS {peer.describe()} refused the C-FIND: {status_name(final)}")


def _response_of(status: Dataset, identifier: Dataset | None) -> RetrieveResponse | None:
    """pynetdicom's ``(status, identifier)`` as a response; None when it has no status
    (pynetdicom's way of saying the association ended or timed out)."""
    code = getattr(status, "Status", None)
    if code is None:
        return None

    def number(keyword: str) -> int | None:
        value = getattr(status, keyword, None)
        return int(value) if isinstance(value, int) else None

    return RetrieveResponse(
        status=int(code),
        remaining=number("NumberOfRemainingSuboperations"),
        completed=number("NumberOfCompletedSuboperations"),
        failed=number("NumberOfFailedSuboperations"),
        warning=number("NumberOfWarningSuboperations"),
        error_comment=str(getattr(status, "ErrorComment", "") or "").strip(),
        identifier=identifier,
    )


def _failed_uids(identifier: Dataset | None) -> tuple[str, ...]:
    value = getattr(identifier, "FailedSOPInstanceUIDList", None) if identifier else None
    if not value:
        return ()
    return tuple(str(v) for v in value) if not isinstance(value, str) else (value,)


def retrieve(
    peer: DicomPeer,
    assoc: Association,
    identifier: Dataset,
    *,
    model: str,
    move_destination: str | None,
    on_progress: Callable[[RetrieveProgress], None] | None = None,
) -> RetrieveResult:
    """One C-MOVE (to ``move_destination``) or, when it is ``None``, one C-GET.

    Raises:
        TransientError: congestion (0xA70x with nothing to say which instances failed),
            cancel, abort, or no final status.
        SubOperationsFailed: a C-GET whose sub-operations failed (0xCxxx, or 0xA702 with a
            Failed SOP Instance UID List or an Error Comment naming a presentation context).
        ItemFailed: the PACS refused this retrieve.
        FatalError: unknown move destination (0xA801), SOP class not supported, or the model
            is not accepted.
    """
    operation = "c_get" if move_destination is None else "c_move"
    _require_context(peer, assoc, model, "this retrieve model")
    last = RetrieveProgress()

    def pending(response: RetrieveResponse) -> None:
        nonlocal last
        last = RetrieveProgress(
            response.remaining, response.completed, response.failed, response.warning
        )
        if on_progress is not None:
            on_progress(last)

    final = _final_response(peer, assoc, identifier, model, move_destination, pending)
    _log.debug(
        "dimse_status",
        pacs=peer.node.name,
        operation=operation,
        status=final.status if final else None,
    )
    if final is None:
        raise TransientError(
            f"retrieve from PACS {peer.describe()} ended without a final status after "
            f"{last.completed or 0} completed sub-operation(s) (association aborted or timed out)"
        )
    result = RetrieveResult(
        final.status,
        final.completed,
        final.failed,
        final.warning,
        _failed_uids(final.identifier),
        final.error_comment,
    )
    return _check_retrieve_final(peer, result, destination=move_destination)


def _final_response(
    peer: DicomPeer,
    assoc: Association,
    identifier: Dataset,
    model: str,
    move_destination: str | None,
    pending: Callable[[RetrieveResponse], None],
) -> RetrieveResponse | None:
    """Send the C-MOVE or C-GET; pass each pending response on; return the final one, or
    None if the association ended without it.  A C-MOVE goes by the fast channel where it
    works; a C-GET always by pynetdicom, whose reactor also receives its C-STOREs."""
    channel = DimseChannel.of(assoc) if move_destination is not None else None
    if channel is not None and move_destination is not None:
        try:
            return channel.c_move(
                identifier,
                move_destination,
                model,
                timeout=peer.node.timeouts.dimse,
                on_pending=pending,
            )
        except Interrupted as exc:
            raise _interrupted(peer, "C-MOVE", exc) from exc
    if move_destination is None:
        responses = assoc.send_c_get(identifier, model)
    else:
        responses = assoc.send_c_move(identifier, move_destination, model)
    for status, answer in responses:
        response = _response_of(status, answer)
        if response is None or not response.pending:
            return response
        pending(response)
    return None


#: Words of an Error Comment that blame negotiation, not load (Orthanc, DCMTK, pynetdicom).
_CONTEXT_WORDS = ("presentation context", "sop class", "transfer syntax")


def _blames_negotiation(result: RetrieveResult, *, get: bool) -> bool:
    """Whether a failed retrieve failed for want of a presentation context, not from load.

    A PACS that is merely busy refuses before it starts (0xA700-0xA702, no instance named).
    One that tried each instance and could not send it names them in the Failed SOP Instance
    UID List (PS3.4 C.4.3.1.3.2).  On a C-GET they could only have failed on this very
    association, and a C-GET that fails "unable to process" (0xCxxx) is one whose
    sub-operation found no context (Orthanc 1.10 says no more).  An Error Comment naming a
    context, SOP class or transfer syntax says so outright.
    """
    code = result.status
    if code != 0xA702 and not 0xC000 <= code <= 0xCFFF:
        return False
    comment = result.error_comment.lower()
    if any(word in comment for word in _CONTEXT_WORDS):
        return True
    return get and (code != 0xA702 or bool(result.failed_sop_instance_uids))


def _check_retrieve_final(
    peer: DicomPeer, result: RetrieveResult, *, destination: str | None
) -> RetrieveResult:
    code = result.status
    if code in (0x0000, 0x0001, 0xB000):
        return result
    what = f"PACS {peer.describe()} answered the {'C-GET' if destination is None else 'C-MOVE'}"
    said = f"{what} with {status_name(code)}" + (
        f" ({result.error_comment})" if result.error_comment else ""
    )
    if _blames_negotiation(result, get=destination is None):
        failed = result.failed or len(result.failed_sop_instance_uids) or "some"
        message = f"{said}: the PACS could not send {failed} instance(s) to pacsman"
        if destination is None:
            raise SubOperationsFailed(message, result)
        raise ItemFailed(message)
    if code in CONGESTION or code == 0xFE00:
        raise TransientError(said)
    if code == 0xA801:
        raise FatalError(
            f"{said}: the PACS does not know move destination "
            f"{destination!r}; ask its administrator to add AE {destination!r} with this host "
            "and local.port, or set local.ae_title to the AE title the PACS knows"
        )
    if code == 0x0122:
        raise FatalError(f"{said}; try retrieve_method: move/get")
    hint = ""
    if destination is not None and 0xC000 <= code <= 0xCFFF:
        hint = (
            f"; some PACSes (Orthanc) answer this way when they do not know move destination "
            f"{destination!r}"
        )
    raise ItemFailed(f"{said}{hint}")


def store(peer: DicomPeer, assoc: Association, path: Path) -> int:
    """C-STORE one DICOM Part 10 file as its encoded bytes, without decoding it.

    The association must have accepted the file's SOP class with its exact transfer syntax
    (nothing is transcoded).  Returns the status: 0x0000, or a 0xBxxx warning (stored).

    Raises:
        TransientError: no answer (aborted, timed out) or out of resources (0xA7xx).
        ItemFailed: the SCP refused the instance, or no accepted presentation context fits it.
    """
    # The file's own bytes go in PDU-sized chunks, not decoded and re-encoded: pynetdicom's
    # STORE_SEND_CHUNKED_DATASET, set once in pacsman.dicom.hooks.
    try:
        status = assoc.send_c_store(path)
    except (ValueError, AttributeError) as exc:
        raise ItemFailed(
            f"{path.name}: cannot C-STORE it to {peer.describe()} ({exc}); the SCP must accept "
            "its SOP class in its own transfer syntax"
        ) from exc
    code = getattr(status, "Status", None)
    if code is None:
        raise TransientError(
            f"C-STORE of {path.name} to {peer.describe()} got no answer "
            "(association aborted or timed out)"
        )
    if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
        return int(code)
    message = f"{peer.describe()} answered the C-STORE of {path.name} with {status_name(code)}"
    if 0xA700 <= code <= 0xA7FF:
        raise TransientError(message)
    raise ItemFailed(message)
