"""The leak check: scan a de-identified file for this patient's original identifiers.

:class:`Originals` is collected from the source dataset before de-identification.  The
check has its own matcher (:mod:`._leakmatch`), never the engine's scrubber: text is
normalized first (NFKD, accents, transliterations, case, separators, UTF-8 read as
Latin-1) and a name part counts as a whole token (``LI`` in ``Li2``, not in ``SLICE``);
IDs count with or without separators, the birth date in its written forms.  It searches

* every parsed element -- the file meta included, at every sequence depth, text decoded
  in the file's character set;
* the raw bytes of the file outside bulk binary values (pixel data, waveforms, ... whose
  embedded payloads the engine clears), read as Latin-1, as UTF-8 and in the file's
  character set, lower-cased whatever the script.

Not a leak (a word of the standard, not data about anyone): a CS value that is a DICOM
defined term (a patient named HEAD, BodyPartExamined ``HEAD``), and a code of a standard
coding scheme whose meaning is the standard's (``(69536005, SCT, "Head")``).  In the raw
bytes, a term counts only where it occurs more often than in such values.

The engine calls :func:`leak_check_dataset` with the data set it holds and the exact bytes
it is about to write (no second parse); :func:`leak_check` and :func:`leak_check_bytes`
parse a file, for files written by anything else.  A finding names the kind of original,
the element (tag and keyword) or byte offset, and how it matched -- never the value.

Which originals count (minimums avoid chance hits on ordinary numbers and words):

* parts of the patient's names (PatientName, OtherPatientNames, PatientBirthName,
  PatientMotherBirthName, ResponsiblePerson) of >= 2 letters (in the raw bytes: >= 3,
  or 2 that are not a VR code),
  except placeholders such as ANONYMIZED or TEST;
* patient IDs, other IDs, the accession number, record locators, admission IDs and phone
  numbers of >= 3 characters (purely numeric: >= 6 digits);
* the birth date, and birth/death dates in an alternative calendar as written;
* the institution name/address and the patient's address, unless retained, and unless
  part of the Manufacturer or model name (modalities often carry the vendor's name there);
* every UID the engine remapped, of >= 8 characters (shorter ones are test artefacts).
"""

from __future__ import annotations

import dataclasses
import io
import re
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pacsman.anonymize._leakmatch import (
    Matcher,
    Term,
    date_term,
    id_term,
    name_term,
    phrase_term,
    repaired,
    uid_term,
)
from pacsman.anonymize._leakscan import BULK_VRS, Parsed, collected, raw_findings
from pacsman.anonymize._spelling import is_japanese
from pacsman.anonymize._values import encodings_of, peek

__all__ = ["BULK_VRS", "Originals", "leak_check", "leak_check_bytes", "leak_check_dataset"]

_MIN_ID, _MIN_NUMERIC_ID, _MIN_UID, _MIN_RAW_NAME = 3, 6, 8, 3
#: Placeholder "names" found in already-anonymized or test data (pacsman writes the first):
#: they identify no one, and would match pacsman's own dummies and ordinary words.
_PLACEHOLDERS = frozenset(
    {"anonymized", "anonymous", "anon", "unknown", "none", "name", "first", "last", "patient"}
    | {"test", "phantom", "removed", "deidentified", "de-identified", "xxx", "nobody"}
)
#: VR codes: in explicit VR headers they stand between bytes like words of their own.
_VR_NAMES = "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI"
_VR_CODES = frozenset(f"{_VR_NAMES} UL UN UR US UT UV".split())
_LETTERS = re.compile(r"[^\W\d_]+")
_NAMES: tuple[str, ...] = (
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
)
_IDS: tuple[str, ...] = ("PatientID", "OtherPatientIDs", "AccessionNumber", "MedicalRecordLocator")
_IDS += ("AdmissionID", "PatientTelephoneNumbers")
_ALTERNATIVE_DATES: tuple[str, ...] = ("PatientBirthDateInAlternativeCalendar",)
_ALTERNATIVE_DATES += ("PatientDeathDateInAlternativeCalendar",)
_SOURCE_KEYWORDS: tuple[str, ...] = (*_NAMES, *_IDS, *_ALTERNATIVE_DATES, "ResponsiblePerson")
_SOURCE_KEYWORDS += ("InstitutionName", "InstitutionAddress", "Manufacturer")
_SOURCE_KEYWORDS += ("ManufacturerModelName", "PatientBirthDate", "PatientAddress")
_SOURCE_KEYWORDS += ("OtherPatientIDsSequence",)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


_SOURCE_TAGS = frozenset(_tag(keyword) for keyword in _SOURCE_KEYWORDS)


@dataclass(frozen=True)
class Originals:
    """The identifying values of one source instance, kept only in memory."""

    name_parts: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()
    institutions: frozenset[str] = frozenset()
    uids: frozenset[str] = frozenset()
    addresses: frozenset[str] = field(default=frozenset())

    @classmethod
    def from_dataset(
        cls, ds: Dataset, *, uids: Iterable[str] = (), keep_institution: bool = False
    ) -> Originals:
        """Collect the originals from the (top level of the) source dataset ``ds``.

        Raw elements are read without converting them (see :mod:`._values`).
        """
        encodings = encodings_of(ds)
        present = _SOURCE_TAGS.intersection(ds.keys())  # one pass; most are absent

        def get(*keywords: str) -> list[str]:
            tags = (_tag(keyword) for keyword in keywords)
            return [v for tag in tags if tag in present for v in peek(ds, tag, encodings)]

        ids = get(*_IDS)
        if _tag("OtherPatientIDsSequence") in present:
            for item in ds.OtherPatientIDsSequence or []:
                ids += peek(item, "PatientID", encodings_of(item, encodings))
        places = [] if keep_institution else get("InstitutionName", "InstitutionAddress")
        vendor = " ".join(get("Manufacturer", "ManufacturerModelName")).lower()
        return cls(
            name_parts=frozenset(_name_parts(get(*_NAMES, "ResponsiblePerson"))),
            ids=frozenset(i for i in _values(ids) if _long_enough_id(i)),
            dates=frozenset(_dates(get("PatientBirthDate"), get(*_ALTERNATIVE_DATES))),
            institutions=frozenset(
                i for i in _values(places) if len(i) >= 4 and i.lower() not in vendor
            ),
            addresses=frozenset(a for a in _values(get("PatientAddress")) if len(a) >= 4),
        ).with_uids(uids)

    def with_uids(self, uids: Iterable[str]) -> Originals:
        """A copy that also looks for ``uids`` (those shorter than 8 characters are ignored)."""
        kept = frozenset(u for u in uids if len(u) >= _MIN_UID)
        return Originals(
            self.name_parts, self.ids, self.dates, self.institutions, kept, self.addresses
        )

    @cached_property
    def _patient(self) -> tuple[Term, ...]:
        return _patient_terms(
            self.name_parts, self.ids, self.dates, self.institutions, self.addresses
        )

    @cached_property
    def terms(self) -> tuple[Term, ...]:
        """What the check looks for, one term per original."""
        return self._patient + tuple(uid_term(u) for u in sorted(self.uids))

    @cached_property
    def _uid_list(self) -> tuple[str, ...]:
        return tuple(sorted(self.uids))

    @cached_property
    def patient_matcher(self) -> Matcher:
        """The matcher for this patient's originals without the UIDs: the engine's
        scrubber cuts out whatever it finds (see :mod:`._scrub`)."""
        return _matchers(self._patient)[0]

    @cached_property
    def matcher(self) -> Matcher:
        """The matcher for parsed values (names of 2+ letters)."""
        return _matchers(self._patient)[0].with_uids(self._uid_list)

    @cached_property
    def device_matcher(self) -> Matcher:
        """The matcher for keep-list values (coil, kernel, protocol element names): a name
        part that is itself a defined term (a patient named HEAD) does not count there."""
        return _matchers(self._patient)[1].with_uids(self._uid_list)

    @cached_property
    def raw_matcher(self) -> Matcher:
        """The matcher for raw bytes (names of 3+ letters: header bytes form short words)."""
        return _matchers(self._patient)[2].with_uids(self._uid_list)

    def find_in_text(self, text: str) -> str | None:
        """The kind of the first original found in ``text``, else ``None``."""
        hit = self.matcher.first(text)
        return hit.kind if hit is not None else None


@lru_cache(maxsize=64)
def _patient_terms(
    name_parts: frozenset[str],
    ids: frozenset[str],
    dates: frozenset[str],
    institutions: frozenset[str],
    addresses: frozenset[str],
) -> tuple[Term, ...]:
    """The terms for one patient's originals (a study's files share them)."""
    japanese = is_japanese(name_parts)
    terms: list[Term | None] = [name_term(p, japanese=japanese) for p in sorted(name_parts)]
    terms += [_id(i, "patient ID or accession number") for i in sorted(ids)]
    terms += [_date(d) for d in sorted(dates)]
    terms += [phrase_term(i, kind="institution") for i in sorted(institutions)]
    terms += [phrase_term(a, kind="patient address") for a in sorted(addresses)]
    return tuple(t for t in terms if t is not None)


@lru_cache(maxsize=64)
def _matchers(terms: tuple[Term, ...]) -> tuple[Matcher, Matcher, Matcher]:
    """A patient's matchers: for parsed values, for keep-list values, for raw bytes."""
    device = tuple(t for t in terms if not t.is_defined_word)
    raw = []
    for term in terms:
        named = term.words or term.anywhere or term.spelled
        kept = term.restricted(_raw_word) if named else term
        if kept is not None:
            raw.append(kept)
    return Matcher(terms), Matcher(device), Matcher(raw)


def _raw_word(word: str) -> bool:
    """A name part the raw scan looks for: 3+ letters, or 2 that are not a VR code."""
    return len(word) >= _MIN_RAW_NAME or (len(word) == 2 and word.upper() not in _VR_CODES)


def _id(value: str, kind: str) -> Term | None:
    return id_term(value, kind=kind, min_length=_MIN_ID, min_digits=_MIN_NUMERIC_ID)


def _date(value: str) -> Term | None:
    if len(value) == 8 and value.isdigit():
        return date_term(value)
    term = id_term(value, kind="birth date", min_length=4, min_digits=4)
    return dataclasses.replace(term, how="as written in its calendar") if term else None


def _values(values: Iterable[object]) -> Iterator[str]:
    for value in values:
        if value is None or value == "":
            continue
        if not isinstance(value, MultiValue | list | tuple):
            value = [value]  # one value (PersonName objects are iterable, but single)
        for item in value:
            text = str(item).strip()
            if text:
                yield text


def _name_parts(values: Iterable[object]) -> Iterator[str]:
    for value in _values(values):
        fixed = repaired(value)  # a name written in UTF-8 into a Latin-1 file
        for text in (value,) if fixed is None else (value, fixed):
            for part in _LETTERS.findall(unicodedata.normalize("NFC", text)):
                if part.casefold() not in _PLACEHOLDERS and len(part) >= 2:
                    yield part


def _dates(birth: list[str], alternative: list[str]) -> Iterator[str]:
    yield from (d for d in _values(birth) if len(d) == 8 and d.isdigit())
    yield from (d for d in _values(alternative) if sum(c.isalnum() for c in d) >= 4)


def _long_enough_id(value: str) -> bool:
    if value.casefold() in _PLACEHOLDERS:
        return False
    return len(value) >= (_MIN_NUMERIC_ID if value.isdigit() else _MIN_ID)


# -- parsed values ------------------------------------------------------------------------


def leak_check_bytes(data: bytes, originals: Originals) -> list[str]:
    """Findings (no values, only kinds and places) for the encoded file ``data``.

    Raises:
        InvalidDicomError: ``data`` is not a DICOM file (pydicom cannot parse it).
    """
    ds = dcmread(io.BytesIO(data), force=False)
    encodings = encodings_of(ds)
    meta, body = collected(ds, encodings, regions=True)
    parsed = Parsed((meta, body), originals, lambda: collected(ds, encodings, locate=True))
    regions = body.regions or []
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        head = _meta_end(data)  # offsets are into the inflated data set: shift them
        data = data[:head] + zlib.decompress(data[head:], -zlib.MAX_WBITS)
        regions = [(low + head, high + head) for low, high in regions]
    return parsed.findings + raw_findings(data, originals, regions, encodings, parsed)


def leak_check_dataset(
    ds: Dataset, data: bytes, binary: Sequence[tuple[int, int]], originals: Originals
) -> list[str]:
    """Findings for ``data``, the exact encoding of ``ds``, without parsing it again.

    Every element of ``ds`` (its file meta included) is searched as parsed values, and
    ``data`` as raw bytes; ``binary`` holds the ``[start, end)`` ranges of bulk binary
    values in ``data``.  The transfer syntax must not be deflated.
    """
    encodings = encodings_of(ds)
    parsed = Parsed(
        collected(ds, encodings, brief=True),
        originals,
        lambda: collected(ds, encodings, locate=True),
    )
    raw = raw_findings(data, originals, binary, encodings, parsed)
    if raw:  # the brief collection left some values to the raw scan: count them all
        full = collected(ds, encodings)
        parsed = Parsed(full, originals, lambda: collected(ds, encodings, locate=True))
        raw = raw_findings(data, originals, binary, encodings, parsed)
    return parsed.findings + raw


def _meta_end(data: bytes) -> int:
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL after the preamble
    return 144 + group_length


def leak_check(path: Path, originals: Originals) -> list[str]:
    """Findings for the DICOM file at ``path``; an empty list means no original was found.

    Raises:
        InvalidDicomError: the file is not DICOM.
        OSError: the file cannot be read.
    """
    return leak_check_bytes(path.read_bytes(), originals)
