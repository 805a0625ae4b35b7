"""Keyed UID remapping: HMAC-SHA256(key, project|uid) -> ``2.25.<integer>``.

The same key, project and original UID always give the same new UID, across files, runs
and machines, so a study pulled again merges into the same XNAT session.  Without the key
the new UIDs cannot be linked back.  The digest is cut to 128 bits, so the result is at
most ``2.25.`` + 39 digits = 44 characters, inside the 64 a UID may have.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["CLASS_UID_KEYWORDS", "is_constant_uid", "remap_uid"]

#: UID attributes that name a class, syntax or registry, never an instance: kept as they are.
CLASS_UID_KEYWORDS = frozenset(
    {
        "SOPClassUID",
        "ReferencedSOPClassUID",
        "ReferencedSOPClassUIDInFile",
        "MediaStorageSOPClassUID",
        "RelatedGeneralSOPClassUID",
        "OriginalSpecializedSOPClassUID",
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "ImplementationClassUID",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
    }
)

_STANDARD_ROOT = "1.2.840.10008."


def remap_uid(key: bytes, project: str, uid: str) -> str:
    """The pseudonymous UID for ``uid`` in ``project`` (keyed; never an unkeyed hash)."""
    message = f"pacsman-uid|{project}|{uid.strip()}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def is_constant_uid(uid: str) -> bool:
    """True for well-known UIDs (SOP classes, transfer syntaxes, DICOM's own registry).

    Every UID the standard issues -- the whole registry, pydicom's UID dictionary
    included -- is under ``1.2.840.10008.``, and only the standard issues UIDs there.
    """
    return uid.strip().startswith(_STANDARD_ROOT)
