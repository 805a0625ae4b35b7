"""C-GET in as many rounds as it takes: find what a request covers, offer what it needs.

In a C-GET the PACS sends each instance back on the requestor's own association, so that
association must have proposed a context for the instance's SOP class and for the syntax
the PACS sends it in (:mod:`pacsman.dicom.contexts`).  :class:`GetRounds` does one C-GET
attempt:

1. an image-level C-FIND on the open association asks which instances the request covers,
   with their SOP classes (and syntaxes, where the PACS says: AvailableTransferSyntaxUID);
2. it C-GETs on an association that offers what they need -- the open one when it does --
   in one round per association when 126 contexts are not enough;
3. where the PACS does not say the classes (pynetdicom's qrscp), it climbs the ladder: every
   storage class pacsman knows, most common first, asking each time only for what is still
   missing, until nothing is or a round fails nothing;
4. where instances of known classes still failed, it offers those classes in every syntax
   the receiver takes (Orthanc with ``IngestTranscoding`` holds even SR as JPEG-LS);
5. instances still missing after a refusal end as :class:`SubOperationsFailed`, naming the
   classes and syntaxes the PACS did not accept, and the fix: an item failure, never
   congestion, never retried.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from pacsman.dicom import client
from pacsman.dicom.client import (
    DicomPeer,
    RetrieveResult,
    ReusedAssociation,
    StorageRole,
    SubOperationsFailed,
)
from pacsman.dicom.contexts import StorageContext, StoragePlan
from pacsman.errors import FatalError, ItemFailed

__all__ = ["GetRounds"]

_log = structlog.get_logger("pacsman.dicom.cget")


@dataclass(frozen=True)
class _Instance:
    """One instance a C-GET covers, as the PACS's image-level C-FIND describes it."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str  # "" when the PACS does not say
    transfer_syntax_uids: tuple[str, ...]


class GetRounds:
    """One C-GET attempt over ``link``: find what it covers, then a round per association.

    ``retrieve(identifier, plan)`` sends one C-GET on ``link`` proposing ``plan``;
    ``on_disk(SeriesInstanceUID)`` says which instances of a requested ``series`` have
    arrived; ``rounds`` stops after that many associations (None: while one could help).
    """

    def __init__(
        self,
        peer: DicomPeer,
        link: ReusedAssociation,
        *,
        storage: StorageRole,
        find_model: str,
        retrieve: Callable[[Dataset, StoragePlan], RetrieveResult],
        on_disk: Callable[[str], frozenset[str]],
        series: frozenset[str],
        rounds: int | None = None,
    ) -> None:
        self.peer = peer
        self.link = link
        self.storage = storage
        self.find_model = find_model
        self.retrieve = retrieve
        self.on_disk = on_disk
        self.series = series
        self.rounds = rounds
        self.results: list[RetrieveResult] = []
        self.refusal: SubOperationsFailed | None = None
        self.offered: list[StoragePlan] = []
        self.accepted: set[StorageContext] = set()
        self.round_failed = False

    def run(self, identifier: Dataset) -> RetrieveResult:
        """Every round this request needs; the PACS's last word, counts summed.

        Raises:
            SubOperationsFailed: instances are still missing after a round that failed them,
                and no other association could help; names what the PACS did not accept.
            TransientError, ItemFailed, FatalError: as :func:`client.retrieve`.
        """
        inventory = self._inventory(identifier)
        needs = _needs(inventory)
        self._climb(identifier, inventory, self._plans(needs), ladder=needs is None)
        wide = self._still_needed(inventory) if needs is not None and self.refusal else {}
        if wide:
            room = self.link.room
            plans = self.storage.plans_for(wide, room=room, every_syntax=True)
            self._climb(identifier, inventory, plans, ladder=False)
        return self._verdict(inventory, needs)

    def _climb(
        self,
        identifier: Dataset,
        inventory: list[_Instance] | None,
        plans: list[StoragePlan],
        *,
        ladder: bool,
    ) -> None:
        """One round per plan, for what is still missing, until nothing is (or, up the
        ladder, until a round has no failures)."""
        for plan in plans:
            if self.rounds is not None and len(self.offered) >= self.rounds:
                return
            classes = plan.sop_classes if not ladder and len(plans) > 1 else None
            missing = self._missing(inventory, classes)
            if inventory is not None and not missing:
                continue
            whole = inventory is None or (not self.results and (ladder or len(plans) == 1))
            requests = [identifier] if whole else _requests(identifier, inventory or [], missing)
            self._round(plan, requests, len(self.offered))
            if self._done(inventory, ladder=ladder):
                return

    def _still_needed(self, inventory: list[_Instance] | None) -> dict[str, frozenset[str]]:
        """The classes of the instances still missing: to offer in every syntax."""
        missing = {uid for uids in self._missing(inventory, None).values() for uid in uids}
        assert inventory is not None
        return {i.sop_class_uid: frozenset() for i in inventory if i.sop_instance_uid in missing}

    # -- what the request covers -------------------------------------------------------

    def _inventory(self, identifier: Dataset) -> list[_Instance] | None:
        """The instances of the requested series, by image-level C-FIND; None where the PACS
        does not answer one (pacsman then offers every class it knows, rung by rung)."""
        query = _find_identifier(identifier)
        assoc = self.link.get()
        try:
            answers = client.find(self.peer, assoc, query, model=self.find_model)
        except (ItemFailed, FatalError) as exc:
            _log.info("cget_inventory_unavailable", pacs=self.peer.node.name, reason=str(exc))
            return None
        only = _text(identifier, "SeriesInstanceUID")
        found = [_instance(answer, only) for answer in answers]
        kept = [i for i in found if i.sop_instance_uid and i.series_instance_uid in self.series]
        return kept or None

    def _plans(self, needs: dict[str, frozenset[str]] | None) -> list[StoragePlan]:
        room = self.link.room
        if needs is None:
            return self.storage.ladder(room=room)
        current = self.link.plan
        if current is not None and current.covers(needs, syntaxes=self.storage.transfer_syntaxes):
            return [current]
        return self.storage.plans_for(needs, room=room)

    def _missing(
        self, inventory: list[_Instance] | None, classes: Sequence[str] | None
    ) -> dict[str, list[str]]:
        """Instance UIDs not yet on disk, by series (of ``classes`` only, if given)."""
        if inventory is None:
            return {}
        on_disk = {uid: self.on_disk(uid) for uid in self.series}
        missing: dict[str, list[str]] = {}
        for instance in inventory:
            if classes is not None and instance.sop_class_uid not in classes:
                continue
            if instance.sop_instance_uid not in on_disk[instance.series_instance_uid]:
                missing.setdefault(instance.series_instance_uid, []).append(
                    instance.sop_instance_uid
                )
        return missing

    # -- the rounds ----------------------------------------------------------------------

    def _round(self, plan: StoragePlan, requests: list[Dataset], number: int) -> None:
        assoc = self.link.get(plan)
        self.offered.append(plan)
        self.accepted |= client.accepted_storage(assoc)
        self.round_failed = False
        _log.debug(
            "cget_round",
            pacs=self.peer.node.name,
            round=number + 1,
            contexts=len(plan.contexts),
            requests=len(requests),
        )
        for request in requests:
            try:
                result = self._retrieve(request, plan)
            except SubOperationsFailed as exc:
                result, self.refusal = exc.result, exc
                self.round_failed = True
            self.round_failed = self.round_failed or bool(result.failed)
            self.results.append(result)

    def _retrieve(self, request: Dataset, plan: StoragePlan) -> RetrieveResult:
        """One C-GET; a PACS that cannot match a list of instance UIDs (pynetdicom's qrscp
        answers 0xC413) is asked for their whole series instead (the rest are duplicates)."""
        try:
            return self.retrieve(request, plan)
        except SubOperationsFailed:
            raise
        except ItemFailed as exc:
            series = _series_level(request)
            if series is None:
                raise
            _log.info("cget_uid_list_refused", pacs=self.peer.node.name, reason=str(exc))
            return self.retrieve(series, plan)

    def _done(self, inventory: list[_Instance] | None, *, ladder: bool) -> bool:
        """Nothing missing; or, up the ladder, nothing failed in the last round (another
        association would not help: a PACS that sends less than it has is left to verify)."""
        if inventory is not None and not self._missing(inventory, None):
            return True
        return ladder and not self.round_failed

    def _verdict(
        self, inventory: list[_Instance] | None, needs: dict[str, frozenset[str]] | None
    ) -> RetrieveResult:
        """The summed result, or ItemFailed naming what could not be sent (never retried)."""
        if not self.results:
            return client.RetrieveResult(0x0000, 0, 0, 0)
        last = self.results[-1]
        result = replace(last, completed=sum(r.completed or 0 for r in self.results))
        missing = self._missing(inventory, None)
        unresolved = bool(missing) if inventory is not None else self.round_failed
        if self.refusal is None or not unresolved:
            return result
        count = sum(len(uids) for uids in missing.values()) if missing else last.failed
        raise SubOperationsFailed(self._refusal_message(count, needs), result)

    def _refusal_message(self, count: int | None, needs: dict[str, frozenset[str]] | None) -> str:
        assert self.refusal is not None
        peer = self.peer
        said = str(self.refusal)
        fix = (
            f"ask the PACS administrator to allow these SOP classes and syntaxes for C-GET "
            f"(pacsman in the SCP role) for calling AE {peer.calling_ae_title!r}, or set "
            f"pacs.{peer.node.name}.retrieve_method: move"
        )
        if needs is None:
            offered = len({c.sop_class_uid for plan in self.offered for c in plan.contexts})
            return (
                f"{said}; {count if count is not None else 'some'} instance(s) could not be "
                f"sent on any of the {len(self.offered)} association(s) pacsman offered, "
                f"covering {offered} storage SOP classes in Explicit/Implicit VR Little "
                "Endian, Deflated and (for images) the common compressed syntaxes; the PACS "
                "does not say which SOP class they have (a private one?); " + fix
            )
        what = _refused(needs, frozenset(self.accepted))
        return f"{said}; {count} instance(s) not received: {what}; {fix}"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value or "").strip()


def _find_identifier(identifier: Dataset) -> Dataset:
    """The image-level C-FIND for the instances a C-GET ``identifier`` covers."""
    query = copy.deepcopy(identifier)
    query.QueryRetrieveLevel = "IMAGE"
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        if keyword not in query:
            setattr(query, keyword, "")
    query.SOPClassUID = ""
    query.AvailableTransferSyntaxUID = ""
    return query


def _instance(answer: Dataset, only_series: str) -> _Instance:
    syntaxes = answer.get("AvailableTransferSyntaxUID", "") or ""
    if isinstance(syntaxes, str):
        syntaxes = [syntaxes] if syntaxes.strip() else []
    return _Instance(
        sop_instance_uid=_text(answer, "SOPInstanceUID"),
        series_instance_uid=_text(answer, "SeriesInstanceUID") or only_series,
        sop_class_uid=_text(answer, "SOPClassUID"),
        transfer_syntax_uids=tuple(str(uid).strip() for uid in syntaxes if str(uid).strip()),
    )


def _needs(inventory: list[_Instance] | None) -> dict[str, frozenset[str]] | None:
    """SOP class -> the syntaxes its instances are held in (empty: the PACS did not say);
    None when the PACS did not say the class of every instance."""
    if inventory is None or any(not i.sop_class_uid for i in inventory):
        return None
    needs: dict[str, set[str]] = {}
    unknown: set[str] = set()
    for instance in inventory:
        needs.setdefault(instance.sop_class_uid, set()).update(instance.transfer_syntax_uids)
        if not instance.transfer_syntax_uids:
            unknown.add(instance.sop_class_uid)
    return {uid: frozenset() if uid in unknown else frozenset(s) for uid, s in needs.items()}


def _requests(
    identifier: Dataset, inventory: list[_Instance], missing: dict[str, list[str]]
) -> list[Dataset]:
    """One C-GET identifier per series with missing instances: the whole series when none of
    it has arrived (the usual case, and any PACS does it), else its missing instances."""
    requests = []
    for series_uid, uids in sorted(missing.items()):
        whole = len(uids) == sum(1 for i in inventory if i.series_instance_uid == series_uid)
        request = Dataset()
        request.QueryRetrieveLevel = "SERIES" if whole else "IMAGE"
        if "PatientID" in identifier:
            request.PatientID = identifier.PatientID
        request.StudyInstanceUID = identifier.StudyInstanceUID
        request.SeriesInstanceUID = series_uid
        if not whole:
            request.SOPInstanceUID = uids
        requests.append(request)
    return requests


def _series_level(request: Dataset) -> Dataset | None:
    """The series-level form of an image-level request for several instances, else None."""
    uids = request.get("SOPInstanceUID")
    if request.QueryRetrieveLevel != "IMAGE" or isinstance(uids, str) or len(uids or ()) < 2:
        return None
    series = copy.deepcopy(request)
    series.QueryRetrieveLevel = "SERIES"
    del series.SOPInstanceUID
    return series


def _refused(needs: dict[str, frozenset[str]], accepted: frozenset[StorageContext]) -> str:
    """What the PACS did not accept of what ``needs`` calls for, class by class."""
    parts = []
    for uid, held in sorted(needs.items()):
        name = f"{uid} ({UID(uid).name})" if UID(uid).name != uid else uid
        syntaxes = sorted(c.transfer_syntax_uid for c in accepted if c.sop_class_uid == uid)
        if not syntaxes:
            parts.append(f"the PACS accepted no presentation context for SOP class {name}")
        elif held and not held & set(syntaxes):
            parts.append(
                f"the PACS accepted SOP class {name} only in {', '.join(syntaxes)}, not in "
                f"{', '.join(sorted(held))} that it holds"
            )
        else:
            parts.append(
                f"the PACS accepted SOP class {name} in {len(syntaxes)} transfer syntax(es) "
                "yet could not send them: they may be held in a syntax pacsman did not offer, "
                "or pacsman's Storage SCP refused them (see its log)"
            )
    return "; ".join(parts)
