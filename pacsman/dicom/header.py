"""Find StudyInstanceUID and SeriesInstanceUID (or a few other early values) in raw bytes.

A C-STORE'd dataset arrives as bytes in the negotiated transfer syntax.  Routing needs two
UIDs from group 0020, which come long before the pixel data: this walks element headers
from the start, skips values (and whole sequences), and stops at the first tag after
(0020,000E).  Nothing is decoded, nothing is copied but the two values.

:func:`routing_uids` returns ``None`` when the bytes end before the answer is known, so a
caller can retry with more bytes; a malformed header yields ``("", "")`` (unroutable).
:func:`part10_values` does the same walk over the first bytes of a Part 10 file (the push
stage reads StudyInstanceUID and SeriesNumber of every file it sends this way).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

from pacsman.dicom.meta import LONG_VRS_BYTES

__all__ = ["Syntax", "part10_values", "routing_uids", "syntax_of"]

_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
Bytes = bytes | bytearray | memoryview
_RAW_LE, _RAW_BE = struct.Struct("<HHL"), struct.Struct(">HHL")
_EXPLICIT_LE, _EXPLICIT_BE = struct.Struct("<HH2sH"), struct.Struct(">HH2sH")
_U32_LE, _U32_BE = struct.Struct("<L"), struct.Struct(">L")
_GROUP_LE = struct.Struct("<H")

_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: Transfer syntaxes whose whole dataset is deflated (PS3.5 A.5 and A.7).
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})


class _Malformed(Exception):
    """The bytes are not a dataset in the claimed transfer syntax."""


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


def _scan(reader: _Reader, found: dict[int, str], pos: int = 0) -> None:
    last = max(found)
    while True:  # ends at the first tag past the last one wanted, or with struct.error
        tag, length, value, implicit_items = reader.header(pos)
        if tag > last:
            break
        if tag in found and length != _UNDEFINED:
            if value + length > len(reader.buffer):
                raise struct.error("value runs past the end")
            text = bytes(reader.buffer[value : value + length])
            found[tag] = text.decode("ascii", errors="replace").rstrip("\0 ")
        pos = reader.skip_value(length, value, implicit_items, 0)


def _inflate(data: Bytes, limit: int) -> bytes:
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, limit)
    except zlib.error:
        return b""


def routing_uids(
    data: Bytes, syntax: Syntax, *, final: bool, inflate_limit: int = 1 << 22
) -> tuple[str, str] | None:
    """Return ``(StudyInstanceUID, SeriesInstanceUID)`` read from a dataset's first bytes.

    ``data`` is the dataset (no file meta) as received.  Returns ``None`` if ``data`` ends
    before both are known and ``final`` is false; a UID that is absent, or a header that is
    malformed, comes back as ``""``.  Deflated datasets are inflated up to
    ``inflate_limit`` bytes.
    """
    buffer = _inflate(data, inflate_limit) if syntax.deflated else data
    found = {_STUDY_UID: "", _SERIES_UID: ""}
    try:
        _scan(_Reader(buffer, implicit=syntax.implicit, little=syntax.little_endian), found)
    except struct.error:  # the bytes end early
        if not final:
            return None
    except _Malformed:
        if not syntax.implicit:  # tolerate a sender that mislabels implicit VR data
            return routing_uids(data, Syntax(True, True, syntax.deflated), final=final)
    return found[_STUDY_UID], found[_SERIES_UID]


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
