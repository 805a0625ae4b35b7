"""An XNAT 1.8.9.1 emulator: a real HTTP server on 127.0.0.1 for the real ``xnat`` client.

It honours ``docs/xnat-rest-contract.md`` (login, schemas, search elements, the archive tree,
the import service, the prearchive, files and zips, the DQR plugin in front of a real PACS,
project anonymization scripts), keeps what it receives on disk so tests
can count instances and read headers, and misbehaves on demand through :class:`Faults`.

    >>> with XnatEmulator(tmp_path, projects=["P1"]) as xnat_server:
    ...     with xnat.connect(xnat_server.url, user="admin", password="secret") as session:
    ...         session.services.import_(zip_path, project="P1", subject="S1",
    ...                                  experiment="E1", import_handler="DICOM-zip",
    ...                                  destination="/archive")

DQR in front of a real PACS (contract §14)::

    >>> pacs = DqrPacs(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, "Hospital PACS")
    >>> with XnatEmulator(tmp_path, projects=["P1"], dqr_pacs=[pacs]) as xnat_server:
    ...     orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", xnat_server.dqr_receiver_port)
    ...     # POST /xapi/dqr/import ... then xnat_server.dqr_requests() shows each timeline

Standalone: ``python -m pacsman.testing.xnat_emulator --data DIR --project P1``
(``--dqr-pacs AE@HOST:PORT`` for DQR; ``--help`` lists the rest).
"""

from __future__ import annotations

from pacsman.testing.xnat_emulator._context import LoggedRequest
from pacsman.testing.xnat_emulator._dqr_model import DqrPacs
from pacsman.testing.xnat_emulator._emulator import (
    PrearchiveSummary,
    SessionSummary,
    XnatEmulator,
)
from pacsman.testing.xnat_emulator._faults import Faults

__all__ = [
    "DqrPacs",
    "Faults",
    "LoggedRequest",
    "PrearchiveSummary",
    "SessionSummary",
    "XnatEmulator",
]
