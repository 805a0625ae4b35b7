"""``pacsman upload DIR``: a local folder of DICOM files (not from a PACS) made ready to push.

With ``anonymization.enabled`` (the default) every file is de-identified into a fresh output
folder with the project's key and mapping table (the same ones the pipeline uses, so a study
gets the same pseudonyms either way); a file that is quarantined or fails stops the upload
before anything is sent.  Without anonymization the ``*.dcm`` files of DIR are pushed as
they are (XNAT only with ``xnat.allow_identified``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from pacsman.anonymize import (
    Deidentifier,
    MappingTable,
    NotAnInstance,
    load_or_create_key,
    load_profile,
)
from pacsman.anonymize.locations import default_key_path, default_mapping_path, mapping_location
from pacsman.config import Config
from pacsman.errors import InputError, ItemFailed
from pacsman.layout import private_directory
from pacsman.push.models import SessionUpload

__all__ = ["LocalFolder", "prepare_upload"]

_log = structlog.get_logger("pacsman.push.upload")


@dataclass(frozen=True)
class LocalFolder:
    """What the user asked to upload, and where the de-identified copy goes."""

    directory: Path
    project: str
    subject: str
    session: str
    out: Path
    key: Path | None = None
    mapping: Path | None = None
    #: ``out`` is pacsman's own folder: empty it first (otherwise it must be new or empty).
    replace_out: bool = False


def _sources(folder: LocalFolder) -> list[Path]:
    if not folder.directory.is_dir():
        raise InputError(f"{folder.directory}: not a folder; give the folder of one study")
    out = folder.out.resolve()
    files = [
        p
        for p in sorted(folder.directory.rglob("*"))
        if p.is_file() and not p.resolve().is_relative_to(out)
    ]
    if not files:
        raise InputError(f"{folder.directory}: holds no file; give the folder of one study")
    return files


def _fresh(folder: LocalFolder) -> None:
    """Start from an empty output folder: stale files would change the counts."""
    out = folder.out
    if out.is_dir() and any(out.iterdir()) and not folder.replace_out:
        raise InputError(f"--out {out}: is not empty; give a new or empty folder")
    shutil.rmtree(out, ignore_errors=True)
    private_directory(out)


def _deidentify(folder: LocalFolder, config: Config) -> None:
    profile = load_profile(config.anonymization.profile)
    key = load_or_create_key((folder.key or default_key_path(folder.project)).expanduser())
    location = (
        folder.mapping.expanduser()
        if folder.mapping
        else mapping_location(folder.project, jobstore=config.jobstore)
    )
    mapping = MappingTable(location)
    mapping.check_key(folder.project, key)
    mapping.check_not_left_behind(folder.project, default_mapping_path(folder.project))
    engine = Deidentifier(profile, key=key, project=folder.project, mapping=mapping)
    written, skipped, held = 0, 0, []
    try:
        for source in _sources(folder):
            try:
                result = engine.deidentify_file(
                    source, folder.out, subject=folder.subject, session=folder.session
                )
            except NotAnInstance:
                skipped += 1
                continue
            if result.quarantined:
                held.append(result.reason or "quarantined")
            else:
                written += 1
    finally:
        mapping.close()
    _log.info("upload_deidentified", written=written, skipped=skipped, quarantined=len(held))
    if held:
        reasons = "; ".join(sorted(set(held))[:5])
        raise ItemFailed(
            f"{len(held)} file(s) were quarantined ({reasons}); nothing was pushed: "
            "a session is pushed only when every file is safe"
        )
    if written == 0:
        raise InputError(f"{folder.directory}: no DICOM instance found ({skipped} skipped)")


def prepare_upload(folder: LocalFolder, config: Config) -> SessionUpload:
    """De-identify ``folder`` (unless anonymization is off) and describe the session.

    Raises:
        InputError: no DICOM instance, more than one study, or a bad key file.
        ItemFailed: a file was quarantined or could not be de-identified (nothing is pushed).
    """
    if not config.anonymization.enabled:
        source = folder.directory
    else:
        _fresh(folder)
        _deidentify(folder, config)
        source = folder.out
    return SessionUpload.from_directory(
        source, project=folder.project, subject=folder.subject, session=folder.session
    )
