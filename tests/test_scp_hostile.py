"""The Storage SCP against hostile peers (issue 10, items 1-4 and 14), on real sockets.

Each test replays a probe against a live SCP on 127.0.0.1, with attackers connecting from
127.0.0.2-9, and then shows three things:

* the allowed PACS still stores: DCMTK ``/usr/bin/storescu`` calling as ``ORTHANC``, or a
  real C-MOVE from Orthanc, during or after the attack;
* memory stayed bounded: the peak of what this process (which runs the SCP) allocated
  during the attack, by tracemalloc, stays under the bound each test names;
* no traceback was logged, by pacsman or by pynetdicom, and no thread died.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from structlog.testing import capture_logs

from pacsman.config import PacsNode, parse_config
from pacsman.dicom import _guard, hooks
from pacsman.dicom import codec as dimse
from pacsman.dicom.client import DicomPeer
from pacsman.dicom.scp import InstanceWriter, StorageSCP, StoredInstance
from pacsman.errors import ConfigError
from pacsman.models import ItemState
from pacsman.retrieve import RetrieveAssociation, SeriesRequest
from pacsman.testing.dcmtk import dcmtk_env
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import DEMO_STUDIES, iter_datasets
from pacsman.throttle import Courtesy, RetryPolicy
from pacsman.verify import verify_series

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CALLER = "ORTHANC"
ATTACKERS = tuple(f"127.0.0.{n}" for n in range(2, 10))
VERIFICATION = "1.2.840.10008.1.1"
MiB = 1 << 20


# -- the SCP, the allowed PACS, memory and logs ----------------------------------------------


class Scp:
    """A started StorageSCP (AE PACSMAN on 127.0.0.1) with its writer and what it stored."""

    def __init__(self, root: Path, writer_kwargs: dict[str, Any], **kwargs: Any) -> None:
        self.root = root
        self.stored: list[StoredInstance] = []
        self.writer = InstanceWriter(
            unrouted_directory=root / "_unrouted", on_stored=self.stored.append, **writer_kwargs
        )
        kwargs.setdefault("allowed_calling_ae_titles", [CALLER])
        self.server = StorageSCP(
            self.writer, ae_title="PACSMAN", bind_host="127.0.0.1", port=0, **kwargs
        ).start()
        self.port = self.server.port

    def files(self) -> list[Path]:
        """Every file under the root, temporary ones included."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Callable[..., Scp]]:
    """Factory: ``scp(unsolicited=..., **StorageSCP kwargs)`` starts an SCP under tmp_path."""
    started: list[Scp] = []

    def start(*, unsolicited: str = "refuse", quota: int = 1024 * MiB, **kwargs: Any) -> Scp:
        writer = {"unsolicited": unsolicited, "unsolicited_quota": quota}
        started.append(Scp(tmp_path / f"scp{len(started)}", writer, **kwargs))
        return started[-1]

    yield start
    for item in started:
        item.server.stop()


@pytest.fixture
def fast_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """``fast_paths(False)`` makes the installed pynetdicom look unchecked (plain pynetdicom)."""
    real = hooks.installed_pynetdicom

    def choose(enabled: bool) -> None:
        monkeypatch.setattr(hooks, "installed_pynetdicom", real if enabled else lambda: "0.0.0")
        hooks.fast_paths_enabled.cache_clear()

    yield choose
    hooks.fast_paths_enabled.cache_clear()


class Memory:
    """The peak bytes this process allocated (every thread) while the ``with`` ran."""

    peak = 0

    def __enter__(self) -> Memory:
        tracemalloc.start()
        self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.peak = tracemalloc.get_traced_memory()[1] - self._base
        tracemalloc.stop()


def demo_instance(n: int = 0) -> Dataset:
    """The ``n``-th instance of DEMO_STUDIES[0] (an MR image, explicit VR little endian)."""
    for index, ds in enumerate(iter_datasets(DEMO_STUDIES[0])):
        if index == n:
            return ds
    raise IndexError(n)


def pacs_stores(rx: Scp, dcmtk_bin: Callable[[str], Path], tmp_path: Path, n: int = 0) -> float:
    """DCMTK storescu, calling as the allowed PACS from 127.0.0.1, stores instance ``n``.

    Returns the seconds it took; the instance must be on disk in its routed directory.
    """
    ds = demo_instance(n)
    path = tmp_path / f"pacs{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    directory = rx.root / "routed" / str(ds.SeriesInstanceUID)
    rx.writer.route(str(ds.SeriesInstanceUID), directory)
    command = [str(dcmtk_bin("storescu")), "-aet", CALLER, "-aec", "PACSMAN"]
    command += ["-to", "10", "-ta", "10", "-td", "10", "127.0.0.1", str(rx.port), str(path)]
    start = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, env=dcmtk_env(), timeout=60, check=False
    )
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert (directory / f"{ds.SOPInstanceUID}.dcm").is_file(), result.stderr
    return took


def assert_no_tracebacks(logs: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    """Neither pacsman (structlog) nor pynetdicom (logging) logged an exception."""
    assert [e for e in logs if "exc_info" in e or "exception" in e] == []
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [e["event"] for e in logs if e["log_level"] in ("error", "critical")] == []


# -- raw sockets -------------------------------------------------------------------------------


def connect_from(host: str, port: int) -> socket.socket:
    """A TCP connection to the SCP from ``host`` (another loopback address)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(host, 0))


def closed_by_peer(sock: socket.socket, *, within: float) -> bool:
    """True if the SCP closes ``sock`` within ``within`` seconds (data before that is read)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset
            return True
    return False


def push_until_closed(sock: socket.socket, data: bytes, *, limit: int) -> int:
    """Send ``data`` again and again, up to ``limit`` bytes, until the SCP closes; bytes sent."""
    sent = 0
    sock.settimeout(10)
    try:
        while sent < limit:
            sock.sendall(data)
            sent += len(data)
    except OSError:
        return sent
    return sent


def associate(port: int, *, called: str = "PACSMAN", source: str = "127.0.0.1") -> Association:
    """A pynetdicom association calling as the allowed PACS: CT and MR storage, Verification."""
    ae = AE(ae_title=CALLER)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian)  # MR
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)  # CT
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))
    hooks.guard_reactor(assoc)  # responses are for get_msg below, never for the reactor
    return assoc


def context_id(assoc: Association, abstract_syntax: str) -> int:
    """The accepted presentation context of ``abstract_syntax``."""
    (context,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == abstract_syntax]
    return int(context.context_id)


def store_command(
    message_id: int, sop_class: str, sop_instance: str, *, move_originator: str = ""
) -> bytes:
    """A C-STORE-RQ command set whose Affected SOP Class/Instance UIDs are as given (and the
    Move Originator AE title of a C-MOVE sub-operation, if given)."""
    originator = move_originator.encode() + b" " * (len(move_originator) % 2)
    return dimse.command_set(
        dimse.element(dimse.AFFECTED_SOP_CLASS, dimse.padded_uid(sop_class)),
        dimse.element(dimse.COMMAND_FIELD, dimse.ushort(dimse.C_STORE_RQ)),
        dimse.element(dimse.MESSAGE_ID, dimse.ushort(message_id)),
        dimse.element(dimse.PRIORITY, dimse.ushort(0)),
        dimse.element(dimse.DATASET_TYPE, dimse.ushort(dimse.DATASET_PRESENT)),
        dimse.element(dimse.AFFECTED_SOP_INSTANCE, dimse.padded_uid(sop_instance)),
        *([dimse.element(dimse.MOVE_ORIGINATOR_AE_TITLE, originator)] if originator else []),
    )


def p_data(context: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU of one presentation data value (PS3.8 9.3.5, E.2)."""
    item = bytes((context, control)) + data
    return b"\x04\x00" + struct.pack(">LL", len(item) + 4, len(item)) + item


def c_store(assoc: Association, command: bytes, dataset: bytes) -> int:
    """Send a C-STORE-RQ as raw PDUs (command, then dataset); return the status answered."""
    raw = assoc.dul.socket.socket
    context = context_id(assoc, str(_command_class(command)))
    maximum = assoc.acceptor.maximum_length
    for pdu in dimse.fragments(context, command, command=True, max_pdu=maximum):
        raw.sendall(pdu)
    for pdu in dimse.fragments(context, dataset, command=False, max_pdu=maximum):
        raw.sendall(pdu)
    _, response = assoc.dimse.get_msg(block=True)
    assert response is not None, "no C-STORE-RSP"
    return int(response.Status)


def _command_class(command: bytes) -> str:
    fields = dimse.parse_command(command)
    assert fields is not None
    return dimse.text(fields, dimse.AFFECTED_SOP_CLASS)


def dataset_bytes(ds: Dataset) -> bytes:
    """``ds`` encoded as sent on an explicit VR little endian context."""
    return encode(ds, False, True) or b""


# -- item 1: stalled connections ---------------------------------------------------------------


def test_stalled_connections_never_take_the_pacs_slots(
    scp: Callable[..., Scp],
    dcmtk_bin: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """64 sockets that send ``b"\\x01\\x00"`` and wait (8 from each of 127.0.0.2-9, six times
    the association limit), and 3 more from 127.0.0.2: those 3 are closed at once (8 per
    address; logged once, a flood does not flood the log), the PACS still stores at once
    while all 64 wait (the deadline is set to 60 s so that it is not what saves it; the
    oldest waiting connection gives way), and the SCP allocates less than 2 MiB for it all."""
    rx = scp(association_request_timeout=60)
    stalled: list[socket.socket] = []
    with capture_logs() as logs, Memory() as memory:
        for host in ATTACKERS:
            for _ in range(8):
                stalled.append(connect_from(host, rx.port))
                stalled[-1].sendall(b"\x01\x00")
        extra = [connect_from("127.0.0.2", rx.port) for _ in range(3)]
        assert all(closed_by_peer(sock, within=5) for sock in extra)
        took = pacs_stores(rx, dcmtk_bin, tmp_path)
    assert took < 10
    assert memory.peak < 2 * MiB
    (refused,) = [e for e in logs if e["event"] == "connection_refused"]  # 1 per 10 s
    assert (refused["peer"].split(":")[0], refused["refused_before"]) == ("127.0.0.2", 0)
    assert "8 connections from this address" in refused["reason"]
    evicted = [e for e in logs if e["event"] == "association_request_refused"]
    assert ["newer connections were waiting" in e["reason"] for e in evicted] == [True]
    assert_no_tracebacks(logs, caplog)
    for sock in stalled + extra:
        sock.close()


def test_request_deadline_closes_stalled_connections(
    scp: Callable[..., Scp],
    dcmtk_bin: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Half a PDU header, or a header and half a request, then silence: closed when
    local.association_request_timeout (0.5 s here) runs out, each logged with the reason."""
    rx = scp(association_request_timeout=0.5)
    with capture_logs() as logs:
        start = time.monotonic()
        socks = [connect_from(host, rx.port) for host in ATTACKERS[:4]]
        for sock in socks[:3]:
            sock.sendall(b"\x01\x00")
        socks[3].sendall(b"\x01\x00\x00\x00\x01\x00" + bytes(100))  # 256 promised, 100 sent
        assert all(closed_by_peer(sock, within=10) for sock in socks)
        took = time.monotonic() - start
        pacs_stores(rx, dcmtk_bin, tmp_path)
    assert 0.4 < took < 5
    reasons = [e["reason"] for e in logs if e["event"] == "association_request_refused"]
    assert reasons == ["no whole A-ASSOCIATE-RQ within 0.5 s"] * 4
    assert_no_tracebacks(logs, caplog)


def test_orthanc_move_succeeds_during_a_stall_attack(
    scp: Callable[..., Scp],
    orthanc: OrthancServer,
    dcmtk_bin: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While 64 connections from 127.0.0.2-9 stall before association, a real C-MOVE from
    Orthanc delivers a whole study; the SCP allocates less than 4 MiB meanwhile."""
    rx = scp(association_request_timeout=60, allowed_calling_ae_titles=[orthanc.ae_title])
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", rx.port)
    spec = DEMO_STUDIES[0]
    orthanc.upload_datasets(iter_datasets(spec))
    expected = orthanc.series_instance_counts()
    for series_uid in expected:
        rx.writer.route(series_uid, rx.root / "routed" / series_uid)
    stalled: list[socket.socket] = []
    with capture_logs() as logs, Memory() as memory:
        for host in ATTACKERS:
            for _ in range(8):
                stalled.append(connect_from(host, rx.port))
                stalled[-1].sendall(b"\x01\x00")
        move = [str(dcmtk_bin("movescu")), "-S", "-aet", "PACSMAN", "-aec", orthanc.ae_title]
        move += ["-aem", "PACSMAN", "-k", "QueryRetrieveLevel=STUDY"]
        move += ["-k", f"StudyInstanceUID={spec.study_instance_uid}"]
        move += ["127.0.0.1", str(orthanc.dicom_port)]
        result = subprocess.run(
            move, capture_output=True, text=True, env=dcmtk_env(), timeout=60, check=False
        )
    assert result.returncode == 0, result.stderr
    assert expected == {uid: len(rx.writer.received(uid)) for uid in expected}
    assert memory.peak < 4 * MiB
    assert_no_tracebacks(logs, caplog)
    for sock in stalled:
        sock.close()


# -- item 2: the PDU length before association -------------------------------------------------


def test_oversized_associate_request_is_rejected_unread(
    scp: Callable[..., Scp],
    dcmtk_bin: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten A-ASSOCIATE-RQs claiming 4 GiB: each answered A-ASSOCIATE-RJ at once, before a byte
    of it is read; pushing 300 MiB more fails within a few MiB (socket buffers); the SCP
    allocates less than 1 MiB; the PACS still stores."""
    rx = scp()
    more = bytes(MiB)
    with capture_logs() as logs, Memory() as memory:
        socks = [connect_from(host, rx.port) for host in (*ATTACKERS, "127.0.0.2", "127.0.0.3")]
        for sock in socks:
            sock.sendall(b"\x01\x00\xff\xff\xff\xff")
        for sock in socks:
            sock.settimeout(5)
            assert sock.recv(10) == bytes.fromhex("03 00 00000004 00 01 02 01")
        sent = push_until_closed(socks[0], more, limit=300 * MiB)
    assert sent < 32 * MiB
    assert memory.peak < 1 * MiB
    reasons = {e["reason"] for e in logs if e["event"] == "association_request_refused"}
    assert reasons == {f"an A-ASSOCIATE-RQ of {(1 << 32) + 5} bytes, more than 262144"}
    pacs_stores(rx, dcmtk_bin, tmp_path)
    assert_no_tracebacks(logs, caplog)


def test_first_pdu_must_be_an_associate_request(
    scp: Callable[..., Scp], caplog: pytest.LogCaptureFixture
) -> None:
    """A P-DATA-TF before any association gets an A-ABORT (unexpected PDU) and is closed."""
    rx = scp()
    with capture_logs() as logs:
        sock = connect_from("127.0.0.4", rx.port)
        sock.sendall(p_data(1, 0x03, bytes(64)))
        sock.settimeout(5)
        assert sock.recv(10) == bytes.fromhex("07 00 00000004 00 00 02 02")
        assert closed_by_peer(sock, within=5)
    (event,) = [e for e in logs if e["event"] == "association_request_refused"]
    assert event["reason"] == "the first PDU is of type 0x04, not an A-ASSOCIATE-RQ"
    assert_no_tracebacks(logs, caplog)


# -- item 3: command sets and datasets held in memory ------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_pynetdicom"])
def test_endless_command_set_is_aborted(
    scp: Callable[..., Scp],
    fast_paths: Callable[[bool], None],
    dcmtk_bin: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fast: bool,
) -> None:
    """Command fragments without the "last" bit, 16 KiB a PDU, up to 199 MiB: the association
    is aborted after 8 KiB (logged with the reason, no PHI); fewer than 32 MiB get sent;
    the SCP allocates less than 4 MiB; the PACS then stores."""
    fast_paths(fast)
    rx = scp()
    assoc = associate(rx.port, source="127.0.0.5")
    pdu = p_data(context_id(assoc, VERIFICATION), dimse.COMMAND_FRAGMENT, bytes(16384))
    with capture_logs() as logs, Memory() as memory:
        sent = push_until_closed(assoc.dul.socket.socket, pdu, limit=199 * MiB)
    assert sent < 32 * MiB
    assert memory.peak < 4 * MiB
    (event,) = [e for e in logs if e["event"] == "association_aborted"]
    assert event["reason"] == "command set longer than 8192 bytes"
    assert (event["calling_ae_title"], event["peer"].split(":")[0]) == (CALLER, "127.0.0.5")
    pacs_stores(rx, dcmtk_bin, tmp_path)
    assert_no_tracebacks(logs, caplog)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_pynetdicom"])
def test_endless_dataset_of_a_message_not_stored_is_aborted(
    scp: Callable[..., Scp],
    fast_paths: Callable[[bool], None],
    caplog: pytest.LogCaptureFixture,
    fast: bool,
) -> None:
    """A C-ECHO-RQ that announces a dataset, then dataset fragments without end: the
    association is aborted after 64 KiB held; the SCP allocates less than 4 MiB."""
    fast_paths(fast)
    rx = scp()
    assoc = associate(rx.port, source="127.0.0.6")
    context = context_id(assoc, VERIFICATION)
    echo = dimse.command_set(
        dimse.element(dimse.AFFECTED_SOP_CLASS, dimse.padded_uid(VERIFICATION)),
        dimse.element(dimse.COMMAND_FIELD, dimse.ushort(0x0030)),  # C-ECHO-RQ
        dimse.element(dimse.MESSAGE_ID, dimse.ushort(1)),
        dimse.element(dimse.DATASET_TYPE, dimse.ushort(dimse.DATASET_PRESENT)),
    )
    raw = assoc.dul.socket.socket
    fragment = p_data(context, 0x00, bytes(16384))
    with capture_logs() as logs, Memory() as memory:
        raw.sendall(p_data(context, dimse.COMMAND_FRAGMENT | dimse.LAST_FRAGMENT, echo))
        sent = push_until_closed(raw, fragment, limit=199 * MiB)
    assert sent < 32 * MiB
    assert memory.peak < 4 * MiB
    (event,) = [e for e in logs if e["event"] == "association_aborted"]
    assert event["reason"].endswith("longer than 65536 bytes")
    assert_no_tracebacks(logs, caplog)


def test_plain_pynetdicom_dataset_in_memory_is_capped(
    scp: Callable[..., Scp],
    fast_paths: Callable[[bool], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where plain pynetdicom receives (it holds a C-STORE dataset in memory), a dataset over
    MAX_STORE_IN_MEMORY (1 MiB here; 256 MiB by default) aborts the association."""
    fast_paths(False)
    monkeypatch.setattr(_guard, "MAX_STORE_IN_MEMORY", MiB)
    rx = scp()
    ds = demo_instance()
    ds.PixelData = bytes(2 * MiB)
    assoc = associate(rx.port, source="127.0.0.7")
    with capture_logs() as logs:
        assert assoc.send_c_store(ds) == Dataset()  # aborted: no response
    (event,) = [e for e in logs if e["event"] == "association_aborted"]
    assert event["reason"] == f"dataset held in memory longer than {MiB} bytes"
    assert rx.files() == []
    assert_no_tracebacks(logs, caplog)


def test_fast_path_holds_at_most_8_mib_of_a_dataset(
    scp: Callable[..., Scp], caplog: pytest.LogCaptureFixture
) -> None:
    """A C-STORE whose first 12 MiB hold no SeriesInstanceUID (a huge private element first)
    is refused (0xC000) once 8 MiB are held; the SCP allocates less than 20 MiB."""
    rx = scp()
    ds = demo_instance()
    ds.add_new(0x00090010, "LO", "HOSTILE")
    ds.add_new(0x00091000, "OB", bytes(12 * MiB))
    assoc = associate(rx.port, source="127.0.0.8")
    command = store_command(1, ds.SOPClassUID, ds.SOPInstanceUID)
    data = dataset_bytes(ds)
    with capture_logs() as logs, Memory() as memory:
        status = c_store(assoc, command, data)
    assoc.release()
    assert status == 0xC000
    assert memory.peak < 20 * MiB
    (event,) = [e for e in logs if e["event"] == "store_refused"]
    assert event["reason"] == "no SeriesInstanceUID in the first 8388608 bytes"
    assert rx.files() == []
    assert_no_tracebacks(logs, caplog)


@pytest.mark.parametrize("read_size", [1, 7, 4096])
def test_wire_guard_follows_pdus_across_reads_of_any_size(
    monkeypatch: pytest.MonkeyPatch, read_size: int
) -> None:
    """The guard on what plain pynetdicom reads judges the same stream the same way however
    it is cut: a request, a C-ECHO, a C-STORE within the caps, then one over them."""
    monkeypatch.setattr(_guard, "MAX_STORE_IN_MEMORY", 1000)
    echo = dimse.command_set(
        dimse.element(dimse.AFFECTED_SOP_CLASS, dimse.padded_uid(VERIFICATION)),
        dimse.element(dimse.COMMAND_FIELD, dimse.ushort(0x0030)),
        dimse.element(dimse.DATASET_TYPE, dimse.ushort(dimse.NO_DATASET)),
    )
    store = store_command(2, "1.2.840.10008.5.1.4.1.1.4", "1.2.3")
    fine = b"".join(
        [
            p_data(1, 0x03, echo),
            p_data(3, 0x01, store[:10]),
            p_data(3, 0x03, store[10:]),
            p_data(3, 0x00, bytes(600)) + p_data(3, 0x02, bytes(400)),  # 1000: at the cap
        ]
    )
    over = p_data(3, 0x03, store) + p_data(3, 0x00, bytes(1001))
    guard = _guard.WireGuard(b"\x01\x00" + struct.pack(">L", 100) + bytes(100), max_pdu=16384)
    assert guard.check(guard.take(1 << 20)) is None
    stream = fine + over
    reasons = [guard.check(stream[i : i + read_size]) for i in range(0, len(stream), read_size)]
    assert [r for r in reasons if r] == ["dataset held in memory longer than 1000 bytes"]
    broken = reasons.index("dataset held in memory longer than 1000 bytes")
    assert (broken + 1) * read_size > len(fine)  # not before the stream goes over


# -- item 4: the command set is not trusted ------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_pynetdicom"])
def test_one_dataset_under_three_uids_is_stored_and_counted_once(
    scp: Callable[..., Scp],
    fast_paths: Callable[[bool], None],
    caplog: pytest.LogCaptureFixture,
    fast: bool,
) -> None:
    """One dataset sent under 3 Affected SOP Instance UIDs: stored once (0x0000), the other
    two refused 0xC000; verify counts 1, so the series cannot be COMPLETE at 3 expected.
    A dataset whose SOPClassUID is not the command's is refused 0xA900."""
    fast_paths(fast)
    rx = scp()
    ds = demo_instance()
    series_uid = str(ds.SeriesInstanceUID)
    rx.writer.route(series_uid, rx.root / "routed")
    data = dataset_bytes(ds)
    uids = [str(ds.SOPInstanceUID), "1.2.3.4.5.1", "1.2.3.4.5.2"]
    assoc = associate(rx.port)
    with capture_logs() as logs:
        statuses = [
            c_store(assoc, store_command(n, ds.SOPClassUID, uid), data)
            for n, uid in enumerate(uids)
        ]
        ct = store_command(9, "1.2.840.10008.5.1.4.1.1.2", str(ds.SOPInstanceUID))
        statuses.append(c_store(assoc, ct, data))
    assoc.release()
    assert statuses == [0x0000, 0xC000, 0xC000, 0xA900]
    received = rx.writer.received(series_uid)
    assert received == {str(ds.SOPInstanceUID)}
    assert [p.name for p in rx.files()] == [f"{ds.SOPInstanceUID}.dcm"]
    verdict = verify_series(received=len(received), expected=3)
    assert (verdict.state, verdict.received) == (ItemState.INCOMPLETE, 1)
    reasons = [e["reason"] for e in logs if e["event"] == "store_refused"]
    assert reasons == [
        "the dataset's SOPInstanceUID is not the command's Affected SOP Instance UID",
        "the dataset's SOPInstanceUID is not the command's Affected SOP Instance UID",
        "the dataset's SOPClassUID is not the command's Affected SOP Class UID",
    ]
    assert_no_tracebacks(logs, caplog)


def _with_trailing_sequence(ds: Dataset) -> Dataset:
    """``ds`` with an undefined-length sequence as its last element (after the pixel data)."""
    item = Dataset()
    item.CodeValue = "X"
    ds.DigitalSignaturesSequence = Sequence([item])  # (FFFA,FFFA): after the pixel data
    return ds


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_pynetdicom"])
def test_empty_and_truncated_datasets_are_refused(
    scp: Callable[..., Scp],
    fast_paths: Callable[[bool], None],
    caplog: pytest.LogCaptureFixture,
    fast: bool,
) -> None:
    """An empty dataset, one cut in the pixel data, one cut inside a sequence: 0xC000 each,
    nothing on disk; the whole dataset then stores (0x0000)."""
    fast_paths(fast)
    rx = scp()
    ds = _with_trailing_sequence(demo_instance())
    rx.writer.route(str(ds.SeriesInstanceUID), rx.root / "routed")
    whole = dataset_bytes(ds)
    pixels_end = whole.index(b"\xfa\xff\xfa\xffSQ")  # where the trailing sequence starts
    command = store_command(1, ds.SOPClassUID, ds.SOPInstanceUID)
    assoc = associate(rx.port)
    with capture_logs() as logs:
        statuses = [
            c_store(assoc, command, data)
            for data in (b"", whole[: pixels_end - 1000], whole[:-8], whole)
        ]
    assoc.release()
    assert statuses == [0xC000, 0xC000, 0xC000, 0x0000]
    reasons = [e["reason"] for e in logs if e["event"] == "store_refused"]
    assert reasons == [
        "the dataset is empty",
        "the dataset ends inside an element (truncated)",
        "the dataset ends inside an element (truncated)",
    ]
    assert [p.name for p in rx.files()] == [f"{ds.SOPInstanceUID}.dcm"]
    assert_no_tracebacks(logs, caplog)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_pynetdicom"])
def test_unsolicited_instances_are_refused_by_default(
    scp: Callable[..., Scp],
    fast_paths: Callable[[bool], None],
    dcmtk_bin: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fast: bool,
) -> None:
    """Instances of a series no retrieve routed: 0x0124 each, nothing written, one log line
    per series; a routed series still stores."""
    fast_paths(fast)
    rx = scp()
    datasets = [demo_instance(n) for n in range(3)]  # the 3 localizers: one series
    assoc = associate(rx.port)
    with capture_logs() as logs:
        statuses = [
            c_store(assoc, store_command(n, ds.SOPClassUID, ds.SOPInstanceUID), dataset_bytes(ds))
            for n, ds in enumerate(datasets)
        ]
    assoc.release()
    assert statuses == [0x0124] * 3
    assert rx.files() == []
    events = [e for e in logs if e["event"] == "unsolicited_series_refused"]
    assert [e["series_uid"] for e in events] == [str(datasets[0].SeriesInstanceUID)]
    pacs_stores(rx, dcmtk_bin, tmp_path, n=5)
    assert_no_tracebacks(logs, caplog)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_pynetdicom"])
def test_unselected_series_of_our_move_is_acknowledged_not_stored(
    scp: Callable[..., Scp],
    fast_paths: Callable[[bool], None],
    caplog: pytest.LogCaptureFixture,
    fast: bool,
) -> None:
    """A C-MOVE sub-operation whose Move Originator is our AE title, for a series no row
    selected (a study-level retrieve brings the whole study): 0x0000, nothing written, one
    log line.  The same with any other originator is unsolicited: 0x0124."""
    fast_paths(fast)
    rx = scp()
    ds = demo_instance()
    data = dataset_bytes(ds)
    ours = store_command(1, ds.SOPClassUID, ds.SOPInstanceUID, move_originator="PACSMAN")
    theirs = store_command(2, ds.SOPClassUID, ds.SOPInstanceUID, move_originator="SOMEONE")
    assoc = associate(rx.port)
    with capture_logs() as logs:
        statuses = [c_store(assoc, ours, data), c_store(assoc, ours, data)]
        statuses.append(c_store(assoc, theirs, data))
    assoc.release()
    assert statuses == [0x0000, 0x0000, 0x0124]
    assert rx.files() == []
    assert rx.stored == []
    events = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert events == ["unselected_series_dropped", "unsolicited_series_refused"]
    assert_no_tracebacks(logs, caplog)


def test_study_level_move_of_a_partly_selected_study_from_orthanc(
    scp: Callable[..., Scp], orthanc: OrthancServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A study-level C-MOVE from Orthanc when rows select 2 of its 3 series: Orthanc reports
    success (it fails the whole move on one refused sub-operation), the 2 series are
    complete, the third is not stored, and nothing lands in _unrouted/."""
    rx = scp(allowed_calling_ae_titles=[orthanc.ae_title])
    orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", rx.port)
    spec = DEMO_STUDIES[0]
    orthanc.upload_datasets(iter_datasets(spec))
    selected = spec.series[1:]  # not the localizer
    requests = [
        SeriesRequest(
            spec.study_instance_uid,
            spec.series_instance_uid(series),
            rx.root / "routed" / str(series.series_number),
        )
        for series in selected
    ]
    node = PacsNode("orthanc", "127.0.0.1", orthanc.dicom_port, orthanc.ae_title)
    association = RetrieveAssociation(
        DicomPeer(node, "PACSMAN", rx.port),
        receiver=rx.writer,
        retry=RetryPolicy(max_attempts=1),
        courtesy=Courtesy(),
        move_destination="PACSMAN",
    )
    with capture_logs() as logs, association:
        fetched = association.fetch(requests, level="STUDY")
    assert fetched.result.status == 0x0000
    assert fetched.received == {spec.series_instance_uid(s): s.n_instances for s in selected}
    assert {p.parent.name for p in rx.files()} == {str(s.series_number) for s in selected}
    assert_no_tracebacks(logs, caplog)


def test_unsolicited_instances_kept_under_a_quota(
    scp: Callable[..., Scp], caplog: pytest.LogCaptureFixture
) -> None:
    """``unsolicited: keep``: instances of unrouted series land in _unrouted/ until it holds
    the quota (here about 2 instances), then 0xA700 (out of resources), logged once."""
    size = len(dataset_bytes(demo_instance()))
    rx = scp(unsolicited="keep", quota=size + size // 2)
    datasets = [demo_instance(n) for n in range(3)]  # the 3 localizers: one series
    assoc = associate(rx.port)
    with capture_logs() as logs:
        statuses = [
            c_store(assoc, store_command(n, ds.SOPClassUID, ds.SOPInstanceUID), dataset_bytes(ds))
            for n, ds in enumerate(datasets)
        ]
    assoc.release()
    assert statuses == [0x0000, 0x0000, 0xA700]
    assert len([p for p in rx.files() if "_unrouted" in p.parts]) == 2
    assert [e["event"] for e in logs if e["event"] == "unsolicited_quota_full"] == [
        "unsolicited_quota_full"
    ]
    assert_no_tracebacks(logs, caplog)


# -- item 14: the called AE title ----------------------------------------------------------------


@pytest.mark.parametrize("any_called", [False, True])
def test_called_ae_title_must_be_ours(
    scp: Callable[..., Scp], caplog: pytest.LogCaptureFixture, any_called: bool
) -> None:
    """Calling the SCP by another AE title: A-ASSOCIATE-RJ (permanent, service user, 7: called
    AE title not recognised), unless local.accept_any_called_ae_title."""
    rx = scp(accept_any_called_ae_title=any_called)
    with capture_logs() as logs:
        assoc = associate(rx.port, called="SOMEONE_ELSE")
    if any_called:
        assert assoc.is_established
        assoc.release()
        return
    assert assoc.is_rejected
    reply = assoc.acceptor.primitive
    assert (reply.result, reply.result_source, reply.diagnostic) == (1, 1, 7)
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert (event["called_ae_title"], event["reason"]) == (
        "SOMEONE_ELSE",
        "called AE title is not ours",
    )
    assert_no_tracebacks(logs, caplog)


# -- the config keys -----------------------------------------------------------------------------


def _config(**local: object) -> Any:
    node = {"host": "127.0.0.1", "port": 4242, "called_ae_title": "ORTHANC", "max_associations": 4}
    return parse_config({"local": local, "pacs": {"orthanc": node}}, source="pacsman.yaml")


def test_config_keys_of_the_scp_defaults_and_rules() -> None:
    """The SCP's local keys: their defaults, a warning when one PACS node could be refused,
    and an error naming the key, the value and the rule."""
    local = _config().local
    assert (
        local.association_request_timeout,
        local.max_connections_per_address,
        local.accept_any_called_ae_title,
        local.unsolicited,
        local.unsolicited_quota_mb,
    ) == (5.0, 8, False, "refuse", 1024)
    (warning,) = _config(max_connections_per_address=2).warnings
    assert "max_connections_per_address: 2 is fewer than the 4 retrieves" in warning.message
    with pytest.raises(ConfigError, match=r"local\.unsolicited: 'drop' is not one of 'refuse', "):
        _config(unsolicited="drop")
