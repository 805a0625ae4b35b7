"""`pacsman --queryfile q.csv --info --save`: retrieve, verify, resume, against real peers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pacsman.cli import main
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, SeriesSpec, StudySpec, iter_datasets
from tests.helpers import write_config, write_queryfile

FakePacsFactory = Callable[..., FakePacs]
ALL_DEMO = "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\nDEMO002,SUBJ02,SESS02\n"


def _info(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _stored(tmp_path: Path) -> Counter[str]:
    """Instances on disk per series directory (relative), ignoring anything not *.dcm."""
    root = tmp_path / "data"
    return Counter(str(p.parent.relative_to(root)) for p in root.rglob("*.dcm"))


def _leftovers(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "data").rglob("*") if p.is_file() and ".tmp" in p.name]


def _config(tmp_path: Path, pacs: Any, port: int, extra_node: str = "") -> Path:
    config = write_config(
        tmp_path, port=pacs_port(pacs), called_ae_title=pacs.ae_title, extra_node=extra_node
    )
    text = config.read_text().replace("local:\n", f"local:\n  port: {port}\n", 1)
    config.write_text(text)
    return config


def pacs_port(pacs: Any) -> int:
    return int(getattr(pacs, "dicom_port", 0) or pacs.port)


def _save(config: Path, queryfile: Path) -> int:
    return main(["--queryfile", str(queryfile), "--info", "--save", "--config", str(config)])


@pytest.mark.parametrize(
    "node",
    [
        "retrieve_method: move",
        "retrieve_method: get",
        "retrieve_method: move\nmax_associations: 2",
        "retrieve_method: move\nretrieve_level: study",
    ],
    ids=["move", "get", "move-2-associations", "move-study-level"],
)
def test_save_retrieves_exactly_what_orthanc_holds(
    tmp_path: Path, demo_orthanc: OrthancServer, node: str
) -> None:
    """C-MOVE and C-GET from Orthanc: every series COMPLETE, counts equal Orthanc's own."""
    port = free_port()
    demo_orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = _config(tmp_path, demo_orthanc, port, extra_node=node)
    queryfile = write_queryfile(tmp_path, ALL_DEMO)
    status = _save(config, queryfile)
    rows = _info(tmp_path)
    truth = demo_orthanc.series_instance_counts()
    assert status == 0
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert {r["SeriesInstanceUID"]: int(r["received_instances"]) for r in rows} == {
        uid: truth[uid] for uid in (r["SeriesInstanceUID"] for r in rows)
    }
    on_disk = _stored(tmp_path)
    assert on_disk["SUBJ01/SESS01/2-T1_SAG"] == 12
    assert sum(on_disk.values()) == sum(int(r["received_instances"]) for r in rows)
    assert _leftovers(tmp_path) == []


def test_rerun_of_a_finished_save_does_nothing(
    tmp_path: Path, demo_orthanc: OrthancServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command after a complete run fetches nothing and says so."""
    port = free_port()
    demo_orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port)
    config = _config(tmp_path, demo_orthanc, port)
    queryfile = write_queryfile(tmp_path, "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\n")
    assert _save(config, queryfile) == 0
    capsys.readouterr()
    assert _save(config, queryfile) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "nothing to do" in out
    assert "nothing_to_retrieve" in events
    assert "storage_scp_listening" not in events


def test_unknown_move_destination_stops_at_preflight(tmp_path: Path) -> None:
    """An Orthanc that does not know pacsman's AE fails the pre-flight with the fix (exit 3)."""
    port = free_port()
    with OrthancServer() as orthanc:
        orthanc.upload_datasets(d for s in DEMO_STUDIES[:1] for d in _datasets(s))
        config = _config(tmp_path, orthanc, port)
        queryfile = write_queryfile(tmp_path, "PatientID\nDEMO001\n")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pacsman",
                "-q",
                queryfile,
                "--info",
                "--save",
                "--config",
                config,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 3
    assert "pre-flight C-MOVE" in result.stderr
    assert "DicomModalities" in result.stderr


def _datasets(spec: StudySpec) -> list[Any]:
    return list(iter_datasets(spec))


def _fake(fake_pacs: FakePacsFactory, faults: Faults, port: int, **kwargs: Any) -> FakePacs:
    pacs = fake_pacs(DEMO_STUDIES[:1], faults=faults, **kwargs)
    pacs.add_move_destination("PACSMAN", "127.0.0.1", port)
    return pacs


ONE_SERIES = "PatientID,SeriesDescription,Subject,Session\nDEMO001,T1 SAG,SUBJ01,SESS01\n"


@pytest.mark.parametrize(
    ("faults", "expected_log"),
    [
        (Faults(short_delivery=4, fault_moves=1), "series_incomplete"),
        (Faults(failed_suboperations=3, fault_moves=1), "series_incomplete"),
        (Faults(abort_mid_move=True, fault_moves=1), "retrying"),
        (Faults(a702_moves=2), "retrying"),
        (Faults(reject_associations=2), "retrying"),
        (Faults(pending_delay=0.2, fault_moves=1), "series_retrieved"),
    ],
    ids=["short-delivery", "failed-subops", "abort", "a702", "reject", "slow-pending"],
)
def test_faults_end_complete(
    tmp_path: Path,
    fake_pacs: FakePacsFactory,
    capsys: pytest.CaptureFixture[str],
    faults: Faults,
    expected_log: str,
) -> None:
    """Each fault is seen (logged), then retried or re-requested until the series is COMPLETE."""
    port = free_port()
    pacs = _fake(fake_pacs, faults, port)
    config = _config(tmp_path, pacs, port, extra_node="timeouts:\n  dimse: 5")
    status = _save(config, write_queryfile(tmp_path, ONE_SERIES))
    rows = _info(tmp_path)
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert status == 0
    assert [(r["state"], r["received_instances"]) for r in rows] == [("COMPLETE", "12")]
    assert expected_log in events
    assert _stored(tmp_path)["SUBJ01/SESS01/2-T1_SAG"] == 12


def test_pacs_that_always_delivers_short_ends_incomplete(
    tmp_path: Path, fake_pacs: FakePacsFactory
) -> None:
    """A PACS that keeps delivering less than it promised: INCOMPLETE (n of m), exit 1."""
    port = free_port()
    pacs = _fake(fake_pacs, Faults(short_delivery=2), port)
    config = _config(tmp_path, pacs, port, extra_node="retrieve_passes: 2")
    status = _save(config, write_queryfile(tmp_path, ONE_SERIES))
    rows = _info(tmp_path)
    assert status == 1
    assert rows[0]["state"] == "INCOMPLETE"
    assert rows[0]["detail"].startswith("10 of 12 received")


def test_unknown_destination_a801_is_fatal_with_advice(
    tmp_path: Path, fake_pacs: FakePacsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """0xA801 (move destination unknown) stops the run and says what to configure."""
    port = free_port()
    pacs = fake_pacs(DEMO_STUDIES[:1])
    config = _config(tmp_path, pacs, port)
    status = _save(config, write_queryfile(tmp_path, ONE_SERIES))
    err = capsys.readouterr().err
    assert status == 3
    assert "0xA801" in err
    assert "does not know move destination 'PACSMAN'" in err


def _big_study() -> StudySpec:
    return StudySpec(
        patient_id="KILL001",
        patient_name="Kill^Test",
        study_date="20240401",
        accession_number="K1",
        study_description="kill -9",
        series=(
            SeriesSpec(series_number=1, series_description="A", n_instances=30),
            SeriesSpec(series_number=2, series_description="B", n_instances=30),
        ),
    )


def test_kill_9_then_resume_without_loss_or_duplicates(tmp_path: Path) -> None:
    """kill -9 mid-transfer; the same command completes every series, each instance once."""
    port = free_port()
    spec = _big_study()
    pacs = FakePacs.from_specs([spec], faults=Faults(pending_delay=0.05, fault_moves=1)).start()
    try:
        pacs.add_move_destination("PACSMAN", "127.0.0.1", port)
        config = _config(tmp_path, pacs, port)
        queryfile = write_queryfile(tmp_path, "PatientID,Subject,Session\nKILL001,S1,E1\n")
        command = [sys.executable, "-m", "pacsman", "-q", str(queryfile), "--info", "--save"]
        command += ["--config", str(config)]
        victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_files(tmp_path / "data", at_least=8, process=victim)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        again = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    finally:
        pacs.stop()
    rows = _info(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [(r["state"], r["received_instances"]) for r in rows] == [("COMPLETE", "30")] * 2
    assert sorted(_stored(tmp_path).values()) == [30, 30]
    assert _leftovers(tmp_path) == []


def _wait_for_files(root: Path, *, at_least: int, process: subprocess.Popen[bytes]) -> None:
    def arrived() -> bool:
        if process.poll() is not None:
            pytest.fail(f"pacsman ended (exit {process.returncode}) before it could be killed")
        return root.exists() and sum(1 for _ in root.rglob("*.dcm")) >= at_least

    wait_for(arrived, timeout=60, what=f"{at_least} instances on disk")
