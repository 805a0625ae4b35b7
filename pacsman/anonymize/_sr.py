"""SR content items by concept: the profile's rule for the attribute the concept stands for.

An SR "Subject Birth Date" is the patient's birth date whatever attribute holds it, so it
gets PatientBirthDate's rule: removed, never date-shifted (a shifted birth date next to a
shifted study date gives the exact age back).  Each concept of :data:`CONCEPTS` maps to an
attribute; when that attribute's rule removes or empties it, the whole content item (with
what it holds) leaves its content sequence, since its value is Type 1.

The patient's identity -- "Subject Name", "Subject ID", "Subject Birth Date" and their
LOINC and SNOMED twins -- leaves too unless the profile keeps the attribute: the header
carries the pseudonym (PatientName and PatientID become the subject label), a dummy item
("ANONYMIZED" as Subject ID) would only disagree with it, and TID 1007 (Subject Context,
Patient) makes every one of these items optional (U), so the SR stays valid without them.

Other rules leave the item to the walk: PNAME values (PersonName) and TEXT values
(TextValue) are dummies anyway, dates follow the date option.  A kept "Subject Age" is
capped at 90 years, like PatientAge.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from pydicom import Dataset

from pacsman.anonymize._values import peek, put
from pacsman.anonymize.profile import Action, Profile

__all__ = ["CONCEPTS", "cap_age", "concept_of", "drops", "is_content_item"]

_VALUE_TYPE, _CONCEPT_NAME = 0x0040A040, 0x0040A043
_MEASURED_VALUES, _NUMERIC_VALUE, _UNITS = 0x0040A300, 0x0040A30A, 0x004008EA
_PATIENT_NAME, _PATIENT_ID, _BIRTH_DATE = 0x00100010, 0x00100020, 0x00100030
_SEX, _AGE, _ACCESSION = 0x00100040, 0x00101010, 0x00080050
#: (scheme, code value) of a concept -> the attribute whose rule it follows.
CONCEPTS: Mapping[tuple[str, str], int] = MappingProxyType(
    {
        ("DCM", "121029"): _PATIENT_NAME,  # Subject Name
        ("DCM", "121030"): _PATIENT_ID,  # Subject ID
        ("DCM", "121031"): _BIRTH_DATE,  # Subject Birth Date
        ("DCM", "121032"): _SEX,  # Subject Sex
        ("DCM", "121033"): _AGE,  # Subject Age
        ("DCM", "121022"): _ACCESSION,  # Accession Number
        ("DCM", "121013"): 0x00081010,  # Device Observer Name -> StationName
        ("DCM", "121016"): 0x00181000,  # Device Observer Serial Number -> DeviceSerialNumber
        ("DCM", "121009"): 0x00080080,  # Person Observer's Organization Name
        ("DCM", "121017"): 0x00081040,  # Device Observer Physical Location -> Department
        ("LN", "21112-8"): _BIRTH_DATE,  # Birth date
        ("SCT", "184099003"): _BIRTH_DATE,  # Date of birth
        ("LN", "46098-0"): _SEX,  # Sex
        ("SCT", "263495000"): _SEX,  # Gender
        ("LN", "30525-0"): _AGE,  # Age
        ("SCT", "397669002"): _AGE,  # Age
        ("LN", "76435-7"): _PATIENT_ID,  # Patient ID (LOINC)
        ("LN", "45394-4"): _PATIENT_NAME,  # Patient name (LOINC)
    }
)
#: Ages above 89 years, by UCUM unit: the cap is 90 years.
_CAPS = {"a": 90, "yr": 90, "mo": 90 * 12, "wk": 90 * 52, "d": 90 * 365}
_DROPPED = frozenset({Action.REMOVE, Action.EMPTY})
_IDENTITY = frozenset({_PATIENT_NAME, _PATIENT_ID, _BIRTH_DATE})


def is_content_item(ds: Dataset) -> bool:
    """True for an SR content item (it has a ValueType and a ConceptNameCodeSequence)."""
    keys = ds.keys()  # a view: membership by plain int, no Tag() per test
    return _VALUE_TYPE in keys and _CONCEPT_NAME in keys


def _code(ds: Dataset, tag: int) -> tuple[str, str] | None:
    element = ds.get(tag)
    items = element.value if element is not None else None
    if not items:
        return None
    item = items[0]
    latin = ["iso8859"]  # scheme designators and code values are ASCII
    return "".join(peek(item, 0x00080102, latin)), "".join(peek(item, 0x00080100, latin))


def concept_of(ds: Dataset) -> int | None:
    """The attribute the content item's concept stands for, if :data:`CONCEPTS` has it."""
    code = _code(ds, _CONCEPT_NAME)
    return CONCEPTS.get(code) if code is not None else None


def drops(profile: Profile, ds: Dataset) -> bool:
    """True when the content item ``ds`` must leave its content sequence."""
    tag = concept_of(ds)
    if tag is None:
        return False
    rule = profile.rule_for(tag)
    if tag in _IDENTITY:
        return rule is None or rule.action is not Action.KEEP
    return rule is None or rule.action in _DROPPED


def cap_age(ds: Dataset) -> None:
    """Cap a kept Subject Age (a NUM item) at 90 years."""
    if concept_of(ds) != _AGE:
        return
    element = ds.get(_MEASURED_VALUES)
    for measured in (element.value if element is not None else None) or []:
        unit = _code(measured, _UNITS)
        cap = _CAPS.get(unit[1]) if unit is not None else None
        number = measured.get_item(_NUMERIC_VALUE)
        values = peek(measured, _NUMERIC_VALUE, [])
        if cap is None or number is None or not values:
            continue
        try:
            too_old = Decimal(values[0]) > cap
        except InvalidOperation:
            too_old = True  # not a number: cannot be shown to be under the cap
        if too_old:
            put(measured, number, "DS", [str(cap)])
