"""Path components for the receive layout, sanitized: no traversal, no hidden names, bounded.

``<out>/<subject>/<session>/<SeriesNumber>-<SeriesDescription>/<SOPInstanceUID>.dcm``: every
component comes from the PACS or the query file, so every one goes through
:func:`safe_component` before it touches the filesystem.

Files that can hold PHI are written 0600 in folders created 0700, whatever the umask
(:func:`private_directory`, :func:`open_private`), and every CSV goes through
:func:`write_private_csv`, which neutralizes spreadsheet formulas (:func:`csv_cell`).
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from pacsman.errors import InputError

__all__ = [
    "ANONYMIZED_DIRECTORY",
    "PRIVATE_DIRECTORY_MODE",
    "PRIVATE_FILE_MODE",
    "XNAT_LABEL_RULE",
    "ReceivedSeries",
    "anonymized_series_directory",
    "csv_cell",
    "default_labels",
    "instance_filename",
    "is_xnat_label",
    "open_private",
    "private_directory",
    "private_tree",
    "raw_series_directories",
    "read_private",
    "safe_component",
    "series_directory",
    "uncsv_cell",
    "write_private",
    "write_private_csv",
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
#: Names Windows (and so an SMB share) reserves for devices, with or without an extension.
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"]
)


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
    * A name Windows reserves for a device (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM0``-``9``,
      ``LPT0``-``9``, in any case, with or without an extension) gets ``_`` after its stem
      (``CON_``, ``nul_.txt``), so ``store_root`` can be an SMB share.  Trailing dots and
      spaces, which Windows drops, are already stripped above.

    Raises:
        ValueError: if ``max_length`` < 1 or ``fallback`` itself sanitizes to nothing.
    """
    if max_length < 1:
        raise ValueError(f"max_length {max_length} must be >= 1")
    if len(text) <= max_length and _PLAIN.fullmatch(text) and not _is_reserved(text):
        return text
    cleaned = _not_reserved(_clean(text, max_length), max_length)
    if cleaned:
        return cleaned
    safe_fallback = _not_reserved(_clean(fallback, max_length), max_length)
    if not safe_fallback:
        raise ValueError(f"fallback {fallback!r} is not a usable path component")
    return safe_fallback


def _is_reserved(name: str) -> bool:
    """True for ``CON``, ``nul.txt``, ``Com1.dcm``...: a device on Windows, whatever the case."""
    return name.partition(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED


def _not_reserved(name: str, max_length: int = 64) -> str:
    """``name`` with ``_`` after a reserved stem (``CON`` -> ``CON_``, ``nul.txt`` ->
    ``nul_.txt``); any other name is returned unchanged."""
    if not _is_reserved(name):
        return name
    stem, dot, rest = name.partition(".")
    renamed = f"{stem}_{dot}{rest}"
    if len(renamed.encode("utf-8")) > max_length:
        renamed = f"{stem[:-1]}_{dot}{rest}"
    return renamed


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
    which may hold PHI.  ``subject`` and ``session`` are XNAT labels, safe but for the names
    Windows reserves (``CON`` -> ``CON_``, see :func:`safe_component`)."""
    number = safe_component(series_number, fallback="series")
    folders = (_not_reserved(subject), _not_reserved(session))  # XNAT allows 'CON' and 'nul'
    return out_directory / ANONYMIZED_DIRECTORY / folders[0] / folders[1] / number


# -- files that can hold PHI: 0600 files in 0700 folders, whatever the umask ------------------

#: The mode of every file pacsman writes that can hold PHI: DICOM, CSVs, the log, the job store.
PRIVATE_FILE_MODE = 0o600
#: The mode of every folder pacsman creates for them.
PRIVATE_DIRECTORY_MODE = 0o700


def private_directory(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents as 0700 folders; return ``path``.

    Folders that already exist keep their mode (the user chose it).  Modes are set with
    ``chmod``, so the umask does not matter.

    Raises:
        OSError: a folder cannot be created (e.g. a parent is a file, or the disk is full).
    """
    target = Path(path)
    missing: list[Path] = []
    here = target
    while not here.is_dir() and here.parent != here:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIRECTORY_MODE)
        except FileExistsError:
            if folder.is_dir():  # another thread or process made it
                continue
            raise
        os.chmod(folder, PRIVATE_DIRECTORY_MODE)
    return target


def read_private(path: Path, *, key: str, fix: str = "check the path") -> str:
    """The text of a file that holds a secret (a password, a token, a key): the one rule that
    only its owner may read it.  ``key`` names where it is configured (``xnat.credentials_file``).

    Raises:
        InputError: it cannot be read (with ``fix``), or group or others may read it.
    """
    where = f"{key} {path}"
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InputError(f"{where}: cannot read it ({why}); {fix}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"{where}: mode is {stat.filemode(mode)}, readable by others; run 'chmod 600 {path}'"
        )
    return text


def open_private(
    path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
) -> int:
    """``os.open`` for a file that can hold PHI: mode 0600 (set with ``fchmod``), close-on-exec.

    Raises:
        OSError: the file cannot be opened or its mode set.
    """
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` (created or truncated) with mode 0600.

    Raises:
        OSError: the file cannot be written (its folder must exist).
    """
    fd = open_private(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def private_tree(root: Path) -> None:
    """Make every folder under ``root`` (and ``root``) 0700 and every file 0600."""
    os.chmod(root, PRIVATE_DIRECTORY_MODE)
    for folder, folders, files in os.walk(root):
        for name in folders:
            os.chmod(os.path.join(folder, name), PRIVATE_DIRECTORY_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), PRIVATE_FILE_MODE)


#: What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str | int | None) -> str:
    """One CSV cell that a spreadsheet shows as data and never runs as a formula.

    Following OWASP's CSV-injection guidance, text that starts with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return gets a leading single quote: ``=HYPERLINK(...)`` is
    written ``'=HYPERLINK(...)``.  That includes text that only looks like a negative number
    (a PACS's SeriesNumber ``-1`` is written ``'-1``): it came from outside, so it is text.
    Integers pacsman computes itself (counts, date shifts) stay numbers (``-3``): an ``int``
    cannot hold a formula.  ``None`` is an empty cell.  :func:`uncsv_cell` reads a cell back.
    """
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def uncsv_cell(text: str) -> str:
    """The value :func:`csv_cell` wrote as ``text`` (its quote before a formula sign removed)."""
    if text.startswith("'") and text[1:].startswith(_FORMULA_START):
        return text[1:]
    return text


def write_private_csv(
    path: Path, header: Sequence[str], rows: Iterable[Sequence[str | int | None]]
) -> Path:
    """Write a CSV that can hold PHI: every cell through :func:`csv_cell`, mode 0600, atomic.

    UTF-8 without a BOM, comma-separated, ``\\n`` line ends; the file appears complete or not
    at all (temporary file, then rename), and its missing folders are created 0700.

    Raises:
        OSError: the file cannot be written.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_cell(name) for name in header])
    writer.writerows([csv_cell(cell) for cell in row] for row in rows)
    private_directory(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_private(tmp, buffer.getvalue().encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
