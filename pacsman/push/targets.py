"""Opening a push target from the config, and the rule that XNAT gets de-identified data.

``open_target(config, kind="xnat")`` resolves the credentials (never logged) and refuses to
push identified data unless ``xnat.allow_identified`` says so; the XNAT login itself happens
on first use, inside the retry loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import structlog

from pacsman.config import Config
from pacsman.errors import InputError
from pacsman.push.credentials import resolve_credentials
from pacsman.push.folder import FolderTarget
from pacsman.push.models import Target

__all__ = ["TargetKind", "check_anonymization", "open_target"]

TargetKind = Literal["xnat", "dicom", "folder"]
_log = structlog.get_logger("pacsman.push")


def check_anonymization(config: Config, *, kind: TargetKind = "xnat") -> None:
    """Refuse to push identified data to XNAT unless ``xnat.allow_identified: true``.

    With ``allow_identified`` the push goes ahead and a warning is logged on every call.
    Other targets are the user's own copies and are not checked.

    Raises:
        InputError: ``anonymization.enabled`` is false and ``allow_identified`` is not set.
    """
    if kind != "xnat" or config.anonymization.enabled:
        return
    if not config.xnat.allow_identified:
        raise InputError(
            "anonymization.enabled is false, so studies would reach XNAT with their patients' "
            "identity; enable anonymization, or set xnat.allow_identified: true if the XNAT "
            "project is approved for identified data"
        )
    _log.warning(
        "push_identified_data",
        url=config.xnat.url,
        reason="anonymization.enabled is false and xnat.allow_identified is true",
    )


def open_target(
    config: Config,
    *,
    kind: TargetKind,
    work_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Build the ``kind`` target described by ``config`` (close it when done).

    ``work_dir`` is where XNAT zips are written (default ``$TMPDIR``); ``environ`` replaces
    ``os.environ`` when looking for ``XNAT_USER``/``XNAT_PASS`` (tests).

    Raises:
        InputError: the target is not configured, no credentials are found, or identified
            data would reach XNAT (see :func:`check_anonymization`).
    """
    if kind == "xnat":
        return _xnat(config, work_dir, environ)
    if kind == "dicom":
        if config.push.dicom is None:
            raise InputError(
                "push.dicom is not set; add push: {dicom: {host: ..., port: ..., "
                "called_ae_title: ...}} to the config"
            )
        from pacsman.push.dicomstore import DicomStoreTarget  # pynetdicom: for this target only

        return DicomStoreTarget(config.push.dicom, calling_ae_title=config.local.ae_title)
    if kind == "folder":
        if config.push.folder is None:
            raise InputError("push.folder is not set; add push: {folder: PATH} to the config")
        return FolderTarget(config.push.folder)
    raise InputError(f"unknown push target {kind!r}; use xnat, dicom or folder")


def _xnat(config: Config, work_dir: Path | None, environ: Mapping[str, str] | None) -> Target:
    from pacsman.push.xnat import XnatTarget  # the xnat client (and pandas): for XNAT only

    url = config.xnat.url
    if url is None:
        raise InputError("xnat.url is not set; add xnat: {url: https://your.xnat} to the config")
    check_anonymization(config, kind="xnat")
    credentials = resolve_credentials(
        url,
        credentials_file=config.xnat.credentials_file,
        environ=dict(environ) if environ is not None else None,
    )
    return XnatTarget(config.xnat, credentials, work_dir=work_dir)
