"""Path components for the receive layout, sanitized: no traversal, no hidden names, bounded.

``<out>/<subject>/<session>/<SeriesNumber>-<SeriesDescription>/<SOPInstanceUID>.dcm``: every
component comes from the PACS or the query file, so every one goes through
:func:`safe_component` before it touches the filesystem.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

__all__ = [
    "ANONYMIZED_DIRECTORY",
    "XNAT_LABEL_RULE",
    "ReceivedSeries",
    "anonymized_series_directory",
    "default_labels",
    "instance_filename",
    "is_xnat_label",
    "raw_series_directories",
    "safe_component",
    "series_directory",
    "xnat_label_outsiders",
]

#: XNAT's rule for project, subject and session labels (xnat-rest-contract.md §12), in words.
XNAT_LABEL_RULE = "use 1-64 letters, digits, '_' or '-'"
#: The same rule as a pattern: the one copy in pacsman (the XNAT emulator keeps its own).
_XNAT_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
_XNAT_LABEL_OUTSIDER = re.compile(r"[^A-Za-z0-9_-]")

#: Characters that are never kept: separators on any OS, and what Windows/SMB shares refuse.
_FORBIDDEN = frozenset('/\\:*?"<>|')
_WHITESPACE_RUN = re.compile(r"[\s_]+")
_EDGE_JUNK = "._- "
#: Already safe, and left unchanged by the full treatment: the common case (UIDs, numbers).
_PLAIN = re.compile(r"[0-9A-Za-z](?:[0-9A-Za-z.-]*[0-9A-Za-z])?")


def is_xnat_label(text: str) -> bool:
    """True if ``text`` is a valid XNAT project, subject or session label."""
    return _XNAT_LABEL.fullmatch(text) is not None


def xnat_label_outsiders(text: str) -> list[str]:
    """The distinct characters of ``text`` that an XNAT label may not hold, sorted."""
    return sorted(set(_XNAT_LABEL_OUTSIDER.findall(text)))


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


#: The folder of ``<out>`` that holds de-identified data.
ANONYMIZED_DIRECTORY = "anonymized"


class ReceivedSeries(Protocol):
    """What decides a series' raw directory (a job-store record has it)."""

    @property
    def study_instance_uid(self) -> str: ...
    @property
    def series_instance_uid(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def study_date(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def session(self) -> str: ...
    @property
    def series_number(self) -> str: ...
    @property
    def series_description(self) -> str: ...


def raw_series_directories(
    out_directory: Path, series: Sequence[ReceivedSeries]
) -> dict[str, Path]:
    """SeriesInstanceUID -> :func:`series_directory` for every series of one run.

    A row's Subject/Session labels are used when it has them, else :func:`default_labels`;
    two studies that would share default labels get ``<session>_2``, ``_3``... in the order
    of ``series``, which must be the run's query-file order so the answer never changes.
    """
    sessions: dict[str, tuple[str, str]] = {}
    used: set[tuple[str, str]] = set()
    for one in series:
        if one.study_instance_uid in sessions:
            continue
        subject, session = default_labels(one.patient_id, one.study_date)
        subject, session = one.subject or subject, one.session or session
        base, n = session, 1
        while (subject, session) in used:
            n += 1
            session = f"{base}_{n}"
        used.add((subject, session))
        sessions[one.study_instance_uid] = (subject, session)
    return {
        s.series_instance_uid: series_directory(
            out_directory,
            subject=sessions[s.study_instance_uid][0],
            session=sessions[s.study_instance_uid][1],
            series_number=s.series_number,
            series_description=s.series_description,
        )
        for s in series
    }


def anonymized_series_directory(
    out_directory: Path, *, subject: str, session: str, series_number: str
) -> Path:
    """``<out>/anonymized/<subject>/<session>/<SeriesNumber>``: never the SeriesDescription,
    which may hold PHI.  ``subject`` and ``session`` are XNAT labels, already safe."""
    number = safe_component(series_number, fallback="series")
    return out_directory / ANONYMIZED_DIRECTORY / subject / session / number
