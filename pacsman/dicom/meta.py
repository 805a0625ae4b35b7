"""What pacsman writes at the head of every DICOM file it makes, and the VRs that shape it.

One source for: pacsman's Implementation Class UID and Implementation Version Name, the
explicit VRs with a 4-byte length (from pydicom), and the file meta group itself (PS3.10
7.1).  Both files pacsman writes use it: an instance received by the Storage SCP
(:mod:`pacsman.dicom._pending`) and a de-identified instance (:mod:`pacsman.anonymize`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from pacsman import __version__

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "LONG_VRS",
    "LONG_VRS_BYTES",
    "PREAMBLE",
    "MetaElement",
    "encode_file_meta",
    "file_meta",
    "file_meta_elements",
    "padded",
]

#: pacsman's Implementation Class UID (a fixed 2.25 UUID-derived UID), PS3.7 D.3.3.2.
IMPLEMENTATION_CLASS_UID = "2.25.229348925104640523125455290358931536617"
#: pacsman's Implementation Version Name: ``PACSMAN_0_1_0`` for 0.1.0 (SH: at most 16).
IMPLEMENTATION_VERSION_NAME = f"PACSMAN_{__version__}".replace(".", "_")[:16]
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2), from pydicom.
LONG_VRS: frozenset[str] = frozenset(str(vr.value) for vr in EXPLICIT_VR_LENGTH_32)
#: :data:`LONG_VRS` as they appear in an element header.
LONG_VRS_BYTES: frozenset[bytes] = frozenset(vr.encode("ascii") for vr in LONG_VRS)
#: The 128-byte preamble (all zero) and the ``DICM`` prefix (PS3.10 7.1).
PREAMBLE = b"\0" * 128 + b"DICM"

#: One file meta element: ``(tag, VR, value bytes)``; the value is padded when encoded.
MetaElement = tuple[int, str, bytes]

_NUL_PADDED = frozenset({"UI", "OB"})
_FILE_META_VERSION = b"\0\1"  # (0002,0001) FileMetaInformationVersion


def _ascii(value: str) -> bytes:
    return value.encode("ascii", errors="replace")


def file_meta_elements(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    *,
    sending_ae_title: str = "",
) -> tuple[MetaElement, ...]:
    """Return the elements of pacsman's file meta group, in tag order.

    ``sending_ae_title`` (0002,0017) is written when given, cut to 16 characters.
    """
    elements: list[MetaElement] = [
        (0x00020001, "OB", _FILE_META_VERSION),
        (0x00020002, "UI", _ascii(sop_class_uid)),  # MediaStorageSOPClassUID
        (0x00020003, "UI", _ascii(sop_instance_uid)),  # MediaStorageSOPInstanceUID
        (0x00020010, "UI", _ascii(transfer_syntax_uid)),  # TransferSyntaxUID
        (0x00020012, "UI", _ascii(IMPLEMENTATION_CLASS_UID)),
        (0x00020013, "SH", _ascii(IMPLEMENTATION_VERSION_NAME)),
    ]
    if sending_ae_title:
        elements.append((0x00020017, "AE", _ascii(sending_ae_title[:16])))
    return tuple(elements)


def padded(vr: str, value: bytes) -> bytes:
    """``value`` padded to even length: NUL for UI and OB, a space otherwise (PS3.5 6.2)."""
    if len(value) % 2 == 0:
        return value
    return value + (b"\0" if vr in _NUL_PADDED else b" ")


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode("ascii"))
    if vr in LONG_VRS:
        return head + struct.pack("<HL", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def encode_file_meta(elements: Iterable[MetaElement]) -> bytes:
    """Return the preamble, ``DICM`` and the file meta group with its group length.

    ``elements`` are written in the order given (tag order is the caller's business),
    explicit VR little endian, each value padded to even length.
    """
    body = b"".join(_element(tag, vr, padded(vr, value)) for tag, vr, value in elements)
    return PREAMBLE + _element(0x00020000, "UL", struct.pack("<L", len(body))) + body


def file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    *,
    sending_ae_title: str = "",
) -> bytes:
    """Return the preamble, ``DICM`` and pacsman's file meta group for one instance."""
    return encode_file_meta(
        file_meta_elements(
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax_uid,
            sending_ae_title=sending_ae_title,
        )
    )
