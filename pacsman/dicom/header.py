"""Find the SOP, Study and Series UIDs (or a few other early values) in raw dataset bytes.

A C-STORE'd dataset arrives as bytes in the negotiated transfer syntax.  Routing needs two
UIDs from group 0020, and checking the C-STORE needs two from group 0008; all come long
before the pixel data.  This walks element headers from the start, skips values (and whole
sequences), and stops at the first tag after (0020,000E).  Nothing is decoded, nothing is
copied but the values wanted.

:func:`dataset_head` (and :func:`routing_uids`) return ``None`` when the bytes end before the
answer is known, so a caller can retry with more bytes.  :class:`DatasetWalk` then follows
the element headers of the rest of the dataset as it streams past, so that a dataset cut
short (inside an element or a sequence) is told from a whole one without holding it.
:func:`part10_values` does the same walk over the first bytes of a Part 10 file (the push
stage reads StudyInstanceUID and SeriesNumber of every file it sends this way).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

from pydicom.valuerep import EXPLICIT_VR_LENGTH_16

from pacsman.dicom.meta import LONG_VRS_BYTES

__all__ = [
    "DatasetHead",
    "DatasetWalk",
    "Syntax",
    "dataset_head",
    "part10_values",
    "routing_uids",
    "syntax_of",
]

_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
_LOOKAHEAD = 32  # more than the longest element header (12 bytes)
Bytes = bytes | bytearray | memoryview
_RAW_LE, _RAW_BE = struct.Struct("<HHL"), struct.Struct(">HHL")
_EXPLICIT_LE, _EXPLICIT_BE = struct.Struct("<HH2sH"), struct.Struct(">HH2sH")
_U32_LE, _U32_BE = struct.Struct("<L"), struct.Struct(">L")
_SHORT_VRS_BYTES = frozenset(str(vr.value).encode() for vr in EXPLICIT_VR_LENGTH_16)
_GROUP_LE = struct.Struct("<H")

_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: Transfer syntaxes whose whole dataset is deflated (PS3.5 A.5 and A.7).
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})


class _Malformed(Exception):
    """The bytes are not a dataset in the claimed transfer syntax."""


class _Ended(struct.error):
    """The bytes end before the walk is done; ``at_boundary`` if between two elements."""

    def __init__(self, *, at_boundary: bool) -> None:
        super().__init__("the bytes end before the last wanted tag")
        self.at_boundary = at_boundary


@dataclass(frozen=True)
class Syntax:
    """How a dataset's bytes are encoded: VR mode, byte order, deflate."""

    implicit: bool
    little_endian: bool
    deflated: bool


@lru_cache(maxsize=64)
def syntax_of(transfer_syntax_uid: str) -> Syntax:
    """Return the encoding of ``transfer_syntax_uid``; unknown ones are explicit VR LE."""
    return Syntax(
        implicit=transfer_syntax_uid == _IMPLICIT,
        little_endian=transfer_syntax_uid != _BIG_ENDIAN,
        deflated=transfer_syntax_uid in _DEFLATED,
    )


class _Reader:
    """Walks element headers of one dataset encoding over a bytes-like buffer.

    Every read is a ``struct.unpack_from``: running off the end raises ``struct.error``,
    which :func:`routing_uids` reads as "incomplete".
    """

    def __init__(self, buffer: Bytes, *, implicit: bool, little: bool) -> None:
        self.buffer = buffer
        self.implicit = implicit
        self.little = little
        self._raw = _RAW_LE if little else _RAW_BE
        self._explicit = _EXPLICIT_LE if little else _EXPLICIT_BE
        self._u32 = _U32_LE if little else _U32_BE

    def raw_header(self, pos: int) -> tuple[int, int, int]:
        """Return ``(tag, length, value position)`` of a tag + 4-byte-length header."""
        group, element, length = self._raw.unpack_from(self.buffer, pos)
        return group << 16 | element, length, pos + 8

    def header(self, pos: int) -> tuple[int, int, int, bool]:
        """Return ``(tag, length, value position, implicit SQ)`` of a data element."""
        if self.implicit:
            return (*self.raw_header(pos), True)
        group, element, vr, length = self._explicit.unpack_from(self.buffer, pos)
        if group == 0xFFFE:  # item and delimiters: no VR, 4-byte length
            return (*self.raw_header(pos), True)
        if vr in LONG_VRS_BYTES:
            (length,) = self._u32.unpack_from(self.buffer, pos + 8)
            return group << 16 | element, length, pos + 12, vr == b"UN"
        if not (vr.isalpha() and vr.isupper()):
            raise _Malformed  # e.g. an implicit VR dataset sent as explicit
        return group << 16 | element, length, pos + 8, False

    def skip_value(self, length: int, pos: int, implicit_items: bool, depth: int) -> int:
        """Return the position after a value; undefined lengths are walked as sequences."""
        if length != _UNDEFINED:
            return pos + length
        if depth >= _MAX_DEPTH:
            raise _Malformed
        # An undefined-length UN is an implicit VR sequence (PS3.5 6.2.2).
        reader = self
        if implicit_items and not self.implicit:
            reader = _Reader(self.buffer, implicit=True, little=self.little)
        return reader.skip_items(pos, depth + 1)

    def skip_items(self, pos: int, depth: int) -> int:
        """Skip sequence items up to and including the sequence delimiter."""
        while True:
            tag, length, pos = self.raw_header(pos)
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _Malformed
            pos = pos + length if length != _UNDEFINED else self.skip_item_elements(pos, depth)

    def skip_item_elements(self, pos: int, depth: int) -> int:
        """Skip the elements of an undefined-length item, through its delimiter."""
        while True:
            tag, length, value, implicit_items = self.header(pos)
            if tag == _ITEM_END:
                return value
            pos = self.skip_value(length, value, implicit_items, depth)


def _scan(reader: _Reader, found: dict[int, str], pos: int = 0) -> int:
    """Fill ``found`` with top-level values; return where the first tag past them starts.

    Raises:
        _Ended: the bytes end first (``at_boundary`` if exactly between two elements).
        _Malformed: a header that cannot be in this encoding.
    """
    last = max(found)
    buffer = reader.buffer
    end = len(buffer)
    plain = not reader.implicit and reader.little
    while pos < end:
        try:
            if plain:  # explicit VR little endian: most elements take the fast loop
                pos, passed = _scan_plain(buffer, found, pos, last)
                if passed:
                    return pos
                if pos >= end:
                    break
            tag, length, value, implicit_items = reader.header(pos)
            if tag > last:
                return pos
            if tag in found and length != _UNDEFINED:
                if value + length > end:
                    raise struct.error("value runs past the end")
                text = bytes(reader.buffer[value : value + length])
                found[tag] = text.decode("ascii", errors="replace").rstrip("\0 ")
            pos = reader.skip_value(length, value, implicit_items, 0)
        except struct.error:
            raise _Ended(at_boundary=False) from None
    raise _Ended(at_boundary=pos == end)


def _scan_plain(buffer: Bytes, found: dict[int, str], pos: int, last: int) -> tuple[int, bool]:
    """:func:`_scan`'s loop for explicit VR little endian elements of defined length.

    Returns where it stopped and whether that is past ``last``; it stops before any other
    element (undefined length, an unknown VR, an item tag) and where fewer than 12 bytes
    are left, for :func:`_scan`'s general step.
    """
    end = len(buffer)
    unpack, u32 = _EXPLICIT_LE.unpack_from, _U32_LE.unpack_from
    while pos + 12 <= end:
        group, element, vr, length = unpack(buffer, pos)
        tag = group << 16 | element
        if tag > last:
            return pos, True
        if vr in LONG_VRS_BYTES:
            (length,) = u32(buffer, pos + 8)
            if length == _UNDEFINED:
                return pos, False
            value = pos + 12
        elif vr in _SHORT_VRS_BYTES:
            value = pos + 8
        else:
            return pos, False
        if tag in found:
            if value + length > end:
                raise struct.error("value runs past the end")
            text = bytes(buffer[value : value + length])
            found[tag] = text.decode("ascii", errors="replace").rstrip("\0 ")
        pos = value + length
    return pos, False


def _inflate(data: Bytes, limit: int) -> bytes:
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, limit)
    except zlib.error:
        return b""


@dataclass(frozen=True)
class DatasetHead:
    """What the first bytes of a received dataset say (``""`` for a value not there).

    ``whole`` is False when the bytes end inside an element (a dataset cut short) or are
    not a dataset in the transfer syntax at all.  ``end`` is where the rest of the
    dataset's top-level elements start, for a :class:`DatasetWalk` in ``syntax`` (the
    encoding that read it, implicit VR for a sender that mislabels it); ``None`` for a
    deflated dataset, which is not walked.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    whole: bool
    end: int | None
    syntax: Syntax


def dataset_head(
    data: Bytes, syntax: Syntax, *, final: bool, inflate_limit: int = 1 << 22
) -> DatasetHead | None:
    """Return the SOP Class/Instance, Study and Series UIDs from a dataset's first bytes.

    ``data`` is the dataset (no file meta) as received.  Returns ``None`` if ``data`` ends
    before the answer is known and ``final`` is false.  Deflated datasets are inflated up to
    ``inflate_limit`` bytes.
    """
    buffer = _inflate(data, inflate_limit) if syntax.deflated else data
    found = dict.fromkeys((_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_UID, _SERIES_UID), "")
    whole = True
    try:
        end: int | None = _scan(
            _Reader(buffer, implicit=syntax.implicit, little=syntax.little_endian), found
        )
    except _Ended as ended:
        if not final:
            return None
        whole, end = ended.at_boundary, len(buffer)
    except _Malformed:
        if not syntax.implicit:  # tolerate a sender that mislabels implicit VR data
            implicit = Syntax(True, True, syntax.deflated)
            return dataset_head(data, implicit, final=final, inflate_limit=inflate_limit)
        whole, end = False, None
    return DatasetHead(
        sop_class_uid=found[_SOP_CLASS_UID],
        sop_instance_uid=found[_SOP_INSTANCE_UID],
        study_instance_uid=found[_STUDY_UID],
        series_instance_uid=found[_SERIES_UID],
        whole=whole,
        end=None if syntax.deflated else end,
        syntax=syntax,
    )


def routing_uids(
    data: Bytes, syntax: Syntax, *, final: bool, inflate_limit: int = 1 << 22
) -> tuple[str, str] | None:
    """Return ``(StudyInstanceUID, SeriesInstanceUID)`` read from a dataset's first bytes.

    As :func:`dataset_head`: ``None`` if ``data`` ends before both are known and ``final``
    is false; a UID that is absent, or a header that is malformed, comes back as ``""``.
    """
    head = dataset_head(data, syntax, final=final, inflate_limit=inflate_limit)
    if head is None:
        return None
    return head.study_instance_uid, head.series_instance_uid


def _skip_plain(buffer: Bytes, pos: int) -> int:
    """Skip explicit VR little endian elements of defined length; return where the first
    other element starts (or fewer than 12 bytes are left), for :class:`DatasetWalk`."""
    end = len(buffer)
    unpack, u32 = _EXPLICIT_LE.unpack_from, _U32_LE.unpack_from
    while pos + 12 <= end:
        _, _, vr, length = unpack(buffer, pos)
        if vr in LONG_VRS_BYTES:
            (length,) = u32(buffer, pos + 8)
            if length == _UNDEFINED:
                return pos
            pos += 12 + length
        elif vr in _SHORT_VRS_BYTES:
            pos += 8 + length
        else:
            return pos
    return pos


class DatasetWalk:
    """Follows a dataset's element headers as its bytes stream past: is it whole at the end?

    Start it where :func:`dataset_head` stopped (``DatasetHead.end``) and :meth:`feed` it
    every byte of the dataset from the start, in order, in chunks of any size.  Values are
    skipped without being looked at, so a large pixel data chunk costs one comparison;
    undefined-length sequences, items and encapsulated pixel data are followed to their
    delimiters.  Only a header cut by a chunk boundary (at most 12 bytes) is copied.
    """

    __slots__ = (
        "_broken",
        "_carry",
        "_implicit",
        "_little",
        "_plain",
        "_pos",
        "_readers",
        "_seen",
        "_stack",
    )

    def __init__(self, syntax: Syntax, *, start: int) -> None:
        self._little = syntax.little_endian
        self._readers: dict[bool, _Reader] = {}  # made when first needed
        self._implicit = syntax.implicit
        self._plain = not syntax.implicit and syntax.little_endian  # the fast loop applies
        self._pos = start  # where the next header starts, counted from the dataset's start
        self._seen = 0  # bytes fed so far
        self._carry = b""  # the start of a header cut by the end of the last chunk
        self._stack: list[tuple[bool, bool]] = []  # (in a sequence, implicit VR) per level
        self._broken = False

    @property
    def whole(self) -> bool:
        """True if the bytes fed so far end exactly after a whole top-level element."""
        return not (self._broken or self._stack or self._carry) and self._pos == self._seen

    def feed(self, chunk: Bytes) -> None:
        """Take the next bytes of the dataset."""
        base = self._seen
        self._seen = end = base + len(chunk)
        if self._pos >= end or self._broken:
            return
        if self._carry:  # finish the cut header from the carried bytes and the new ones
            head = self._carry + bytes(chunk[:_LOOKAHEAD])
            start, self._carry = self._pos, b""
            self._walk(head, start, last=len(chunk) <= _LOOKAHEAD)
            if self._carry or not base <= self._pos < end:
                return
        self._walk(chunk, base, last=True)

    def _walk(self, buffer: Bytes, base: int, *, last: bool) -> None:
        size = len(buffer)
        while not self._broken:
            offset = self._pos - base
            if offset >= size:
                return
            try:
                if self._plain and not self._stack:
                    offset = _skip_plain(buffer, offset)
                    self._pos = base + offset
                    if offset >= size:
                        return
                self._pos = base + self._step(buffer, offset)
            except struct.error:  # the header runs past this buffer
                if last:
                    self._carry = bytes(buffer[offset:])
                return
            except _Malformed:
                self._broken = True

    def _step(self, buffer: Bytes, offset: int) -> int:
        """Read the header at ``offset``; return where the next one starts."""
        stack = self._stack
        implicit = stack[-1][1] if stack else self._implicit
        reader = self._readers.get(implicit)
        if reader is None:
            reader = self._readers[implicit] = _Reader(
                buffer, implicit=implicit, little=self._little
            )
        reader.buffer = buffer
        if stack and stack[-1][0]:  # in a sequence: an item, or the sequence's end
            tag, length, value = reader.raw_header(offset)
            if tag == _SEQUENCE_END:
                stack.pop()
            elif tag != _ITEM:
                raise _Malformed
            elif length == _UNDEFINED:
                stack.append((False, implicit))
            else:
                value += length  # a defined-length item, or a pixel data fragment
            return value
        tag, length, value, implicit_items = reader.header(offset)
        if tag == _ITEM_END:
            if not stack:
                raise _Malformed
            stack.pop()
            return value
        if length != _UNDEFINED:
            return value + length
        if len(stack) >= _MAX_DEPTH:
            raise _Malformed
        stack.append((True, implicit or implicit_items))
        return value


def _meta_end(buffer: Bytes) -> tuple[str, int]:
    """Return the file meta's transfer syntax and where the data set starts.

    Raises:
        _Malformed: no ``DICM`` marker, or a meta element of undefined length.
        struct.error: the bytes end inside the file meta.
    """
    if bytes(buffer[128:132]) != b"DICM":
        raise _Malformed
    reader, pos, syntax = _Reader(buffer, implicit=False, little=True), 132, ""
    while True:
        if _GROUP_LE.unpack_from(buffer, pos)[0] != 0x0002:  # the data set may be implicit VR
            return syntax, pos
        tag, length, value, _ = reader.header(pos)
        if length == _UNDEFINED:
            raise _Malformed
        if tag == 0x00020010:
            syntax = bytes(buffer[value : value + length]).decode("ascii", "replace")
        pos = value + length


def part10_values(data: Bytes, tags: Collection[int]) -> dict[int, str] | None:
    """Return the raw text of ``tags`` (data set tags, not group 0002) from a file's first bytes.

    ``data`` starts with the 128-byte preamble and ``DICM``.  A tag that is absent maps to
    ``""``; values are ASCII-decoded with trailing NULs and spaces removed, nothing else.
    Returns ``None`` whenever the answer is not certain: no ``DICM`` marker, no transfer
    syntax, a malformed header, a deflated or big-endian data set, or ``data`` ending before
    the last tag is passed.  The caller then asks a full DICOM parser.
    """
    try:
        transfer_syntax, start = _meta_end(data)
        transfer_syntax = transfer_syntax.rstrip("\0 ")
        syntax = syntax_of(transfer_syntax)
        if not transfer_syntax or syntax.deflated or not syntax.little_endian:
            return None
        found = dict.fromkeys(tags, "")
        _scan(_Reader(data, implicit=syntax.implicit, little=True), found, start)
    except (struct.error, _Malformed):
        return None
    return found
