"""Retrieve stage: C-MOVE (into pacsman's Storage SCP) or C-GET, one reused association.

:class:`RetrieveAssociation` asks one PACS node for series (or whole studies, or single
instances), paced by a shared :class:`~pacsman.throttle.Courtesy` and retried by a
:class:`~pacsman.throttle.RetryPolicy`.  Where the instances land is the receiver's business
(:class:`Receiver`): the association only routes each series to its directory first and counts
what is on disk afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import structlog
from pydicom.dataset import Dataset

from pacsman.closing import Closing
from pacsman.dicom import client
from pacsman.dicom.cget import GetRounds
from pacsman.dicom.client import (
    DicomPeer,
    RetrieveProgress,
    RetrieveResult,
    StorageRole,
)
from pacsman.dicom.contexts import StoragePlan
from pacsman.errors import ItemFailed, TransientError
from pacsman.throttle import Courtesy, RetryPolicy

__all__ = ["FetchResult", "Level", "Receiver", "RetrieveAssociation", "SeriesRequest"]

_log = structlog.get_logger("pacsman.retrieve")
#: At most one ``retrieve_progress`` debug event this often: a C-MOVE of 3,000 instances
#: answers with 3,000 pending responses, and one event each cost the reading thread time.
_PROGRESS_EVERY = 1.0

Level = Literal["STUDY", "SERIES", "IMAGE"]


class Receiver(Protocol):
    """Where retrieved instances land (pacsman's Storage SCP writer)."""

    def route(self, series_instance_uid: str, directory: Path) -> None:
        """Send instances of this series to ``directory`` from now on."""

    def received(self, series_instance_uid: str) -> frozenset[str]:
        """Unique SOPInstanceUIDs of this series complete on disk."""


@dataclass(frozen=True)
class SeriesRequest:
    """One series to fetch and the directory its instances go to."""

    study_instance_uid: str
    series_instance_uid: str
    directory: Path
    patient_id: str = ""


@dataclass(frozen=True)
class FetchResult:
    """What one C-MOVE/C-GET delivered: the PACS's final word and what is on disk per series."""

    result: RetrieveResult
    received: dict[str, int]


class RetrieveAssociation(Closing):
    """C-MOVEs or C-GETs against one PACS node over one reused association.

    A C-GET (``storage`` given, no ``move_destination``) first asks the PACS, by an
    image-level C-FIND on the same association, which instances the request covers and their
    SOP classes (and transfer syntaxes, where the PACS says).  The association then proposes
    one context per class and syntax those need (:mod:`pacsman.dicom.contexts`), opened anew
    only when the one open does not cover them.  When one association cannot hold them all,
    or the PACS does not say which classes it holds, the instances still missing are asked
    for again on the next association, until none is missing or every storage class pacsman
    knows has been offered.
    """

    def __init__(
        self,
        peer: DicomPeer,
        *,
        receiver: Receiver,
        retry: RetryPolicy,
        courtesy: Courtesy,
        move_destination: str | None,
        storage: StorageRole | None = None,
    ) -> None:
        self.peer = peer
        self.receiver = receiver
        self.retry = retry
        self.courtesy = courtesy
        self.move_destination = move_destination
        self.storage = storage if move_destination is None else None
        node = peer.node
        models = client.MOVE_MODELS if move_destination is not None else client.GET_MODELS
        self.model = models[node.query_model]
        self.find_model = client.FIND_MODELS[node.query_model]
        # The C-FIND context rides along: archives that keep the RSNA'93 CTN rule (DCMTK
        # dcmqrscp --require-find) refuse a C-MOVE context proposed without it, and a C-GET
        # asks on it which SOP classes the instances have.
        contexts = [self.model, self.find_model]
        self._link = client.ReusedAssociation(peer, contexts, storage=self.storage)
        self._progress_logged = 0.0

    def close(self) -> None:
        """Release the association, if one is open."""
        self._link.close()

    def fetch(
        self,
        requests: Sequence[SeriesRequest],
        *,
        level: Level = "SERIES",
        sop_instance_uids: Sequence[str] = (),
        rounds: int | None = None,
    ) -> FetchResult:
        """Route ``requests``, retrieve them (retrying transient failures), count on disk.

        ``level`` STUDY fetches the whole study of ``requests[0]`` once; IMAGE fetches only
        ``sop_instance_uids`` of ``requests[0]``'s series.  ``rounds`` (C-GET) stops after
        that many associations (e.g. 1 for a probe); None goes on while one could help.

        Raises:
            TransientError: still failing after every attempt.
            SubOperationsFailed: (C-GET) the PACS could not send some of its instances on any
                association pacsman offered; the message names the SOP classes and syntaxes.
            ItemFailed: the PACS refused this retrieve.
            FatalError: e.g. the PACS does not know the move destination.
        """
        for request in requests:
            self.receiver.route(request.series_instance_uid, request.directory)
        identifier = self._identifier(requests[0], level, sop_instance_uids)
        series = frozenset(r.series_instance_uid for r in requests)
        result = self.retry.call(
            lambda: self._once(identifier, series, rounds),
            operation="c_move" if self.move_destination else "c_get",
            pacs=self.peer.node.name,
        )
        received = {uid: len(self.receiver.received(uid)) for uid in sorted(series)}
        return FetchResult(result=result, received=received)

    def _once(
        self, identifier: Dataset, series: frozenset[str], rounds: int | None = None
    ) -> RetrieveResult:
        """One attempt: wait for this node's turn, retrieve, tell the courtesy how it went.

        Only congestion (a transient failure) lengthens the node's pause; a refusal of this
        request is the PACS answering, as a success is.
        """
        self.courtesy.wait_turn(pacs=self.peer.node.name)
        try:
            if self.storage is None:
                result = self._retrieve(identifier)
            else:
                result = GetRounds(
                    self.peer,
                    self._link,
                    storage=self.storage,
                    find_model=self.find_model,
                    retrieve=self._retrieve,
                    on_disk=self.receiver.received,
                    series=series,
                    rounds=rounds,
                ).run(identifier)
        except TransientError:
            self.courtesy.congested()
            self.close()
            raise
        except ItemFailed:
            self.courtesy.succeeded()
            raise
        self.courtesy.succeeded()
        return result

    def _retrieve(self, identifier: Dataset, plan: StoragePlan | None = None) -> RetrieveResult:
        """One C-MOVE/C-GET on the open association (proposing ``plan``, for a C-GET)."""
        return client.retrieve(
            self.peer,
            self._link.get(plan),
            identifier,
            model=self.model,
            move_destination=self.move_destination,
            on_progress=self._progress,
        )

    def _progress(self, progress: RetrieveProgress) -> None:
        now = time.monotonic()
        if now - self._progress_logged < _PROGRESS_EVERY:
            return
        self._progress_logged = now
        _log.debug(
            "retrieve_progress",
            pacs=self.peer.node.name,
            remaining=progress.remaining,
            completed=progress.completed,
            failed=progress.failed,
        )

    def _identifier(
        self, request: SeriesRequest, level: Level, sop_instance_uids: Sequence[str]
    ) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        if self.peer.node.query_model == "patient":
            ds.PatientID = request.patient_id
        ds.StudyInstanceUID = request.study_instance_uid
        if level in ("SERIES", "IMAGE"):
            ds.SeriesInstanceUID = request.series_instance_uid
        if level == "IMAGE":
            ds.SOPInstanceUID = list(sop_instance_uids)
        return ds
