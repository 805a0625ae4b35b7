"""What went wrong with the job store file, in words, with the fix (private to the package).

SQLite and the OS report problems with the file as codes ("file is not a database",
"attempt to write a readonly database", "database or disk is full"...): each becomes a
:class:`~pacsman.errors.JobStoreError` that names the file, what is wrong and what to do.
Errors in pacsman's own SQL (a syntax error, a constraint) are bugs, not problems with the
file: :func:`raise_for_file` leaves them as they are, to be reported as such.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from pacsman.errors import JobStoreError

__all__ = ["folder_error", "raise_for_file", "store_error"]

#: SQLite's result codes that are about the file, its folder or its disk, not about the SQL.
_ABOUT_THE_FILE = frozenset(
    {
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_AUTH,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_NOLFS,
    }
)
_FULL = frozenset({sqlite3.SQLITE_FULL})
_READ_ONLY = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH})
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_FULL_ERRNO = frozenset({errno.ENOSPC, errno.EDQUOT})
_READ_ONLY_ERRNO = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def folder_error(path: Path) -> JobStoreError:
    """The job store path names a folder."""
    return JobStoreError(
        f"job store {path}: is a folder, not a file; set 'jobstore' in the config to a file "
        f"path, e.g. {path / 'pacsman-jobs.sqlite'}"
    )


def raise_for_file(path: Path, exc: sqlite3.Error) -> None:
    """Raise ``exc`` as a :class:`JobStoreError` when it is about the file; else return.

    Raises:
        JobStoreError: the file, its folder or its disk is the problem.
    """
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _ABOUT_THE_FILE:
        raise store_error(path, exc) from exc


def store_error(path: Path, exc: sqlite3.Error | OSError) -> JobStoreError:
    """``exc``, raised while using the job store at ``path``, as a message with the fix."""
    if isinstance(exc, OSError):
        return _os_error(path, exc)
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    what = f"SQLite: {exc}"
    if code == sqlite3.SQLITE_NOTADB:
        return JobStoreError(
            f"job store {path}: the file is not an SQLite database ({what}); 'jobstore' in "
            "the config must name pacsman's own job-store file: point it at the right file, "
            "or at a new file name (it is created)"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        return JobStoreError(
            f"job store {path}: the database is damaged ({what}); restore it from a backup, "
            "or move it aside and run the same command with --adopt-existing (series already "
            "on disk are checked against the PACS and kept)"
        )
    if code in _FULL or (code == sqlite3.SQLITE_IOERR and _no_space(path)):
        return _full(path, what)
    if code in _READ_ONLY or (code == sqlite3.SQLITE_CANTOPEN and not _writable(path)):
        return _read_only(path, what)
    if code in _BUSY:
        return JobStoreError(
            f"job store {path}: locked by another process for 30 s ({what}); wait for the "
            "other pacsman to finish, or give this run its own 'jobstore' in the config"
        )
    if code == sqlite3.SQLITE_CANTOPEN:
        if path.is_dir():
            return folder_error(path)
        return JobStoreError(
            f"job store {path}: cannot be opened ({what}); its folder must exist and be "
            "writable: fix that, or set 'jobstore' in the config to another path"
        )
    return JobStoreError(
        f"job store {path}: {what}; check the file and the disk it is on, or set 'jobstore' "
        "in the config to another path"
    )


def _os_error(path: Path, exc: OSError) -> JobStoreError:
    what = f"{exc.strerror or exc}"
    if exc.errno in _FULL_ERRNO:
        return _full(path, what)
    if exc.errno in _READ_ONLY_ERRNO:
        return _read_only(path, what)
    if exc.errno == errno.EISDIR:
        return folder_error(path)
    if exc.errno in {errno.ENOTDIR, errno.EEXIST}:
        return JobStoreError(
            f"job store {path}: a part of its folder path is a file, not a folder ({what}); "
            "set 'jobstore' in the config to a path whose folders are folders"
        )
    return JobStoreError(
        f"job store {path}: {what}; check the file and the disk it is on, or set 'jobstore' "
        "in the config to another path"
    )


def _no_space(path: Path) -> bool:
    """True when the disk holding ``path`` has less than 1 MiB left (SQLite may only say
    "disk I/O error" when a write finds no space)."""
    try:
        return shutil.disk_usage(path.parent).free < (1 << 20)
    except OSError:
        return False


def _writable(path: Path) -> bool:
    folder_ok = os.access(path.parent, os.W_OK | os.X_OK)
    return folder_ok and (not path.exists() or os.access(path, os.R_OK | os.W_OK))


def _full(path: Path, what: str) -> JobStoreError:
    return JobStoreError(
        f"job store {path}: the disk is full ({what}); free space on the disk that holds "
        f"{path.parent}, then run the same command again: it resumes where it stopped"
    )


def _read_only(path: Path, what: str) -> JobStoreError:
    return JobStoreError(
        f"job store {path}: cannot be written ({what}); pacsman must be able to write the "
        f"file and its folder {path.parent} (SQLite adds {path.name}-wal and {path.name}-shm "
        "there): fix the permissions, or set 'jobstore' in the config to a writable path"
    )
