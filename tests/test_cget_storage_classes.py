"""C-GET against PACSes pacsman had not met (issue 10, items 17-19), with real peers.

Orthanc (one that stores everything JPEG-LS and does not transcode on C-GET, and one that
does), pynetdicom's qrscp app, DCMTK getscu as the reference, and the fake PACS for the one
fault the others cannot make on demand (0xA702 naming no instance: congestion).

* Every storage class a series needs is offered: the SR classes (X-Ray Radiation Dose SR, key
  objects, Basic/Enhanced/Comprehensive SR) and waveforms come back from Orthanc and from
  pynetdicom's qrscp app, which answers one C-FIND response per instance and never transcodes.
* Compressed instances come back as the PACS holds them: from an Orthanc that stores
  everything JPEG-LS and does not transcode on C-GET, and from qrscp holding JPEG-LS, JPEG
  lossless and RLE series.
* A series the PACS cannot send (a private SOP class) fails with its reason in seconds, is
  never taken for congestion, and never delays the healthy series after it.
"""

from __future__ import annotations

import csv
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from structlog.testing import capture_logs

from pacsman.cli import main
from pacsman.config import PacsNode
from pacsman.dicom.client import MAX_CONTEXTS, DicomPeer, StorageRole, SubOperationsFailed
from pacsman.dicom.contexts import (
    COMMON_COMPRESSED,
    FIRST_RUNG_CLASSES,
    UNCOMPRESSED,
    contexts_for,
    is_image_class,
)
from pacsman.dicom.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, InstanceWriter
from pacsman.errors import ItemFailed, TransientError
from pacsman.retrieve import RetrieveAssociation, SeriesRequest
from pacsman.testing.dcmtk import dcmtk_tool
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.qrscp import QrScp, qrscp_available
from pacsman.testing.synthetic import (
    SeriesSpec,
    StudySpec,
    document_series,
    iter_datasets,
    synthetic_uid,
    write_study,
)
from pacsman.throttle import Courtesy, RetryPolicy
from tests.conftest import require_peer
from tests.helpers import write_config, write_queryfile

FAST = RetryPolicy(max_attempts=4, initial=0.01, cap=0.05, jitter=0.01)
ROOM = MAX_CONTEXTS - 2  # the C-GET and C-FIND models ride on every C-GET association
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
RLE = "1.2.840.10008.1.2.5"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
X_RAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
HEMODYNAMIC_WAVEFORM = "1.2.840.10008.5.1.4.1.1.9.2.1"
STUDY_CT = "1.2.840.10008.5.1.4.1.1.2"
PRIVATE_CLASS = str(synthetic_uid("pacsman-tests", "private-sop-class"))
DOCUMENTS = (
    X_RAY_DOSE_SR,
    KEY_OBJECT_SELECTION,
    BASIC_TEXT_SR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
    TWELVE_LEAD_ECG,
    HEMODYNAMIC_WAVEFORM,
)
ROW = "PatientID,Subject,Session\nCGET001,SUBJ01,SESS01\n"

STUDY = StudySpec(
    patient_id="CGET001",
    patient_name="Get^Test",
    study_date="20240601",
    accession_number="CG1",
    study_description="CT with dose report",
    modality="CT",
    series=(
        SeriesSpec(series_number=3, series_description="Topogram", n_instances=2),
        SeriesSpec(series_number=4, series_description="Chest", n_instances=4),
    ),
)
#: Series 1 and 2, first in the queue: a private SOP class no PACS negotiates for C-GET.
REFUSED = ("1", "2")


def _documents(spec: StudySpec = STUDY, first: int = 10) -> list[Dataset]:
    """One series per SR / key-object / waveform class, numbered from ``first``."""
    return [
        ds
        for number, uid in enumerate(DOCUMENTS, start=first)
        for ds in document_series(spec, series_number=number, sop_class_uid=uid, n_instances=2)
    ]


def _save(tmp_path: Path, port: int, ae_title: str, extra_node: str = "") -> int:
    node = f"retrieve_method: get\nmax_attempts: 4\n{extra_node}"
    config = write_config(tmp_path, port=port, called_ae_title=ae_title, extra_node=node)
    queryfile = write_queryfile(tmp_path, ROW)
    return main(["--queryfile", str(queryfile), "--info", "--save", "--config", str(config)])


def _info(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _received(tmp_path: Path) -> dict[str, Dataset]:
    """Every retrieved file's header, by SOPInstanceUID."""
    files = (tmp_path / "data").rglob("*.dcm")
    return {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in files)}


def _syntaxes(received: dict[str, Dataset]) -> Counter[tuple[str, str]]:
    """(SOP class, transfer syntax) -> how many files."""
    return Counter(
        (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in received.values()
    )


# -- the plans, without a network ---------------------------------------------------------


def test_the_ladder_offers_every_storage_class_within_128_contexts() -> None:
    """All 170 storage classes, one context per class and syntax, at most 126 storage
    contexts an association; the first rung holds the dose report, key objects, SR and ECG."""
    role = StorageRole(STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, lambda event: 0)
    plans = role.ladder(room=ROOM)
    offered = [context for plan in plans for context in plan.contexts]
    assert {c.sop_class_uid for c in offered} == set(STORAGE_SOP_CLASSES)
    assert len(offered) == len(set(offered))
    assert max(len(plan.contexts) for plan in plans) <= ROOM
    assert set(FIRST_RUNG_CLASSES) <= set(plans[0].sop_classes)
    for uid in (X_RAY_DOSE_SR, KEY_OBJECT_SELECTION, TWELVE_LEAD_ECG):
        assert {c.transfer_syntax_uid for c in offered if c.sop_class_uid == uid} == {
            *UNCOMPRESSED,
            "1.2.840.10008.1.2.1.99",
        }
    ct = {c.transfer_syntax_uid for c in plans[0].contexts if c.sop_class_uid == STUDY_CT}
    assert ct >= {*UNCOMPRESSED, *COMMON_COMPRESSED}


def test_plans_follow_what_the_pacs_holds_and_split_when_128_is_not_enough() -> None:
    """Known syntaxes get exactly their contexts (plus the uncompressed ones); a study whose
    classes need more than one association gets as many plans as it takes, no class split."""
    role = StorageRole(STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, lambda event: 0)
    [plan] = role.plans_for({STUDY_CT: {JPEG_LS}, X_RAY_DOSE_SR: set()}, room=ROOM)
    assert set(contexts_for(STUDY_CT, {JPEG_LS}, syntaxes=TRANSFER_SYNTAXES)) <= set(plan.contexts)
    assert {c.transfer_syntax_uid for c in plan.contexts if c.sop_class_uid == STUDY_CT} == {
        *UNCOMPRESSED,
        JPEG_LS,
    }
    images = [uid for uid in STORAGE_SOP_CLASSES if is_image_class(uid)][:40]
    plans = role.plans_for(dict.fromkeys(images, frozenset[str]()), room=ROOM)
    assert len(plans) > 1
    assert all(len(p.contexts) <= ROOM for p in plans)
    assert sum(len(set(p.sop_classes) & set(images)) for p in plans) == len(images)


# -- refusal is not congestion (fake PACS) ------------------------------------------------


def _get_association(pacs: FakePacs, writer: InstanceWriter) -> RetrieveAssociation:
    node = PacsNode("fake", pacs.host, pacs.port, pacs.ae_title, retrieve_method="get")
    role = StorageRole(STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, writer.handle_store)
    return RetrieveAssociation(
        DicomPeer(node, "PACSMAN"),
        receiver=writer,
        retry=FAST,
        courtesy=Courtesy(),
        move_destination=None,
        storage=role,
    )


def _chest(tmp_path: Path) -> SeriesRequest:
    series = STUDY.series[1]
    return SeriesRequest(
        study_instance_uid=str(STUDY.study_instance_uid),
        series_instance_uid=str(STUDY.series_instance_uid(series)),
        directory=tmp_path / "chest",
    )


def test_a_refused_cget_is_an_item_failure_and_congestion_is_retried(
    tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> None:
    """0xA702 naming every instance as failed (no context fits them) fails the series at once
    with its reason; 0xA702 naming none (the PACS is busy) is retried, then completes."""
    pacs = fake_pacs([STUDY], faults=Faults(failed_suboperations=99))
    writer = InstanceWriter(unrouted_directory=tmp_path / "unrouted")
    with (
        capture_logs() as logs,
        _get_association(pacs, writer) as association,
        pytest.raises(ItemFailed) as caught,
    ):
        association.fetch([_chest(tmp_path)])
    assert isinstance(caught.value, SubOperationsFailed)
    assert not isinstance(caught.value, TransientError)
    assert "0xA702" in str(caught.value)
    assert "4 instance(s) not received" in str(caught.value)
    assert [e for e in logs if e["event"] == "retrying"] == []
    pacs.faults = Faults(a702_moves=1)
    with capture_logs() as logs, _get_association(pacs, writer) as association:
        fetched = association.fetch([_chest(tmp_path)])
    assert [e["attempt"] for e in logs if e["event"] == "retrying"] == [1]
    assert fetched.received == {_chest(tmp_path).series_instance_uid: 4}


# -- Orthanc ------------------------------------------------------------------------------


def test_cget_from_a_jpeg_ls_orthanc_keeps_the_syntax_and_fails_refused_series_fast(
    tmp_path: Path, make_orthanc: Callable[..., OrthancServer]
) -> None:
    """An Orthanc that stores everything JPEG-LS and never transcodes on C-GET, holding two
    series of a private class first (it negotiates no context for them), then CT images, SR,
    key-object and waveform series.  The two fail with the reason; every other series is
    COMPLETE, the CT images JPEG-LS byte for byte as Orthanc holds them; in seconds."""
    orthanc = make_orthanc(
        ae_title="JLSPACS",
        extra_config={"IngestTranscoding": JPEG_LS, "TranscodeDicomProtocol": False},
    )
    orthanc.upload_datasets([*_private_series(), *iter_datasets(STUDY), *_documents()])
    started = time.monotonic()
    status = _save(tmp_path, orthanc.dicom_port, orthanc.ae_title)
    elapsed = time.monotonic() - started
    rows = _info(tmp_path)
    received = _received(tmp_path)
    _assert_two_refused_rest_complete(rows, status)
    classes = _syntaxes(received)
    assert classes[(STUDY_CT, JPEG_LS)] == 6
    for uid in DOCUMENTS:
        assert sum(n for (cls, _), n in classes.items() if cls == uid) == 2
    _same_pixels_as_orthanc(orthanc, received)
    assert elapsed < 20, f"took {elapsed:.1f} s"


def test_cget_from_a_transcoding_orthanc_gets_jpeg_ls_as_stored(
    tmp_path: Path, make_orthanc: Callable[..., OrthancServer]
) -> None:
    """Orthanc as shipped transcodes on C-GET to whatever was accepted: offered JPEG-LS beside
    the uncompressed syntaxes, it sends the JPEG-LS it holds, not a decompressed copy."""
    orthanc = make_orthanc(ae_title="TCPACS", extra_config={"IngestTranscoding": JPEG_LS})
    orthanc.upload_datasets(iter_datasets(STUDY))
    assert _save(tmp_path, orthanc.dicom_port, orthanc.ae_title) == 0
    received = _received(tmp_path)
    assert _syntaxes(received) == Counter({(STUDY_CT, JPEG_LS): 6})
    _same_pixels_as_orthanc(orthanc, received)


def _same_pixels_as_orthanc(orthanc: OrthancServer, received: dict[str, Dataset]) -> None:
    for instance in orthanc.rest("GET", "/instances?expand"):
        uid = instance["MainDicomTags"]["SOPInstanceUID"]
        if uid not in received or "PixelData" not in received[uid]:
            continue
        _, data = orthanc._request("GET", f"/instances/{instance['ID']}/file")
        stored = dcmread(BytesIO(data))
        assert stored.file_meta.TransferSyntaxUID == received[uid].file_meta.TransferSyntaxUID
        assert stored.PixelData == dcmread(received[uid].filename).PixelData


def _private_series(spec: StudySpec = STUDY) -> list[Dataset]:
    """Series 1 and 2 (:data:`REFUSED`) of a private SOP class, two instances each."""
    return [
        ds
        for number in map(int, REFUSED)
        for ds in document_series(
            spec, series_number=number, sop_class_uid=PRIVATE_CLASS, n_instances=2
        )
    ]


def _assert_two_refused_rest_complete(rows: list[dict[str, str]], status: int) -> None:
    states = {r["SeriesNumber"]: (r["state"], r["detail"]) for r in rows}
    refused = {n: s for n, s in states.items() if n in REFUSED}
    healthy = {n: s[0] for n, s in states.items() if n not in refused}
    assert status == 1
    assert [s for s, _ in refused.values()] == ["FAILED", "FAILED"], states
    for _, detail in refused.values():
        assert "could not send" in detail
        assert PRIVATE_CLASS in detail or "private" in detail
        assert "retrieve_method: move" in detail
    assert set(healthy.values()) == {"COMPLETE"}, states


# -- pynetdicom's qrscp app ---------------------------------------------------------------


@pytest.fixture
def qrscp() -> Iterator[QrScp]:
    """pynetdicom's Q/R SCP app on 127.0.0.1 with an archive of its own."""
    require_peer(
        qrscp_available(), "SQLAlchemy (for pynetdicom's qrscp app)", "pip install sqlalchemy"
    )
    with QrScp(ae_title="QRSCP") as pacs:
        yield pacs


def _dcmtk(name: str) -> Path:
    path = dcmtk_tool(name)
    require_peer(path is not None, f"DCMTK {name}", "apt install dcmtk")
    assert path is not None
    return path


def _compressed_files(directory: Path) -> list[Path]:
    """STUDY's CT series compressed by DCMTK: series 3 JPEG lossless, series 4 JPEG-LS, and
    one more series (5) RLE; the SR and waveform series in Explicit VR Little Endian."""
    spec = StudySpec(**{**STUDY.__dict__, "series": (*STUDY.series, _series(5, "RLE", 3))})
    plain = write_study(spec, directory / "plain")
    tools = {3: "dcmcjpeg", 4: "dcmcjpls", 5: "dcmcrle"}
    out = []
    for path in plain:
        target = directory / "compressed" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tool = str(_dcmtk(tools[int(path.parent.name)]))
        subprocess.run([tool, str(path), str(target)], check=True, timeout=60)
        out.append(target)
    return [*out, *_written(_documents(spec), directory / "documents")]


def _written(datasets: list[Dataset], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _series(number: int, description: str, count: int) -> SeriesSpec:
    return SeriesSpec(series_number=number, series_description=description, n_instances=count)


def test_cget_from_qrscp_keeps_each_syntax_and_fails_refused_series_fast(
    tmp_path: Path, qrscp: QrScp
) -> None:
    """qrscp says neither SOP class nor syntax and never transcodes.  Two series of a private
    class come first: they fail with the reason once every class pacsman knows was offered.
    Every other series is COMPLETE, each file in the syntax qrscp holds (JPEG lossless,
    JPEG-LS, RLE, SR and waveforms uncompressed); the whole run takes seconds."""
    files = _compressed_files(tmp_path / "source")
    qrscp.upload(files)
    qrscp.insert(_written(_private_series(), tmp_path / "private"))
    started = time.monotonic()
    status = _save(tmp_path, qrscp.port, qrscp.ae_title)
    elapsed = time.monotonic() - started
    rows = _info(tmp_path)
    received = _received(tmp_path)
    _assert_two_refused_rest_complete(rows, status)
    classes = _syntaxes(received)
    assert classes[(STUDY_CT, JPEG_LOSSLESS_SV1)] == 2
    assert classes[(STUDY_CT, JPEG_LS)] == 4
    assert classes[(STUDY_CT, RLE)] == 3
    for uid in DOCUMENTS:
        assert classes[(uid, EXPLICIT_LE)] == 2
    for path in files:
        source = dcmread(path)
        if "PixelData" in source:
            got = dcmread(received[str(source.SOPInstanceUID)].filename)
            assert got.PixelData == source.PixelData
    assert elapsed < 40, f"took {elapsed:.1f} s"
    _getscu_retrieves_the_dose_report(qrscp, tmp_path / "getscu")


def _getscu_retrieves_the_dose_report(qrscp: QrScp, out: Path) -> None:
    """The reference: DCMTK getscu retrieves the X-Ray Radiation Dose SR from qrscp too."""
    ds = next(d for d in _documents() if d.SOPClassUID == X_RAY_DOSE_SR)
    out.mkdir()
    command = [
        str(_dcmtk("getscu")),
        "-aet", "GETSCU", "-aec", qrscp.ae_title, "-S", "-od", str(out),
        "-k", "QueryRetrieveLevel=SERIES",
        "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
        qrscp.host, str(qrscp.port),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=60, capture_output=True)
    assert {str(dcmread(p).SOPClassUID) for p in out.iterdir()} == {X_RAY_DOSE_SR}


def test_the_compressed_syntaxes_proposed_are_ones_the_scp_accepts() -> None:
    """One list of transfer syntaxes: C-GET proposes a subset of what the SCP accepts."""
    assert set(COMMON_COMPRESSED) <= set(TRANSFER_SYNTAXES)
    assert set(UNCOMPRESSED) <= set(TRANSFER_SYNTAXES)
