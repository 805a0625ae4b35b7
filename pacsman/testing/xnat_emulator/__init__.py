"""An XNAT 1.8.9.1 emulator: a real HTTP server on 127.0.0.1 for the real ``xnat`` client.

It honours ``docs/xnat-rest-contract.md`` (login, schemas, search elements, the archive tree,
the import service, the prearchive, files and zips), keeps what it receives on disk so tests
can count instances and read headers, and misbehaves on demand through :class:`Faults`.

    >>> with XnatEmulator(tmp_path, projects=["P1"]) as xnat_server:
    ...     with xnat.connect(xnat_server.url, user="admin", password="secret") as session:
    ...         session.services.import_(zip_path, project="P1", subject="S1",
    ...                                  experiment="E1", import_handler="DICOM-zip",
    ...                                  destination="/archive")

Standalone: ``python -m pacsman.testing.xnat_emulator --data DIR --project P1``.
"""

from __future__ import annotations

from pacsman.testing.xnat_emulator._context import LoggedRequest
from pacsman.testing.xnat_emulator._emulator import (
    PrearchiveSummary,
    SessionSummary,
    XnatEmulator,
)
from pacsman.testing.xnat_emulator._faults import Faults

__all__ = ["Faults", "LoggedRequest", "PrearchiveSummary", "SessionSummary", "XnatEmulator"]
