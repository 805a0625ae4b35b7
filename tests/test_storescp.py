"""pacsman's Storage SCP: path safety, header routing, and real associations on 127.0.0.1.

Peers are real: DCMTK ``storescu``/``movescu``, Orthanc, and pynetdicom as an SCU for the
cases DCMTK cannot produce (a UID with ``../``, an abort mid-instance).
"""

from __future__ import annotations

import errno
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from structlog.testing import capture_logs

from pacsman.dicom import _pending as _storescp_pending
from pacsman.dicom.header import part10_values, routing_uids, syntax_of
from pacsman.dicom.meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsman.dicom.scp import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    InstanceWriter,
    StorageSCP,
    StoredInstance,
    accelerate,
    default_labels,
    safe_component,
    series_directory,
)
from pacsman.errors import FatalError
from pacsman.testing.dcmtk import dcmtk_env
from pacsman.testing.net import wait_for
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, iter_datasets, write_study

CALLER = "ORTHANC"


# -- helpers ---------------------------------------------------------------------------------


class Receiver:
    """A started StorageSCP with its writer and everything ``on_stored`` reported.

    Its writer keeps unsolicited instances (``unsolicited="keep"``), so that the tests here
    need not route every series; the default, refusing them, is tested in
    ``test_scp_hostile.py``.
    """

    def __init__(self, root: Path, **kwargs: Any) -> None:
        self.root = root
        self.stored: list[StoredInstance] = []
        self.writer = InstanceWriter(
            unrouted_directory=root / "unrouted", on_stored=self.stored.append, unsolicited="keep"
        )
        kwargs.setdefault("allowed_calling_ae_titles", [CALLER])
        self.scp = StorageSCP(
            self.writer, ae_title="PACSMAN", bind_host="127.0.0.1", port=0, **kwargs
        ).start()

    def files(self) -> list[Path]:
        """Every file under the root, temporary ones included."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Factory: ``receiver(**StorageSCP kwargs)`` starts an SCP writing under tmp_path."""
    started: list[Receiver] = []

    def start(**kwargs: Any) -> Receiver:
        started.append(Receiver(tmp_path / f"scp{len(started)}", **kwargs))
        return started[-1]

    yield start
    for item in started:
        item.scp.stop()


def dataset_bytes(data: bytes) -> bytes:
    """The dataset part of a Part 10 file: after preamble, DICM and the file meta group."""
    assert data[128:132] == b"DICM"
    return data[144 + int.from_bytes(data[140:144], "little") :]


def storescu(
    dcmtk_bin: Callable[[str], Path], port: int, files: list[Path], *args: str, caller: str = CALLER
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK storescu (TCP_NODELAY=1) against the SCP."""
    command = [str(dcmtk_bin("storescu")), "-aet", caller, "-aec", "PACSMAN", *args]
    return subprocess.run(
        [*command, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )


def associate(port: int, ds: Dataset, *, caller: str = CALLER) -> Association:
    """Open a pynetdicom association proposing ``ds``'s SOP class and transfer syntax."""
    ae = AE(ae_title=caller)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    return ae.associate("127.0.0.1", port, ae_title="PACSMAN")


def send_all(port: int, datasets: list[Dataset]) -> list[int]:
    """C-STORE each dataset on one pynetdicom association; return the statuses."""
    assoc = associate(port, datasets[0])
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def demo_files(tmp_path: Path) -> list[Path]:
    """DEMO_STUDIES[0] written as Part 10 files (23 instances in 3 series)."""
    return write_study(DEMO_STUDIES[0], tmp_path / "input")


def route_demo(writer: InstanceWriter, root: Path) -> dict[str, Path]:
    """Route every series of DEMO_STUDIES[0] to ``<root>/<SeriesNumber>``."""
    spec = DEMO_STUDIES[0]
    routes = {spec.series_instance_uid(s): root / str(s.series_number) for s in spec.series}
    for series_uid, directory in routes.items():
        writer.route(series_uid, directory)
    return routes


# -- path components -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.840.113619.2.1", "1.2.840.113619.2.1"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", "fallback"),
        (".hidden", "hidden"),
        ("a/b\\c\0d", "a_b_c_d"),
        ("T1 SAG  post\tGd", "T1_SAG_post_Gd"),
        ("Mu\u0308ller^Ju\u0308rgen", "Müller^Jürgen"),
        ("\u202eevil\u200b", "evil"),
        ('con:*?"<>|', "con_"),  # CON is a Windows reserved name (issue 10 #15)
        ("", "fallback"),
        ("-rf", "rf"),
    ],
)
def test_safe_component(text: str, expected: str) -> None:
    """Separators, traversal, hidden names and invisible characters never survive."""
    assert expected == safe_component(text, fallback="fallback")


def test_safe_component_bounds_utf8_bytes() -> None:
    """The bound is in UTF-8 bytes, cut at a character boundary, never mid-character."""
    result = safe_component("ü" * 100, fallback="x", max_length=64)
    assert result == "ü" * 32
    assert len(safe_component("a" * 300, fallback="x").encode()) == 64


def test_safe_component_rejects_unusable_fallback() -> None:
    """A fallback that sanitizes to nothing is a programming error, named as such."""
    with pytest.raises(ValueError, match=r"fallback '\.\.' is not a usable path component"):
        safe_component("", fallback="..")


def test_series_directory_and_default_labels(tmp_path: Path) -> None:
    """Default labels come from PatientID and StudyDate; every component is sanitized."""
    subject, session = default_labels("../PAT 01", "20240105")
    assert (subject, session) == ("PAT_01", "PAT_01_20240105")
    assert default_labels("", "")[1] == "unknown_subject_undated"
    directory = series_directory(
        tmp_path, subject=subject, session=session, series_number="3", series_description="T2/AX"
    )
    assert directory == tmp_path / "PAT_01" / "PAT_01_20240105" / "3-T2_AX"
    bare = series_directory(
        tmp_path, subject="..", session=".", series_number="", series_description=""
    )
    assert bare == tmp_path / "unknown_subject" / "unknown_session" / "0"


# -- reading the routing UIDs from raw dataset bytes -----------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",  # implicit VR
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "image_dfl.dcm",  # deflated
        "rtplan.dcm",  # nested sequences before group 0020
        "SC_rgb_jpeg.dcm",  # claims explicit VR, is implicit: tolerated
    ],
)
def test_routing_uids_match_pydicom(name: str) -> None:
    """The UIDs found in the header equal pydicom's, whatever the encoding."""
    path = Path(get_testdata_file(name) or "")
    raw = path.read_bytes()
    ds = dcmread(path, force=True)
    syntax = syntax_of(str(ds.file_meta.TransferSyntaxUID))
    expected = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    assert expected == routing_uids(dataset_bytes(raw), syntax, final=True)


def test_routing_uids_asks_for_more_bytes() -> None:
    """A prefix that ends before SeriesInstanceUID gives None unless it is the end."""
    raw = dataset_bytes(Path(get_testdata_file("CT_small.dcm") or "").read_bytes())
    syntax = syntax_of("1.2.840.10008.1.2.1")
    assert routing_uids(raw[:100], syntax, final=False) is None
    assert routing_uids(raw[:100], syntax, final=True) == ("", "")


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        ("CT_small.dcm", True),  # explicit VR little endian
        ("MR_small_implicit.dcm", True),  # implicit VR
        ("rtplan.dcm", True),  # nested sequences before group 0020
        ("MR_small_bigendian.dcm", False),  # big endian: left to pydicom
        ("image_dfl.dcm", False),  # deflated: left to pydicom
        ("SC_rgb_jpeg.dcm", False),  # claims explicit VR, is implicit: left to pydicom
    ],
)
def test_part10_values_match_pydicom_or_say_unsure(name: str, plain: bool) -> None:
    """From a file's first bytes: pydicom's StudyInstanceUID and SeriesNumber, or None."""
    path = Path(get_testdata_file(name) or "")
    found = part10_values(path.read_bytes()[:16384], (0x0020000D, 0x00200011))
    if not plain:
        assert None is found
        return
    ds = dcmread(path)
    number = ds.get("SeriesNumber")
    expected = {0x0020000D: str(ds.StudyInstanceUID), 0x00200011: str(number or "")}
    assert expected == found


def test_part10_values_unsure_without_dicm_or_enough_bytes() -> None:
    """No DICM marker, or bytes that end before the last tag: None, never a guess."""
    raw = Path(get_testdata_file("CT_small.dcm") or "").read_bytes()
    tags = (0x0020000D, 0x00200011)
    assert None is part10_values(raw[:600], tags)
    assert None is part10_values(b"\0" * 128 + b"NOPE" + raw[132:], tags)


# -- real associations -----------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False])
def test_storescu_files_land_routed_and_byte_identical(
    tmp_path: Path,
    dcmtk_bin: Callable[[str], Path],
    receiver: Callable[..., Receiver],
    fast_path: bool,
) -> None:
    """DCMTK storescu's instances land in their series directories with the dataset intact."""
    rx = receiver(fast_path=fast_path)
    routes = route_demo(rx.writer, rx.root / "out")
    files = demo_files(tmp_path)
    result = storescu(dcmtk_bin, rx.scp.port, files)
    assert result.returncode == 0, result.stderr
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        stored = routes[ds.SeriesInstanceUID] / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored.read_bytes())
        meta = dcmread(stored).file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (
            IMPLEMENTATION_CLASS_UID,
            IMPLEMENTATION_VERSION_NAME,
        )
    counts = {uid: len(rx.writer.received(uid)) for uid in routes}
    assert counts == {
        DEMO_STUDIES[0].series_instance_uid(s): s.n_instances for s in DEMO_STUDIES[0].series
    }
    assert [s.duplicate for s in rx.stored] == [False] * len(files)
    assert {s.calling_ae_title for s in rx.stored} == {CALLER}


@pytest.mark.parametrize(
    ("name", "option"),
    [("SC_rgb_jpeg_dcmtk.dcm", "-xy"), ("SC_rgb_rle.dcm", "-xr")],  # JPEG baseline, RLE
)
def test_compressed_transfer_syntax_is_kept(
    dcmtk_bin: Callable[[str], Path], receiver: Callable[..., Receiver], name: str, option: str
) -> None:
    """DCMTK storescu's JPEG/RLE instance is stored as sent: same syntax, same dataset bytes."""
    rx = receiver()
    path = Path(get_testdata_file(name) or "")
    result = storescu(dcmtk_bin, rx.scp.port, [path], option)
    assert result.returncode == 0, result.stderr
    (stored,) = rx.stored
    syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert (stored.transfer_syntax_uid, dcmread(stored.path).file_meta.TransferSyntaxUID) == (
        syntax,
        syntax,
    )
    assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored.path.read_bytes())


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "JPGExtended.dcm",  # JPEG extended
        "image_dfl.dcm",  # deflated explicit VR little endian
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "MR_small_implicit.dcm",  # implicit VR little endian
    ],
)
def test_raw_bytes_are_kept_for_every_syntax(
    receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The file's own dataset bytes, sent unchanged by pynetdicom, come back unchanged."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes
    rx = receiver()
    path = Path(get_testdata_file(name) or "")
    ds = dcmread(path, stop_before_pixels=True)
    assoc = associate(rx.scp.port, ds)
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    (stored,) = rx.stored
    assert stored.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert stored.series_instance_uid == ds.SeriesInstanceUID  # routed by the header UIDs
    assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored.path.read_bytes())


def test_orthanc_move_counts_equal_orthancs(
    tmp_path: Path,
    dcmtk_bin: Callable[[str], Path],
    receiver: Callable[..., Receiver],
    make_orthanc: Callable[..., OrthancServer],
) -> None:
    """A study C-MOVEd from Orthanc arrives complete: received() equals Orthanc's counts."""
    rx = receiver()
    orthanc = make_orthanc(modalities={"PACSMAN": ("PACSMAN", "127.0.0.1", rx.scp.port)})
    jpeg = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm") or "")
    orthanc.upload_datasets(iter_datasets(DEMO_STUDIES[0]))
    orthanc.upload([jpeg])
    expected = orthanc.series_instance_counts()
    for series_uid in expected:
        rx.writer.route(series_uid, rx.root / "out" / series_uid)
    for study_uid in orthanc.study_uids():
        move = [str(dcmtk_bin("movescu")), "-S", "-aet", "PACSMAN", "-aec", orthanc.ae_title]
        move += ["-aem", "PACSMAN", "-k", "QueryRetrieveLevel=STUDY"]
        move += ["-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(orthanc.dicom_port)]
        result = subprocess.run(move, capture_output=True, text=True, env=dcmtk_env(), timeout=60)
        assert result.returncode == 0, result.stderr
    assert expected == {uid: len(rx.writer.received(uid)) for uid in expected}
    (jpeg_stored,) = [s for s in rx.stored if s.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"]
    assert dataset_bytes(jpeg.read_bytes()) == dataset_bytes(jpeg_stored.path.read_bytes())


@pytest.mark.parametrize(("allowed", "caller"), [(["ORTHANC"], "INTRUDER"), ([], "ORTHANC")])
def test_caller_not_on_allow_list_is_rejected(
    receiver: Callable[..., Receiver], allowed: list[str], caller: str
) -> None:
    """An unknown calling AE gets A-ASSOCIATE-RJ (permanent, user, 3); an empty list rejects all."""
    rx = receiver(allowed_calling_ae_titles=allowed)
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    with capture_logs() as logs:
        assoc = associate(rx.scp.port, ds, caller=caller)
    assert assoc.is_rejected
    reply = assoc.acceptor.primitive
    assert (reply.result, reply.result_source, reply.diagnostic) == (1, 1, 3)
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert event["calling_ae_title"] == caller
    assert event["peer"].startswith("127.0.0.1:")
    assert rx.files() == []


def test_uid_with_traversal_cannot_escape(receiver: Callable[..., Receiver]) -> None:
    """UIDs containing ``../`` become plain names inside the store."""
    rx = receiver()
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = "../../../../escaped"
    ds.StudyInstanceUID = "../../../study"
    ds.SeriesInstanceUID = "/abs/../../series"
    assoc = associate(rx.scp.port, ds)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    (stored,) = rx.stored
    assert stored.path == rx.root / "unrouted" / "study" / "abs_.._.._series" / "escaped.dcm"
    assert [p.relative_to(rx.root) for p in rx.files()] == [stored.path.relative_to(rx.root)]


def test_duplicate_instance_is_stored_and_counted_once(
    tmp_path: Path, dcmtk_bin: Callable[[str], Path], receiver: Callable[..., Receiver]
) -> None:
    """The same SOPInstanceUID twice: one file, one count, the second flagged duplicate."""
    rx = receiver()
    routes = route_demo(rx.writer, rx.root / "out")
    first = demo_files(tmp_path)[:1]
    for _ in range(2):
        assert storescu(dcmtk_bin, rx.scp.port, first).returncode == 0
    assert [s.duplicate for s in rx.stored] == [False, True]
    assert sum(len(rx.writer.received(uid)) for uid in routes) == 1
    assert len(rx.files()) == 1


def test_kept_unrouted_instances_go_to_the_unrouted_directory(
    tmp_path: Path, dcmtk_bin: Callable[[str], Path], receiver: Callable[..., Receiver]
) -> None:
    """Kept (``unsolicited="keep"``), a series nobody routed lands in
    unrouted/<study>/<series>/, with one warning."""
    rx = receiver()
    files = demo_files(tmp_path)[:3]  # the 3 localizers: one series
    with capture_logs() as logs:
        assert storescu(dcmtk_bin, rx.scp.port, files).returncode == 0
    spec = DEMO_STUDIES[0]
    series_uid = spec.series_instance_uid(spec.series[0])
    directory = rx.root / "unrouted" / spec.study_instance_uid / series_uid
    assert sorted(p.parent for p in rx.files()) == [directory] * 3
    warnings = [e for e in logs if e["event"] == "unrouted_series"]
    assert [(e["series_uid"], e["log_level"]) for e in warnings] == [(series_uid, "warning")]
    assert rx.writer.received(series_uid) == frozenset()


def test_resume_reports_files_already_on_disk(
    tmp_path: Path, dcmtk_bin: Callable[[str], Path], receiver: Callable[..., Receiver]
) -> None:
    """route() counts complete files from a killed run, drops its temporary files and stubs."""
    rx = receiver()
    spec = DEMO_STUDIES[0]
    series = spec.series[1]
    series_uid = spec.series_instance_uid(series)
    directory = rx.root / "out"
    directory.mkdir(parents=True)
    files = [p for p in demo_files(tmp_path) if dcmread(p).SeriesInstanceUID == series_uid]
    done = [spec.sop_instance_uid(series, n) for n in (1, 2, 3)]
    for uid, path in zip(done, files, strict=False):
        (directory / f"{uid}.dcm").write_bytes(path.read_bytes())
    (directory / f".{done[0]}.dcm.tmp-dead1").write_bytes(b"partial")
    (directory / "9.9.9.dcm").write_bytes(b"")  # a power cut's empty file
    rx.writer.route(series_uid, directory)
    assert rx.writer.received(series_uid) == frozenset(done)
    assert not list(directory.glob(".*"))
    assert storescu(dcmtk_bin, rx.scp.port, files).returncode == 0
    assert len(rx.writer.received(series_uid)) == series.n_instances
    assert sum(s.duplicate for s in rx.stored) == 3


def test_disk_full_leaves_no_partial_file(
    tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    """On a real, tiny filesystem: the instance that does not fit gets 0xA700, no file."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc}); the injected fault test covers it")
    try:
        _fill_small_disk(mount, receiver)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=10)


def _fill_small_disk(mount: Path, receiver: Callable[..., Receiver]) -> None:
    rx = receiver()
    datasets = []
    for n in range(5):
        ds = next(iter_datasets(DEMO_STUDIES[0]))
        ds.Rows = ds.Columns = 256
        ds.PixelData = bytes(256 * 256 * 2)  # 128 KiB each: the 4th cannot fit in 400 KiB
        ds.SOPInstanceUID = f"1.2.3.{n}"
        datasets.append(ds)
    series_uid = datasets[0].SeriesInstanceUID
    rx.writer.route(series_uid, mount / "series")
    with capture_logs() as logs:
        statuses = send_all(rx.scp.port, datasets)
    assert statuses == [0x0000] * 3 + [0xA700] * 2
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["disk_full"] * 2
    assert sorted(p.name for p in (mount / "series").iterdir()) == [
        f"1.2.3.{n}.dcm" for n in range(3)
    ]
    assert rx.writer.received(series_uid) == {f"1.2.3.{n}" for n in range(3)}


def test_injected_disk_full_answers_a700_and_cleans_up(
    receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in the middle of an instance: status 0xA700, ``disk_full`` logged, no file."""
    rx = receiver()
    route_demo(rx.writer, rx.root / "out")
    real_write_all = _storescp_pending._write_all

    def full_after_file_meta(fd: int, *parts: Any) -> None:
        real_write_all(fd, parts[0][:100])  # something is on disk already
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(_storescp_pending, "_write_all", full_after_file_meta)
    with capture_logs() as logs:
        statuses = send_all(rx.scp.port, list(iter_datasets(DEMO_STUDIES[0]))[:2])
    assert statuses == [0xA700, 0xA700]
    (event, _) = [e for e in logs if e["log_level"] == "error"]
    assert (event["event"], event["error"], event["status"]) == ("disk_full", "EDQUOT", "0xA700")
    assert [p for p in rx.files() if "out" in p.parts] == []
    assert rx.stored == []


def store_request_pdus(assoc: Association, ds: Dataset) -> list[P_DATA]:
    """The P-DATA primitives of a C-STORE-RQ for ``ds``, cut to the peer's maximum PDU."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.DataSet = BytesIO(encode(ds, False, True) or b"")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id
    return list(message.encode_msg(context_id, assoc.acceptor.maximum_length))


def test_abort_mid_instance_leaves_no_file(receiver: Callable[..., Receiver]) -> None:
    """An association aborted halfway through a dataset leaves neither file nor temp file."""
    rx = receiver(maximum_pdu_size=16384)
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    rx.writer.route(ds.SeriesInstanceUID, rx.root / "out")
    assoc = associate(rx.scp.port, ds)
    for primitive in store_request_pdus(assoc, ds)[:-1]:  # all but the last fragment
        assoc.dul.send_pdu(primitive)
    wait_for(lambda: any(rx.files()), timeout=10, what="the temporary file")
    assoc.abort()
    wait_for(lambda: not rx.files(), timeout=10, what="the temporary file to go")
    assert rx.stored == []


def test_pdu_header_split_across_segments(receiver: Callable[..., Receiver]) -> None:
    """A P-DATA-TF header cut in two by TCP is waited for, not misread mid-message."""
    rx = receiver(maximum_pdu_size=16384)
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    assoc = associate(rx.scp.port, ds)
    pdus = [P_DATA_TF(p).encode() for p in store_request_pdus(assoc, ds)]
    assert len(pdus) >= 4  # command, then at least 3 dataset fragments
    cut = len(pdus[0]) + len(pdus[1]) + 3  # command, first fragment, half a PDU header
    wire = b"".join(pdus)
    raw = assoc.dul.socket.socket
    raw.sendall(wire[:cut])
    wait_for(lambda: any(rx.files()), timeout=10, what="the first dataset fragment")
    raw.sendall(wire[cut:])
    wait_for(lambda: bool(rx.stored), timeout=10, what="the instance to be stored")
    assoc.release()
    assert dataset_bytes(rx.stored[0].path.read_bytes()) == encode(ds, False, True)


def test_echo_is_answered_on_the_fast_path(receiver: Callable[..., Receiver]) -> None:
    """C-ECHO (the pre-flight) is handed to pynetdicom and answered, association after one."""
    rx = receiver()
    ae = AE(ae_title=CALLER)
    ae.add_requested_context("1.2.840.10008.1.1")
    for _ in range(2):
        echo = ae.associate("127.0.0.1", rx.scp.port, ae_title="PACSMAN")
        started = time.monotonic()
        assert [echo.send_c_echo().Status for _ in range(3)] == [0x0000] * 3
        echo.release()
        # The association's own thread, held back between turns while the receiver has
        # nothing for it, is woken at once for a C-ECHO and for the release.
        assert time.monotonic() - started < 0.5


def test_echo_and_chunked_receive_use_the_standard_path(
    tmp_path: Path, receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-ECHO works; with pynetdicom's chunked receive, handle_store still stores raw bytes."""
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    rx = receiver(fast_path=False)
    path = Path(get_testdata_file("CT_small.dcm") or "")
    ds = dcmread(path)
    assoc = associate(rx.scp.port, ds)
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    ae = AE(ae_title=CALLER)
    ae.add_requested_context("1.2.840.10008.1.1")
    echo = ae.associate("127.0.0.1", rx.scp.port, ae_title="PACSMAN")
    assert echo.send_c_echo().Status == 0x0000
    echo.release()
    (stored,) = rx.stored
    assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored.path.read_bytes())


def test_port_in_use_is_a_fatal_error_that_names_the_fix(tmp_path: Path) -> None:
    """Binding a taken port fails with the address, the reason and what to configure."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        writer = InstanceWriter(unrouted_directory=tmp_path)
        scp = StorageSCP(
            writer,
            ae_title="PACSMAN",
            bind_host="127.0.0.1",
            port=port,
            allowed_calling_ae_titles=[],
        )
        with pytest.raises(
            FatalError, match=rf"cannot listen on 127\.0\.0\.1:{port} .*local\.port"
        ):
            scp.start()


def test_accepts_every_storage_class_and_common_syntaxes() -> None:
    """The SCP's catalogue: all standard storage SOP classes, compressed syntaxes included."""
    assert "1.2.840.10008.5.1.4.1.1.4" in STORAGE_SOP_CLASSES  # MR Image Storage
    assert len(STORAGE_SOP_CLASSES) > 150
    for uid in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):
        assert uid in TRANSFER_SYNTAXES
    assert len(set(TRANSFER_SYNTAXES)) == len(TRANSFER_SYNTAXES)


def test_accelerated_c_get_from_orthanc(
    tmp_path: Path, make_orthanc: Callable[..., OrthancServer]
) -> None:
    """A C-GET association given the fast path stores every sub-operation, byte-identical."""
    orthanc = make_orthanc()
    orthanc.upload_datasets(iter_datasets(DEMO_STUDIES[1]))
    expected = orthanc.series_instance_counts()
    stored: list[StoredInstance] = []
    writer = InstanceWriter(unrouted_directory=tmp_path / "unrouted", on_stored=stored.append)
    for series_uid in expected:
        writer.route(series_uid, tmp_path / series_uid)
    slow_path: list[int] = []
    ae = AE(ae_title="PACSMAN")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.3")  # Study Root GET
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", list(TRANSFER_SYNTAXES))  # MR
    handlers = [(evt.EVT_C_STORE, lambda event: slow_path.append(1) or 0x0000)]
    roles = [build_role("1.2.840.10008.5.1.4.1.1.4", scp_role=True)]
    assoc = ae.associate(
        "127.0.0.1",
        orthanc.dicom_port,
        ae_title=orthanc.ae_title,
        ext_neg=roles,
        evt_handlers=handlers,
    )
    accelerate(assoc, writer)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = DEMO_STUDIES[1].study_instance_uid
    statuses = [
        int(status.Status) for status, _ in assoc.send_c_get(query, "1.2.840.10008.5.1.4.1.2.2.3")
    ]
    assoc.release()
    assert statuses[-1] == 0x0000
    assert expected == {uid: len(writer.received(uid)) for uid in expected}
    assert slow_path == []
    assert {s.calling_ae_title for s in stored} == {orthanc.ae_title}
