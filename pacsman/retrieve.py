"""Retrieve stage: C-MOVE (into pacsman's Storage SCP) or C-GET, one reused association.

:class:`RetrieveAssociation` asks one PACS node for series (or whole studies, or single
instances), paced by a shared :class:`~pacsman.throttle.Courtesy` and retried by a
:class:`~pacsman.throttle.RetryPolicy`.  Where the instances land is the receiver's business
(:class:`Receiver`): the association only routes each series to its directory first and counts
what is on disk afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import structlog
from pydicom.dataset import Dataset

from pacsman.closing import Closing
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer, RetrieveProgress, RetrieveResult, StorageRole
from pacsman.errors import TransientError
from pacsman.throttle import Courtesy, RetryPolicy

__all__ = ["FetchResult", "Level", "Receiver", "RetrieveAssociation", "SeriesRequest"]

_log = structlog.get_logger("pacsman.retrieve")

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
    """C-MOVEs or C-GETs against one PACS node over one reused association."""

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
        self.storage = storage
        node = peer.node
        models = client.MOVE_MODELS if move_destination is not None else client.GET_MODELS
        self.model = models[node.query_model]
        # The C-FIND context rides along with C-MOVE: archives that keep the RSNA'93 CTN rule
        # (DCMTK dcmqrscp --require-find) refuse a C-MOVE context proposed without it.
        contexts = [self.model]
        if move_destination is not None:
            contexts.append(client.FIND_MODELS[node.query_model])
        self._link = client.ReusedAssociation(peer, contexts, storage=storage)

    def close(self) -> None:
        """Release the association, if one is open."""
        self._link.close()

    def fetch(
        self,
        requests: Sequence[SeriesRequest],
        *,
        level: Level = "SERIES",
        sop_instance_uids: Sequence[str] = (),
    ) -> FetchResult:
        """Route ``requests``, retrieve them (retrying transient failures), count on disk.

        ``level`` STUDY fetches the whole study of ``requests[0]`` once; IMAGE fetches only
        ``sop_instance_uids`` of ``requests[0]``'s series.

        Raises:
            TransientError: still failing after every attempt.
            ItemFailed: the PACS refused this retrieve.
            FatalError: e.g. the PACS does not know the move destination.
        """
        for request in requests:
            self.receiver.route(request.series_instance_uid, request.directory)
        identifier = self._identifier(requests[0], level, sop_instance_uids)
        result = self.retry.call(
            lambda: self._once(identifier),
            operation="c_move" if self.move_destination else "c_get",
            pacs=self.peer.node.name,
        )
        received = {
            r.series_instance_uid: len(self.receiver.received(r.series_instance_uid))
            for r in requests
        }
        return FetchResult(result=result, received=received)

    def _once(self, identifier: Dataset) -> RetrieveResult:
        self.courtesy.wait_turn(pacs=self.peer.node.name)
        try:
            assoc = self._link.get()
            result = client.retrieve(
                self.peer,
                assoc,
                identifier,
                model=self.model,
                move_destination=self.move_destination,
                on_progress=self._progress,
            )
        except TransientError:
            self.courtesy.congested()
            self.close()
            raise
        self.courtesy.succeeded()
        return result

    def _progress(self, progress: RetrieveProgress) -> None:
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
