"""The leak check: scan a de-identified file for this patient's original identifiers.

:class:`Originals` is collected from the source dataset before de-identification.  A term
is found when it occurs with no letter or digit right before or after it (UIDs: no digit
or dot), case-insensitively, in

* every parsed element -- the file meta included, at every sequence depth, text decoded
  in the file's character set (name parts, IDs, dates, institutions; UIDs exactly);
* the raw bytes of the file, encoded in ASCII/UTF-8 and in the file's character set.

The engine calls :func:`leak_check_dataset` with the data set it holds and the exact bytes
it is about to write (no second parse); :func:`leak_check` and :func:`leak_check_bytes`
parse a file, for files written by anything else.

Bulk binary values (pixel data, waveforms, ...) are only searched for terms of at least
:data:`LONG_TERM` bytes: a 3-byte name part occurs by chance in half a megabyte of pixels.

Which originals count (documented minimums avoid chance hits on ordinary numbers/words):

* patient name parts of >= 3 letters (>= 2 for non-ASCII scripts) and patient IDs of >= 3
  characters (purely numeric: >= 6 digits), except placeholders such as ANONYMIZED or TEST;
* the birth date and the accession number;
* the institution name/address, unless retained, and unless it is part of the Manufacturer
  or model name (modalities often carry the vendor's name there);
* every UID the engine remapped, of >= 8 characters (shorter ones are test artefacts).
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pacsman.anonymize._encode import BINARY_VRS
from pacsman.anonymize._profile_rules import effective_vr
from pacsman.anonymize._values import element_texts, encodings_of, peek

__all__ = ["LONG_TERM", "Originals", "leak_check", "leak_check_bytes", "leak_check_dataset"]

LONG_TERM = 6
_MIN_NAME, _MIN_ID, _MIN_NUMERIC_ID, _MIN_UID = 3, 3, 6, 8
#: Placeholder "names" found in already-anonymized or test data (pacsman writes the first):
#: they identify no one, and would match pacsman's own dummies and ordinary words.
_PLACEHOLDERS = frozenset(
    {"anonymized", "anonymous", "anon", "unknown", "none", "name", "first", "last", "patient"}
    | {"test", "phantom", "removed", "deidentified", "de-identified", "xxx", "nobody"}
)
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UR", "UT"}
)
#: Characters that may not touch a term, by kind (default: ASCII letters and digits).
_EDGES = {"original UID": "0-9.", "birth date": "0-9"}
_WORD = "0-9A-Za-z"
_NAME_SEPARATORS = re.compile(r"[\^=\s,]+")
_UID_RUNS = re.compile(r"[0-9.]+")
_GENERIC = re.compile(
    r"\d+(?:\.\d+){3,}"  # UID-like
    r"|\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{4}\b"  # dates
    r"|\d{6,}"  # long digit runs (record numbers, YYYYMMDD)
)


@dataclass(frozen=True)
class Originals:
    """The identifying values of one source instance, kept only in memory."""

    name_parts: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()
    institutions: frozenset[str] = frozenset()
    uids: frozenset[str] = frozenset()

    @classmethod
    def from_dataset(
        cls, ds: Dataset, *, uids: Iterable[str] = (), keep_institution: bool = False
    ) -> Originals:
        """Collect the originals from the (top level of the) source dataset ``ds``.

        Raw elements are read without converting them (see :mod:`._values`).
        """
        encodings = encodings_of(ds)

        def get(keyword: str) -> list[str]:
            return peek(ds, keyword, encodings)

        names = get("PatientName") + get("OtherPatientNames") + get("PatientBirthName")
        ids = get("PatientID") + get("OtherPatientIDs") + get("AccessionNumber")
        if "OtherPatientIDsSequence" in ds:
            for item in ds.OtherPatientIDsSequence or []:
                ids += peek(item, "PatientID", encodings_of(item, encodings))
        places = [] if keep_institution else get("InstitutionName") + get("InstitutionAddress")
        vendor = " ".join(get("Manufacturer") + get("ManufacturerModelName")).lower()
        return cls(
            name_parts=frozenset(p for p in _name_parts(names) if _long_enough_name(p)),
            ids=frozenset(i for i in _values(ids) if _long_enough_id(i)),
            dates=frozenset(d for d in _values(get("PatientBirthDate")) if len(d) == 8),
            institutions=frozenset(
                i for i in _values(places) if len(i) >= 4 and i.lower() not in vendor
            ),
        ).with_uids(uids)

    def with_uids(self, uids: Iterable[str]) -> Originals:
        """A copy that also looks for ``uids`` (those shorter than 8 characters are ignored)."""
        kept = frozenset(u for u in uids if len(u) >= _MIN_UID)
        return Originals(self.name_parts, self.ids, self.dates, self.institutions, kept)

    @cached_property
    def terms(self) -> tuple[tuple[str, str], ...]:
        """``(kind, term)`` pairs, longest first."""
        pairs = [("patient name part", t) for t in self.name_parts]
        pairs += [("patient ID or accession number", t) for t in self.ids]
        pairs += [("birth date", t) for t in self.dates]
        pairs += [("institution", t) for t in self.institutions]
        pairs += [("original UID", t) for t in self.uids]
        return tuple(sorted(pairs, key=lambda pair: -len(pair[1])))

    @cached_property
    def _patterns(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        return tuple((kind, _text_pattern(kind, term)) for kind, term in self.terms)

    @cached_property
    def _screens(self) -> tuple[re.Pattern[str], ...]:
        """One pattern per edge rule for every term but UIDs: a fast first pass."""
        return _screens(tuple(pair for pair in self.terms if pair[0] != "original UID"))

    def find_in_text(self, text: str) -> str | None:
        """The kind of the first original found in ``text``, else ``None``."""
        if self.uids and not self.uids.isdisjoint(_UID_RUNS.findall(text)):
            return "original UID"  # a clear UID occurrence is a whole run of digits and dots
        if not any(screen.search(text) for screen in self._screens):
            return None
        for kind, pattern in self._patterns:
            if pattern.search(text):
                return kind
        return None  # pragma: no cover (a screen hit is always some term's hit)

    def scrub(self, text: str) -> str:
        """``text`` without any original, date, UID-like string or long digit run."""
        for _kind, pattern in self._patterns:
            text = pattern.sub("", text)
        return " ".join(_GENERIC.sub("", text).split())


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
    for text in _values(values):
        yield from (part for part in _NAME_SEPARATORS.split(text) if part)


def _long_enough_name(part: str) -> bool:
    if part.casefold() in _PLACEHOLDERS:
        return False
    return len(part) >= (_MIN_NAME if part.isascii() else 2)


def _long_enough_id(value: str) -> bool:
    if value.casefold() in _PLACEHOLDERS:
        return False
    return len(value) >= (_MIN_NUMERIC_ID if value.isdigit() else _MIN_ID)


@lru_cache(maxsize=1024)
def _screens(terms: tuple[tuple[str, str], ...]) -> tuple[re.Pattern[str], ...]:
    by_edge: dict[str, list[str]] = {}
    for kind, term in terms:
        by_edge.setdefault(_EDGES.get(kind, _WORD), []).append(re.escape(term))
    return tuple(
        re.compile(rf"(?<![{edge}])(?:{'|'.join(terms)})(?![{edge}])", re.IGNORECASE)
        for edge, terms in by_edge.items()
    )


@lru_cache(maxsize=4096)
def _text_pattern(kind: str, term: str) -> re.Pattern[str]:
    edge = _EDGES.get(kind, _WORD)
    return re.compile(rf"(?<![{edge}]){re.escape(term)}(?![{edge}])", re.IGNORECASE)


#: ``(path of the item, tag, text)``: a value to search, located lazily.
_Located = tuple[str, int, str]


def _collect(
    ds: Dataset,
    path: str,
    regions: list[tuple[int, int]] | None,
    encodings: list[str],
    found: list[_Located],
) -> None:
    """Collect the text/UID values of ``ds`` at every depth; binary regions if asked.

    Regions are the offsets of raw values in the file ``ds`` was parsed from.
    """
    encodings = encodings_of(ds, encodings)
    for tag, element in list(ds.items()):
        vr = effective_vr(int(tag), element.VR)
        if vr in BINARY_VRS:
            if regions is not None and isinstance(element, RawDataElement) and element.value:
                regions.append((element.value_tell, element.value_tell + len(element.value)))
        elif vr == "SQ":
            where = f"{path}{_location(tag)}"
            for index, item in enumerate(ds[tag].value or []):
                _collect(item, f"{where}[{index}].", regions, encodings, found)
        elif vr in _TEXT_VRS or vr == "UI":
            found += ((path, tag, text) for text in element_texts(element, vr, encodings))


def _location(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _parsed_findings(
    ds: Dataset, originals: Originals, regions: list[tuple[int, int]] | None
) -> list[str]:
    encodings = encodings_of(ds)
    meta: list[_Located] = []
    body: list[_Located] = []
    _collect(ds.file_meta, "", regions, encodings, meta)
    _collect(ds, "", regions, encodings, body)
    if originals.find_in_text("\0".join(text for _, _, text in meta + body)) is None:
        return []  # the usual case: one search over every value at once
    findings = []
    for prefix, texts in (("file meta ", meta), ("", body)):
        for path, tag, text in texts:
            kind = originals.find_in_text(text)
            if kind is not None:
                findings.append(f"{kind} found in {prefix}element {path}{_location(tag)}")
    return findings


def _raw_findings(
    data: bytes, originals: Originals, regions: Sequence[tuple[int, int]], encodings: list[str]
) -> list[str]:
    lowered = data.lower()
    findings = []
    for kind, term in originals.terms:
        edge = _BYTE_EDGES[_EDGES.get(kind, _WORD)]
        for needle in _encoded(term.lower(), encodings):
            offset = _find(lowered, needle, edge, regions)
            if offset is not None:
                findings.append(f"{kind} found in the raw bytes at offset {offset}")
                break
    return findings


def _encoded(term: str, encodings: list[str]) -> set[bytes]:
    needles = set()
    for encoding in encodings:
        try:
            needles.add(term.encode(encoding).lower())
        except (UnicodeEncodeError, LookupError):
            continue
    return needles


_DIGITS = b"0123456789"
#: The edge rules as byte sets (the raw scan runs on lower-cased bytes).
_BYTE_EDGES = {
    _WORD: frozenset(_DIGITS + b"abcdefghijklmnopqrstuvwxyz"),
    _EDGES["original UID"]: frozenset(_DIGITS + b"."),
    _EDGES["birth date"]: frozenset(_DIGITS),
}


def _find(
    data: bytes, needle: bytes, edge: frozenset[int], regions: Sequence[tuple[int, int]]
) -> int | None:
    start = data.find(needle)
    while start != -1:
        end = start + len(needle)
        clear = not ((start and data[start - 1] in edge) or (end < len(data) and data[end] in edge))
        in_binary = any(low <= start < high for low, high in regions)
        if clear and not (in_binary and len(needle) < LONG_TERM):
            return start
        start = data.find(needle, start + 1)
    return None


def leak_check_bytes(data: bytes, originals: Originals) -> list[str]:
    """Findings (no values, only kinds and places) for the encoded file ``data``.

    Raises:
        InvalidDicomError: ``data`` is not a DICOM file (pydicom cannot parse it).
    """
    ds = dcmread(io.BytesIO(data), force=False)
    regions: list[tuple[int, int]] = []
    findings = _parsed_findings(ds, originals, regions)
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        regions = []  # offsets are into the inflated stream: search it whole
        data = data + zlib.decompress(data[_meta_end(data) :], -zlib.MAX_WBITS)
    findings += _raw_findings(data, originals, regions, ["utf-8", *encodings_of(ds)])
    return findings


def leak_check_dataset(
    ds: Dataset, data: bytes, binary: Sequence[tuple[int, int]], originals: Originals
) -> list[str]:
    """Findings for ``data``, the exact encoding of ``ds``, without parsing it again.

    Every element of ``ds`` (its file meta included) is searched as parsed values, and
    ``data`` as raw bytes; ``binary`` holds the ``[start, end)`` ranges of bulk binary
    values in ``data``.  The transfer syntax must not be deflated.
    """
    findings = _parsed_findings(ds, originals, None)
    findings += _raw_findings(data, originals, binary, ["utf-8", *encodings_of(ds)])
    return findings


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
