"""`pacsman --queryfile q.csv --info` against a real Orthanc, started by the fixtures."""

from __future__ import annotations

import csv
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pacsman.cli import main
from pacsman.config import PacsNode, load_config
from pacsman.dicom.client import FIND_MODELS, DicomPeer, associate
from pacsman.pipeline import RunOptions, config_sha256, run_queryfile
from pacsman.pipeline.report import INFO_COLUMNS
from pacsman.query import FindAssociation
from pacsman.testing.orthanc import OrthancServer
from pacsman.throttle import RetryPolicy
from tests.helpers import write_config, write_queryfile

pytestmark = pytest.mark.orthanc

ALL_DEMO = """\
    PatientID,Subject,Session,StudyDate
    DEMO001,SUBJ01,SESS01,
    DEMO002,SUBJ02,SESS02,
    DEMO003,SUBJ03,,20240301-20240331
    """


def _read_info(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == INFO_COLUMNS
        return list(reader)


def _run(tmp_path: Path, orthanc: OrthancServer, queryfile_text: str) -> tuple[int, Path]:
    config = write_config(tmp_path, port=orthanc.dicom_port, called_ae_title=orthanc.ae_title)
    queryfile = write_queryfile(tmp_path, queryfile_text)
    status = main(["--queryfile", str(queryfile), "--info", "--config", str(config)])
    return status, tmp_path / "data" / "q_info.csv"


def test_info_lists_exactly_what_orthanc_holds(tmp_path: Path, demo_orthanc: OrthancServer) -> None:
    """Every series Orthanc holds for the cohort is listed once, with Orthanc's own count."""
    status, info = _run(tmp_path, demo_orthanc, ALL_DEMO)
    rows = _read_info(info)
    expected = demo_orthanc.series_instance_counts()
    listed = {r["SeriesInstanceUID"]: int(r["expected_instances"]) for r in rows}
    assert status == 0
    assert expected == listed
    assert len(rows) == len(expected)
    assert {r["state"] for r in rows} == {"QUERIED"}


def test_info_keeps_non_ascii_descriptions(tmp_path: Path, demo_orthanc: OrthancServer) -> None:
    """UTF-8 text from the PACS (SpecificCharacterSet ISO_IR 192) arrives intact."""
    status, info = _run(tmp_path, demo_orthanc, "PatientName\nM*\n")
    rows = _read_info(info)
    assert status == 0
    assert rows
    assert all(r["PatientID"] == "DEMO002" for r in rows)


def test_rerun_resumes_and_queries_nothing(tmp_path: Path, demo_orthanc: OrthancServer) -> None:
    """The same command again finds the same run in the job store and sends no C-FIND."""
    _run(tmp_path, demo_orthanc, ALL_DEMO)
    config = load_config(tmp_path / "pacsman.yaml")
    options = RunOptions(queryfile=tmp_path / "q.csv", out_directory=tmp_path / "data")
    with capture_logs() as logs:
        summary = run_queryfile(options, config)
    assert summary.resumed
    assert summary.queried_now == 0
    assert "nothing_to_query" in [e["event"] for e in logs]
    assert "pacs_ready" not in [e["event"] for e in logs]


def test_rows_resolving_to_one_study_are_deduplicated(
    tmp_path: Path, demo_orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second row selecting the same study is DUPLICATE and names the first row's line."""
    text = "PatientID,StudyDate\nDEMO001,\nDEMO001,20240105\n"
    status, info = _run(tmp_path, demo_orthanc, text)
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    rows = _read_info(info)
    duplicate = [r for r in rows if r["row"] == "3"]
    assert status == 0
    assert [d["state"] for d in duplicate] == ["DUPLICATE"]
    assert "already selected by line 2" in duplicate[0]["detail"]
    assert any(e["event"] == "study_duplicate" and e["first_row"] == 2 for e in logs)


def test_row_matching_nothing_exits_1(tmp_path: Path, demo_orthanc: OrthancServer) -> None:
    """A row the PACS has nothing for is NO_MATCH in the CSV, says what it searched for in
    ``query``, and the run exits 1."""
    status, info = _run(tmp_path, demo_orthanc, "PatientID\nDEMO001\nNOBODY\n")
    rows = _read_info(info)
    assert status == 1
    assert [(r["state"], r["query"]) for r in rows if r["row"] == "3"] == [
        ("NO_MATCH", "PatientID=NOBODY")
    ]
    assert {r["query"] for r in rows if r["row"] == "2"} == {"PatientID=DEMO001"}


def test_series_and_image_level_keys_narrow_the_answer(
    tmp_path: Path, demo_orthanc: OrthancServer
) -> None:
    """SeriesDescription (series level) and ImageType (image level) select only matching series."""
    text = "PatientID,SeriesDescription,ImageType\nDEMO001,*T1*,ORIGINAL\\PRIMARY*\n"
    status, info = _run(tmp_path, demo_orthanc, text)
    rows = _read_info(info)
    assert status == 0
    assert [r["SeriesDescription"] for r in rows] == ["T1 SAG"]


def test_patient_root_model_finds_the_same_series(
    tmp_path: Path, demo_orthanc: OrthancServer
) -> None:
    """query_model: patient resolves PatientID first, then gives the same answer."""
    config = write_config(
        tmp_path,
        port=demo_orthanc.dicom_port,
        called_ae_title=demo_orthanc.ae_title,
        extra_node="query_model: patient",
    )
    queryfile = write_queryfile(tmp_path, "PatientName\nDoe^Jane\n")
    status = main(["--queryfile", str(queryfile), "--info", "--config", str(config)])
    rows = _read_info(tmp_path / "data" / "q_info.csv")
    assert status == 0
    assert {r["PatientID"] for r in rows} == {"DEMO001"}
    assert len(rows) == 3


def test_wrong_called_ae_is_explained(tmp_path: Path) -> None:
    """An Orthanc that checks the called AE rejects us; the message names both AE titles."""
    with OrthancServer(ae_title="STRICTPACS", check_called_aet=True) as orthanc:
        config = write_config(tmp_path, port=orthanc.dicom_port, called_ae_title="WRONGAE")
        queryfile = write_queryfile(tmp_path, "PatientID\nDEMO001\n")
        result = subprocess.run(
            [sys.executable, "-m", "pacsman", "-q", str(queryfile), "--info", "--config", config],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 3
    assert "'WRONGAE'" in result.stderr
    assert "'PACSMAN'" in result.stderr
    assert "pacs.orthanc.called_ae_title" in result.stderr


def test_many_queries_on_one_association_lose_no_match(
    demo_orthanc: OrthancServer, caplog: pytest.LogCaptureFixture
) -> None:
    """300 back-to-back C-FINDs with TCP_NODELAY each get their one match (pynetdicom #875)."""
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    node = PacsNode(
        name="orthanc",
        host="127.0.0.1",
        port=demo_orthanc.dicom_port,
        called_ae_title=demo_orthanc.ae_title,
    )
    peer = DicomPeer(node, "PACSMAN")
    with (
        capture_logs() as logs,
        FindAssociation(peer, retry=RetryPolicy(max_attempts=1)) as session,
    ):
        counts = [
            len(session.find("STUDY", {"PatientID": "DEMO001"}, ("StudyInstanceUID",)))
            for _ in range(300)
        ]
    assert counts == [1] * 300
    assert session.queries == 300
    assert not [e for e in logs if e.get("event") == "pynetdicom"]
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()]


def test_association_sockets_disable_nagle(demo_orthanc: OrthancServer) -> None:
    """pacsman's association socket has TCP_NODELAY set."""
    node = PacsNode(
        name="orthanc",
        host="127.0.0.1",
        port=demo_orthanc.dicom_port,
        called_ae_title=demo_orthanc.ae_title,
    )
    with associate(DicomPeer(node, "PACSMAN"), [FIND_MODELS["study"]]) as assoc:
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_tuning_courtesy_resumes_the_same_run(tmp_path: Path, demo_orthanc: OrthancServer) -> None:
    """Changing intervals, timeouts or retries mid-cohort resumes the run; a new PACS does not."""
    _run(tmp_path, demo_orthanc, ALL_DEMO)
    config_path = tmp_path / "pacsman.yaml"
    text = config_path.read_text()
    config = load_config(config_path)
    extra = "    move_interval: 30\n    max_attempts: 5\n    called_ae_title:"
    tuned = text.replace("    called_ae_title:", extra)
    config_path.write_text(tuned)
    options = RunOptions(queryfile=tmp_path / "q.csv", out_directory=tmp_path / "data")
    assert run_queryfile(options, load_config(config_path)).resumed
    moved = tuned.replace(f"port: {demo_orthanc.dicom_port}", "port: 1")
    config_path.write_text(moved)
    assert config_sha256(load_config(config_path)) != config_sha256(config)
