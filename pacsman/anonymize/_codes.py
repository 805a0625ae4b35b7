"""Code items (the Code Sequence macro) and code sequences.

A code item is any sequence item with a CodeValue, LongCodeValue, URNCodeValue or
CodeMeaning.  Its code attributes are outside Table E.1-1, and are Type 1, so they are
handled here, item by item, instead of by the per-attribute rules:

* a code of a **standard scheme** (:data:`._terms.STANDARD_SCHEMES`) whose value has that
  scheme's form keeps its value; its meaning becomes the standard's when pydicom knows
  the code, and is otherwise scrubbed of this patient's identifiers;
* any **other** code (a local scheme, ``99...``, or a value that names this patient) gets
  the dummy code ``(ANONYMIZED, 99PACSMAN, "ANONYMIZED")``, so the item stays valid;
* the items of a sequence the profile explicitly keeps keep their codes as they are.

A code *sequence* the table marks D (or X/D, Z/D, X/Z/D: PersonIdentificationCodeSequence,
InstitutionCodeSequence, ...) is replaced by one dummy item, whatever it held.
"""

from __future__ import annotations

from typing import Protocol

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

from pacsman.anonymize._terms import (
    STANDARD_SCHEMES,
    is_plausible_meaning,
    is_standard_code,
    standard_meaning,
)
from pacsman.anonymize._values import peek, put_new

__all__ = [
    "CODE_TAGS",
    "DUMMY_CODE",
    "clean_code_item",
    "clean_scheme_item",
    "drop_stray_codes",
    "dummy_code_sequence",
    "is_code_item",
    "is_code_sequence",
]

CODE_VALUE, SCHEME, VERSION, MEANING = 0x00080100, 0x00080102, 0x00080103, 0x00080104
LONG_CODE_VALUE, URN_CODE_VALUE, EXTENDED_MEANING = 0x00080119, 0x00080120, 0x00080108
#: The code attributes this module handles (the walk leaves them alone).
CODE_TAGS = frozenset({CODE_VALUE, SCHEME, VERSION, MEANING, LONG_CODE_VALUE, URN_CODE_VALUE})
_VALUES = (CODE_VALUE, LONG_CODE_VALUE, URN_CODE_VALUE)
DUMMY_SCHEME = "99PACSMAN"
#: (CodeValue, CodingSchemeDesignator, CodeMeaning) of the dummy code: a local scheme.
DUMMY_CODE = ("ANONYMIZED", DUMMY_SCHEME, "ANONYMIZED")


class Scrub(Protocol):
    """The engine's scrubber (:class:`._scrub.Scrubber`), as far as codes need it."""

    def __call__(self, text: str) -> str: ...

    def personal(self, text: str) -> str: ...


def is_code_item(ds: Dataset) -> bool:
    """True when ``ds`` holds a code (a value or a meaning of the Code Sequence macro)."""
    keys = ds.keys()  # a view: membership by plain int, no Tag() per test
    return (
        CODE_VALUE in keys or MEANING in keys or LONG_CODE_VALUE in keys or URN_CODE_VALUE in keys
    )


def is_code_sequence(tag: int) -> bool:
    """True for a sequence of code items (by its keyword, ``...CodeSequence``)."""
    return (keyword_for_tag(tag) or "").endswith("CodeSequence")


def _text(ds: Dataset, tag: int, encodings: list[str]) -> str:
    return "".join(peek(ds, tag, encodings))


def _set(ds: Dataset, tag: int, vr: str, value: str) -> None:
    if value.isascii():
        put_new(ds, tag, vr, [value])
    else:
        ds[tag] = DataElement(tag, vr, value)


def _make_dummy(ds: Dataset) -> None:
    for tag in (LONG_CODE_VALUE, URN_CODE_VALUE, VERSION, EXTENDED_MEANING):
        if tag in ds:
            del ds[tag]
    value, scheme, meaning = DUMMY_CODE
    _set(ds, CODE_VALUE, "SH", value)
    _set(ds, SCHEME, "SH", scheme)
    _set(ds, MEANING, "LO", meaning)


def clean_code_item(ds: Dataset, scrub: Scrub, encodings: list[str], *, keep: bool = False) -> None:
    """De-identify the code attributes of the code item ``ds`` in place (module doc)."""
    if keep:
        return
    scheme = _text(ds, SCHEME, encodings)
    value = next((_text(ds, tag, encodings) for tag in _VALUES if tag in ds), "")
    if not value or not is_standard_code(scheme, value) or scrub.personal(value) != value:
        _make_dummy(ds)
        return
    if EXTENDED_MEANING in ds:
        del ds[EXTENDED_MEANING]  # free text (LT)
    given = _text(ds, MEANING, encodings)
    meaning = standard_meaning(scheme, value) or _unknown_meaning(given, scrub)
    if meaning != given:
        _set(ds, MEANING, "LO", meaning[:64])


def _unknown_meaning(given: str, scrub: Scrub) -> str:
    """The meaning of a standard code PS3.16 (as pydicom has it) does not list: kept when
    it is made of words of PS3.16 meanings and holds nothing of this patient, else the
    dummy (it may name a person: an observer, an operator)."""
    if given and scrub(given) == given and is_plausible_meaning(given):
        return given
    return DUMMY_CODE[2]


def clean_scheme_item(ds: Dataset, encodings: list[str]) -> None:
    """An item naming a coding scheme without a code: a local scheme's name goes."""
    scheme = _text(ds, SCHEME, encodings)
    if scheme and scheme not in STANDARD_SCHEMES:
        _set(ds, SCHEME, "SH", DUMMY_SCHEME)
    if VERSION in ds and scheme not in STANDARD_SCHEMES:
        del ds[VERSION]


def drop_stray_codes(ds: Dataset) -> None:
    """Remove code attributes found outside a code item (a version without a code...)."""
    for tag in CODE_TAGS:
        if tag in ds:
            del ds[tag]


def dummy_code_sequence(tag: int) -> DataElement:
    """A code sequence holding one dummy code item (for the table's D)."""
    item = Dataset()
    value, scheme, meaning = DUMMY_CODE
    item.add_new(CODE_VALUE, "SH", value)
    item.add_new(SCHEME, "SH", scheme)
    item.add_new(MEANING, "LO", meaning)
    return DataElement(tag, "SQ", Sequence([item]))
