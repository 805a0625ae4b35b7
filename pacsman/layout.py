"""Path components for the receive layout, sanitized: no traversal, no hidden names, bounded.

``<out>/<subject>/<session>/<SeriesNumber>-<SeriesDescription>/<SOPInstanceUID>.dcm``: every
component comes from the PACS or the query file, so every one goes through
:func:`safe_component` before it touches the filesystem.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

__all__ = ["default_labels", "instance_filename", "safe_component", "series_directory"]

#: Characters that are never kept: separators on any OS, and what Windows/SMB shares refuse.
_FORBIDDEN = frozenset('/\\:*?"<>|')
_WHITESPACE_RUN = re.compile(r"[\s_]+")
_EDGE_JUNK = "._- "
#: Already safe, and left unchanged by the full treatment: the common case (UIDs, numbers).
_PLAIN = re.compile(r"[0-9A-Za-z](?:[0-9A-Za-z.-]*[0-9A-Za-z])?")


def _is_kept(char: str) -> bool:
    # Categories C* are control, format (zero-width, bidi overrides), surrogates, private use
    # and unassigned: invisible or misleading in a file name.
    return char not in _FORBIDDEN and not unicodedata.category(char).startswith("C")


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def _clean(text: str, max_length: int) -> str:
    text = unicodedata.normalize("NFC", text)
    text = "".join(char if _is_kept(char) else "_" for char in text)
    text = _WHITESPACE_RUN.sub("_", text).strip(_EDGE_JUNK)
    return _truncate_utf8(text, max_length).strip(_EDGE_JUNK)


def safe_component(text: str, *, fallback: str, max_length: int = 64) -> str:
    """Return ``text`` as one safe path component, or ``fallback`` if nothing is left.

    * Unicode is NFC-normalized; letters of any script stay readable (``Müller``, ``膝``).
    * ``/``, ``\\``, NUL, control and invisible format characters (category C*), and
      ``:*?"<>|`` become ``_``; runs of whitespace and ``_`` become one ``_``.
    * Leading and trailing ``.``, ``_``, ``-`` and spaces are stripped, so the result is never
      hidden, never ``.`` or ``..``, and never looks like a command-line option.
    * The result is at most ``max_length`` bytes in UTF-8 (so also at most ``max_length``
      characters), cut at a character boundary.

    Raises:
        ValueError: if ``max_length`` < 1 or ``fallback`` itself sanitizes to nothing.
    """
    if max_length < 1:
        raise ValueError(f"max_length {max_length} must be >= 1")
    if len(text) <= max_length and _PLAIN.fullmatch(text):
        return text
    cleaned = _clean(text, max_length)
    if cleaned:
        return cleaned
    safe_fallback = _clean(fallback, max_length)
    if not safe_fallback:
        raise ValueError(f"fallback {fallback!r} is not a usable path component")
    return safe_fallback


def default_labels(patient_id: str, study_date: str) -> tuple[str, str]:
    """Return the default ``(subject, session)`` labels for a row that has none.

    * subject = the sanitized PatientID (``unknown_subject`` if it sanitizes to nothing);
    * session = ``<subject>_<StudyDate>`` sanitized (``<subject>_undated`` without a date).

    Both are single safe path components (see :func:`safe_component`).  They carry the
    PatientID, so they are patient data: fine on disk before de-identification, never in logs.
    """
    subject = safe_component(patient_id, fallback="unknown_subject")
    date = safe_component(study_date, fallback="undated", max_length=16)
    return subject, safe_component(f"{subject}_{date}", fallback=subject, max_length=80)


def series_directory(
    out_directory: Path,
    *,
    subject: str,
    session: str,
    series_number: str,
    series_description: str,
) -> Path:
    """Return ``<out>/<subject>/<session>/<SeriesNumber>-<SeriesDescription>``, all sanitized.

    A missing description gives just ``<SeriesNumber>``; a missing number gives ``0``.
    """
    number = safe_component(series_number, fallback="0", max_length=12)
    description = _clean(series_description, 64)
    series = f"{number}-{description}" if description else number
    return (
        out_directory
        / safe_component(subject, fallback="unknown_subject")
        / safe_component(session, fallback="unknown_session", max_length=80)
        / safe_component(series, fallback=number, max_length=80)
    )


def instance_filename(sop_instance_uid: str) -> str:
    """Return ``<SOPInstanceUID>.dcm``, sanitized: a UID with ``../`` cannot escape."""
    return safe_component(sop_instance_uid, fallback="unknown_instance") + ".dcm"
