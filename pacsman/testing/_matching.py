"""Query/Retrieve matching for the fake PACS, over an in-memory list of instances.

PS3.4 C.2.2.2 rules, kept simple: an empty key matches everything (universal matching); a
UI key holding ``\\``-separated UIDs matches any of them (list of UID matching); ``*`` and
``?`` are wildcards in string keys (case-insensitive for PN); ``A-B``, ``A-`` and ``-B`` are
ranges for DA, TM and DT (DT without a UTC offset); other values must match exactly.  A
multi-valued attribute matches if any value does; ``\\`` in a non-UID key means "any of".

Attributes are assigned to the level whose table lists them; attributes not listed are
treated as series level and taken from the series' first instance, as many PACSes do.  A
key below the query level does not take part in matching and is returned empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = ["LEVELS", "UNIQUE_KEYS", "Entity", "build_response", "match_entities"]

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
INSTANCE_COUNT_KEYS = frozenset(
    {
        "NumberOfPatientRelatedInstances",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
    }
)
_LEVEL_OF: dict[str, int] = {
    **dict.fromkeys(
        [
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "PatientBirthDate",
            "PatientBirthTime",
            "PatientSex",
            "OtherPatientIDs",
            "OtherPatientNames",
            "EthnicGroup",
            "PatientComments",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        ],
        0,
    ),
    **dict.fromkeys(
        [
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "StudyInstanceUID",
            "ReferringPhysicianName",
            "StudyDescription",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "InstitutionName",
            "NameOfPhysiciansReadingStudy",
            "OtherStudyNumbers",
        ],
        1,
    ),
    **dict.fromkeys(["NumberOfSeriesRelatedInstances"], 2),
    **dict.fromkeys(
        [
            "SOPInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
            "ContentDate",
            "ContentTime",
            "AcquisitionNumber",
            "ImagePositionPatient",
            "SliceLocation",
            "NumberOfFrames",
            "Rows",
            "Columns",
        ],
        3,
    ),
}
_SERIES_LEVEL = 2
_COMPUTED = frozenset(
    {
        *INSTANCE_COUNT_KEYS,
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfStudyRelatedSeries",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
    }
)
_TEXT_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
_RANGE_VRS = frozenset({"DA", "TM", "DT"})


@dataclass(frozen=True)
class Entity:
    """One patient, study, series or image, with every instance it holds."""

    level: str
    instances: tuple[Dataset, ...]

    @property
    def first(self) -> Dataset:
        """The instance that stands for the entity's own attributes."""
        return self.instances[0]

    def values(self, keyword: str) -> list[str] | None:
        """The attribute's values as strings, computed ones included; None if absent."""
        if keyword == "ModalitiesInStudy":
            return sorted({str(ds.Modality) for ds in self.instances if "Modality" in ds})
        if keyword == "SOPClassesInStudy":
            return sorted({str(ds.SOPClassUID) for ds in self.instances})
        if keyword.startswith("NumberOf") and keyword.endswith(("Studies", "Series", "Instances")):
            return [str(self._count(keyword))]
        if keyword not in self.first:
            return None
        return _as_strings(self.first[keyword].value)

    def _count(self, keyword: str) -> int:
        if keyword.endswith("Instances"):
            return len(self.instances)
        key = "StudyInstanceUID" if keyword.endswith("Studies") else "SeriesInstanceUID"
        return len({ds.get(key) for ds in self.instances})


def match_entities(datasets: Iterable[Dataset], identifier: Dataset, level: str) -> list[Entity]:
    """Return the entities at ``level`` whose attributes match every key of ``identifier``."""
    depth = LEVELS.index(level)
    groups: dict[str, list[Dataset]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get(UNIQUE_KEYS[level], "")), []).append(ds)
    entities = [Entity(level, tuple(group)) for group in groups.values()]
    keys = [elem for elem in identifier if _takes_part(elem, depth)]
    return [entity for entity in entities if all(_matches(entity, elem) for elem in keys)]


def build_response(
    entity: Entity,
    identifier: Dataset,
    *,
    charset: str | None,
    omit_instance_count: bool = False,
) -> Dataset:
    """Return the C-FIND answer for ``entity``: every requested key, filled where known."""
    depth = LEVELS.index(entity.level)
    response = Dataset()
    charset = charset or entity.first.get("SpecificCharacterSet")
    if charset:
        response.SpecificCharacterSet = charset
    response.QueryRetrieveLevel = entity.level
    unique_key = Tag(UNIQUE_KEYS[entity.level])
    tags = [elem.tag for elem in identifier]
    for tag in [*tags, unique_key] if unique_key not in tags else tags:
        keyword = keyword_for_tag(tag)
        if keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        if omit_instance_count and keyword in INSTANCE_COUNT_KEYS:
            continue
        vr = dictionary_VR(tag) if keyword else identifier[tag].VR
        response.add(DataElement(tag, vr, _answer(entity, keyword, vr, depth)))
    return response


def _answer(entity: Entity, keyword: str, vr: str, depth: int) -> Any:
    """The value to return for ``keyword`` at this level, or None (empty)."""
    if not keyword or _level(keyword) > depth:
        return None
    if keyword in _COMPUTED and _level(keyword) != depth:
        return None
    values = entity.values(keyword)
    if values is None:
        return None
    if vr not in _TEXT_VRS:
        return entity.first[keyword].value
    return values[0] if len(values) == 1 else values


def _level(keyword: str) -> int:
    return _LEVEL_OF.get(keyword, _SERIES_LEVEL)


def _takes_part(elem: DataElement, depth: int) -> bool:
    keyword = elem.keyword
    if keyword in ("", "SpecificCharacterSet", "QueryRetrieveLevel") or elem.VR == "SQ":
        return False
    if keyword.startswith("NumberOf") or _level(keyword) > depth:
        return False
    if keyword in _COMPUTED and _level(keyword) != depth:
        return False
    return any(v not in ("", "*") for v in _as_strings(elem.value))


def _matches(entity: Entity, elem: DataElement) -> bool:
    candidates = entity.values(elem.keyword)
    if candidates is None:
        return False
    wanted = [v for v in _as_strings(elem.value) if v]
    if elem.VR == "UI":
        return any(c in wanted for c in candidates)
    return any(_match_one(elem.VR, w, c) for w in wanted for c in candidates)


def _match_one(vr: str, wanted: str, value: str) -> bool:
    if vr in _RANGE_VRS and "-" in wanted:
        low, _, high = wanted.partition("-")
        key = _range_key(vr, value, "0")
        return (not low or _range_key(vr, low, "0") <= key) and (
            not high or key <= _range_key(vr, high, "9")
        )
    if "*" in wanted or "?" in wanted:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in wanted)
        flags = re.IGNORECASE if vr == "PN" else 0
        return re.fullmatch(pattern, value, flags | re.DOTALL) is not None
    if vr == "PN":
        return wanted.casefold() == value.casefold()
    if vr in ("IS", "DS"):
        return _number(wanted) == _number(value)
    return wanted == value


def _range_key(vr: str, value: str, pad: str) -> str:
    """Normalise a DA/TM/DT value so that string order is time order; ``pad`` fills gaps."""
    value = value.replace(":", "").strip()
    width = {"DA": 8, "TM": 6, "DT": 14}[vr]
    whole, _, fraction = value.partition(".")
    return whole.ljust(width, pad) + "." + fraction.ljust(6, pad)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _as_strings(value: Any) -> list[str]:
    if value is None:
        return [""]
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return [str(value).strip()]
    return [str(v).strip() for v in value] or [""]
