"""The folder target: each session copied to ``<root>/<project>/<subject>/<session>``.

The copy is written to a hidden sibling folder and renamed into place, so a session folder
either holds every file or does not exist (a run killed mid-copy leaves only the hidden
folder, removed by the next attempt).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import structlog

from pacsman.closing import Closing
from pacsman.errors import ItemFailed
from pacsman.layout import private_directory
from pacsman.push.labels import local_problems
from pacsman.push.models import LabelProblem, PushOutcome, SessionUpload, dicom_files

__all__ = ["FolderTarget"]

_log = structlog.get_logger("pacsman.push.folder")


class FolderTarget(Closing):
    """Copies sessions below ``root``."""

    name = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root

    def check_labels(self, uploads: Sequence[SessionUpload]) -> list[LabelProblem]:
        """The label rules (labels become folder names, so they must be safe)."""
        return local_problems(uploads)

    def push(self, upload: SessionUpload) -> PushOutcome:
        """Copy the session (unless an identical copy is there) and count what arrived.

        Raises:
            ItemFailed: wrong number of files, a different copy already there, or a copy error.
        """
        files = dicom_files(upload.directory)
        names = sorted(f.relative_to(upload.directory).as_posix() for f in files)
        if len(files) != upload.expected_files:
            raise ItemFailed(
                f"{upload.directory} holds {len(files)} *.dcm file(s) but "
                f"{upload.expected_files} are expected; de-identify the session again"
            )
        final = self.root.joinpath(*upload.key)
        if final.exists():
            return self._existing(upload, final, names)
        try:
            self._copy(upload, files, final)
        except OSError as exc:
            raise ItemFailed(f"copying {upload.describe()} to {final}: {exc}") from exc
        arrived = len(dicom_files(final))
        return PushOutcome(
            upload, "DONE", final.as_uri(), arrived, f"copied {arrived} file(s) to {final}"
        )

    def _existing(self, upload: SessionUpload, final: Path, names: list[str]) -> PushOutcome:
        there = sorted(f.relative_to(final).as_posix() for f in dicom_files(final))
        if there != names:
            raise ItemFailed(
                f"{final} already holds a different copy ({len(there)} file(s)); "
                "remove it to copy the session again"
            )
        detail = f"already copied: {len(there)} file(s) in {final}"
        return PushOutcome(upload, "DONE", final.as_uri(), len(there), detail)

    def _copy(self, upload: SessionUpload, files: list[Path], final: Path) -> None:
        partial = final.with_name(f".{final.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed mid-copy
        private_directory(partial)
        for source in files:
            target = partial / source.relative_to(upload.directory)
            private_directory(target.parent)
            shutil.copyfile(source, target)
            target.chmod(0o600)
        os.replace(partial, final)
        _log.info("folder_copied", session=upload.describe(), files=len(files))

    def close(self) -> None:
        """Nothing to release."""
