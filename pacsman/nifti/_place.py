"""Where NIfTI outputs go, and how they get there: a private temporary folder beside the
destination, files 0600 and folders 0700, then one rename into place (or into quarantine).

``<out>/nifti/<subject>/<session>/<SeriesNumber>/`` holds a series' outputs and its
``provenance.json``; a quarantined series goes to ``<quarantine>/<subject>/<session>/
<SeriesNumber>/`` (default quarantine: ``<out>/nifti-quarantine``) with ``reason.txt``.
Converting a series again replaces its earlier outputs; an earlier quarantine copy is
replaced only by a new CONVERTED or QUARANTINED outcome (it is evidence for a person).
Temporary folders (``.convert-*``, ``.stage-*``) that a killed process left in
``<out>/nifti`` are removed by the first conversion of a later process, once older than
:data:`SCRATCH_AGE`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from pacsman.layout import (
    ANONYMIZED_DIRECTORY,
    PRIVATE_FILE_MODE,
    anonymized_series_directory,
    is_xnat_label,
    private_directory,
    safe_component,
    write_private,
)

__all__ = [
    "NIFTI_DIRECTORY",
    "PROVENANCE_FILE",
    "QUARANTINE_DIRECTORY",
    "REASON_FILE",
    "discard",
    "install",
    "nifti_directory",
    "quarantine_directory",
    "scratch",
    "scratch_parent",
    "write_json",
]

NIFTI_DIRECTORY = "nifti"
QUARANTINE_DIRECTORY = "nifti-quarantine"
PROVENANCE_FILE = "provenance.json"
REASON_FILE = "reason.txt"


def _label(text: str, fallback: str, max_length: int) -> str:
    """An XNAT label as it is (the anonymized folders keep it so); anything else sanitized."""
    return (
        text
        if is_xnat_label(text)
        else safe_component(text, fallback=fallback, max_length=max_length)
    )


def _series_path(root: Path, subject: str, session: str, series_number: str) -> Path:
    """``<root>/<subject>/<session>/<SeriesNumber>``, named exactly as the pipeline's
    ``<out>/anonymized/<subject>/<session>/<SeriesNumber>`` (one rule, in pacsman.layout)."""
    base = Path("r")
    anonymized = anonymized_series_directory(
        base,
        subject=_label(subject, "unknown_subject", 64),
        session=_label(session, "unknown_session", 80),
        series_number=series_number,
    )
    return root / anonymized.relative_to(base / ANONYMIZED_DIRECTORY)


def nifti_directory(out_root: Path, subject: str, session: str, series_number: str) -> Path:
    """``<out_root>/nifti/<subject>/<session>/<SeriesNumber>``: the folder names of
    :func:`pacsman.layout.anonymized_series_directory` (labels that are not XNAT labels are
    sanitized first)."""
    return _series_path(out_root / NIFTI_DIRECTORY, subject, session, series_number)


def quarantine_directory(
    out_root: Path, quarantine: Path | None, subject: str, session: str, series_number: str
) -> Path:
    """``<quarantine>/<subject>/<session>/<SeriesNumber>``; quarantine defaults to
    ``<out_root>/nifti-quarantine``."""
    root = quarantine if quarantine is not None else out_root / QUARANTINE_DIRECTORY
    return _series_path(root, subject, session, series_number)


#: Seconds after which a temporary folder in ``<out>/nifti`` is taken as left by a killed
#: process (a conversion is stopped after its timeout, 600 s by default).
SCRATCH_AGE = 6 * 3600.0
#: The folders of temporary files: one a conversion writes to, one of links to a series.
_SCRATCH_PREFIXES = (".convert-", ".stage-")
_swept: set[Path] = set()


def scratch(out_root: Path) -> Path:
    """A new 0700 temporary folder under ``<out_root>/nifti`` (same file system as the
    destination, so the outputs move with one rename)."""
    return Path(tempfile.mkdtemp(prefix=".convert-", dir=scratch_parent(out_root)))


def scratch_parent(out_root: Path) -> Path:
    """``<out_root>/nifti`` (made 0700), swept of old temporary folders once per process."""
    parent = private_directory(out_root / NIFTI_DIRECTORY)
    if parent not in _swept:
        _swept.add(parent)
        _sweep(parent, time.time() - SCRATCH_AGE)
    return parent


def _sweep(parent: Path, before: float) -> None:
    for entry in parent.iterdir():
        if not entry.name.startswith(_SCRATCH_PREFIXES) or entry.is_symlink():
            continue
        try:
            if entry.is_dir() and entry.stat().st_mtime < before:
                shutil.rmtree(entry)
        except OSError:  # another process's, or gone: the next process tries again
            continue


def write_json(path: Path, data: Mapping[str, object]) -> None:
    """Write ``data`` as indented JSON, mode 0600."""
    write_private(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _private(folder: Path) -> None:
    os.chmod(folder, 0o700)
    for path in folder.iterdir():
        os.chmod(path, PRIVATE_FILE_MODE)


def install(folder: Path, target: Path) -> Path:
    """Move ``folder`` (flat) to ``target``, replacing what was there; return ``target``."""
    _private(folder)
    private_directory(target.parent)
    discard(target)
    os.replace(folder, target)
    return target


def discard(target: Path) -> None:
    """Remove ``target`` (a folder of outputs) if it exists."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
