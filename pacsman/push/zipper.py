"""One zip per session, streamed from disk into a temporary file (never the study in memory).

Only ``*.dcm`` files go in (XNAT's DICOM-zip handler stops at the first file it cannot
parse), stored without compression: DICOM pixel data compresses poorly and the CPU is better
spent elsewhere.  Entry names are the paths below the session folder; the anonymizer names
files after their new SOPInstanceUID, so names carry no patient data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["session_zip"]


@contextlib.contextmanager
def session_zip(
    directory: Path, files: Sequence[Path], *, work_dir: Path | None = None
) -> Iterator[Path]:
    """Yield a temporary zip of ``files`` (all below ``directory``); it is deleted afterwards.

    The zip is written in ``work_dir`` (default: the system temporary directory, ``$TMPDIR``).

    Raises:
        OSError: a file cannot be read or the zip cannot be written (e.g. the disk is full).
    """
    handle, name = tempfile.mkstemp(prefix="pacsman-push-", suffix=".zip", dir=work_dir)
    os.close(handle)
    path = Path(name)
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for file in files:
                archive.write(file, file.relative_to(directory).as_posix())
        yield path
    finally:
        path.unlink(missing_ok=True)
