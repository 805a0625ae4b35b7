"""Query stage: C-FIND at study, then series (then image) level, one association per node.

Public entry point: :class:`FindAssociation` (one PACS node, one reused association) and
:func:`query_row`, which turns one :class:`~pacsman.models.QueryRow` into the studies and
series the PACS holds, with the number of instances it promises for each series.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import structlog
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsman.closing import Closing
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer
from pacsman.dicom.hooks import set_unvalidated
from pacsman.dicom.matching import matches
from pacsman.errors import ItemFailed, TransientError
from pacsman.models import (
    IMAGE_LEVEL_KEYS,
    SERIES_LEVEL_KEYS,
    STUDY_LEVEL_KEYS,
    QueryRow,
    SeriesMatch,
    StudyMatch,
)
from pacsman.throttle import RetryPolicy

__all__ = ["FindAssociation", "query_row"]

_log = structlog.get_logger("pacsman.query")

_STUDY_RETURN_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
)
_UID_LIST_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"})
_SERIES_RETURN_KEYS = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "ProtocolName",
    "NumberOfSeriesRelatedInstances",
)


class FindAssociation(Closing):
    """C-FINDs against one PACS node over one reused association, reopened after faults."""

    def __init__(self, peer: DicomPeer, *, retry: RetryPolicy) -> None:
        self.peer = peer
        self.retry = retry
        self.model = client.FIND_MODELS[peer.node.query_model]
        self._link = client.ReusedAssociation(peer, [self.model])
        self.queries = 0

    def close(self) -> None:
        """Release the association, if one is open."""
        self._link.close()

    def find(self, level: str, keys: Mapping[str, str], returns: Iterable[str]) -> list[Dataset]:
        """One C-FIND at ``level`` with matching ``keys`` and empty return ``returns``.

        Retries transient failures on a fresh association, per the :class:`RetryPolicy`.

        Raises:
            TransientError: still failing after every attempt.
            ItemFailed: the PACS refused this query.
            FatalError: the PACS rejects us for good.
        """
        identifier = self._identifier(level, keys, returns)
        return self.retry.call(
            lambda: self._find_once(identifier), operation="c_find", pacs=self.peer.node.name
        )

    def _find_once(self, identifier: Dataset) -> list[Dataset]:
        assoc = self._link.get()
        self.queries += 1
        try:
            return client.find(self.peer, assoc, identifier, model=self.model)
        except TransientError:
            self.close()
            raise

    def _identifier(self, level: str, keys: Mapping[str, str], returns: Iterable[str]) -> Dataset:
        """The C-FIND identifier; C-FIND keys legally hold wildcards and ranges that pydicom's
        VR validators flag, so no value is validated."""
        ds = Dataset()
        set_unvalidated(ds, "QueryRetrieveLevel", level)
        set_unvalidated(ds, "SpecificCharacterSet", self.peer.node.character_set.split("\\"))
        for keyword in returns:
            set_unvalidated(ds, keyword, "")
        for keyword, value in keys.items():
            set_unvalidated(ds, keyword, _matching_value(keyword, value))
        return ds


def _matching_value(keyword: str, value: str) -> str | list[str]:
    """The value to send for one matching key.

    A backslash means a UID list for UIDs (PS3.4 C.2.2.2.2), but PACSes disagree on what it
    means elsewhere (all values? any value? PS3.4 C.2.2.2.8), so such a pattern (e.g.
    ``ORIGINAL\\PRIMARY*``) is sent as a return key and matched here, on the whole value.
    """
    if "\\" not in value:
        return value
    return value.split("\\") if keyword in _UID_LIST_KEYS else ""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _count(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword).strip()
    return int(text) if text.isdigit() else None


def _row_keys(row: QueryRow, allowed: Iterable[str]) -> dict[str, str]:
    return {k: v for k, v in row.keys.items() if k in allowed}


def _patient_ids(association: FindAssociation, row: QueryRow) -> Sequence[str | None]:
    """Patient Root needs PatientID at study level: resolve it first when the row lacks it."""
    if association.peer.node.query_model != "patient" or "PatientID" in row.keys:
        return [row.keys.get("PatientID")]
    keys = _row_keys(row, ("PatientName", "PatientBirthDate"))
    answers = association.find("PATIENT", keys, ("PatientID",))
    return [*sorted({_text(a, "PatientID") for a in answers} - {""})]


def _studies(association: FindAssociation, row: QueryRow) -> list[Dataset]:
    keys = _row_keys(row, STUDY_LEVEL_KEYS)
    found: dict[str, Dataset] = {}
    for patient_id in _patient_ids(association, row):
        if patient_id is not None:
            keys["PatientID"] = patient_id
        answers = association.find("STUDY", keys, _STUDY_RETURN_KEYS)
        _require_checkable(association, "study-level answer(s)", keys, answers)
        for answer in answers:
            if all(matches(k, v, _text(answer, k)) for k, v in keys.items()):
                uid = _text(answer, "StudyInstanceUID")
                if uid:
                    found.setdefault(uid, answer)
    return list(found.values())


def _series_answers(
    association: FindAssociation, study: Dataset, keys: Mapping[str, str]
) -> list[Dataset]:
    scope = {"StudyInstanceUID": _text(study, "StudyInstanceUID")}
    if association.peer.node.query_model == "patient":
        scope["PatientID"] = _text(study, "PatientID")
    answers = association.find("SERIES", {**scope, **keys}, _SERIES_RETURN_KEYS)
    promised = _count(study, "NumberOfStudyRelatedSeries")
    if not keys and promised is not None and len(answers) < promised:
        _log.warning(
            "series_count_short",
            pacs=association.peer.node.name,
            promised=promised,
            got=len(answers),
        )
        answers = association.find("SERIES", scope, _SERIES_RETURN_KEYS)
    return answers


def _image_level(
    association: FindAssociation, study: Dataset, series: Dataset, keys: Mapping[str, str]
) -> int:
    """Count the instances of one series that match ``keys`` (image-level C-FIND)."""
    scope = {
        "StudyInstanceUID": _text(study, "StudyInstanceUID"),
        "SeriesInstanceUID": _text(series, "SeriesInstanceUID"),
    }
    if association.peer.node.query_model == "patient":
        scope["PatientID"] = _text(study, "PatientID")
    answers = association.find("IMAGE", {**scope, **keys}, ("SOPInstanceUID", *keys))
    number = _text(series, "SeriesNumber") or "?"
    _require_checkable(association, f"instance(s) of series {number}", keys, answers)
    kept = [
        a
        for a in answers
        if all(matches(k, v, _text(a, k)) for k, v in keys.items() if _text(a, k))
    ]
    return len({_text(a, "SOPInstanceUID") for a in kept})


def _require_checkable(
    association: FindAssociation, what: str, keys: Mapping[str, str], answers: Sequence[Dataset]
) -> None:
    """Refuse keys no answer carries a value for: the PACS ignored them, pacsman cannot check.

    Such a key would otherwise select everything (DCMTK dcmqrscp returns SeriesDescription
    and ImageType at no level).  Patterns that match an empty value (``*``) need no value.

    Raises:
        ItemFailed: naming the keys, the answers and what to do instead.
    """
    blind = [
        k
        for k, v in keys.items()
        if answers and not matches(k, v, "") and not any(_text(a, k) for a in answers)
    ]
    if blind:
        raise ItemFailed(
            f"PACS {association.peer.describe()} returned no {', '.join(blind)} for any of the "
            f"{len(answers)} {what}, so pacsman cannot check the row's {', '.join(blind)}: "
            "this PACS cannot select by it. Drop that column, or select by keys it returns "
            "(e.g. StudyDate, SeriesNumber, Modality)"
        )


def _series_match(
    association: FindAssociation, row: QueryRow, study: Dataset, answer: Dataset
) -> SeriesMatch | None:
    series_keys = _row_keys(row, SERIES_LEVEL_KEYS)
    if not all(matches(k, v, _text(answer, k)) for k, v in series_keys.items() if _text(answer, k)):
        return None
    unresolved = {k: v for k, v in series_keys.items() if not _text(answer, k)}
    image_keys = {**unresolved, **_row_keys(row, IMAGE_LEVEL_KEYS)}
    expected = _count(answer, "NumberOfSeriesRelatedInstances")
    policy = association.peer.node.count_instances
    if image_keys or policy == "always" or (expected is None and policy == "auto"):
        counted = _image_level(association, study, answer, image_keys)
        if image_keys and counted == 0:
            return None
        if not image_keys:
            expected = counted
        elif expected is None and policy != "never":
            expected = _image_level(association, study, answer, {})
    return SeriesMatch(
        study_instance_uid=_text(study, "StudyInstanceUID"),
        series_instance_uid=_text(answer, "SeriesInstanceUID"),
        series_number=_text(answer, "SeriesNumber"),
        modality=_text(answer, "Modality"),
        series_description=_text(answer, "SeriesDescription"),
        expected_instances=expected,
    )


def query_row(association: FindAssociation, row: QueryRow) -> tuple[StudyMatch, ...]:
    """Find every study and series ``row`` selects on ``association``'s PACS node.

    Studies with no selected series are left out.  Series are sorted by SeriesNumber.

    Raises:
        TransientError, ItemFailed, FatalError: as :meth:`FindAssociation.find`.
    """
    results: list[StudyMatch] = []
    series_keys = _row_keys(row, SERIES_LEVEL_KEYS)
    for study in _studies(association, row):
        answers = _series_answers(association, study, series_keys)
        series = [s for a in answers if (s := _series_match(association, row, study, a))]
        if series:
            results.append(_study_match(study, series))
    return tuple(sorted(results, key=lambda s: (s.study_date, s.study_time, s.study_instance_uid)))


def _study_match(study: Dataset, series: list[SeriesMatch]) -> StudyMatch:
    def order(s: SeriesMatch) -> tuple[int, str]:
        number = s.series_number.strip()
        return (int(number) if number.lstrip("-").isdigit() else 1 << 30, s.series_instance_uid)

    unique = {s.series_instance_uid: s for s in series if s.series_instance_uid}
    return StudyMatch(
        study_instance_uid=_text(study, "StudyInstanceUID"),
        patient_id=_text(study, "PatientID"),
        patient_name=_text(study, "PatientName"),
        study_date=_text(study, "StudyDate"),
        study_time=_text(study, "StudyTime"),
        accession_number=_text(study, "AccessionNumber"),
        study_description=_text(study, "StudyDescription"),
        series=tuple(sorted(unique.values(), key=order)),
    )
