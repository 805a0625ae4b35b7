"""The ``xnat`` and ``push`` sections of the config: where validated studies are pushed.

``xnat`` describes the XNAT server and how sessions are imported; ``push`` describes the
throttled push queue and the other targets (a DICOM SCP, a folder).  Credentials never live
here: see :mod:`pacsman.push.credentials`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pacsman.config import _values as v
from pacsman.config._reader import Section
from pacsman.config.tls import TlsConfig, parse_tls

__all__ = [
    "DicomTarget",
    "PushConfig",
    "XnatConfig",
    "XnatDestination",
    "XnatOverwrite",
    "parse_push",
    "parse_xnat",
]

XnatDestination = Literal["/archive", "/prearchive"]
XnatOverwrite = Literal["none", "append", "delete"]
_DESTINATIONS: tuple[XnatDestination, ...] = ("/archive", "/prearchive")
_OVERWRITES: tuple[XnatOverwrite, ...] = ("none", "append", "delete")


@dataclass(frozen=True)
class XnatConfig:
    """The XNAT target.  Credentials come from the environment, ``~/.netrc`` or
    ``credentials_file`` (mode 0600), never from the config itself.
    """

    url: str | None = None
    project: str | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = None
    #: A file holding ``user:password`` (or an alias token ``alias:secret``), mode 0600.
    credentials_file: Path | None = None
    #: ``/archive`` (archived inside the import request) or ``/prearchive``.
    destination: XnatDestination = "/archive"
    #: XNAT's ``overwrite``: none (merge, keep existing files), append, delete (replace).
    overwrite: XnatOverwrite = "none"
    #: Seconds to wait for XNAT's answer to one import (archiving a large study takes minutes).
    import_timeout: float = 1800.0
    #: Push to XNAT even when ``anonymization.enabled`` is false (warns on every run).
    allow_identified: bool = False


@dataclass(frozen=True)
class DicomTarget:
    """A DICOM Storage SCP that receives pushed studies by C-STORE."""

    host: str
    port: int
    called_ae_title: str
    tls: TlsConfig | None = None  # DICOM TLS towards the SCP; None = plain TCP


@dataclass(frozen=True)
class PushConfig:
    """The push queue: how gently studies are pushed, and the non-XNAT targets."""

    max_concurrent: int = 1  # pushes at once, 1..8
    interval: float = 0.0  # minimum seconds between the starts of two pushes
    max_attempts: int = 50  # attempts per session, 1..1000
    backoff_max: float = 60.0  # longest wait between two attempts, seconds
    dicom: DicomTarget | None = None
    folder: Path | None = None
    #: ``--nifti --push xnat``: replace files of a scan's NIFTI resource that hold other
    #: content (false: such a series' upload fails with the files named, nothing replaced).
    nifti_overwrite: bool = False


def parse_xnat(section: Section) -> XnatConfig:
    """Read the ``xnat`` section (every problem goes to ``section.problems``)."""
    d = XnatConfig
    result = XnatConfig(
        url=section.get("url", v.http_url, d.url),
        project=section.get("project", v.xnat_project, d.project),
        verify_tls=section.get("verify_tls", v.boolean, d.verify_tls),
        ca_bundle=section.get("ca_bundle", v.file_path, d.ca_bundle),
        credentials_file=section.get("credentials_file", v.file_path, d.credentials_file),
        destination=section.get("destination", v.choice(_DESTINATIONS), d.destination),
        overwrite=section.get("overwrite", v.choice(_OVERWRITES), d.overwrite),
        import_timeout=section.get("import_timeout", v.seconds(), d.import_timeout),
        allow_identified=section.get("allow_identified", v.boolean, d.allow_identified),
    )
    if result.ca_bundle is not None and not result.verify_tls:
        section.problems.add(
            section.child("ca_bundle"),
            "is set but verify_tls is false, so it would be ignored; remove one of them",
            section.line_of("ca_bundle"),
        )
    section.warn("url", v.url_warning(result.url))
    section.finish()
    return result


def parse_push(section: Section) -> PushConfig:
    """Read the ``push`` section (every problem goes to ``section.problems``)."""
    d = PushConfig
    dicom = section.section("dicom")
    result = PushConfig(
        max_concurrent=section.get("max_concurrent", v.int_between(1, 8), d.max_concurrent),
        interval=section.get("interval", v.seconds(allow_zero=True), d.interval),
        max_attempts=section.get("max_attempts", v.int_between(1, 1000), d.max_attempts),
        backoff_max=section.get("backoff_max", v.seconds(), d.backoff_max),
        dicom=_parse_dicom(dicom) if section.raw("dicom") is not None else None,
        folder=section.get("folder", v.file_path, d.folder),
        nifti_overwrite=section.get("nifti_overwrite", v.boolean, d.nifti_overwrite),
    )
    section.finish()
    return result


def _parse_dicom(section: Section) -> DicomTarget | None:
    host = section.require("host", v.host, "host: 127.0.0.1")
    port = section.require("port", v.tcp_port, "port: 4242")
    called = section.require("called_ae_title", v.ae_title, "called_ae_title: RESEARCH")
    tls = parse_tls(section, server=False)
    section.finish()
    if host is None or port is None or called is None:
        return None
    return DicomTarget(host=host, port=port, called_ae_title=called, tls=tls)
