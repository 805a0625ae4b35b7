"""The query stage against a fake PACS that misbehaves in ways Orthanc cannot."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from pacsman.cli import main
from pacsman.config import PacsNode, Timeouts
from pacsman.dicom.client import DicomPeer, associate, echo
from pacsman.errors import FatalError, ItemFailed, TransientError
from pacsman.models import QueryRow
from pacsman.query import FindAssociation, query_row
from pacsman.testing.fakepacs import TEMPORARY_CONGESTION, FakePacs, Faults
from pacsman.testing.synthetic import DEMO_STUDIES, SeriesSpec, StudySpec
from pacsman.throttle import RetryPolicy
from tests.helpers import tcp_tripwire, write_config, write_queryfile

FAST = RetryPolicy(max_attempts=4, initial=0.01, cap=0.05, jitter=0.01)
FakePacsFactory = Callable[..., FakePacs]


def _peer(pacs: FakePacs, **node: Any) -> DicomPeer:
    return DicomPeer(PacsNode("fake", pacs.host, pacs.port, pacs.ae_title, **node), "PACSMAN")


def _series_counts(pacs: FakePacs, row: QueryRow, **node: Any) -> dict[str, int | None]:
    with FindAssociation(_peer(pacs, **node), retry=FAST) as association:
        studies = query_row(association, row)
    return {s.series_instance_uid: s.expected_instances for st in studies for s in st.series}


def _truth(pacs: FakePacs, patient_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ds in pacs.datasets:
        if ds.PatientID == patient_id:
            counts[ds.SeriesInstanceUID] = counts.get(ds.SeriesInstanceUID, 0) + 1
    return counts


def test_transient_rejects_are_retried(fake_pacs: FakePacsFactory) -> None:
    """Two 'local limit exceeded' rejects, then an accept: the query succeeds after back-off."""
    pacs = fake_pacs(faults=Faults(reject_associations=2))
    row = QueryRow(line=2, keys={"PatientID": "DEMO001"})
    with capture_logs() as logs:
        counts = _series_counts(pacs, row)
    assert counts == _truth(pacs, "DEMO001")
    assert [e["attempt"] for e in logs if e["event"] == "retrying"] == [1, 2]


def test_congestion_reject_reason_is_named(fake_pacs: FakePacsFactory) -> None:
    """A transient reject for congestion says the PACS is congested and pacsman will retry."""
    pacs = fake_pacs(faults=Faults(reject_associations=9, reject_reason=TEMPORARY_CONGESTION))
    with pytest.raises(TransientError, match="congested"):
        _series_counts(pacs, QueryRow(line=2, keys={"PatientID": "DEMO001"}))


def test_permanent_reject_names_both_ae_titles_and_the_fix(fake_pacs: FakePacsFactory) -> None:
    """'Calling AE not recognised' is fatal and tells the user what to ask the PACS admin."""
    pacs = fake_pacs(faults=Faults(reject_permanent=True))
    with pytest.raises(FatalError) as caught:
        echo(_peer(pacs))
    message = str(caught.value)
    assert "'PACSMAN'" in message
    assert "FAKEPACS" in message
    assert "ask its administrator to add 'PACSMAN'" in message


def test_out_of_resources_is_retried(fake_pacs: FakePacsFactory) -> None:
    """0xA700 (out of resources) on the first two C-FINDs is retried, then answered."""
    pacs = fake_pacs(faults=Faults(a700_finds=2))
    row = QueryRow(line=2, keys={"PatientID": "DEMO002"})
    assert _series_counts(pacs, row) == _truth(pacs, "DEMO002")


def test_silent_pacs_times_out_and_row_fails(
    fake_pacs: FakePacsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PACS that never answers a C-FIND fails the row (exit 1) after the retry budget."""
    pacs = fake_pacs(faults=Faults(find_delay=5.0))
    config = write_config(
        tmp_path,
        port=pacs.port,
        called_ae_title=pacs.ae_title,
        node="fake",
        extra_node="max_attempts: 1\ntimeouts:\n  dimse: 0.5",
    )
    queryfile = write_queryfile(tmp_path, "PatientID\nDEMO001\n")
    status = main(["--queryfile", str(queryfile), "--info", "--config", str(config)])
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert status == 1
    assert rows[0]["state"] == "FAILED"
    assert "no C-FIND response within 0.5 s" in rows[0]["detail"]
    assert "pacs.fake.timeouts.dimse" in rows[0]["detail"]


def test_missing_instance_count_is_counted_at_image_level(fake_pacs: FakePacsFactory) -> None:
    """When the PACS omits NumberOfSeriesRelatedInstances, an image-level C-FIND counts."""
    pacs = fake_pacs(faults=Faults(omit_instance_count=True))
    row = QueryRow(line=2, keys={"PatientID": "DEMO003"})
    assert _series_counts(pacs, row) == _truth(pacs, "DEMO003")
    assert set(_series_counts(pacs, row, count_instances="never").values()) == {None}


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "Ødegård^Åse"),
        ("\\ISO 2022 IR 87", "ヤマダ^タロウ=山田^太郎"),
    ],
)
def test_character_sets_decode_intact(fake_pacs: FakePacsFactory, charset: str, name: str) -> None:
    """Names come back intact whatever Specific Character Set the PACS answers in."""
    spec = StudySpec(
        patient_id="CS001",
        patient_name=name,
        study_date="20240101",
        accession_number="ACC1",
        study_description="Kopf",
        series=(SeriesSpec(series_number=1, series_description="T1", n_instances=2),),
    )
    pacs = fake_pacs([spec], faults=Faults(response_charset=charset))
    with FindAssociation(_peer(pacs), retry=FAST) as association:
        studies = query_row(association, QueryRow(line=2, keys={"PatientID": "CS001"}))
    assert [s.patient_name for s in studies] == [name]


def test_bad_queryfile_opens_no_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten mistakes: ten located messages, exit 2, and not one TCP connection to the PACS."""
    text = (
        "PatientID,StudyDate,StudyTime,Modality,SeriesNumber,StudyInstanceUID,"
        "Subject,Session,patientName\n"
        "DEMO001,2023-13-01,,,,,SUBJ01,SESS01,\n"
        "*,,,,,,SUBJ02,SESS02,\n"
        "DEMO003,20230230,,,,,SUBJ03,SESS03,\n"
        "DEMO004,,25:00,,,,SUBJ04,SESS04,\n"
        "DEMO005,,,mr,,,SUBJ05,SESS05,\n"
        "DEMO006,,,,3.0,,SUBJ06,SESS06,\n"
        "DEMO007,,,,,1.23457E+25,SUBJ07,SESS07,\n"
        "DEMO008,,,,,,bad label,SESS08,\n"
        "DEMO009,,,,,,SUBJ09,SESS01,\n"
    )
    queryfile = write_queryfile(tmp_path, text)
    with tcp_tripwire() as (port, hits):
        config = write_config(tmp_path, port=port, called_ae_title="ANY")
        status = main(["--queryfile", str(queryfile), "--info", "--config", str(config)])
    err = capsys.readouterr().err
    located = [line for line in err.splitlines() if line.startswith(f"{queryfile}:")]
    assert status == 2
    assert hits == []
    assert len(located) == 10, err
    assert f"{queryfile}:1:9:" in err
    assert "did you mean 'PatientName'?" in err


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pacsman validate` says OK for a clean file and exits 2 for a bad one."""
    good = write_queryfile(tmp_path, "PatientID,Subject,Session\nP1,S1,E1\n", name="good.csv")
    bad = write_queryfile(tmp_path, "PatientID,StudyDate\nP1,yesterday\n", name="bad.csv")
    assert main(["validate", str(good)]) == 0
    assert "1 row(s) OK" in capsys.readouterr().out
    assert main(["validate", str(bad)]) == 2
    assert f"{bad}:2:2:" in capsys.readouterr().err


def test_echo_command(fake_pacs: FakePacsFactory, tmp_path: Path) -> None:
    """`pacsman echo` succeeds against a PACS that knows us, exits 3 when rejected for good."""
    good = fake_pacs(DEMO_STUDIES[:1])
    config = write_config(tmp_path, port=good.port, called_ae_title=good.ae_title)
    assert main(["echo", "--config", str(config)]) == 0
    good.faults = Faults(reject_permanent=True)
    assert main(["echo", "--config", str(config)]) == 3


def test_echo_times_out_quickly_when_nothing_listens(tmp_path: Path) -> None:
    """A closed port fails the pre-flight with a message naming host, port and the fix."""
    with tcp_tripwire() as (port, _):
        pass  # the port is now closed
    peer = DicomPeer(
        PacsNode("gone", "127.0.0.1", port, "GONE", timeouts=Timeouts(connect=1, acse=1)),
        "PACSMAN",
    )
    with pytest.raises(TransientError, match=r"pacs\.gone\.host/port"):
        echo(peer)


def test_every_context_refused_is_fatal_and_names_them(fake_pacs: FakePacsFactory) -> None:
    """A PACS that accepts the association but none of its SOP classes: no retry, a reason."""
    pacs = fake_pacs()
    unknown = "1.2.826.0.1.3680043.10.1234.1"  # a SOP class no PACS supports
    with pytest.raises(FatalError) as caught, associate(_peer(pacs), [unknown]):
        pass
    message = str(caught.value)
    assert "refused every presentation context" in message
    assert f"{unknown} (abstract syntax not supported)" in message
    assert "pacs.fake.query_model" in message


def test_study_key_the_pacs_ignores_fails_the_row(fake_pacs: FakePacsFactory) -> None:
    """A PACS that neither matches on nor returns StudyDescription cannot narrow a pull by it:
    the row fails with the reason, instead of selecting every study of the patient."""
    pacs = fake_pacs(faults=Faults(ignored_keys=("StudyDescription",)))
    row = QueryRow(line=2, keys={"PatientID": "DEMO001", "StudyDescription": "no such study"})
    with (
        FindAssociation(_peer(pacs), retry=FAST) as association,
        pytest.raises(ItemFailed) as caught,
    ):
        query_row(association, row)
    assert "returned no StudyDescription for any of the 1 study-level answer(s)" in str(
        caught.value
    )
    assert "Drop that column" in str(caught.value)
