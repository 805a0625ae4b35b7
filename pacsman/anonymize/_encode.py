"""Encoding a de-identified dataset as a DICOM file, once, in memory.

Little-endian transfer syntaxes (implicit and explicit VR, encapsulated pixel data included)
are written here: every element the walk left raw -- pixel data, kept attributes -- is
copied through byte for byte; changed elements are encoded by pydicom's element writer;
sequences and items are written with undefined lengths (PS3.5 7.5.1), so nothing is
buffered twice.  The byte ranges of bulk binary values are recorded for the leak check.

Anything else (big endian, deflate, a data set read in another encoding than its transfer
syntax declares) goes through pydicom's ``save_as``; :attr:`Encoded.binary` is then
``None`` and the leak check parses the bytes back to find those ranges.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import lru_cache

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import UID

from pacsman.anonymize._profile_rules import effective_vr
from pacsman.anonymize._read import implicit_vr_of
from pacsman.anonymize._values import encodings_of
from pacsman.dicom.meta import LONG_VRS, MetaElement, encode_file_meta

__all__ = ["BINARY_VRS", "Encoded", "MismatchedEncoding", "encode_fast", "encode_pydicom"]

#: VRs whose values are bulk binary (``UN`` only when the dictionary does not know the tag).
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # (FFFE,E000), undefined length
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # (FFFE,E00D)
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD)
_INTEGERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
_ASCII_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})


@dataclass(frozen=True)
class Encoded:
    """The encoded file and, when known, the ``[start, end)`` ranges of binary values."""

    data: bytes
    binary: tuple[tuple[int, int], ...] | None


class MismatchedEncoding(Exception):
    """A raw element was read in another encoding than the one being written."""


def _by_tag(item: tuple[int, object]) -> int:
    return int(item[0])


@lru_cache(maxsize=8192)
def _is_binary(tag: int, vr: str | None) -> bool:
    return effective_vr(tag, vr) in BINARY_VRS


@lru_cache(maxsize=8192)
def _prefix(tag: int, vr: str | None, implicit: bool) -> tuple[bytes, bool]:
    """The element header up to its length field, and whether that field is 4 bytes."""
    tag_bytes = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return tag_bytes, True
    if vr in LONG_VRS:
        return tag_bytes + vr.encode() + b"\0\0", True
    return tag_bytes + str(vr).encode(), False


def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes:
    prefix, long = _prefix(int(tag), vr, implicit)
    return prefix + length.to_bytes(4 if long else 2, "little")


class _Writer:
    """Writes one data set body into a single buffer, recording binary ranges."""

    def __init__(self, implicit: bool, offset: int) -> None:
        self.implicit = implicit
        self.offset = offset  # where the body starts in the file
        self.fp = DicomBytesIO()
        self.fp.is_little_endian = True
        self.fp.is_implicit_VR = implicit
        self.binary: list[tuple[int, int]] = []

    def dataset(self, ds: Dataset, encodings: list[str]) -> None:
        encodings = encodings_of(ds, encodings)
        for tag, element in sorted(ds.items(), key=_by_tag):
            if tag & 0xFFFF == 0:
                continue  # group lengths are retired (PS3.5 7.2)
            if isinstance(element, RawDataElement):
                self._raw(element)
            elif element.VR == "SQ":
                self._sequence(element, encodings)
            else:
                self._converted(element, encodings)

    def _converted(self, element: DataElement, encodings: list[str]) -> None:
        """Write an element pydicom decoded: simple values here, the rest by pydicom."""
        data = _simple_value(element)
        if data is not None:
            self.fp.write(_header(element.tag, element.VR, len(data), self.implicit) + data)
            return
        start = self.fp.tell()
        write_data_element(self.fp, element, encodings)
        if element.VR in BINARY_VRS:
            self._mark(start, self.fp.tell())

    def _raw(self, raw: RawDataElement) -> None:
        if raw.is_implicit_VR != self.implicit or not raw.is_little_endian:
            raise MismatchedEncoding
        value = raw.value or b""
        undefined = raw.length == _UNDEFINED
        write = self.fp.write
        write(_header(raw.tag, raw.VR, _UNDEFINED if undefined else len(value), self.implicit))
        if _is_binary(int(raw.tag), raw.VR):
            start = self.fp.tell()
            self._mark(start, start + len(value))
        write(value)
        if undefined:
            write(_SEQUENCE_END)

    def _sequence(self, element: DataElement, encodings: list[str]) -> None:
        items = element.value or []
        write = self.fp.write
        write(_header(element.tag, "SQ", _UNDEFINED if items else 0, self.implicit))
        if not items:
            return
        for item in items:
            write(_ITEM)
            self.dataset(item, encodings)
            write(_ITEM_END)
        write(_SEQUENCE_END)

    def _mark(self, start: int, end: int) -> None:
        if end > start:
            self.binary.append((self.offset + start, self.offset + end))


def _simple_value(element: DataElement) -> bytes | None:
    """The encoded value of an ASCII-VR text or a US/UL/SS/SL element, else ``None``."""
    vr, value = element.VR, element.value
    values = value if isinstance(value, list | tuple) else [value]
    if vr in _INTEGERS and all(type(v) is int for v in values):
        try:
            return struct.pack(f"<{len(values)}{_INTEGERS[vr]}", *values)
        except struct.error:
            return None  # out of range: pydicom says so
    if vr in _ASCII_TEXT and all(type(v) is str or type(v) is UID for v in values):
        text = "\\".join(str(v) for v in values)
        if text.isascii():
            data = text.encode("ascii")
            return data + (b"\0" if vr == "UI" else b" ") if len(data) % 2 else data
    return None


def _meta(meta: Dataset) -> bytes:
    """The preamble, ``DICM`` and the file meta group, with its group length."""
    elements: list[MetaElement] = []
    for tag in sorted(meta.keys()):
        if tag & 0xFFFF == 0:
            continue
        element = meta.get_item(tag)
        value = element.value if element is not None else None
        data = value if isinstance(value, bytes) else str(value or "").encode("ascii")
        elements.append((tag, effective_vr(tag, element.VR if element is not None else None), data))
    return encode_file_meta(elements)


def encode_fast(ds: Dataset, transfer_syntax: str) -> Encoded:
    """Encode ``ds`` (with its file meta) when ``transfer_syntax`` is little endian.

    Raises:
        MismatchedEncoding: the syntax is not one this writer handles, or a raw element
            was read in another encoding; use :func:`encode_pydicom`.
    """
    implicit = implicit_vr_of(transfer_syntax)
    if implicit is None:
        raise MismatchedEncoding
    head = _meta(ds.file_meta)
    writer = _Writer(implicit, len(head))
    writer.dataset(ds, ["iso8859"])
    return Encoded(head + writer.fp.getvalue(), tuple(writer.binary))


def encode_pydicom(ds: Dataset) -> Encoded:
    """Encode ``ds`` with pydicom's writer (any transfer syntax pydicom writes).

    Raises:
        ValueError, TypeError, NotImplementedError: pydicom cannot encode a value.
    """
    _match_encoding(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Encoded(buffer.getvalue(), None)


def _match_encoding(ds: Dataset) -> None:
    """Decode raw elements read in another encoding than the transfer syntax declares."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not syntax.is_transfer_syntax:
        return
    raws = (ds.get_item(tag) for tag in ds.keys())  # noqa: SIM118 (tags, not elements)
    if any(
        isinstance(raw, RawDataElement) and raw.is_implicit_VR != syntax.is_implicit_VR
        for raw in raws
    ):
        for _ in ds.iterall():  # converted elements are re-encoded; raw ones cannot be
            pass
