"""DICOM TLS settings (PS3.15 Annex B): ``pacs.<node>.tls``, ``local.tls``, ``push.dicom.tls``.

Only paths and switches live in the config.  The files are checked here, at load: each one
must be a readable regular file, and a private key must have no group or other permission
bits (0600, or 0400 as systemd's ``LoadCredential=`` makes it).  The SSL contexts themselves
are built by :mod:`pacsman.dicom.tls`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pacsman.config import _values as v
from pacsman.config._reader import Section
from pacsman.config._yaml import not_a_regular_file

__all__ = ["TlsConfig", "file_problem", "key_file_problem", "parse_tls"]


@dataclass(frozen=True)
class TlsConfig:
    """One side's TLS settings.

    As a client (a PACS node, the ``dicom`` push target): ``ca`` is the CA bundle that signed
    the peer's certificate (the system's trust store when absent); ``cert`` and ``key`` are
    pacsman's own certificate, for peers that require one.  As the Storage SCP: ``cert`` and
    ``key`` are required, and with ``verify`` every peer must present a certificate signed
    by ``ca``.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    #: Check the peer's certificate (against ``ca``); false only for a trial, with a warning.
    verify: bool = True
    #: As a client: the PACS's certificate must name its ``host`` (IP or DNS name).
    check_hostname: bool = True


def file_problem(path: Path) -> str | None:
    """``None`` when ``path`` is a readable regular file, else what is wrong and the fix."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc}); give the path of a PEM file"
    kind = not_a_regular_file(mode)
    if kind is not None:
        return f"{path} is {kind}, not a PEM file; give the path of a PEM file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by this user; make it readable by pacsman's user only"
    return None


def key_file_problem(path: Path) -> str | None:
    """``None`` for a private key only its owner can read, else what is wrong and the fix."""
    problem = file_problem(path)
    if problem is not None:
        return problem
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return (
            f"{path} is mode {mode:04o}: a private key must not be readable or writable by "
            f"group or others; run chmod 600 {path}"
        )
    return None


def parse_tls(parent: Section, *, server: bool) -> TlsConfig | None:
    """Read ``parent``'s ``tls`` section; ``None`` when it is absent or empty (plain TCP).

    ``server`` is True for ``local.tls`` (the Storage SCP), which needs a certificate and
    key, and a CA to check peers against while ``verify`` is on.
    """
    section = parent.section("tls")
    if parent.raw("tls") is None:
        return None
    d = TlsConfig
    result = TlsConfig(
        ca=section.get("ca", v.file_path, d.ca),
        cert=section.get("cert", v.file_path, d.cert),
        key=section.get("key", v.file_path, d.key),
        verify=section.get("verify", v.boolean, d.verify),
        check_hostname=d.check_hostname if server else _check_hostname(section),
    )
    _check_files(section, result)
    _check_pairs(section, result, server=server)
    section.finish()
    return result


def _check_hostname(section: Section) -> bool:
    return section.get("check_hostname", v.boolean, TlsConfig.check_hostname)


def _check_files(section: Section, tls: TlsConfig) -> None:
    for key, path in (("ca", tls.ca), ("cert", tls.cert)):
        if path is not None:
            _report(section, key, file_problem(path))
    if tls.key is not None:
        _report(section, "key", key_file_problem(tls.key))


def _check_pairs(section: Section, tls: TlsConfig, *, server: bool) -> None:
    if (tls.cert is None) != (tls.key is None):
        missing = "key" if tls.key is None else "cert"
        _report(
            section,
            missing,
            f"required with {'cert' if missing == 'key' else 'key'}; give both the PEM "
            "certificate and its private key, or neither",
        )
    if server and tls.cert is None and tls.key is None:
        _report(section, "cert", "required for the Storage SCP; give cert and key (PEM files)")
    if server and tls.verify and tls.ca is None:
        _report(
            section,
            "ca",
            "required while verify is true: the CA that signed the PACS's certificate; or set "
            "verify: false to accept any TLS peer without a certificate",
        )
    if not tls.verify:
        whose = "peers'" if server else "PACS's"
        section.warn(
            "verify",
            f"false: the {whose} certificates are not checked, so anyone on the network path "
            "can pose as them; give ca and set verify: true",
        )


def _report(section: Section, key: str, message: str | None) -> None:
    if message is not None:
        section.problems.add(section.child(key), message, section.line_of(key))
