"""pacsman against a second real PACS: DCMTK's Query/Retrieve SCP ``dcmqrscp``.

dcmqrscp answers far fewer keys than Orthanc: no NumberOfSeriesRelatedInstances (pacsman counts
the instances at image level), and no SeriesDescription, ProtocolName or ImageType at any level
(a row selecting by one fails instead of selecting every series).  The truth every test checks
against is computed from the datasets the archive was loaded with.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pacsman.cli import main
from pacsman.config import PacsNode
from pacsman.dicom.client import DicomPeer
from pacsman.models import QueryRow
from pacsman.query import FindAssociation, query_row
from pacsman.testing.dcmqrscp import DcmqrscpServer
from pacsman.testing.net import free_port
from pacsman.testing.synthetic import DEMO_STUDIES, SeriesSpec, StudySpec, iter_datasets
from pacsman.throttle import RetryPolicy
from tests.helpers import write_config, write_queryfile

pytestmark = pytest.mark.dcmtk

Resolve = Callable[[str], Path]
ONE_TRY = RetryPolicy(max_attempts=1)


def _text_study(patient_id: str, name: str, description: str, charset: str, day: str) -> StudySpec:
    return StudySpec(
        patient_id=patient_id,
        patient_name=name,
        study_date=f"202306{day}",
        accession_number=f"ACC{patient_id}",
        study_description=description,
        specific_character_set=charset,
        series=(SeriesSpec(series_number=1, series_description="Übersicht", n_instances=2),),
    )


LATIN1 = _text_study("LATIN1", "Müller^Jürgen", "Schädel Öffnung ß", "ISO_IR 100", "01")
UTF8 = _text_study("UTF8", "Ødegård^Åse", "Schädel – 頭部 Ω", "ISO_IR 192", "02")
STUDIES = (*DEMO_STUDIES, LATIN1, UTF8)


@dataclass(frozen=True)
class Archive:
    """The shared dcmqrscp, what it holds, and the port it sends C-MOVEs for PACSMAN to."""

    server: DcmqrscpServer
    datasets: tuple[Dataset, ...]
    scp_port: int

    def truth(self, patient_ids: set[str]) -> dict[str, set[str]]:
        """``{SeriesInstanceUID: SOPInstanceUIDs}`` stored for these patients."""
        series: dict[str, set[str]] = {}
        for ds in self.datasets:
            if ds.PatientID in patient_ids:
                series.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
        return series


def _server(dcmtk_bin: Resolve, scp_port: int, *extra_args: str) -> DcmqrscpServer:
    """A dcmqrscp from /usr/bin (skipped, or failed under CI, when DCMTK is missing)."""
    return DcmqrscpServer(
        move_destinations={"PACSMAN": ("127.0.0.1", scp_port)},
        extra_args=extra_args,
        binary=dcmtk_bin("dcmqrscp"),
        indexer=dcmtk_bin("dcmqridx"),
        echoscu=dcmtk_bin("echoscu"),
    )


@pytest.fixture(scope="module")
def archive(dcmtk_bin: Resolve) -> Iterator[Archive]:
    """A dcmqrscp holding :data:`STUDIES`, shared by the module: do not modify it."""
    scp_port = free_port()
    datasets = tuple(ds for spec in STUDIES for ds in iter_datasets(spec))
    with _server(dcmtk_bin, scp_port) as server:
        server.add_datasets(datasets)
        yield Archive(server, datasets, scp_port)


@pytest.fixture(autouse=True)
def _private_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def _pacsman(
    tmp_path: Path,
    server: DcmqrscpServer,
    scp_port: int,
    queryfile: str,
    *args: str,
    extra_node: str = "",
    local_ae_title: str = "PACSMAN",
) -> tuple[int, list[dict[str, str]]]:
    """Run the pacsman CLI with ``--info`` and ``args``; return its exit code and info CSV rows."""
    config = write_config(
        tmp_path,
        port=server.port,
        called_ae_title=server.ae_title,
        node="dcmqrscp",
        extra_node=extra_node,
        local_ae_title=local_ae_title,
        local_port=scp_port,
    )
    path = write_queryfile(tmp_path, queryfile)
    status = main(["--queryfile", str(path), "--info", *args, "--config", str(config)])
    info = tmp_path / "data" / "q_info.csv"
    if not info.exists():  # a fatal error (exit 3) writes none
        return status, []
    with info.open(encoding="utf-8", newline="") as fh:
        return status, list(csv.DictReader(fh))


def _run(
    tmp_path: Path, archive: Archive, queryfile: str, *args: str, **kwargs: str
) -> tuple[int, list[dict[str, str]]]:
    return _pacsman(tmp_path, archive.server, archive.scp_port, queryfile, *args, **kwargs)


def _listed(rows: list[dict[str, str]]) -> dict[str, int]:
    return {r["SeriesInstanceUID"]: int(r["expected_instances"]) for r in rows}


def _on_disk(root: Path) -> Counter[tuple[str, str]]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` of every file received, read from its header."""
    tags = ["SeriesInstanceUID", "SOPInstanceUID"]
    return Counter(
        (str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        for ds in (dcmread(p, specific_tags=tags) for p in root.rglob("*.dcm"))
    )


def test_dcmqrscp_omits_the_counts_and_descriptions_pacsman_asks_for(archive: Archive) -> None:
    """The premise of this file: dcmqrscp's series answers lack these two keys."""
    node = PacsNode("dcmqrscp", "127.0.0.1", archive.server.port, archive.server.ae_title)
    study = DEMO_STUDIES[0].study_instance_uid
    returns = ("SeriesInstanceUID", "SeriesDescription", "NumberOfSeriesRelatedInstances")
    with FindAssociation(DicomPeer(node, "PACSMAN"), retry=ONE_TRY) as session:
        answers = session.find("SERIES", {"StudyInstanceUID": study}, returns)
    assert len(answers) == len(DEMO_STUDIES[0].series)
    assert not [a for a in answers if "NumberOfSeriesRelatedInstances" in a]
    assert not [a for a in answers if "SeriesDescription" in a]


@pytest.mark.parametrize(
    ("queryfile", "patients"),
    [
        ("PatientID,Subject,Session\nDEMO001,S1,E1\nDEMO002,S2,E2\n", {"DEMO001", "DEMO002"}),
        ("StudyDate\n20240301-20240331\n20230601-20230601\n", {"DEMO003", "LATIN1"}),
    ],
    ids=["patient-id", "study-date-range"],
)
def test_info_lists_exactly_what_dcmqrscp_holds(
    tmp_path: Path, archive: Archive, queryfile: str, patients: set[str]
) -> None:
    """Every stored series is listed once, counted right at image level, nothing else."""
    status, rows = _run(tmp_path, archive, queryfile)
    truth = archive.truth(patients)
    assert status == 0
    assert _listed(rows) == {uid: len(sops) for uid, sops in truth.items()}
    assert len(rows) == len(truth)
    assert {r["state"] for r in rows} == {"QUERIED"}
    assert {r["PatientID"] for r in rows} == patients


@pytest.mark.parametrize(
    "node",
    ["retrieve_method: move", "retrieve_method: get", "max_associations: 2"],
    ids=["move", "get", "move-2-associations"],
)
def test_save_stores_every_instance_once(tmp_path: Path, archive: Archive, node: str) -> None:
    """C-MOVE and C-GET: every series COMPLETE; on disk exactly the stored SOPInstanceUIDs."""
    queryfile = "PatientID,Subject,Session\nDEMO001,S1,E1\nDEMO003,S3,\n"
    status, rows = _run(tmp_path, archive, queryfile, "--save", extra_node=node)
    truth = archive.truth({"DEMO001", "DEMO003"})
    on_disk = _on_disk(tmp_path / "data")
    assert status == 0
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert {r["SeriesInstanceUID"]: int(r["received_instances"]) for r in rows} == {
        uid: len(sops) for uid, sops in truth.items()
    }
    assert set(on_disk.values()) == {1}
    assert set(on_disk) == {(uid, sop) for uid, sops in truth.items() for sop in sops}


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
def test_non_ascii_text_comes_back_intact(tmp_path: Path, archive: Archive, charset: str) -> None:
    """Latin-1 and UTF-8 studies: names and descriptions intact, whatever pacsman asks in.

    dcmqrscp converts its answers to the request's character set; what Latin-1 cannot hold
    (頭部) it sends unconverted, labelled ISO_IR 192.
    """
    node = f"character_set: {charset}"
    status, rows = _run(tmp_path, archive, "PatientID\nLATIN1\nUTF8\n", extra_node=node)
    described = {r["PatientID"]: r["StudyDescription"] for r in rows}
    assert status == 0
    assert described == {s.patient_id: s.study_description for s in (LATIN1, UTF8)}
    peer = DicomPeer(
        PacsNode(
            "dcmqrscp",
            "127.0.0.1",
            archive.server.port,
            archive.server.ae_title,
            character_set=charset,
        ),
        "PACSMAN",
    )
    found: dict[str, set[tuple[str, str]]] = {}
    with FindAssociation(peer, retry=ONE_TRY) as session:
        for pattern in ("Müller*", "Ødegård*"):
            studies = query_row(session, QueryRow(line=2, keys={"PatientName": pattern}))
            found[pattern] = {(s.patient_id, s.patient_name) for s in studies}
    assert found["Müller*"] == {("DEMO002", "Müller^Jürgen"), ("LATIN1", "Müller^Jürgen")}
    assert found["Ødegård*"] == {("UTF8", "Ødegård^Åse")}


@pytest.mark.parametrize(
    ("column", "pattern"), [("SeriesDescription", "T1 SAG"), ("ImageType", "ORIGINAL\\PRIMARY*")]
)
def test_filter_the_pacs_cannot_check_fails_the_row(
    tmp_path: Path, archive: Archive, column: str, pattern: str
) -> None:
    """dcmqrscp ignores these keys and returns them at no level: the row fails, never widens."""
    status, rows = _run(tmp_path, archive, f"PatientID,{column}\nDEMO001,{pattern}\nDEMO002,\n")
    first = [r for r in rows if r["row"] == "2"]
    assert status == 1
    assert [(r["state"], r["SeriesInstanceUID"]) for r in first] == [("FAILED", "")]
    assert f"returned no {column} for any of the" in first[0]["detail"]
    assert _listed([r for r in rows if r["row"] == "3"]) == {
        uid: len(sops) for uid, sops in archive.truth({"DEMO002"}).items()
    }


def test_unknown_move_destination_stops_with_advice(
    tmp_path: Path, archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """dcmqrscp answers a C-MOVE to an AE missing from its HostTable with 0xA801: exit 3."""
    status, _ = _run(tmp_path, archive, "PatientID\nDEMO001\n", "--save", local_ae_title="NOBODY")
    err = capsys.readouterr().err
    assert status == 3
    assert "0xA801" in err
    assert "does not know move destination 'NOBODY'" in err


def test_move_from_an_archive_that_requires_a_find_context(
    tmp_path: Path, dcmtk_bin: Resolve
) -> None:
    """``--require-find`` (an RSNA'93 rule) refuses a C-MOVE context proposed without C-FIND."""
    scp_port = free_port()
    spec = DEMO_STUDIES[1]
    with _server(dcmtk_bin, scp_port, "--require-find") as qr:
        qr.add_datasets(iter_datasets(spec))
        status, rows = _pacsman(tmp_path, qr, scp_port, "PatientID\nDEMO002\n", "--save")
    assert status == 0
    assert [r["received_instances"] for r in rows] == [str(s.n_instances) for s in spec.series]
