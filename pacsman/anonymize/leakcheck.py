"""The leak check: scan a de-identified file for this patient's original identifiers.

:class:`Originals` is collected from the source dataset before de-identification.  A term
is found when it occurs with no letter or digit right before or after it (UIDs: no digit
or dot), case-insensitively, in

* every parsed element -- the file meta included, at every sequence depth, text decoded
  in the file's character set (name parts, IDs, dates, institutions; UIDs exactly);
* the raw bytes of the file, encoded in ASCII/UTF-8 and in the file's character set.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pacsman.anonymize._profile_rules import vr_for

__all__ = ["LONG_TERM", "Originals", "leak_check", "leak_check_bytes"]

LONG_TERM = 6
_MIN_NAME, _MIN_ID, _MIN_NUMERIC_ID, _MIN_UID = 3, 3, 6, 8
#: Placeholder "names" found in already-anonymized or test data (pacsman writes the first):
#: they identify no one, and would match pacsman's own dummies and ordinary words.
_PLACEHOLDERS = frozenset(
    {"anonymized", "anonymous", "anon", "unknown", "none", "name", "first", "last", "patient"}
    | {"test", "phantom", "removed", "deidentified", "de-identified", "xxx", "nobody"}
)
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"})
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UR", "UT"}
)
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_DELIMITERS = {0x5C, 0x3D, 0x5E, 0x0D, 0x0A, 0x09, 0x0C}  # reset ISO 2022 state at these
#: Characters that may not touch a term, by kind (default: ASCII letters and digits).
_EDGES = {"original UID": "0-9.", "birth date": "0-9"}
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
        """Collect the originals from the (top level of the) source dataset ``ds``."""
        names = [ds.get(k) for k in ("PatientName", "OtherPatientNames", "PatientBirthName")]
        ids = [ds.get("PatientID"), ds.get("OtherPatientIDs"), ds.get("AccessionNumber")]
        ids += [item.get("PatientID") for item in ds.get("OtherPatientIDsSequence") or []]
        places = [] if keep_institution else [ds.get("InstitutionName")]
        places += [] if keep_institution else [ds.get("InstitutionAddress")]
        vendor = " ".join(_values([ds.get("Manufacturer"), ds.get("ManufacturerModelName")]))
        return cls(
            name_parts=frozenset(p for p in _name_parts(names) if _long_enough_name(p)),
            ids=frozenset(i for i in _values(ids) if _long_enough_id(i)),
            dates=frozenset(d for d in _values([ds.get("PatientBirthDate")]) if len(d) == 8),
            institutions=frozenset(
                i for i in _values(places) if len(i) >= 4 and i.lower() not in vendor.lower()
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

    def find_in_text(self, text: str) -> str | None:
        """The kind of the first original found in ``text``, else ``None``."""
        for kind, pattern in self._patterns:
            if pattern.search(text):
                return kind
        return None

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
        yield from (part for part in re.split(r"[\^=\s,]+", text) if part)


def _long_enough_name(part: str) -> bool:
    if part.casefold() in _PLACEHOLDERS:
        return False
    return len(part) >= (_MIN_NAME if part.isascii() else 2)


def _long_enough_id(value: str) -> bool:
    if value.casefold() in _PLACEHOLDERS:
        return False
    return len(value) >= (_MIN_NUMERIC_ID if value.isdigit() else _MIN_ID)


def _text_pattern(kind: str, term: str) -> re.Pattern[str]:
    edge = _EDGES.get(kind, "0-9A-Za-z")
    return re.compile(rf"(?<![{edge}]){re.escape(term)}(?![{edge}])", re.IGNORECASE)


def _walk(
    ds: Dataset, path: str, regions: list[tuple[int, int]], encodings: list[str]
) -> Iterator[tuple[str, str, str]]:
    """Yield ``(location, vr, text)`` for text/UID values; collect bulk binary regions."""
    if "SpecificCharacterSet" in ds:
        encodings = _encodings(ds)
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        vr = (raw.VR if raw is not None else None) or vr_for(tag)
        vr = vr_for(tag) if vr == "UN" and vr_for(tag) != "UN" else vr
        where = f"{path}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if vr in _BINARY_VRS:
            if isinstance(raw, RawDataElement) and raw.value is not None:
                regions.append((raw.value_tell, raw.value_tell + len(raw.value)))
        elif vr == "SQ":
            for index, item in enumerate(ds[tag].value or []):
                yield from _walk(item, f"{where}[{index}].", regions, encodings)
        elif vr in _TEXT_VRS or vr == "UI":
            element = raw if isinstance(raw, RawDataElement) else ds[tag]
            yield from ((where, vr, text) for text in _texts(element, vr, encodings))


def _texts(element: DataElement | RawDataElement, vr: str, encodings: list[str]) -> list[str]:
    """The element's values as text; raw bytes are decoded here, without pydicom's checks."""
    value = element.value
    if isinstance(value, bytes):
        if vr in _CHARSET_VRS:
            text = decode_bytes(value, encodings, _DELIMITERS)
        else:
            text = value.decode("latin-1")
        parts = [text] if vr in ("LT", "ST", "UT", "UR") else text.split("\\")
        return [part.strip("\0 ") for part in parts]
    if value is None:
        return []
    values = value if isinstance(value, MultiValue | list) else [value]
    return [str(item) for item in values]


def _parsed_findings(
    ds: Dataset, originals: Originals, regions: list[tuple[int, int]]
) -> list[str]:
    findings: list[str] = []
    for dataset, prefix in ((ds.file_meta, "file meta "), (ds, "")):
        for where, vr, value in _walk(dataset, "", regions, _encodings(ds)):
            kind = "original UID" if vr == "UI" and value in originals.uids else None
            kind = kind or originals.find_in_text(value)
            if kind is not None:
                findings.append(f"{kind} found in {prefix}element {where}")
    return findings


def _encodings(ds: Dataset) -> list[str]:
    charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    try:
        return list(convert_encodings(charset))
    except LookupError:
        return ["iso8859"]


def _raw_findings(
    data: bytes, originals: Originals, regions: list[tuple[int, int]], encodings: list[str]
) -> list[str]:
    lowered = data.lower()
    findings = []
    for kind, term in originals.terms:
        edge = _EDGES.get(kind, "0-9a-z").encode()
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


def _find(data: bytes, needle: bytes, edge: bytes, regions: list[tuple[int, int]]) -> int | None:
    boundary = re.compile(rb"[" + edge + rb"]")
    start = data.find(needle)
    while start != -1:
        end = start + len(needle)
        before, after = data[start - 1 : start] if start else b"", data[end : end + 1]
        in_binary = any(low <= start < high for low, high in regions)
        clear = not (boundary.fullmatch(before) or boundary.fullmatch(after))
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
    findings += _raw_findings(data, originals, regions, ["utf-8", *_encodings(ds)])
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
