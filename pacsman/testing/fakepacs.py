"""A small pynetdicom PACS that misbehaves on purpose, for the faults Orthanc cannot produce.

It serves C-ECHO, C-FIND, C-MOVE, C-GET (Patient Root and Study Root) and C-STORE on
``127.0.0.1`` (port 0: the OS picks), over an in-memory list of datasets.  The
:class:`Faults` in force decide how it misbehaves; replace them between runs with
``pacs.faults = Faults(...)``, which also resets the "first N" budgets.  Every request is
recorded in :attr:`FakePacs.calls` (``"C-FIND STUDY"``, ``"C-MOVE SERIES <uid>"``...).
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Self

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_context, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from pacsman.closing import Started
from pacsman.dicom.hooks import guard_reactor
from pacsman.testing._matching import LEVELS, UNIQUE_KEYS, build_response, match_entities
from pacsman.testing.synthetic import StudySpec, iter_datasets, synthetic_uid

__all__ = [
    "LOCAL_LIMIT_EXCEEDED",
    "TEMPORARY_CONGESTION",
    "FakePacs",
    "Faults",
    "Status",
]

TEMPORARY_CONGESTION = 1
"""A-ASSOCIATE-RJ reason for source 3 (service provider, presentation related), PS3.8 9.3.4."""
LOCAL_LIMIT_EXCEEDED = 2
"""A-ASSOCIATE-RJ reason for source 3: the usual answer of a PACS to a burst."""

# SOP Class UIDs (PS3.4); pynetdicom.sop_class builds these at import time, hidden from mypy
Verification = UID("1.2.840.10008.1.1")
PatientRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.1.1")
PatientRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.1.2")
PatientRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.1.3")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")

_REJECTED_PERMANENT, _REJECTED_TRANSIENT = 1, 2
_SOURCE_SERVICE_USER, _SOURCE_PROVIDER_PRESENTATION = 1, 3
_CALLING_AE_TITLE_NOT_RECOGNIZED = 3
_STUDY_ROOT = frozenset(
    {
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
    }
)
_QUERY_RETRIEVE = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    *sorted(_STUDY_ROOT),
)
_UNSENDABLE_SOP_CLASS = synthetic_uid("pacsman-fakepacs", "never-negotiated-sop-class")


class Status(IntEnum):
    """The DIMSE statuses the fake PACS answers with (PS3.4 Annex C, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    SUBOPERATIONS_COMPLETE_WITH_FAILURES = 0xB000


@dataclass(frozen=True, kw_only=True)
class Faults:
    """How the fake PACS misbehaves; the default is a well-behaved PACS.

    Counts are "the first N" requests of that kind after the faults were set.  On the wire:

    * ``reject_associations``: A-ASSOCIATE-RJ rejected-transient (2), source service provider
      presentation related (3), reason ``reject_reason`` (1 temporary congestion, 2 local
      limit exceeded).
    * ``reject_permanent``: every association gets A-ASSOCIATE-RJ (1, 1, 3): rejected
      permanent, service user, calling AE title not recognised.
    * ``a700_finds``: C-FIND answered at once with final status 0xA700 (out of resources).
    * ``abort_mid_finds``: C-FIND answered with its first pending match, then A-ABORT.
    * ``a702_moves``: C-MOVE/C-GET answered with 0xA702, failed count = matches (for C-MOVE,
      pynetdicom opens and releases an empty association to the destination first).
    * ``abort_mid_move``: after half the C-STORE sub-operations of a C-MOVE/C-GET
      (rounded down), A-ABORT on the requestor's association.
    * ``failed_suboperations``: the first N sub-operations fail (never sent); the final
      status is 0xB000 with the failed count and Failed SOP Instance UID List (0xA702 if all).
    * ``short_delivery``: the last N matches are silently left out; the counts and the final
      Success are consistent with the shorter list, so only C-FIND reveals the lie.
    * ``pending_delay``: seconds between consecutive pending C-FIND answers / sub-operations.
    * ``find_delay``: seconds before the first C-FIND answer (to trip client timeouts).
    * ``omit_instance_count``: Number of Patient/Study/Series Related Instances left out.
    * ``fault_moves``: the retrieve faults above (``abort_mid_move``, ``failed_suboperations``,
      ``short_delivery``, ``pending_delay``) hit only the first N series- or study-level
      C-MOVE/C-GETs; ``None`` means every one.  Image-level retrieves (pacsman's one-instance
      pre-flight) are then never faulted.  Lets a test see a fault, then the retry that
      completes.
    * ``ignored_keys``: C-FIND keys (keywords) the PACS does not support: it neither matches
      on them nor returns them, as many PACSes do with optional keys.
    * ``response_charset``: C-FIND answers declare this Specific Character Set and are encoded
      in it (e.g. ``ISO_IR 100``, ``ISO_IR 192``, ``ISO 2022 IR 6\\ISO 2022 IR 87``).

    Raises:
        ValueError: naming the field, if a count or delay is negative or the reason unknown.
    """

    reject_associations: int = 0
    reject_reason: int = LOCAL_LIMIT_EXCEEDED
    reject_permanent: bool = False
    a700_finds: int = 0
    abort_mid_finds: int = 0
    a702_moves: int = 0
    abort_mid_move: bool = False
    failed_suboperations: int = 0
    short_delivery: int = 0
    pending_delay: float = 0.0
    find_delay: float = 0.0
    omit_instance_count: bool = False
    response_charset: str | None = None
    ignored_keys: tuple[str, ...] = ()
    fault_moves: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "reject_associations",
            "a700_finds",
            "abort_mid_finds",
            "a702_moves",
            "failed_suboperations",
            "short_delivery",
            "pending_delay",
            "find_delay",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name}={getattr(self, name)} must be >= 0")
        if self.reject_reason not in (TEMPORARY_CONGESTION, LOCAL_LIMIT_EXCEEDED):
            raise ValueError(
                f"Faults.reject_reason={self.reject_reason} must be TEMPORARY_CONGESTION (1) "
                "or LOCAL_LIMIT_EXCEEDED (2)"
            )


class FakePacs(Started):
    """A Query/Retrieve SCP on ``127.0.0.1`` over in-memory datasets, with switchable faults.

    ``move_destinations`` maps an AE title to ``(host, port)``; a C-MOVE to any other title
    is answered with 0xA801 (move destination unknown).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        datasets: Iterable[Dataset] = (),
        *,
        ae_title: str = "FAKEPACS",
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        faults: Faults | None = None,
        network_timeout: float = 30.0,
    ) -> None:
        self.ae_title = ae_title
        self.port = 0
        self._lock = threading.Lock()
        self._datasets = list(datasets)
        self._destinations = dict(move_destinations or {})
        self._faults = faults or Faults()
        self._used: Counter[str] = Counter()
        self._calls: list[str] = []
        self._stopping = threading.Event()
        self._network_timeout = network_timeout
        self._ae: AE | None = None
        self._open: set[int] = set()
        #: The most associations that were open at once (pacsman's courtesy tests).
        self.peak_associations = 0

    @classmethod
    def from_specs(cls, specs: Iterable[StudySpec], **kwargs: Any) -> Self:
        """Serve the synthetic studies ``specs``; ``kwargs`` go to the constructor."""
        return cls([ds for spec in specs for ds in iter_datasets(spec)], **kwargs)

    @classmethod
    def from_files(cls, paths: Iterable[Path], **kwargs: Any) -> Self:
        """Serve the DICOM files ``paths``; ``kwargs`` go to the constructor."""
        return cls([dcmread(path) for path in paths], **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening on ``127.0.0.1`` on a free port, stored in :attr:`port`."""
        if self._ae is not None:
            return self
        self._stopping.clear()
        self._ae = _build_ae(self.ae_title, self._network_timeout)
        server = self._ae.start_server((self.host, 0), block=False, evt_handlers=self._handlers())
        assert isinstance(server, ThreadedAssociationServer)  # block=False returns the server
        self.port = int(server.server_address[1])
        return self

    def stop(self) -> None:
        """Stop listening and abort any association still open."""
        self._stopping.set()
        ae, self._ae = self._ae, None
        if ae is not None:
            ae.shutdown()

    # -- state -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._used.clear()

    @property
    def calls(self) -> list[str]:
        """A copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def clear_calls(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._calls.clear()

    @property
    def datasets(self) -> list[Dataset]:
        """A copy of the list of instances served (C-STOREd ones included)."""
        with self._lock:
            return list(self._datasets)

    def add_datasets(self, datasets: Iterable[Dataset]) -> None:
        """Serve more instances."""
        with self._lock:
            self._datasets.extend(datasets)

    def add_move_destination(self, ae_title: str, host: str, port: int) -> None:
        """Let C-MOVE deliver to ``ae_title`` at ``(host, port)``."""
        with self._lock:
            self._destinations[ae_title] = (host, port)

    @property
    def open_associations(self) -> int:
        """How many associations requested of this PACS are open now."""
        with self._lock:
            return len(self._open)

    def _record(self, call: str) -> None:
        with self._lock:
            self._calls.append(call)

    def _on_established(self, event: Event) -> None:
        with self._lock:
            self._open.add(id(event.assoc))
            self.peak_associations = max(self.peak_associations, len(self._open))

    def _on_closed(self, event: Event) -> None:
        with self._lock:
            self._open.discard(id(event.assoc))

    def _take(self, budget: str, limit: int) -> bool:
        """Consume one unit of a "first N" fault budget; False once it is spent."""
        with self._lock:
            if self._used[budget] >= limit:
                return False
            self._used[budget] += 1
            return True

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- event handlers ----------------------------------------------------------------------

    def _handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def _on_requested(self, event: Event) -> None:
        faults = self.faults
        if faults.reject_permanent:
            rsd = (_REJECTED_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_TITLE_NOT_RECOGNIZED)
        elif self._take("reject_associations", faults.reject_associations):
            rsd = (_REJECTED_TRANSIENT, _SOURCE_PROVIDER_PRESENTATION, faults.reject_reason)
        else:
            return
        self._record("A-ASSOCIATE-RJ {} {} {}".format(*rsd))
        event.assoc.acse.send_reject(*rsd)
        event.assoc.kill()  # as pynetdicom does: wait until the A-ASSOCIATE-RJ is on the wire

    def _on_echo(self, event: Event) -> int:
        self._record("C-ECHO")
        return Status.SUCCESS

    def _on_store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self._record(f"C-STORE {ds.SOPInstanceUID}")
        self.add_datasets([ds])
        return Status.SUCCESS

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        faults = self.faults
        identifier = event.identifier
        for keyword in faults.ignored_keys:
            if keyword in identifier:
                delattr(identifier, keyword)
        level = str(identifier.get("QueryRetrieveLevel", ""))
        self._record(f"C-FIND {level}".rstrip())
        self._pause(faults.find_delay)
        if self._take("a700_finds", faults.a700_finds):
            yield Status.OUT_OF_RESOURCES, None
            return
        if not _level_allowed(str(event.request.AffectedSOPClassUID), level):
            yield Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
            return
        for i, entity in enumerate(match_entities(self.datasets, identifier, level)):
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            self._pause(faults.pending_delay if i else 0.0)
            answer = build_response(
                entity,
                identifier,
                charset=faults.response_charset,
                omit_instance_count=faults.omit_instance_count,
            )
            yield Status.PENDING, answer
            if self._take("abort_mid_finds", faults.abort_mid_finds):
                self._record("A-ABORT")
                event.assoc.abort()
                return

    def _on_move(self, event: Event) -> Iterator[Any]:
        faults = self.faults
        instances = self._to_retrieve("C-MOVE", event)
        with self._lock:
            destination = self._destinations.get(event.move_destination or "")
        if destination is None:
            yield None, None  # pynetdicom answers 0xA801, move destination unknown
            return
        classes = sorted({str(ds.SOPClassUID) for ds in instances}) or [Verification]
        contexts = [
            build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for uid in classes
        ]
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_ESTABLISHED, _guard_sub_association),
        ]
        yield (*destination, {"contexts": contexts, "evt_handlers": handlers})
        yield from self._suboperations(event, faults, instances)

    def _on_get(self, event: Event) -> Iterator[Any]:
        instances = self._to_retrieve("C-GET", event)
        yield from self._suboperations(event, self.faults, instances)

    def _to_retrieve(self, operation: str, event: Event) -> list[Dataset]:
        """Record the request; return the instances it asks for (none if the level is bad)."""
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", ""))
        ok = _level_allowed(str(event.request.AffectedSOPClassUID), level)
        uids = identifier.get(UNIQUE_KEYS[level], "") if ok else ""
        label = uids if isinstance(uids, str) else "\\".join(uids)
        self._record(f"{operation} {level} {label}".rstrip())
        if not ok:
            return []
        entities = match_entities(self.datasets, identifier, level)
        return [ds for entity in entities for ds in entity.instances]

    def _suboperations(
        self, event: Event, faults: Faults, instances: list[Dataset]
    ) -> Iterator[Any]:
        """Yield the sub-operation count, then the C-STORE sub-operations, faults applied."""
        if self._take("a702_moves", faults.a702_moves):
            yield max(1, len(instances))  # zero would make pynetdicom answer Success
            yield Status.OUT_OF_RESOURCES_SUBOPERATIONS, None
            return
        if faults.fault_moves is not None:
            level = str(event.identifier.get("QueryRetrieveLevel", ""))
            if level == "IMAGE" or not self._take("fault_moves", faults.fault_moves):
                faults = Faults()
        to_send = instances[: max(0, len(instances) - faults.short_delivery)]
        yield len(to_send)
        abort_at = len(to_send) // 2 if faults.abort_mid_move else -1
        for i, ds in enumerate(to_send):
            if i == abort_at:
                self._record("A-ABORT")
                event.assoc.abort()
                return
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            self._pause(faults.pending_delay if i else 0.0)
            yield Status.PENDING, _unsendable(ds) if i < faults.failed_suboperations else ds


def _guard_sub_association(event: Event) -> None:
    """The C-MOVE sub-association sends C-STOREs: keep its reactor off their responses.

    Without it, pynetdicom 3.0.4's reactor can swallow a C-STORE response under load and the
    move stalls for the 30 s DIMSE timeout (the same race as pynetdicom #875).
    """
    guard_reactor(event.assoc)


def _level_allowed(sop_class_uid: str, level: str) -> bool:
    if level not in LEVELS:
        return False
    return not (level == "PATIENT" and sop_class_uid in _STUDY_ROOT)


def _unsendable(ds: Dataset) -> Dataset:
    """A stand-in for ``ds`` whose SOP Class was never negotiated: its C-STORE fails."""
    stand_in = Dataset()
    stand_in.SOPClassUID = _UNSENDABLE_SOP_CLASS
    stand_in.SOPInstanceUID = ds.SOPInstanceUID
    return stand_in


def _set_nodelay(event: Event) -> None:
    """Turn Nagle off, as a tuned PACS would; small DIMSE messages otherwise stall ~40 ms."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _build_ae(ae_title: str, network_timeout: float) -> AE:
    ae = AE(ae_title=ae_title)
    ae.network_timeout = network_timeout
    ae.add_supported_context(Verification)
    for uid in _QUERY_RETRIEVE:
        ae.add_supported_context(uid)
    for context in StoragePresentationContexts:
        # scp_role: accept a C-GET requestor's offer to act as Storage SCP on this association
        ae.add_supported_context(str(context.abstract_syntax), scu_role=False, scp_role=True)
    return ae
