"""Where results go: ``dst_dir``, or its quarantine folder with a reason, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from pacsman.anonymize._result import AnonymizeResult
from pacsman.layout import private_directory, write_private

__all__ = ["discard", "hold", "quarantine_dir", "store"]

_log = structlog.get_logger("pacsman.anonymize.engine")


def quarantine_dir(dst_dir: Path) -> Path:
    """The quarantine folder beside ``dst_dir``: ``<dst_dir>.quarantine``."""
    return dst_dir.with_name(dst_dir.name + ".quarantine")


def hold(result: AnonymizeResult, reason: str) -> AnonymizeResult:
    """Quarantine a written result (or add ``reason`` to a quarantined one's note)."""
    if result.quarantined:
        note = result.path.with_name(result.path.name + ".reason.txt")
        combined = f"{result.reason}; {reason}"
        _write_atomic(note, (combined + "\n").encode())
        return AnonymizeResult(result.path, result.sop_instance_uid, True, combined, result.source)
    held = quarantine_dir(result.path.parent) / result.path.name
    private_directory(held.parent)
    _write_atomic(held.with_name(held.name + ".reason.txt"), (reason + "\n").encode())
    os.replace(result.path, held)
    _log.debug("anonymize_quarantined", sop_instance_uid=result.sop_instance_uid, reason=reason)
    return AnonymizeResult(held, result.sop_instance_uid, True, reason, result.source)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_private(tmp, data)  # 0600, in 0700 folders: a quarantined file may hold PHI
    except FileNotFoundError:  # the first file in a new folder
        private_directory(path.parent)
        write_private(tmp, data)
    os.replace(tmp, path)


def store(data: bytes, dst_dir: Path, name: str, reason: str | None) -> Path:
    """Write to ``dst_dir`` or, with a reason file, to its quarantine; drop stale copies."""
    held = quarantine_dir(dst_dir) / name
    note = held.with_name(name + ".reason.txt")
    if reason is None:
        _write_atomic(dst_dir / name, data)
        if held.parent.is_dir():  # one stat instead of two unlinks in the usual case
            held.unlink(missing_ok=True)
            note.unlink(missing_ok=True)
        return dst_dir / name
    (dst_dir / name).unlink(missing_ok=True)
    _write_atomic(held, data)
    _write_atomic(note, (reason + "\n").encode())
    return held


def discard(dst_dir: Path, name: str) -> None:
    """Remove any earlier copy of ``name`` (written, or quarantined with its note)."""
    held = quarantine_dir(dst_dir) / name
    for path in (dst_dir / name, held, held.with_name(name + ".reason.txt")):
        path.unlink(missing_ok=True)
