"""The whole chain: Orthanc -> pacsman (--save --push) -> XNAT emulator, via the real client."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config, write_queryfile

QUERY = "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\nDEMO002,,\n"


def _run(tmp_path: Path, orthanc: OrthancServer, xnat: XnatEmulator) -> int:
    port = free_port()
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = write_config(tmp_path, port=orthanc.dicom_port, called_ae_title=orthanc.ae_title)
    text = config.read_text().replace("local:\n", f"local:\n  port: {port}\n", 1)
    config.write_text(text + f"xnat:\n  url: {xnat.url}\n  project: PROJ\n")
    queryfile = write_queryfile(tmp_path, QUERY)
    return main(["-q", str(queryfile), "--save", "--push", "--info", "--config", str(config)])


def test_query_to_xnat_each_session_once_and_complete(
    tmp_path: Path,
    demo_orthanc: OrthancServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every session lands once with every file; a rerun pushes nothing."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "secret")
    with XnatEmulator(tmp_path / "xnat", projects=("PROJ",)) as xnat:
        status = _run(tmp_path, demo_orthanc, xnat)
        sessions = {s.label: s.file_count for s in xnat.sessions("PROJ")}
        capsys.readouterr()
        again = _run(tmp_path, demo_orthanc, xnat)
        events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
        imports = [r for r in xnat.request_log if "services/import" in r.path]
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert (status, again) == (0, 0)
    assert sessions == {"SESS01": 23, "PROJ_E00001": 13}
    assert len(imports) == 2
    assert {r["push"] for r in rows} == {"DONE"}
    assert all(r["xnat_uri"].startswith("/data/") for r in rows)
    assert "nothing_to_push" in events
