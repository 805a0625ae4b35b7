"""Named DIMSE statuses and A-ASSOCIATE-RJ advice: data for messages that name the fix."""

from __future__ import annotations

__all__ = ["CONGESTION", "REJECT_ADVICE", "STATUS_NAMES", "status_name"]

#: Named DIMSE statuses (PS3.4 Annex C and PS3.7 Annex C) that pacsman decides on.
STATUS_NAMES: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes not supported",
    0x0110: "Failure: processing failure",
    0x0122: "Failure: SOP class not supported",
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources, unable to calculate number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xA900: "Error: identifier does not match SOP class",
    0xB000: "Warning: sub-operations complete, one or more failures",
    0xFE00: "Cancel: sub-operations terminated",
    0xFF00: "Pending",
    0xFF01: "Pending: optional keys not supported",
}

#: Statuses that mean "the PACS is busy": back off and retry.
CONGESTION = frozenset({0xA700, 0xA701, 0xA702})

#: A-ASSOCIATE-RJ (result source, reason) -> what the user should do (PS3.8 9.3.4).
REJECT_ADVICE: dict[tuple[int, int], str] = {
    (1, 2): "the PACS does not support the DICOM application context",
    (1, 3): (
        "the PACS does not know calling AE title {calling!r}: ask its administrator to add "
        "{calling!r} (this host, port {local_port}) to its known nodes, or set local.ae_title "
        "to the AE title it knows"
    ),
    (1, 7): (
        "the PACS does not answer to called AE title {called!r}: check "
        "pacs.{node}.called_ae_title against the PACS's own AE title"
    ),
    (3, 1): "the PACS is congested (temporary); pacsman backs off and retries",
    (3, 2): "the PACS refused a new association (local limit exceeded); lower "
    "pacs.{node}.max_associations or wait",
}


def status_name(status: int) -> str:
    """Return ``0xA702 (Refused: out of resources, ...)`` for a DIMSE status code."""
    name = STATUS_NAMES.get(status)
    if name is None:
        if 0xC000 <= status <= 0xCFFF:
            name = "Failure: unable to process"
        elif 0xA000 <= status <= 0xAFFF:
            name = "Failure"
        else:
            name = "unknown status"
    return f"0x{status:04X} ({name})"
