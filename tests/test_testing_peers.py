"""The test peers themselves work: synthetic data, Orthanc, the fake PACS, against DCMTK."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pacsman.testing import orthanc as orthanc_module
from pacsman.testing._matching import match_entities
from pacsman.testing.dcmtk import StoreSCP, dcmtk_env
from pacsman.testing.fakepacs import TEMPORARY_CONGESTION, FakePacs, Faults
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.orthanc import OrthancServer, OrthancStartError
from pacsman.testing.synthetic import (
    DEMO_STUDIES,
    SeriesSpec,
    StudySpec,
    benchmark_cohort,
    iter_datasets,
    synthetic_uid,
    write_study,
)

Resolve = Callable[[str], Path]
MRI = DEMO_STUDIES[1]  # DEMO002, Müller^Jürgen: 2 series, 13 images
JAPANESE = StudySpec(
    patient_id="JP001",
    patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
    study_date="20240401",
    accession_number="JPACC1",
    study_description="MR Head",
    series=(SeriesSpec(series_number=1, series_description="T1", n_instances=2),),
)


def _run(tool: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool), *args], capture_output=True, text=True, timeout=timeout, env=dcmtk_env()
    )


def _findscu(dcmtk_bin: Resolve, port: int, out: Path, *keys: str) -> list[Dataset]:
    """Study Root C-FIND with DCMTK; return the answers, read back from extracted files."""
    out.mkdir(exist_ok=True)
    args = [arg for key in keys for arg in ("-k", key)]
    result = _run(dcmtk_bin("findscu"), "-S", "-X", "-od", str(out), *args, "127.0.0.1", str(port))
    assert result.returncode == 0, result.stderr
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def _movescu(dcmtk_bin: Resolve, port: int, destination: str, study_uid: str) -> str:
    result = _run(
        dcmtk_bin("movescu"),
        *("-v", "-S", "-aem", destination, "-k", "QueryRetrieveLevel=STUDY"),
        *("-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)),
    )
    return result.stderr


def _sop_uids(spec: StudySpec) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in iter_datasets(spec)}


def _received_uids(scp: StoreSCP) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received()}


def _query(keyword: str, value: str, level: str = "STUDY") -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    setattr(identifier, keyword, value)
    return identifier


# -- synthetic studies ----------------------------------------------------------------------


def test_synthetic_uids_are_deterministic_and_unique() -> None:
    """Building a spec twice gives the same UIDs; no two instances of the cohort share one."""
    first = [ds.SOPInstanceUID for spec in DEMO_STUDIES for ds in iter_datasets(spec)]
    second = [ds.SOPInstanceUID for spec in DEMO_STUDIES for ds in iter_datasets(spec)]
    assert first == second
    assert len(set(first)) == sum(spec.n_instances for spec in DEMO_STUDIES)
    assert synthetic_uid("x", 1, 11) != synthetic_uid("x", 11, 1)
    assert str(MRI.study_instance_uid).startswith("2.25.")


def test_write_study_gives_valid_utf8_part10_files(tmp_path: Path) -> None:
    """Files carry Explicit VR Little Endian meta, a UTF-8 name and 16-bit pixels."""
    paths = write_study(MRI, tmp_path)
    ds = dcmread(paths[0])
    assert len(paths) == 13
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert b"M\xc3\xbcller" in paths[0].read_bytes()
    assert len(ds.PixelData) == 64 * 64 * 2


def test_latin1_character_set_encodes_names_in_latin1(tmp_path: Path) -> None:
    """With ISO_IR 100 the name is written as Latin-1 bytes and read back intact."""
    spec = dataclasses.replace(MRI, specific_character_set="ISO_IR 100")
    path = write_study(spec, tmp_path)[0]
    assert b"M\xfcller^J\xfcrgen" in path.read_bytes()
    assert str(dcmread(path).PatientName) == "Müller^Jürgen"


def test_demo_cohort_has_the_documented_shape() -> None:
    """Three patients; DEMO003 has an MR and a CT study two days apart."""
    summary = [(s.patient_id, s.study_date, s.modality) for s in DEMO_STUDIES]
    assert summary == [
        ("DEMO001", "20240105", "MR"),
        ("DEMO002", "20240212", "MR"),
        ("DEMO003", "20240318", "MR"),
        ("DEMO003", "20240320", "CT"),
    ]
    assert all(2 <= len(s.series) <= 4 for s in DEMO_STUDIES)
    assert all(3 <= x.n_instances <= 12 for s in DEMO_STUDIES for x in s.series)


def test_benchmark_cohort_is_about_400_mb_in_one_or_many_studies() -> None:
    """3000 images of 256x256x16 bit, as one study or spread over many."""
    one = benchmark_cohort()
    many = benchmark_cohort(3000, n_studies=300, series_per_study=2)
    size = sum(x.rows * x.columns * 2 * x.n_instances for s in one for x in s.series)
    assert (len(one), sum(s.n_instances for s in one)) == (1, 3000)
    assert (len(many), sum(s.n_instances for s in many)) == (300, 3000)
    assert 390e6 < size < 400e6


def test_study_spec_names_the_bad_field() -> None:
    """A malformed date is refused at construction, naming field, value and format."""
    with pytest.raises(ValueError, match=r"study_date '2024-01-05' is not YYYYMMDD"):
        dataclasses.replace(MRI, study_date="2024-01-05")


# -- C-FIND matching ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("PatientName", "müller*", {"DEMO002"}),
        ("PatientID", "DEMO00?", {"DEMO001", "DEMO002", "DEMO003"}),
        ("StudyDate", "20240201-20240318", {"DEMO002", "DEMO003"}),
        ("StudyDate", "-20240105", {"DEMO001"}),
        ("StudyTime", "0800-0900", {"DEMO002"}),
        ("ModalitiesInStudy", "CT", {"DEMO003"}),
        ("AccessionNumber", "ACC0001\\ACC0002", {"DEMO001", "DEMO002"}),
        ("StudyInstanceUID", str(MRI.study_instance_uid), {"DEMO002"}),
        ("AccessionNumber", "", {"DEMO001", "DEMO002", "DEMO003"}),
    ],
)
def test_study_matching_follows_ps34_rules(keyword: str, value: str, expected: set[str]) -> None:
    """Wildcards, ranges, lists, computed ModalitiesInStudy and universal matching."""
    datasets = [ds for spec in DEMO_STUDIES for ds in iter_datasets(spec)]
    found = match_entities(datasets, _query(keyword, value), "STUDY")
    assert expected == {entity.first.PatientID for entity in found}


# -- Orthanc --------------------------------------------------------------------------------


def test_orthanc_holds_what_was_uploaded(demo_orthanc: OrthancServer) -> None:
    """Per-series instance counts in Orthanc equal the demo specs'."""
    expected = {
        str(spec.series_instance_uid(series)): series.n_instances
        for spec in DEMO_STUDIES
        for series in spec.series
    }
    assert expected == demo_orthanc.series_instance_counts()
    assert {str(s.study_instance_uid) for s in DEMO_STUDIES} == demo_orthanc.study_uids()


def test_dcmtk_findscu_finds_demo_studies_in_orthanc(
    demo_orthanc: OrthancServer, dcmtk_bin: Resolve, tmp_path: Path
) -> None:
    """DCMTK's findscu finds the demo studies in Orthanc, with a working date range."""
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID", "StudyDate=20240301-")
    answers = _findscu(dcmtk_bin, demo_orthanc.dicom_port, tmp_path / "rsp", *keys)
    expected = {(s.patient_id, str(s.study_instance_uid)) for s in DEMO_STUDIES[2:]}
    assert expected == {(a.PatientID, a.StudyInstanceUID) for a in answers}


def test_orthanc_moves_only_to_registered_destinations(
    orthanc: OrthancServer,
    dcmtk_bin: Resolve,
    store_scp: Callable[..., StoreSCP],
) -> None:
    """C-MOVE to an unknown AE fails; after ``add_modality`` storescp receives the study.

    Orthanc 1.10 answers an unknown destination with 0xC000 (unable to process), not the
    0xA801 (move destination unknown) of PS3.4.
    """
    orthanc.upload_datasets(iter_datasets(MRI))
    scp = store_scp(ae_title="DCMTKSCP")
    refused = _movescu(dcmtk_bin, orthanc.dicom_port, "DCMTKSCP", MRI.study_instance_uid)
    orthanc.add_modality("dcmtkscp", "DCMTKSCP", scp.host, scp.port)
    moved = _movescu(dcmtk_bin, orthanc.dicom_port, "DCMTKSCP", MRI.study_instance_uid)
    assert "Received Final Move Response (Failed: UnableToProcess)" in refused
    assert "Received Final Move Response (Success)" in moved
    assert _sop_uids(MRI) == _received_uids(scp)


def test_orthanc_start_failure_reports_its_log(make_orthanc: Callable[..., OrthancServer]) -> None:
    """A configuration Orthanc rejects ends in OrthancStartError quoting Orthanc's log."""
    with pytest.raises(OrthancStartError, match=r"exited during start-up\n(.|\n)*Orthanc"):
        make_orthanc(extra_config={"DicomPort": "not a port"})


def test_orthanc_start_retries_when_a_port_is_taken(
    make_orthanc: Callable[..., OrthancServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port taken between choosing and binding makes Orthanc exit; start() tries new ports."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offered = iter([taken])
        monkeypatch.setattr(
            orthanc_module, "free_port", lambda host: next(offered, None) or free_port(host)
        )
        server = make_orthanc()
    assert taken != server.dicom_port
    assert server.instance_count() == 0


def test_wait_for_names_what_it_waited_for() -> None:
    """A condition that never holds ends in TimeoutError naming it."""
    with pytest.raises(TimeoutError, match=r"gave up after 0.05 s waiting for the moon"):
        wait_for(lambda: False, timeout=0.05, what="the moon")


# -- fake PACS against DCMTK ----------------------------------------------------------------


def test_dcmtk_echoscu_against_fake_pacs(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve
) -> None:
    """C-ECHO succeeds and is recorded."""
    pacs = fake_pacs()
    result = _run(dcmtk_bin("echoscu"), "-aec", pacs.ae_title, "127.0.0.1", str(pacs.port))
    assert result.returncode == 0, result.stderr
    assert pacs.calls == ["C-ECHO"]


def test_fake_pacs_rejects_transiently_then_accepts(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve
) -> None:
    """The first two associations get A-ASSOCIATE-RJ (2, 3, 1); the third is accepted."""
    pacs = fake_pacs(faults=Faults(reject_associations=2, reject_reason=TEMPORARY_CONGESTION))
    results = [_run(dcmtk_bin("echoscu"), "127.0.0.1", str(pacs.port)) for _ in range(3)]
    assert [r.returncode == 0 for r in results] == [False, False, True]
    assert "Rejected Transient, Source: Service Provider (Presentation" in results[0].stderr
    assert "Reason: Temporary Congestion" in results[0].stderr
    assert pacs.calls == ["A-ASSOCIATE-RJ 2 3 1", "A-ASSOCIATE-RJ 2 3 1", "C-ECHO"]


def test_fake_pacs_rejects_permanently(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve
) -> None:
    """``reject_permanent`` answers every association: calling AE title not recognised."""
    pacs = fake_pacs(faults=Faults(reject_permanent=True))
    result = _run(dcmtk_bin("echoscu"), "127.0.0.1", str(pacs.port))
    assert result.returncode != 0
    assert "Reason: Calling AE Title Not Recognized" in result.stderr


def test_fake_pacs_a700_then_answers(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve, tmp_path: Path
) -> None:
    """The first C-FIND is refused with 0xA700; the next one answers all four studies."""
    pacs = fake_pacs(faults=Faults(a700_finds=1))
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    refused = _run(dcmtk_bin("findscu"), "-v", "-S", "-k", keys[0], "127.0.0.1", str(pacs.port))
    answers = _findscu(dcmtk_bin, pacs.port, tmp_path / "rsp", *keys)
    assert "Refused: OutOfResources" in refused.stderr
    assert len(answers) == len(DEMO_STUDIES)


def test_fake_pacs_patient_level_only_in_patient_root(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve, tmp_path: Path
) -> None:
    """Patient Root answers PATIENT level with counts; Study Root refuses it with 0xA900."""
    pacs = fake_pacs()
    keys = ("QueryRetrieveLevel=PATIENT", "PatientID", "NumberOfPatientRelatedStudies")
    args = [arg for key in keys for arg in ("-k", key)]
    out = tmp_path / "rsp"
    out.mkdir()
    findscu = dcmtk_bin("findscu")
    patient_root = _run(findscu, "-P", "-X", "-od", str(out), *args, "127.0.0.1", str(pacs.port))
    study_root = _run(findscu, "-v", "-S", *args, "127.0.0.1", str(pacs.port))
    answers = [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    assert patient_root.returncode == 0, patient_root.stderr
    assert [(a.PatientID, a.NumberOfPatientRelatedStudies) for a in answers] == [
        ("DEMO001", 1),
        ("DEMO002", 1),
        ("DEMO003", 2),
    ]
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in study_root.stderr


def test_fake_pacs_pending_delay_spaces_the_answers(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve, tmp_path: Path
) -> None:
    """``pending_delay`` separates consecutive pending answers (4 studies: 3 gaps)."""
    pacs = fake_pacs(faults=Faults(pending_delay=0.1))
    started = time.monotonic()
    answers = _findscu(dcmtk_bin, pacs.port, tmp_path / "rsp", "QueryRetrieveLevel=STUDY")
    assert len(answers) == 4
    assert time.monotonic() - started >= 0.3


def test_fake_pacs_series_answers_with_and_without_counts(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve, tmp_path: Path
) -> None:
    """Series answers carry NumberOfSeriesRelatedInstances unless ``omit_instance_count``."""
    pacs = fake_pacs()
    keys = (
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={MRI.study_instance_uid}",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    )
    counted = _findscu(dcmtk_bin, pacs.port, tmp_path / "a", *keys)
    pacs.faults = Faults(omit_instance_count=True)
    uncounted = _findscu(dcmtk_bin, pacs.port, tmp_path / "b", *keys)
    assert [a.NumberOfSeriesRelatedInstances for a in counted] == [3, 10]
    assert ["NumberOfSeriesRelatedInstances" in a for a in uncounted] == [False, False]


def test_fake_pacs_answers_in_iso2022_japanese(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve, tmp_path: Path
) -> None:
    """``response_charset`` re-encodes names: JIS X 0208 escapes on the wire, same name read."""
    charset = "ISO 2022 IR 6\\ISO 2022 IR 87"
    pacs = fake_pacs([JAPANESE], faults=Faults(response_charset=charset))
    keys = ("QueryRetrieveLevel=STUDY", "PatientName", "StudyInstanceUID")
    (answer,) = _findscu(dcmtk_bin, pacs.port, tmp_path / "rsp", *keys)
    raw = (tmp_path / "rsp" / "rsp0001.dcm").read_bytes()
    assert answer.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert b"\x1b$B" in raw
    assert str(answer.PatientName) == JAPANESE.patient_name


def test_dcmtk_movescu_from_fake_pacs_delivers_the_study(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve, store_scp: Callable[..., StoreSCP]
) -> None:
    """C-MOVE delivers every instance of the study to DCMTK storescp."""
    scp = store_scp()
    pacs = fake_pacs(move_destinations={scp.ae_title: (scp.host, scp.port)})
    output = _movescu(dcmtk_bin, pacs.port, scp.ae_title, MRI.study_instance_uid)
    assert "Received Final Move Response (Success)" in output
    assert _sop_uids(MRI) == _received_uids(scp)
    assert pacs.calls == [f"C-MOVE STUDY {MRI.study_instance_uid}"]


@pytest.mark.parametrize(
    ("faults", "expected_output", "expected_files"),
    [
        (Faults(a702_moves=1), "Refused: OutOfResourcesSubOperations", 0),
        (Faults(failed_suboperations=2), "Warning: SubOperationsCompleteOneOrMoreFailures", 11),
        (Faults(short_delivery=3), "Received Final Move Response (Success)", 10),
        (Faults(abort_mid_move=True), "Peer aborted Association", 6),
    ],
    ids=["a702", "failed-suboperations", "short-delivery", "abort"],
)
def test_fake_pacs_move_faults_on_the_wire(
    fake_pacs: Callable[..., FakePacs],
    dcmtk_bin: Resolve,
    store_scp: Callable[..., StoreSCP],
    faults: Faults,
    expected_output: str,
    expected_files: int,
) -> None:
    """Each C-MOVE fault shows in movescu's output and in what storescp received."""
    scp = store_scp()
    pacs = fake_pacs(move_destinations={scp.ae_title: (scp.host, scp.port)}, faults=faults)
    output = _movescu(dcmtk_bin, pacs.port, scp.ae_title, MRI.study_instance_uid)
    assert expected_output in output
    assert expected_files == len(scp.received())


def test_fake_pacs_unknown_move_destination_is_a801(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve
) -> None:
    """A C-MOVE to an AE title not in ``move_destinations`` is refused with 0xA801."""
    pacs = fake_pacs()
    output = _movescu(dcmtk_bin, pacs.port, "NOWHERE", MRI.study_instance_uid)
    assert "Refused: MoveDestinationUnknown" in output


def test_dcmtk_getscu_from_fake_pacs(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve, tmp_path: Path
) -> None:
    """C-GET returns every instance over the same association."""
    pacs = fake_pacs()
    result = _run(
        dcmtk_bin("getscu"),
        *("-S", "-od", str(tmp_path), "-k", "QueryRetrieveLevel=SERIES"),
        *("-k", f"SeriesInstanceUID={MRI.series_instance_uid(MRI.series[1])}"),
        *("127.0.0.1", str(pacs.port)),
    )
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.iterdir())) == MRI.series[1].n_instances


def test_fake_pacs_find_delay_trips_the_client_timeout(
    fake_pacs: Callable[..., FakePacs], dcmtk_bin: Resolve
) -> None:
    """``find_delay`` longer than the client's DIMSE timeout makes the C-FIND fail."""
    pacs = fake_pacs(faults=Faults(find_delay=5.0))
    started = time.monotonic()
    result = _run(
        dcmtk_bin("findscu"),
        *("-S", "-td", "1", "-k", "QueryRetrieveLevel=STUDY", "127.0.0.1", str(pacs.port)),
    )
    assert "DIMSE" in result.stderr
    assert time.monotonic() - started < 4.0


def test_faults_name_the_bad_field() -> None:
    """Negative counts are refused at construction, naming the field."""
    with pytest.raises(ValueError, match=r"Faults\.a702_moves=-1 must be >= 0"):
        Faults(a702_moves=-1)
