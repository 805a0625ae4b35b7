"""How the leak check reads a file: its parsed values, and its raw bytes.

Private to :mod:`.leakcheck` (which holds the originals and the public functions).

* :func:`collected` gathers every text value of a data set at every depth -- plain ones,
  keep-list ones (devices) and exempt ones (words of the standard) apart -- and, when
  asked, each with its place, to report findings; ``brief`` leaves raw ASCII values that
  cannot be exempt to the raw scan (the engine's fast path).
* :class:`Parsed` searches them (joined: one search for the usual, clean file) and knows
  what the raw scan will meet again in them.
* :func:`raw_findings` reads the raw bytes outside bulk values: as ASCII once, then the
  words holding other bytes in Latin-1, UTF-8 and the file's character sets.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, NamedTuple

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement

from pacsman.anonymize._leakmatch import Hit, Matcher
from pacsman.anonymize._profile_rules import effective_vr
from pacsman.anonymize._terms import (
    STANDARD_SCHEMES,
    is_defined_term,
    is_standard_code,
    is_standard_meaning,
)
from pacsman.anonymize._values import element_texts, encodings_of, peek
from pacsman.anonymize.profile import keep_list_tags

if TYPE_CHECKING:
    from pacsman.anonymize.leakcheck import Originals

__all__ = ["BULK_VRS", "Collected", "Parsed", "collected", "raw_findings"]

#: Bulk binary VRs: not text, skipped by both scans (their payloads are the engine's).
BULK_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "OB or OW", "US or OW"})
#: What the engine's fast path collects even when the raw scan reads it (see Collected):
#: sequences (walked), CS values, keep-list and code values, DeidentificationMethod --
#: the values that may be exempt, which only a parsed value can show.
_ALWAYS = frozenset({"SQ", "CS"})
_KEPT_BRIEF = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00120063})
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UR", "UT", "UI"}
)
_CODE_VALUE, _SCHEME, _MEANING = 0x00080100, 0x00080102, 0x00080104
_CODE_TAGS = frozenset({_CODE_VALUE, _SCHEME, _MEANING, 0x00080103, 0x00080119, 0x00080120})
_METHOD = 0x00120063  # DeidentificationMethod: pacsman's own wording
_METHOD_TEXT = re.compile(r"DICOM PS3\.15 Table E\.1-1 .*|pacsman \S+|profile \S+ [0-9a-f]+")


class _Value(NamedTuple):
    """One text value to search, located lazily; ``exempt``: a word of the standard."""

    path: str
    tag: int
    text: str
    exempt: bool = False
    device: bool = False  # a keep-list attribute (a device or technique name)


@dataclass
class Collected:
    """Text values (and bulk regions, when asked) collected from a data set.

    Values go to ``plain``, ``devices`` (keep-list attributes) or ``exempt`` (words of the
    standard); with ``located``, each also with its place, to report findings.
    ``brief``: raw ASCII values are not collected, except those that may be exempt (CS,
    keep-list, code values) -- the raw scan reads the same bytes as ASCII.  It is the
    engine's fast path; a finding is then located with a full collection.
    """

    plain: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)
    located: list[_Value] | None = None
    regions: list[tuple[int, int]] | None = None
    brief: bool = False


def _code_exempt(ds: Dataset, encodings: list[str]) -> frozenset[int]:
    """The code attributes of ``ds`` that are a standard code with its standard meaning."""
    if _SCHEME not in ds:
        return frozenset()
    scheme = "".join(peek(ds, _SCHEME, encodings))
    value = "".join(peek(ds, _CODE_VALUE, encodings))
    if not is_standard_code(scheme, value):
        return frozenset({_SCHEME}) if scheme in STANDARD_SCHEMES else frozenset()
    if is_standard_meaning(scheme, value, "".join(peek(ds, _MEANING, encodings))):
        return _CODE_TAGS
    return frozenset({_SCHEME})


def _collect(ds: Dataset, path: str, encodings: list[str], out: Collected) -> None:
    """Collect the text/UID values of ``ds`` at every depth, and its bulk binary regions.

    Regions are the offsets of raw values in the file ``ds`` was parsed from.
    """
    encodings = encodings_of(ds, encodings)
    exempt_codes = _code_exempt(ds, encodings)
    keep_list, located, brief = keep_list_tags(), out.located, out.brief
    always, kept = _ALWAYS, _KEPT_BRIEF
    for key, element in ds.items():
        tag = int(key)  # BaseTag compares in Python: plain ints from here on
        vr = element.VR
        if vr is None or vr == "UN":
            vr = effective_vr(tag, vr)
        if (
            brief
            and vr not in always
            and type(element) is RawDataElement
            and tag not in keep_list
            and tag not in kept
            and (element.value or b"").isascii()
        ):
            continue  # the raw scan's ASCII view holds these very bytes
        if vr in BULK_VRS:
            if out.regions is not None and isinstance(element, RawDataElement) and element.value:
                out.regions.append((element.value_tell, element.value_tell + len(element.value)))
        elif vr == "SQ":
            where = f"{path}{_location(tag)}"
            for index, item in enumerate(ds[tag].value or []):
                _collect(item, f"{where}[{index}].", encodings, out)
        elif vr in _TEXT_VRS or vr == "UN":
            texts = element_texts(element, "LT" if vr == "UN" else vr, encodings)
            device = tag in keep_list
            words = vr == "CS" or device
            for text in texts:
                exempt = (words and is_defined_term(text)) or tag in exempt_codes
                exempt = exempt or (tag == _METHOD and _METHOD_TEXT.fullmatch(text) is not None)
                (out.exempt if exempt else out.devices if device else out.plain).append(text)
                if located is not None:
                    located.append(_Value(path, tag, text, exempt, device))


def _location(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _describe(value: _Value, hit: Hit, prefix: str) -> str:
    keyword = keyword_for_tag(value.tag) if not value.tag >> 16 & 1 else "private"
    name = f" {keyword}" if keyword else ""
    return (
        f"{hit.kind} found in {prefix}element {value.path}{_location(value.tag)}{name} ({hit.how})"
    )


class Parsed:
    """The parsed values of one file: their findings, and what the raw scan will meet
    again in them (exempt values, and values already reported) so as not to count it.

    The values are searched joined (one search for the usual, clean file); only on a hit
    are they collected again with their places (``locate``) to say where.
    """

    def __init__(
        self,
        collected: tuple[Collected, Collected],
        originals: Originals,
        locate: Callable[[], tuple[Collected, Collected]],
    ) -> None:
        self.originals = originals
        meta, body = collected
        self.plain = meta.plain + body.plain
        self.devices = meta.devices + body.devices
        self.exempt = meta.exempt + body.exempt
        self.findings: list[str] = []
        if self._any_hit():
            meta, body = locate()
            for prefix, found in (("file meta ", meta), ("", body)):
                for value in found.located or []:
                    hit = _hit(originals, value)
                    if hit is not None:
                        self.findings.append(_describe(value, hit, prefix))

    def _any_hit(self) -> bool:
        matcher, devices = self.originals.matcher, self.originals.device_matcher
        if matcher.first("\n".join(t for t in self.plain if t.isascii())):
            return True
        if any(matcher.first(t) for t in self.plain if not t.isascii()):
            return True
        return any(devices.first(t) for t in self.devices)

    @cached_property
    def accounted(self) -> Counter[int]:
        """Occurrences of each raw term in parsed values that need no raw finding."""
        raw = self.originals.raw_matcher
        counts = raw.count("\n".join(self.exempt))
        for index, count in raw.count("\n".join(self.devices)).items():
            if raw.term(index).is_defined_word:  # HEAD in a coil name: a word
                counts[index] += count
        if self.findings:  # reported above: not again from the raw bytes
            counts += raw.count("\n".join(self.plain + self.devices))
        return counts


def _hit(originals: Originals, value: _Value) -> Hit | None:
    if value.exempt:
        return None
    matcher = originals.device_matcher if value.device else originals.matcher
    return matcher.first(value.text)


# -- raw bytes ----------------------------------------------------------------------------

#: Bytes of 0x80 and above, as spaces: the ASCII view of the raw bytes.
_ASCII_ONLY = bytes.maketrans(bytes(range(0x80, 0x100)), b" " * 0x80)
_HIGH = re.compile(rb"[\x80-\xff]+")
_WORD_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


_STRUCTURE = (b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0", b"\xff\xff\xff\xff")
#: Byte classes: a letter next to a byte of 0x80+, or two such bytes, may be text beyond
#: ASCII; header bytes (lengths, numbers) of 0x80+ rarely are: most files skip the rest.
_CLASSES = bytes(
    ord("a") if chr(b).isascii() and chr(b).isalpha() else ord("h") if b >= 0x80 else ord(".")
    for b in range(256)
)


def _foreign_words(piece: bytes) -> bytes:
    """The words of ``piece`` that hold bytes of 0x80 and above, joined by spaces: what
    the other encodings are read for."""
    if piece.isascii():
        return b""
    for structure in _STRUCTURE:  # item and sequence delimiters, undefined lengths
        piece = piece.replace(structure, b" ")
    classes = piece.translate(_CLASSES)  # a letter, h a byte of 0x80+, . anything else
    if b"ah" not in classes and b"ha" not in classes and b"hh" not in classes:
        return b""
    words, end = [], 0
    for match in _HIGH.finditer(piece):
        start, stop = match.span()
        if start < end:
            continue  # already inside the previous word
        while start > 0 and piece[start - 1] in _WORD_BYTES:
            start -= 1
        while stop < len(piece) and (piece[stop] in _WORD_BYTES or piece[stop] >= 0x80):
            stop += 1
        words.append(piece[start:stop])
        end = stop
    return b" ".join(words)


def _chunks(data: bytes, regions: Sequence[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """``data`` without the bulk regions: ``(offset, bytes)`` pieces."""
    pieces, start = [], 0
    for low, high in sorted(regions):
        if low > start:
            pieces.append((start, data[start:low]))
        start = max(start, high)
    if start < len(data):
        pieces.append((start, data[start:]))
    return pieces


def _views(
    pieces: list[tuple[int, bytes]], encodings: list[str]
) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """The raw text to scan, as ``(how it was read, [(offset, text)])``.

    ASCII once (other bytes as spaces); then only the words that hold other bytes, each
    read in Latin-1, UTF-8 and the file's character sets -- so no ASCII word is counted
    twice.  The 7-bit ISO 2022 sets (Japanese, Korean) are read whole.
    """
    yield "ASCII", [(o, p.translate(_ASCII_ONLY).decode("ascii")) for o, p in pieces]
    codecs_ = list(dict.fromkeys(_codec(e) for e in ["latin-1", "utf-8", *encodings]))
    foreign = [(o, _foreign_words(p)) for o, p in pieces]
    texts = [
        (o, "\n".join(dict.fromkeys(words.decode(c, "replace") for c in codecs_)))
        for o, words in foreign
        if words
    ]
    if texts:
        yield f"non-ASCII text in {', '.join(codecs_)}", texts
    for codec in codecs_:
        if codec.startswith("iso2022"):  # 7-bit escapes: the whole text
            yield codec, [(o, p.decode(codec, "replace")) for o, p in pieces]


def raw_findings(
    data: bytes,
    originals: Originals,
    regions: Sequence[tuple[int, int]],
    encodings: list[str],
    parsed: Parsed,
) -> list[str]:
    matcher = originals.raw_matcher
    if not len(matcher):
        return []
    findings: dict[int, str] = {}
    for reading, texts in _views(_chunks(data, regions), encodings):
        counts: Counter[int] = Counter()
        for _, text in texts:
            counts += matcher.count(text)
        for term, count in counts.items():
            if term in findings or count <= parsed.accounted[term]:
                continue
            kind, how = matcher.term(term).kind, matcher.term(term).how
            offset = _first_offset(matcher, term, texts)
            findings[term] = (
                f"{kind} found in the raw bytes near offset {offset} ({how}; read as {reading})"
            )
    return list(dict.fromkeys(findings.values()))  # two spellings of one kind: one line


@lru_cache(maxsize=64)
def _codec(encoding: str) -> str:
    """The codec's own name (``iso8859`` and ``latin-1`` are one codec)."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return "latin-1"


def _first_offset(matcher: Matcher, term: int, texts: list[tuple[int, str]]) -> int:
    for offset, text in texts:
        if matcher.count(text)[term]:
            return offset
    return 0  # pragma: no cover (the term was counted in one of the texts)


def collected(
    ds: Dataset,
    encodings: list[str],
    *,
    brief: bool = False,
    locate: bool = False,
    regions: bool = False,
) -> tuple[Collected, Collected]:
    """The values of ``ds``'s file meta and of ``ds`` (with ``regions``: and the offsets of
    ``ds``'s bulk values in the file it was parsed from)."""
    meta, body = (
        Collected(brief=brief, located=[] if locate else None, regions=[] if regions else None)
        for _ in range(2)
    )
    _collect(ds.file_meta, "", encodings, meta)
    _collect(ds, "", encodings, body)
    return meta, body
