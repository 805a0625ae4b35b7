"""Reading a source file: tolerant, and without work the engine throws away.

The engine replaces the file meta, so for the usual Part 10 file -- a preamble, ``DICM``, a
file meta group and a little-endian data set -- the file meta is only split into raw
elements here, and the data set is read by pydicom's :func:`~pydicom.filereader.read_dataset`
(which also detects a data set encoded in another VR than its transfer syntax says).
Anything else (no preamble, no file meta, big endian, deflate) goes to ``dcmread(force=True)``.
"""

from __future__ import annotations

import io
import struct
from functools import lru_cache

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from pacsman.dicom.meta import LONG_VRS_BYTES

__all__ = ["implicit_vr_of", "read_instance"]

_META_GROUP = 0x0002
_Meta = dict[BaseTag, DataElement | RawDataElement]


def read_instance(data: bytes) -> Dataset:
    """The data set in ``data``, with its file meta (when it has one).

    Raises:
        InvalidDicomError, ValueError, EOFError, struct.error...: what pydicom raises on a
            file it cannot read, even with ``force=True``.
    """
    meta = _file_meta(data)
    if meta is not None:
        elements, end = meta
        implicit = _little_endian_syntax(elements)
        if implicit is not None:
            fp = io.BytesIO(data)
            fp.seek(end)
            ds = read_dataset(fp, implicit, True)
            ds.file_meta = FileMetaDataset(elements)
            return ds
    return dcmread(io.BytesIO(data), force=True)


def _file_meta(data: bytes) -> tuple[_Meta, int] | None:
    """The raw file meta elements and where the data set starts; ``None`` if unusual."""
    if data[128:132] != b"DICM":
        return None
    elements: _Meta = {}
    offset = 132
    while offset + 8 <= len(data):
        group, element, vr = struct.unpack_from("<HH2s", data, offset)
        if group != _META_GROUP:
            break
        if vr in LONG_VRS_BYTES:
            (length,) = struct.unpack_from("<L", data, offset + 8)
            start = offset + 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        else:
            return None  # not explicit VR: let pydicom make sense of it
        if length == 0xFFFFFFFF or start + length > len(data):
            return None
        tag = Tag(group, element)
        value = data[start : start + length]
        elements[tag] = RawDataElement(tag, vr.decode(), length, value, start, False, True)
        offset = start + length
    return elements, offset


def _little_endian_syntax(elements: _Meta) -> bool | None:
    raw = elements.get(Tag(0x00020010))
    if raw is None or not isinstance(raw.value, bytes):
        return None
    return implicit_vr_of(raw.value.decode("ascii", "replace").strip("\0 "))


@lru_cache(maxsize=64)
def implicit_vr_of(transfer_syntax: str) -> bool | None:
    """``is_implicit_VR`` of a plain little-endian transfer syntax; ``None`` for any other.

    Encapsulated (compressed) syntaxes count as plain: only their pixel data differs.
    """
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or not syntax.is_little_endian or syntax.is_deflated:
        return None
    return bool(syntax.is_implicit_VR)
