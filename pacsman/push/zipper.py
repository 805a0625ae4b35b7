"""One zip per session, streamed from disk through a temporary file (never a study in memory).

Only ``*.dcm`` files go in (XNAT's DICOM-zip handler stops at the first file it cannot
parse), stored without compression: DICOM pixel data compresses poorly and the CPU is better
spent elsewhere.  Entry names are the paths below the session folder; the anonymizer names
files after their new SOPInstanceUID, so names carry no patient data.

The temporary file has no name, so nothing is left behind even by ``kill -9``.  Zipping in
memory would save ~14 ms of CPU a session, and put a whole study in memory: not done.
"""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

__all__ = ["session_zip"]


@contextlib.contextmanager
def session_zip(
    directory: Path, files: Sequence[Path], *, work_dir: Path | None = None
) -> Iterator[IO[bytes]]:
    """Yield a zip of ``files`` (all below ``directory``), open for reading at its start.

    The zip is written in ``work_dir`` (default: the system temporary directory,
    ``$TMPDIR``), as a file without a name that disappears when it is closed.

    Raises:
        OSError: a file cannot be read or the zip cannot be written (e.g. the disk is full).
    """
    with tempfile.TemporaryFile(prefix="pacsman-push-", suffix=".zip", dir=work_dir) as stream:
        with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for file in files:
                archive.write(file, file.relative_to(directory).as_posix())
        stream.seek(0)
        yield stream
