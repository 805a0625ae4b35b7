"""Every pynetdicom and pydicom internal pacsman touches, each behind one small function.

None of what is here is public API: each function says what it reaches into, and the version
it was checked against (:data:`CHECKED_PYNETDICOM`, :data:`CHECKED_PYDICOM`, the versions
pinned in ``pyproject.toml``).  Nothing else in pacsman touches a private attribute, an FSM
state or event string, or a module switch of pynetdicom or pydicom.

* **The fast paths** (the C-STORE receive shortcut, :mod:`pacsman.dicom._store_fast`, and
  the C-FIND and C-MOVE channel, :mod:`pacsman.dicom._dimse_fast`) take over the DUL
  reactor's socket.
  They run only where :func:`fast_paths_enabled` says so: on the checked pynetdicom.  On any
  other version pacsman uses plain pynetdicom for both (slower, same results), after one
  ``pynetdicom_version_unchecked`` warning per process that names the fix.
* **The rest** are not speed-ups of that kind and apply on any version; each leaves
  pynetdicom's own behaviour in place where the internal it needs is missing.
* pynetdicom's module switches are set once, here, when this module is first imported.
"""

from __future__ import annotations

import functools
import queue
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import structlog
from pydicom import config as pydicom_config
from pydicom import valuerep as pydicom_valuerep
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID, UID
from pynetdicom import _config as pynetdicom_config
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import (
    AddressInformation,
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

__all__ = [
    "CHECKED_PYDICOM",
    "CHECKED_PYNETDICOM",
    "AdmittingRequestHandler",
    "NoDelayAE",
    "abort_invalid_pdu",
    "accepted_transfer_syntax",
    "admission_supported",
    "adopt_socket",
    "association_has_work",
    "association_reactor_paused",
    "cheaply_copied_context",
    "chunked_dataset_path",
    "connection_closed",
    "fast_paths_enabled",
    "forward_to_dimse",
    "guard_reactor",
    "input_check",
    "installed_pynetdicom",
    "is_established_state",
    "make_server",
    "raw_socket",
    "reactor_has_work",
    "read_pdu",
    "remembered",
    "restart_idle_timer",
    "send_pdu",
    "serve_in_background",
    "set_input_check",
    "set_reactor_sleep",
    "set_unvalidated",
    "throttle_association_reactor",
]

#: The pynetdicom every hook below was read against (pinned in pyproject.toml).
CHECKED_PYNETDICOM = "3.0.4"
#: The pydicom every hook below was read against (pinned in pyproject.toml).
CHECKED_PYDICOM = "3.0.2"

_log = structlog.get_logger("pacsman.dicom.hooks")


# -- version gate ------------------------------------------------------------------------


def installed_pynetdicom() -> str:
    """The installed pynetdicom's version."""
    return str(pynetdicom.__version__)


def _checked_version_installed() -> bool:
    installed = installed_pynetdicom()
    if installed == CHECKED_PYNETDICOM:
        return True
    _log.warning(
        "pynetdicom_version_unchecked",
        installed_pynetdicom=installed,
        checked_pynetdicom=CHECKED_PYNETDICOM,
        installed_pydicom=str(pydicom.__version__),
        checked_pydicom=CHECKED_PYDICOM,
        effect="C-FIND, C-MOVE and C-STORE receipt use plain pynetdicom (slower)",
        fix=f"pip install pynetdicom=={CHECKED_PYNETDICOM} pydicom=={CHECKED_PYDICOM}",
    )
    return False


class _VersionGate:
    """Decides once per process, whichever thread asks first (one warning at most)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verdict: bool | None = None

    def __call__(self) -> bool:
        """True on the checked pynetdicom; otherwise warn once (per process) and say False."""
        verdict = self._verdict
        if verdict is None:
            with self._lock:
                if self._verdict is None:
                    self._verdict = _checked_version_installed()
                verdict = self._verdict
        return verdict

    def cache_clear(self) -> None:
        """Forget the verdict: the next call checks (and may warn) again.  For tests."""
        with self._lock:
            self._verdict = None


#: ``fast_paths_enabled()``: may the fast paths run?  See the module docstring.
fast_paths_enabled = _VersionGate()


# -- module switches (pynetdicom 3.0.4: pynetdicom/_config.py) ---------------------------


def _configure_pynetdicom() -> None:
    """pynetdicom's switches, set once per process.

    * Identifiers carry patient names and IDs: pynetdicom must never format them for its log
      (formatting them also costs ~0.4 ms per C-FIND).
    * ``send_c_store(path)`` sends the file's own bytes in PDU-sized chunks instead of
      decoding and re-encoding it; only :func:`pacsman.dicom.client.store` gives it paths.
    * UID validation verdicts are remembered (:func:`remembered`).
    * pynetdicom's "standard" event handlers (a summary of every PDU and DIMSE message sent
      and received) are not bound: they format each message for a log pacsman keeps at
      WARNING (:mod:`pacsman.log`), so all they did was cost time.  A 3,000-instance C-MOVE
      spent about a quarter of its reactor thread in them.  pynetdicom's warnings and errors
      still reach the log.
    """
    # pynetdicom 3.0.4: module attributes read at each use (LOG_HANDLER_LEVEL when an
    # Association or AssociationServer binds its default handlers).
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    # pydicom 3.0.2: valuerep.VALIDATORS, read by validate_value at each use.
    # pynetdicom 3.0.4: _config.VALIDATORS, the documented table of element validators.
    pydicom_valuerep.VALIDATORS["UI"] = remembered(pydicom_valuerep.VALIDATORS["UI"])
    pynetdicom_config.VALIDATORS["UI"] = remembered(pynetdicom_config.VALIDATORS["UI"])
    # pydicom 3.0.2: UID.is_valid, a property matching RE_VALID_UID at each use, which
    # pynetdicom's set_uid asks of every UID it sets.
    if isinstance(UID.__dict__.get("is_valid"), property):
        UID.is_valid = property(_uid_is_valid)  # type: ignore[method-assign,assignment]


#: The most distinct UIDs whose verdicts are kept (a few hundred KB at most).
_REMEMBERED_UIDS = 4096


@functools.lru_cache(maxsize=_REMEMBERED_UIDS)
def _valid_uid(value: str) -> bool:
    return len(value) <= 64 and re.match(RE_VALID_UID, value) is not None


def _uid_is_valid(uid: UID) -> bool:
    """pydicom's ``UID.is_valid``, remembered (see :func:`remembered`)."""
    return _valid_uid(str(uid))


def remembered(validate: Callable[..., tuple[bool, str]]) -> Callable[..., tuple[bool, str]]:
    """``validate`` (a pure function of its arguments), remembering its last verdicts.

    Every association a PACS opens to pacsman's Storage SCP proposes the same contexts:
    Orthanc 1.10 sends 126 of them, with 189 transfer syntaxes, and pynetdicom makes and
    validates about 2,600 UID objects to negotiate them, each validation a regular
    expression.  That made an association cost pacsman's SCP 40 ms (DCMTK ``storescp``:
    2 ms), paid once per C-MOVE; remembered verdicts cut it by about 40 %.  The verdicts are
    the validator's own, so nothing is accepted that was refused before.  Arguments that
    cannot be hashed (a list of values) go to ``validate`` every time.
    """
    cached = functools.lru_cache(maxsize=_REMEMBERED_UIDS)(validate)

    def check(*args: Any) -> tuple[bool, str]:
        try:
            return cached(*args)
        except TypeError:  # unhashable: a raise of validate's own comes again from here
            return validate(*args)

    return check
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True


_configure_pynetdicom()


# -- sockets and contexts (any version) ---------------------------------------------------


def raw_socket(assoc: Association) -> socket.socket | None:
    """The association's TCP socket, or None before it exists or after it is closed."""
    # pynetdicom 3.0.4: Association.dul.socket (AssociationSocket) .socket
    transport = getattr(assoc.dul, "socket", None)
    raw = getattr(transport, "socket", None)
    return raw if isinstance(raw, socket.socket) else None


class NoDelayAE(ApplicationEntity):
    """An AE whose requested associations' sockets disable Nagle's algorithm."""

    # pynetdicom 3.0.4: AE._create_socket(assoc, address, tls_args) makes the requestor's
    # socket before it connects.  Another version without it: Nagle stays on.
    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        if sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class _CheapCopyContext(PresentationContext):
    """A presentation context that pynetdicom can copy cheaply (see below)."""

    # pynetdicom 3.0.4: the acceptor's contexts are deep-copied for every association; with
    # 170 SOP classes x 32 transfer syntaxes that took ~80 ms of CPU per association.  So are
    # the requestor's (AE.associate): a C-GET's 126 storage contexts took ~0.2 s.  The
    # only mutable attribute is the transfer syntax list (``_transfer_syntax``); UIDs are
    # immutable strings.  Every list attribute is copied, so a new one stays unshared.
    def __deepcopy__(self, memo: dict[int, Any]) -> _CheapCopyContext:
        clone = _CheapCopyContext.__new__(_CheapCopyContext)
        clone.__dict__.update(
            {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}
        )
        return clone


def cheaply_copied_context(
    abstract_syntax: str, transfer_syntaxes: Sequence[str]
) -> PresentationContext:
    """A :class:`PresentationContext` (an acceptor's, or a requestor's passed to
    ``AE.associate(contexts=...)``), cheap for pynetdicom to copy."""
    context = _CheapCopyContext()
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = list[str | bytes | UID](transfer_syntaxes)
    return context


def chunked_dataset_path(request: C_STORE) -> Path | None:
    """Where pynetdicom put a received C-STORE dataset (``STORE_RECV_CHUNKED_DATASET``)."""
    # pynetdicom 3.0.4: C_STORE._dataset_path, a Part 10 file (meta first), else None.
    path = getattr(request, "_dataset_path", None)
    return path if isinstance(path, Path) else None


# -- the acceptor's connections (pynetdicom 3.0.4: pynetdicom/transport.py and ae.py) -----
# Not a speed-up: the Storage SCP's admission (pacsman.dicom._admission) on any version
# where admission_supported() is True; elsewhere the SCP starts pynetdicom's own server.


class AdmittingRequestHandler(RequestHandler):
    """pynetdicom's request handler, with a step before the association and one inside it.

    :meth:`admit` runs first, in the connection's own thread, before any association
    exists; False creates none (the admitter has closed the socket).  :meth:`prepare` gets
    each new association once its socket is set, before ``EVT_CONN_OPEN`` and its threads.
    """

    def handle(self) -> None:
        """Admit the connection, then let pynetdicom create and start the association."""
        if self.admit():
            super().handle()

    def admit(self) -> bool:
        """Decide on the connection before any association exists (default: admit)."""
        return True

    def prepare(self, assoc: Association) -> None:
        """Adjust a new association before ``EVT_CONN_OPEN`` (default: nothing)."""

    # pynetdicom 3.0.4: RequestHandler.handle() calls self._create_association(), which
    # returns the acceptor Association with its AssociationSocket set, then triggers
    # EVT_CONN_OPEN and starts the association's thread.
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        self.prepare(assoc)
        return assoc


def admission_supported() -> bool:
    """True if pynetdicom's request handler has the step :class:`AdmittingRequestHandler`
    builds on (pynetdicom 3.0.4: ``RequestHandler._create_association``)."""
    return callable(getattr(RequestHandler, "_create_association", None))


def adopt_socket(assoc: Association, cls: type[AssociationSocket]) -> AssociationSocket:
    """Make the association's AssociationSocket an instance of ``cls`` and return it.

    ``cls`` must subclass :class:`AssociationSocket` and only override methods and
    properties (instance attributes it adds are set by the caller).
    """
    # pynetdicom 3.0.4: Association.set_socket() refuses a second socket, and wrapping the
    # accepted socket in a new AssociationSocket would queue Evt5 (connection open) twice;
    # Association.dul.socket is the AssociationSocket set by RequestHandler.
    transport = assoc.dul.socket
    if not isinstance(transport, AssociationSocket):
        raise RuntimeError("adopt_socket() needs an association whose socket is set")
    transport.__class__ = cls
    return transport


def make_server(
    ae: ApplicationEntity,
    address: tuple[str, int],
    *,
    server_class: type[ThreadedAssociationServer],
    request_handler: type[RequestHandler],
    contexts: list[PresentationContext],
    evt_handlers: list[Any],
    ssl_context: Any = None,
) -> ThreadedAssociationServer:
    """A bound, listening server of ``server_class`` whose connections ``request_handler``
    handles (public API: ``AE.make_server`` passes ``request_handler`` to the server)."""
    server: AssociationServer = ae.make_server(
        address,
        contexts=contexts,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=server_class,
        request_handler=request_handler,
    )
    assert isinstance(server, server_class)
    return server


#: Seconds between two looks of the accept loop at a stop request (socketserver's: 0.5).
#: A stop wakes the loop at once where the kernel allows it (Linux: ``shutdown(SHUT_RD)``
#: of the listening socket); elsewhere, and on kernels or sandboxes that do not wake a
#: waiting ``poll`` that way, this bounds it.  Twenty wake-ups a second cost nothing.
ACCEPT_POLL = 0.05


def serve_in_background(ae: ApplicationEntity, server: ThreadedAssociationServer) -> None:
    """Serve on a daemon thread, stopped by ``ae.shutdown()`` as ``AE.start_server``'s are."""
    # pynetdicom 3.0.4: AE.start_server(block=False) starts serve_forever() on a daemon
    # thread and appends the server to AE._servers, which AE.shutdown() stops.
    name = f"AcceptorServer@{server.server_address[1]}"
    serve = functools.partial(server.serve_forever, poll_interval=ACCEPT_POLL)
    threading.Thread(target=serve, name=name, daemon=True).start()
    ae._servers.append(server)


# -- the reactor race, pynetdicom #875 (any version with the same queue) -------------------


def guard_reactor(assoc: Association) -> None:
    """Let the association's reactor thread take only service *requests* off the queue.

    In pynetdicom 3.0.4 the reactor can win a race with ``send_c_find`` and swallow a
    response ("Received unexpected C-FIND service message", #875).  The reactor polls with
    ``get_msg(block=False)``; callers waiting for responses use ``block=True``.  Popping
    under the queue's own mutex makes peek-and-take atomic.  Not a speed-up: it applies on
    any version whose DIMSE provider has the same ``get_msg`` and ``msg_queue``.
    """
    # pynetdicom 3.0.4: DIMSEServiceProvider.get_msg(block) and .msg_queue, a queue.Queue
    # of (context_id, primitive); primitives have is_valid_request.
    dimse = assoc.dimse
    original = getattr(dimse, "get_msg", None)
    msg_queue = getattr(dimse, "msg_queue", None)
    if original is None or not isinstance(msg_queue, queue.Queue):
        return

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


# -- the DUL reactor, for the fast paths only (pynetdicom 3.0.4: pynetdicom/dul.py) -------
# Call these only where fast_paths_enabled() is True.

_ESTABLISHED = "Sta6"  # pynetdicom 3.0.4 fsm.py: Association established, ready for data
_CONNECTION_CLOSED = "Evt17"  # pynetdicom 3.0.4 fsm.py: transport connection closed
_INVALID_PDU = "Evt19"  # pynetdicom 3.0.4 fsm.py: unrecognised or invalid PDU received
_REACTOR_SLEEP_SECONDS = 0.001  # pynetdicom 3.0.4 dul.py: the default _run_loop_delay


def input_check(assoc: Association) -> Callable[[], bool]:
    """The reactor's per-turn input check: True when it handled input (pynetdicom then
    restarts its idle timer)."""
    # pynetdicom 3.0.4: DULServiceProvider._is_transport_event(), called by run_reactor()
    # every turn while no primitive waits to be sent.
    dul: Any = assoc.dul
    check: Callable[[], bool] = dul._is_transport_event
    return check


def set_input_check(assoc: Association, check: Callable[[], bool]) -> None:
    """Make ``check`` the reactor's per-turn input check (see :func:`input_check`)."""
    # pynetdicom 3.0.4: shadows DULServiceProvider._is_transport_event on this instance.
    dul: Any = assoc.dul
    dul._is_transport_event = check


def set_reactor_sleep(assoc: Association, *, sleep: bool) -> None:
    """Let the reactor sleep after a turn with nothing to do (pynetdicom's own 1 ms), or not
    (the input check waits in ``select()`` itself)."""
    # pynetdicom 3.0.4: DULServiceProvider._run_loop_delay, 0.001 by default.
    dul: Any = assoc.dul
    dul._run_loop_delay = _REACTOR_SLEEP_SECONDS if sleep else 0


class _ThrottledCheckpoint(threading.Event):
    """The association reactor's checkpoint, waited on once per turn, that also holds each
    turn back up to ``interval`` unless woken (see :func:`throttle_association_reactor`)."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.set()
        self.interval = interval
        self.woken = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if self.woken.wait(self.interval):
            self.woken.clear()
        return super().wait(timeout)


def throttle_association_reactor(assoc: Association, interval: float) -> Callable[[], None]:
    """Let the association's own reactor thread take a turn at most every ``interval``
    seconds, or at once when the returned ``wake`` is called; return ``wake``.

    pynetdicom's association thread turns every 1 ms to look for a DIMSE request, a release
    or an abort, and a timed-out connection.  On an accepted association whose C-STOREs the
    fast receiver handles in the DUL thread, those 1,000 turns a second found nothing and
    took the GIL from the receiver.  The receiver calls ``wake`` whenever it hands pynetdicom
    something to act on (:func:`association_has_work`), so a release or a C-ECHO is answered
    as before; timers are looked at within ``interval``.  pynetdicom's own pause (clear the
    checkpoint, wait for the reactor to stop at it) works as before.  Call before the
    association thread starts.
    """
    # pynetdicom 3.0.4: Association._reactor_checkpoint, a threading.Event set except while
    # a send_*() method pauses the reactor; _run_reactor() waits on it once per 1 ms turn.
    checkpoint = _ThrottledCheckpoint(interval)
    accepted: Any = assoc
    accepted._reactor_checkpoint = checkpoint
    return checkpoint.woken.set


@contextmanager
def association_reactor_paused(assoc: Association) -> Iterator[None]:
    """Hold the association's own reactor thread at its checkpoint for the ``with`` block,
    as pynetdicom's ``send_c_find`` and ``send_c_move`` do for the length of theirs.

    For the fast channel's requests: that thread has nothing to do while the caller reads
    every response itself, and its 1 ms turns would only take the GIL.  It is let go on the
    way out, however the block ends (an abort from another thread sets it going too).
    """
    # pynetdicom 3.0.4: Association._reactor_checkpoint (see throttle_association_reactor).
    checkpoint: threading.Event = getattr(assoc, "_reactor_checkpoint")  # noqa: B009
    checkpoint.clear()
    try:
        yield
    finally:
        checkpoint.set()


def association_has_work(assoc: Association) -> bool:
    """True if the association's own thread has something to act on: a DIMSE message, or an
    A-RELEASE or A-ABORT (or anything else) from the DUL."""
    # pynetdicom 3.0.4: DIMSEServiceProvider.msg_queue, DULServiceProvider.to_user_queue
    return not assoc.dimse.msg_queue.empty() or not assoc.dul.to_user_queue.empty()


def read_pdu(assoc: Association) -> None:
    """Let pynetdicom read, decode and act on the next PDU (any kind)."""
    # pynetdicom 3.0.4: DULServiceProvider._read_pdu_data()
    dul: Any = assoc.dul
    dul._read_pdu_data()


def is_established_state(assoc: Association) -> bool:
    """True while the association's state machine is in Sta6 (established)."""
    # pynetdicom 3.0.4: DULServiceProvider.state_machine.current_state, a state name
    return bool(assoc.dul.state_machine.current_state == _ESTABLISHED)


def reactor_has_work(assoc: Association) -> bool:
    """True if the reactor has a primitive to send or an event to act on."""
    # pynetdicom 3.0.4: DULServiceProvider.to_provider_queue and .event_queue
    dul = assoc.dul
    return bool(dul.to_provider_queue.queue) or not dul.event_queue.empty()


def abort_invalid_pdu(assoc: Association) -> None:
    """Tell the state machine an invalid PDU arrived: pynetdicom aborts the association."""
    assoc.dul.event_queue.put(_INVALID_PDU)


def connection_closed(assoc: Association) -> None:
    """Tell the state machine the connection closed (mid-PDU)."""
    assoc.dul.event_queue.put(_CONNECTION_CLOSED)


def send_pdu(assoc: Association, data: bytes) -> None:
    """Write an encoded PDU to the socket (from the reactor thread, the only writer)."""
    # pynetdicom 3.0.4: AssociationSocket.send(bytes), what the DUL's own actions call.
    transport = assoc.dul.socket
    assert transport is not None
    transport.send(data)


def restart_idle_timer(assoc: Association) -> None:
    """Restart the reactor's network (idle) timer: input arrived."""
    # pynetdicom 3.0.4: DULServiceProvider._idle_timer (a pynetdicom.timer.Timer)
    dul: Any = assoc.dul
    dul._idle_timer.restart()


def accepted_transfer_syntax(assoc: Association, context_id: int) -> str | None:
    """The transfer syntax of accepted presentation context ``context_id``, if any."""
    # pynetdicom 3.0.4: Association._accepted_cx, {context ID: PresentationContext}
    # (the public accepted_contexts sorts a new list on every call).
    context = assoc._accepted_cx.get(context_id)
    if context is None or not context.transfer_syntax:
        return None
    return str(context.transfer_syntax[0])


def forward_to_dimse(assoc: Association, context_id: int, fragment: bytes) -> None:
    """Hand one PDV (message control header + data) to pynetdicom's DIMSE provider.

    This is what the DUL's DT-2 action does with each PDV of a P-DATA-TF PDU.
    """
    # pynetdicom 3.0.4: P_DATA.presentation_data_value_list, a list of [context ID, bytes]
    # (typed as tuples), and DIMSEServiceProvider.receive_primitive(P_DATA).
    primitive = P_DATA()
    item: Any = [context_id, fragment]
    primitive.presentation_data_value_list = [item]
    assoc.dimse.receive_primitive(primitive)


# -- pydicom (pydicom 3.0.2) --------------------------------------------------------------


def set_unvalidated(ds: Dataset, keyword: str, value: Any) -> None:
    """``setattr(ds, keyword, value)`` with no VR validation of this element's value.

    C-FIND keys legally hold wildcards and ranges that pydicom's VR validators flag.  The
    element carries its own validation mode, so no process-wide setting is flipped.
    """
    # pydicom 3.0.2: DataElement(..., validation_mode=IGNORE) validates and converts its
    # value with that mode, now and whenever the value is set again.
    tag = tag_for_keyword(keyword)
    if tag is None:
        setattr(ds, keyword, value)  # not a DICOM keyword: pydicom decides, as before
        return
    ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=pydicom_config.IGNORE)
